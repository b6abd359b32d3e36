# Bindings for csrc/hypermixing_block.c: the causal HyperMixingBlock in one call each way.
# Shares block.pxi's helpers; the layer (hypermixer._hypermixing_compiled) validates first.

cdef extern from "hypermixing_block.h" nogil:
    ctypedef struct HypermixingBlockDims:
        size_t B, L, E, H, k, h, chunk, slots
        int tied, mean, layer_norm
        double info_scale
    enum: HM_HYPERMIXING_BLOCK_PARAMS
    size_t hypermixing_block_cache_size(const HypermixingBlockDims* d)
    size_t hypermixing_block_scratch_size(const HypermixingBlockDims* d)
    size_t hypermixing_block_index_size(const HypermixingBlockDims* d)
    void hypermixing_block_forward_f32(float* y, float* cache, int64_t* index, float* scratch,
                                       const float* x, const int64_t* lengths,
                                       const float* pos, const float* const* params,
                                       const HypermixingBlockDims* d)
    void hypermixing_block_forward_f64(double* y, double* cache, int64_t* index,
                                       double* scratch, const double* x,
                                       const int64_t* lengths, const double* pos,
                                       const double* const* params,
                                       const HypermixingBlockDims* d)
    void hypermixing_block_step_f32(float* y, float* state, float* cache, int64_t* index,
                                    float* scratch, const float* x, const int64_t* positions,
                                    const float* pos, const float* const* params,
                                    const HypermixingBlockDims* d)
    void hypermixing_block_step_f64(double* y, double* state, double* cache, int64_t* index,
                                    double* scratch, const double* x,
                                    const int64_t* positions, const double* pos,
                                    const double* const* params, const HypermixingBlockDims* d)
    void hypermixing_block_backward_f32(float* grad_input, float* const* grads, float* cache,
                                        int64_t* index, float* scratch,
                                        const float* grad_output, const int64_t* lengths,
                                        const float* const* params,
                                        const HypermixingBlockDims* d)
    void hypermixing_block_backward_f64(double* grad_input, double* const* grads,
                                        double* cache, int64_t* index, double* scratch,
                                        const double* grad_output, const int64_t* lengths,
                                        const double* const* params,
                                        const HypermixingBlockDims* d)


cdef int _hb_dims(HypermixingBlockDims* d, tuple shape, tuple sizes) except -1:
    """shape: (B, L, E); sizes: (H, k, heads, chunk, slots, tied, mean, layer_norm,
    info_scale)."""
    d.B, d.L, d.E = shape
    d.H, d.k, d.h, d.chunk, d.slots = sizes[:5]
    d.tied, d.mean, d.layer_norm = sizes[5], sizes[6], sizes[7]
    d.info_scale = sizes[8]
    if (d.B < 1 or d.L < 1 or d.E < 1 or d.H < 1 or d.k < 1 or d.h < 1 or d.chunk < 1
            or d.slots < 1):
        raise ValueError("hypermixing block: every size must be >= 1")
    if d.E % d.h or d.k % d.h:
        raise ValueError("hypermixing block: heads must divide E and k")
    if d.B * d.L * (d.E + d.H + d.k) >= 1 << 31:
        raise ValueError("hypermixing block: sizes out of range")
    return 0


cdef void _hb_sizes(size_t* sizes, const HypermixingBlockDims* d):
    """Element counts of the parameter slots (hypermixing_block.h), 0 where unused."""
    cdef size_t dh = d.E // d.h, kh = d.k // d.h
    cdef size_t E = d.E, H = d.H
    sizes[0] = E; sizes[1] = E
    sizes[2] = d.h * dh * dh; sizes[3] = E; sizes[4] = d.h * kh * dh; sizes[5] = d.k
    sizes[6] = sizes[2]; sizes[7] = sizes[3]; sizes[8] = sizes[4]; sizes[9] = sizes[5]
    sizes[10] = E; sizes[11] = E; sizes[12] = E; sizes[13] = E
    sizes[14] = E * H; sizes[15] = H; sizes[16] = H * E; sizes[17] = E


cdef int _hb_fill(object what, list arrays, void** out, int typenum,
                  const HypermixingBlockDims* d, bint written=False) except -1:
    """The 18 slots: an array of the slot's size, or None where the block has no such
    parameter (biases, the second generator when tied, the LayerNorm when off)."""
    cdef size_t sizes[18]
    cdef cnp.ndarray a
    cdef int i
    cdef bint absent
    _hb_sizes(sizes, d)
    if len(arrays) != HM_HYPERMIXING_BLOCK_PARAMS:
        raise ValueError(f"{what}: expected {HM_HYPERMIXING_BLOCK_PARAMS} slots")
    for i in range(HM_HYPERMIXING_BLOCK_PARAMS):
        # absent: the second generator when tied, the LayerNorm when off; the generators'
        # biases (3, 5, 7, 9) are optional
        absent = (6 <= i <= 9 and d.tied) or (10 <= i <= 11 and not d.layer_norm)
        if arrays[i] is None:
            if not (absent or i == 3 or i == 5 or i == 7 or i == 9):
                raise ValueError(f"{what}[{i}]: missing")
            out[i] = NULL
            continue
        if absent:
            raise ValueError(f"{what}[{i}]: not a parameter of this block")
        a = arrays[i]
        _blk_array(what, a, typenum, sizes[i], written)
        if <size_t>cnp.PyArray_SIZE(a) != sizes[i]:
            raise ValueError(f"{what}[{i}]: {cnp.PyArray_SIZE(a)} elements, expected {sizes[i]}")
        out[i] = cnp.PyArray_DATA(a)
    if (out[3] == NULL) != (out[5] == NULL) or (not d.tied and (out[7] == NULL) != (out[3] == NULL)):
        raise ValueError(f"{what}: the generators' biases come all or none")
    return 0


def hypermixing_block_workspace_sizes(tuple shape, tuple sizes):
    """(cache, scratch, index) element counts of csrc/hypermixing_block.h."""
    cdef HypermixingBlockDims d
    _hb_dims(&d, shape, sizes)
    return (hypermixing_block_cache_size(&d), hypermixing_block_scratch_size(&d),
            hypermixing_block_index_size(&d))


def hypermixing_block_forward(cnp.ndarray y, cnp.ndarray cache, cnp.ndarray index,
                              cnp.ndarray scratch, cnp.ndarray x, cnp.ndarray lengths,
                              cnp.ndarray pos, list params, tuple sizes):
    """A whole causal HyperMixingBlock forward (csrc/hypermixing_block.c): y (B, L, E)."""
    cdef HypermixingBlockDims d
    cdef void* p[18]
    if cnp.PyArray_NDIM(x) != 3:
        raise ValueError("hypermixing block: x must be (B, L, E)")
    _hb_dims(&d, (cnp.PyArray_DIM(x, 0), cnp.PyArray_DIM(x, 1), cnp.PyArray_DIM(x, 2)), sizes)
    cdef int t = cnp.PyArray_TYPE(x)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise ValueError("hypermixing block: x must be float32 or float64")
    _blk_array("x", x, t, d.B * d.L * d.E)
    _blk_array("y", y, t, d.B * d.L * d.E, True)
    _blk_array("pos", pos, t, d.L * d.E)
    _blk_array("cache", cache, t, hypermixing_block_cache_size(&d), True)
    _blk_array("scratch", scratch, t, hypermixing_block_scratch_size(&d), True)
    _blk_array("index", index, cnp.NPY_INT64, hypermixing_block_index_size(&d), True)
    _blk_array("lengths", lengths, cnp.NPY_INT64, d.B)
    _check_length_values(<const int64_t*>cnp.PyArray_DATA(lengths), d.B, d.L)
    _hb_fill("params", params, p, t, &d)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* cp = cnp.PyArray_DATA(cache)
    cdef int64_t* ip = <int64_t*>cnp.PyArray_DATA(index)
    cdef void* sp = cnp.PyArray_DATA(scratch)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* pp = cnp.PyArray_DATA(pos)
    cdef const int64_t* lp = <const int64_t*>cnp.PyArray_DATA(lengths)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            hypermixing_block_forward_f32(<float*>yp, <float*>cp, ip, <float*>sp,
                                          <const float*>xp, lp, <const float*>pp,
                                          <const float* const*>p, &d)
        else:
            hypermixing_block_forward_f64(<double*>yp, <double*>cp, ip, <double*>sp,
                                          <const double*>xp, lp, <const double*>pp,
                                          <const double* const*>p, &d)


def hypermixing_block_step(cnp.ndarray y, cnp.ndarray state, cnp.ndarray cache,
                           cnp.ndarray index, cnp.ndarray scratch, cnp.ndarray x,
                           cnp.ndarray positions, cnp.ndarray pos, list params, tuple sizes):
    """Generation through a causal block (csrc/hypermixing_block.c): y, x (n, E) one new
    token of each of n streams at positions (n,), pos (n, E) their position rows, state
    (n, heads, k_h, d_h) updated in place. Workspaces: hypermixing_block_workspace_sizes of
    shape (1, n, E)."""
    cdef HypermixingBlockDims d
    cdef void* p[18]
    cdef Py_ssize_t i
    if cnp.PyArray_NDIM(x) != 2:
        raise ValueError("hypermixing block step: x must be (n, E)")
    _hb_dims(&d, (1, cnp.PyArray_DIM(x, 0), cnp.PyArray_DIM(x, 1)), sizes)
    cdef int t = cnp.PyArray_TYPE(x)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise ValueError("hypermixing block step: x must be float32 or float64")
    _blk_array("x", x, t, d.L * d.E)
    _blk_array("y", y, t, d.L * d.E, True)
    _blk_array("pos", pos, t, d.L * d.E)
    _blk_array("state", state, t, d.L * d.k * (d.E // d.h), True)
    _blk_array("cache", cache, t, hypermixing_block_cache_size(&d), True)
    _blk_array("scratch", scratch, t, hypermixing_block_scratch_size(&d), True)
    _blk_array("index", index, cnp.NPY_INT64, hypermixing_block_index_size(&d), True)
    _blk_array("positions", positions, cnp.NPY_INT64, d.L)
    cdef const int64_t* ps = <const int64_t*>cnp.PyArray_DATA(positions)
    for i in range(<Py_ssize_t>d.L):
        if ps[i] < 0:
            raise ValueError("hypermixing block step: positions must be >= 0")
    _hb_fill("params", params, p, t, &d)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* stp = cnp.PyArray_DATA(state)
    cdef void* cp = cnp.PyArray_DATA(cache)
    cdef int64_t* ip = <int64_t*>cnp.PyArray_DATA(index)
    cdef void* sp = cnp.PyArray_DATA(scratch)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* pp = cnp.PyArray_DATA(pos)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            hypermixing_block_step_f32(<float*>yp, <float*>stp, <float*>cp, ip, <float*>sp,
                                       <const float*>xp, ps, <const float*>pp,
                                       <const float* const*>p, &d)
        else:
            hypermixing_block_step_f64(<double*>yp, <double*>stp, <double*>cp, ip,
                                       <double*>sp, <const double*>xp, ps,
                                       <const double*>pp, <const double* const*>p, &d)


def hypermixing_block_backward(cnp.ndarray grad_input, list grads, cnp.ndarray cache,
                               cnp.ndarray index, cnp.ndarray scratch,
                               cnp.ndarray grad_output, cnp.ndarray lengths, list params,
                               tuple sizes):
    """Its backward: grad_input (B, L, E) and the gradients (the slots params has)."""
    cdef HypermixingBlockDims d
    cdef void* p[18]
    cdef void* g[18]
    cdef int i
    if cnp.PyArray_NDIM(grad_output) != 3:
        raise ValueError("hypermixing block: grad_output must be (B, L, E)")
    _hb_dims(&d, (cnp.PyArray_DIM(grad_output, 0), cnp.PyArray_DIM(grad_output, 1),
                  cnp.PyArray_DIM(grad_output, 2)), sizes)
    cdef int t = cnp.PyArray_TYPE(grad_output)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise ValueError("hypermixing block: grad_output must be float32 or float64")
    _blk_array("grad_output", grad_output, t, d.B * d.L * d.E)
    _blk_array("grad_input", grad_input, t, d.B * d.L * d.E, True)
    _blk_array("cache", cache, t, hypermixing_block_cache_size(&d), True)
    _blk_array("scratch", scratch, t, hypermixing_block_scratch_size(&d), True)
    _blk_array("index", index, cnp.NPY_INT64, hypermixing_block_index_size(&d), True)
    _blk_array("lengths", lengths, cnp.NPY_INT64, d.B)
    _check_length_values(<const int64_t*>cnp.PyArray_DATA(lengths), d.B, d.L)
    _hb_fill("params", params, p, t, &d)
    _hb_fill("grads", grads, g, t, &d, True)
    for i in range(HM_HYPERMIXING_BLOCK_PARAMS):
        if (p[i] == NULL) != (g[i] == NULL):
            raise ValueError(f"grads[{i}]: must be given exactly where params[{i}] is")
    cdef void* gi = cnp.PyArray_DATA(grad_input)
    cdef void* cp = cnp.PyArray_DATA(cache)
    cdef int64_t* ip = <int64_t*>cnp.PyArray_DATA(index)
    cdef void* sp = cnp.PyArray_DATA(scratch)
    cdef void* go = cnp.PyArray_DATA(grad_output)
    cdef const int64_t* lp = <const int64_t*>cnp.PyArray_DATA(lengths)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            hypermixing_block_backward_f32(<float*>gi, <float* const*>g, <float*>cp, ip,
                                           <float*>sp, <const float*>go, lp,
                                           <const float* const*>p, &d)
        else:
            hypermixing_block_backward_f64(<double*>gi, <double* const*>g, <double*>cp, ip,
                                           <double*>sp, <const double*>go, lp,
                                           <const double* const*>p, &d)
