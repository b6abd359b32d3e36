cimport numpy as cnp

cnp.import_array()

cdef extern from "block.h" nogil:
    ctypedef struct BlockDims:
        size_t B, L, E, H, Hh, Ht, slots
        int causal
    enum: HM_BLOCK_PARAMS
    size_t block_cache_size(const BlockDims* d)
    size_t block_scratch_size(const BlockDims* d)
    size_t block_index_size(const BlockDims* d)
    void hypermixer_block_forward_f32(float* y, float* cache, int64_t* index, float* scratch,
                                      const float* x, const int64_t* lengths,
                                      const float* const* params, size_t max_seq_len,
                                      const BlockDims* d)
    void hypermixer_block_forward_f64(double* y, double* cache, int64_t* index,
                                      double* scratch, const double* x,
                                      const int64_t* lengths, const double* const* params,
                                      size_t max_seq_len, const BlockDims* d)
    void hypermixer_block_backward_f32(float* grad_input, float* const* grads, float* cache,
                                       int64_t* index, float* scratch,
                                       const float* grad_output, const int64_t* lengths,
                                       const float* const* params, size_t max_seq_len,
                                       const BlockDims* d)
    void hypermixer_block_backward_f64(double* grad_input, double* const* grads,
                                       double* cache, int64_t* index, double* scratch,
                                       const double* grad_output, const int64_t* lengths,
                                       const double* const* params, size_t max_seq_len,
                                       const BlockDims* d)

cdef extern from "transformer_block.h" nogil:
    ctypedef struct TransformerBlockDims:
        size_t B, L, E, H
    enum: HM_TRANSFORMER_BLOCK_PARAMS
    size_t transformer_block_cache_size(const TransformerBlockDims* d)
    size_t transformer_block_scratch_size(const TransformerBlockDims* d)
    size_t transformer_block_index_size(const TransformerBlockDims* d)
    void transformer_block_forward_f32(float* y, float* cache, int64_t* index, float* scratch,
                                       const float* x, const int64_t* lengths,
                                       const float* const* params,
                                       const TransformerBlockDims* d)
    void transformer_block_forward_f64(double* y, double* cache, int64_t* index,
                                       double* scratch, const double* x,
                                       const int64_t* lengths, const double* const* params,
                                       const TransformerBlockDims* d)
    size_t transformer_block_step_scratch_size(const TransformerBlockDims* d)
    void transformer_block_step_f32(float* y, float* kcache, float* vcache, float* scratch,
                                    const float* x, size_t position,
                                    const float* const* params, const TransformerBlockDims* d)
    void transformer_block_step_f64(double* y, double* kcache, double* vcache,
                                    double* scratch, const double* x, size_t position,
                                    const double* const* params,
                                    const TransformerBlockDims* d)
    void transformer_block_backward_f32(float* grad_input, float* const* grads, float* cache,
                                        int64_t* index, float* scratch,
                                        const float* grad_output, const int64_t* lengths,
                                        const float* const* params,
                                        const TransformerBlockDims* d)
    void transformer_block_backward_f64(double* grad_input, double* const* grads,
                                        double* cache, int64_t* index, double* scratch,
                                        const double* grad_output, const int64_t* lengths,
                                        const double* const* params,
                                        const TransformerBlockDims* d)


# The whole-block entry points take plain ndarrays (no memoryview acquisition: at B=1 and a
# small width, a dozen typed memoryviews would cost more than the arithmetic). The checks
# below are cheap header reads; they keep a wrong call from reaching C.

cdef int _blk_array(object what, cnp.ndarray a, int typenum, size_t size,
                    bint written=False) except -1:
    """ValueError unless ``a`` is C-contiguous of ``typenum`` with ``size`` elements or more,
    and writeable when the kernel writes it (``written``): a read-only buffer (a memmap
    opened "r") would otherwise be written through and crash the interpreter."""
    if cnp.PyArray_TYPE(a) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{what}: expected a C-contiguous array of the block's dtype")
    if written and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{what}: the array is read-only, and the kernel writes it")
    if <size_t>cnp.PyArray_SIZE(a) < size:
        raise ValueError(f"{what}: {cnp.PyArray_SIZE(a)} elements, {size} needed")
    return 0


cdef int _blk_fill(object what, list arrays, void** out, int typenum, const size_t* sizes,
                   int count, bint written=False) except -1:
    cdef cnp.ndarray a
    cdef int i
    if len(arrays) != count:
        raise ValueError(f"{what}: expected {count} arrays, got {len(arrays)}")
    for i in range(count):
        a = arrays[i]
        _blk_array(what, a, typenum, sizes[i], written)
        if <size_t>cnp.PyArray_SIZE(a) != sizes[i]:
            raise ValueError(f"{what}[{i}]: {cnp.PyArray_SIZE(a)} elements, expected {sizes[i]}")
        out[i] = cnp.PyArray_DATA(a)
    return 0


cdef void _hm_block_sizes(size_t* sizes, size_t E, size_t H, size_t Hh, size_t O):
    """Element counts of the HyperMixerBlock's parameters (block.h order)."""
    sizes[0] = E; sizes[1] = E; sizes[2] = E * Hh; sizes[3] = Hh; sizes[4] = Hh * O
    sizes[5] = O; sizes[6] = E; sizes[7] = E; sizes[8] = E * H; sizes[9] = H
    sizes[10] = H * E; sizes[11] = E


cdef int _blk_dims(BlockDims* d, cnp.ndarray x, cnp.ndarray lengths, size_t H, size_t Hh,
                   size_t Ht, size_t max_seq_len, bint causal, size_t slots) except -1:
    if cnp.PyArray_NDIM(x) != 3:
        raise ValueError("block: x must be (B, L, E)")
    d.B = cnp.PyArray_DIM(x, 0)
    d.L = cnp.PyArray_DIM(x, 1)
    d.E = cnp.PyArray_DIM(x, 2)
    d.H, d.Hh, d.Ht, d.slots, d.causal = H, Hh, Ht, slots, causal
    if d.B < 1 or d.L < 1 or d.E < 1 or H < 1 or Hh < 1 or Ht < 1 or slots < 1:
        raise ValueError("block: every size must be >= 1")
    if d.L > max_seq_len or max_seq_len > 1 << 20 or d.B * d.L * (d.E + H) >= 1 << 31:
        raise ValueError("block: sizes out of range")
    _blk_array("lengths", lengths, cnp.NPY_INT64, d.B)
    return _check_length_values(<const int64_t*>cnp.PyArray_DATA(lengths), d.B, d.L)


def block_workspace_sizes(size_t B, size_t L, size_t E, size_t H, size_t Hh, size_t Ht,
                          bint causal, size_t slots):
    """(cache, scratch, index) element counts of the whole-block kernels (csrc/block.h)."""
    cdef BlockDims d
    d.B, d.L, d.E, d.H, d.Hh, d.Ht, d.slots, d.causal = B, L, E, H, Hh, Ht, slots, causal
    return block_cache_size(&d), block_scratch_size(&d), block_index_size(&d)


def block_forward(cnp.ndarray y, cnp.ndarray cache, cnp.ndarray index, cnp.ndarray scratch,
                  cnp.ndarray x, cnp.ndarray lengths, list params, size_t max_seq_len,
                  size_t H, size_t Hh, size_t Ht, bint causal, size_t slots):
    """A whole HyperMixerBlock forward (csrc/block.c): y (B, L, E) from x (B, L, E);
    params the block's 12 parameters in named_parameters() order."""
    cdef BlockDims d
    cdef void* p[12]
    _blk_dims(&d, x, lengths, H, Hh, Ht, max_seq_len, causal, slots)
    cdef int t = cnp.PyArray_TYPE(x)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise ValueError("block: x must be float32 or float64")
    _blk_array("x", x, t, d.B * d.L * d.E)
    _blk_array("y", y, t, d.B * d.L * d.E, True)
    _blk_array("cache", cache, t, block_cache_size(&d), True)
    _blk_array("scratch", scratch, t, block_scratch_size(&d), True)
    _blk_array("index", index, cnp.NPY_INT64, block_index_size(&d), True)
    cdef size_t sizes[12]
    _hm_block_sizes(sizes, d.E, H, Hh, 2 * max_seq_len * Ht + Ht + max_seq_len)
    _blk_fill("params", params, p, t, sizes, HM_BLOCK_PARAMS)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* cp = cnp.PyArray_DATA(cache)
    cdef int64_t* ip = <int64_t*>cnp.PyArray_DATA(index)
    cdef void* sp = cnp.PyArray_DATA(scratch)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef const int64_t* lp = <const int64_t*>cnp.PyArray_DATA(lengths)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            hypermixer_block_forward_f32(<float*>yp, <float*>cp, ip, <float*>sp,
                                         <const float*>xp, lp, <const float* const*>p,
                                         max_seq_len, &d)
        else:
            hypermixer_block_forward_f64(<double*>yp, <double*>cp, ip, <double*>sp,
                                         <const double*>xp, lp, <const double* const*>p,
                                         max_seq_len, &d)


def block_backward(cnp.ndarray grad_input, list grads, cnp.ndarray cache, cnp.ndarray index,
                   cnp.ndarray scratch, cnp.ndarray grad_output, cnp.ndarray lengths,
                   list params, size_t max_seq_len, size_t H, size_t Hh, size_t Ht,
                   bint causal, size_t slots):
    """Gradients of block_forward: grad_input (B, L, E) and the 12 parameter gradients
    (overwritten), from the cache and index the forward left."""
    cdef BlockDims d
    cdef void* p[12]
    cdef void* g[12]
    _blk_dims(&d, grad_output, lengths, H, Hh, Ht, max_seq_len, causal, slots)
    cdef int t = cnp.PyArray_TYPE(grad_output)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise ValueError("block: grad_output must be float32 or float64")
    cdef size_t O = 2 * max_seq_len * Ht + Ht + max_seq_len
    _blk_array("grad_output", grad_output, t, d.B * d.L * d.E)
    _blk_array("grad_input", grad_input, t, d.B * d.L * d.E, True)
    _blk_array("cache", cache, t, block_cache_size(&d), True)
    _blk_array("scratch", scratch, t, block_scratch_size(&d), True)
    _blk_array("index", index, cnp.NPY_INT64, block_index_size(&d), True)
    cdef size_t sizes[12]
    _hm_block_sizes(sizes, d.E, H, Hh, O)
    _blk_fill("params", params, p, t, sizes, HM_BLOCK_PARAMS)
    _blk_fill("grads", grads, g, t, sizes, HM_BLOCK_PARAMS, True)
    cdef void* gi = cnp.PyArray_DATA(grad_input)
    cdef void* cp = cnp.PyArray_DATA(cache)
    cdef int64_t* ip = <int64_t*>cnp.PyArray_DATA(index)
    cdef void* sp = cnp.PyArray_DATA(scratch)
    cdef void* go = cnp.PyArray_DATA(grad_output)
    cdef const int64_t* lp = <const int64_t*>cnp.PyArray_DATA(lengths)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            hypermixer_block_backward_f32(<float*>gi, <float* const*>g, <float*>cp, ip,
                                          <float*>sp, <const float*>go, lp,
                                          <const float* const*>p, max_seq_len, &d)
        else:
            hypermixer_block_backward_f64(<double*>gi, <double* const*>g, <double*>cp, ip,
                                          <double*>sp, <const double*>go, lp,
                                          <const double* const*>p, max_seq_len, &d)


cdef int _tb_dims(TransformerBlockDims* d, cnp.ndarray x, cnp.ndarray lengths,
                  size_t H) except -1:
    cdef BlockDims shape   # the HyperMixerBlock's checks of x and lengths, L as the limit
    if cnp.PyArray_NDIM(x) != 3:
        raise ValueError("block: x must be (B, L, E)")
    _blk_dims(&shape, x, lengths, H, 1, 1, cnp.PyArray_DIM(x, 1), False, 1)
    d.B, d.L, d.E, d.H = shape.B, shape.L, shape.E, H
    return 0


cdef void _tb_sizes(size_t* sizes, size_t E, size_t H):
    """Element counts of the TransformerBlock's parameters (transformer_block.h order)."""
    sizes[0] = E * E; sizes[1] = E * E; sizes[2] = E * E; sizes[3] = E; sizes[4] = E
    sizes[5] = E * H; sizes[6] = H; sizes[7] = H * E; sizes[8] = E; sizes[9] = E
    sizes[10] = E


def transformer_block_workspace_sizes(size_t B, size_t L, size_t E, size_t H):
    """(cache, scratch, index) element counts of csrc/transformer_block.h."""
    cdef TransformerBlockDims d
    d.B, d.L, d.E, d.H = B, L, E, H
    return (transformer_block_cache_size(&d), transformer_block_scratch_size(&d),
            transformer_block_index_size(&d))


def transformer_block_forward(cnp.ndarray y, cnp.ndarray cache, cnp.ndarray index,
                              cnp.ndarray scratch, cnp.ndarray x, cnp.ndarray lengths,
                              list params, size_t H):
    """A whole TransformerBlock forward (csrc/transformer_block.c): y (B, L, E) from x."""
    cdef TransformerBlockDims d
    cdef void* p[11]
    cdef size_t sizes[11]
    _tb_dims(&d, x, lengths, H)
    cdef int t = cnp.PyArray_TYPE(x)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise ValueError("block: x must be float32 or float64")
    _blk_array("x", x, t, d.B * d.L * d.E)
    _blk_array("y", y, t, d.B * d.L * d.E, True)
    _blk_array("cache", cache, t, transformer_block_cache_size(&d), True)
    _blk_array("scratch", scratch, t, transformer_block_scratch_size(&d), True)
    _blk_array("index", index, cnp.NPY_INT64, transformer_block_index_size(&d), True)
    _tb_sizes(sizes, d.E, H)
    _blk_fill("params", params, p, t, sizes, HM_TRANSFORMER_BLOCK_PARAMS)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* cp = cnp.PyArray_DATA(cache)
    cdef int64_t* ip = <int64_t*>cnp.PyArray_DATA(index)
    cdef void* sp = cnp.PyArray_DATA(scratch)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef const int64_t* lp = <const int64_t*>cnp.PyArray_DATA(lengths)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            transformer_block_forward_f32(<float*>yp, <float*>cp, ip, <float*>sp,
                                          <const float*>xp, lp, <const float* const*>p, &d)
        else:
            transformer_block_forward_f64(<double*>yp, <double*>cp, ip, <double*>sp,
                                          <const double*>xp, lp, <const double* const*>p, &d)


def transformer_block_step_scratch(size_t cap, size_t E, size_t H):
    """Elements of transformer_block_step's scratch for a cache of cap rows."""
    cdef TransformerBlockDims d
    d.B, d.L, d.E, d.H = 1, cap, E, H
    return transformer_block_step_scratch_size(&d)


def transformer_block_step(cnp.ndarray y, cnp.ndarray kcache, cnp.ndarray vcache,
                           cnp.ndarray scratch, cnp.ndarray x, Py_ssize_t position,
                           list params, size_t H):
    """Generation through a whole TransformerBlock (csrc/transformer_block.c): y (E,) for
    one new token x (E,) at ``position``; kcache, vcache (cap, E), row ``position`` written."""
    cdef TransformerBlockDims d
    cdef void* p[11]
    cdef size_t sizes[11]
    if cnp.PyArray_NDIM(x) != 1 or cnp.PyArray_NDIM(kcache) != 2:
        raise ValueError("block step: x must be (E,) and the caches (cap, E)")
    d.B, d.L, d.E, d.H = 1, cnp.PyArray_DIM(kcache, 0), cnp.PyArray_DIM(x, 0), H
    if d.E < 1 or d.H < 1 or d.L < 1:
        raise ValueError("block step: every size must be >= 1")
    if position < 0 or <size_t>position >= d.L:
        raise ValueError(f"block step: position {position} is outside the cache of {d.L} rows")
    if cnp.PyArray_DIM(kcache, 1) != <Py_ssize_t>d.E or cnp.PyArray_NDIM(vcache) != 2 or \
            cnp.PyArray_DIM(vcache, 0) != <Py_ssize_t>d.L or \
            cnp.PyArray_DIM(vcache, 1) != <Py_ssize_t>d.E:
        raise ValueError("block step: the caches must both be (cap, E)")
    cdef int t = cnp.PyArray_TYPE(x)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise ValueError("block step: x must be float32 or float64")
    _blk_array("x", x, t, d.E)
    _blk_array("y", y, t, d.E, True)
    _blk_array("kcache", kcache, t, d.L * d.E, True)
    _blk_array("vcache", vcache, t, d.L * d.E, True)
    _blk_array("scratch", scratch, t, transformer_block_step_scratch_size(&d), True)
    _tb_sizes(sizes, d.E, H)
    _blk_fill("params", params, p, t, sizes, HM_TRANSFORMER_BLOCK_PARAMS)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* kp = cnp.PyArray_DATA(kcache)
    cdef void* vp = cnp.PyArray_DATA(vcache)
    cdef void* sp = cnp.PyArray_DATA(scratch)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef size_t n = <size_t>position
    with nogil:
        if t == cnp.NPY_FLOAT32:
            transformer_block_step_f32(<float*>yp, <float*>kp, <float*>vp, <float*>sp,
                                       <const float*>xp, n, <const float* const*>p, &d)
        else:
            transformer_block_step_f64(<double*>yp, <double*>kp, <double*>vp, <double*>sp,
                                       <const double*>xp, n, <const double* const*>p, &d)


def transformer_block_backward(cnp.ndarray grad_input, list grads, cnp.ndarray cache,
                               cnp.ndarray index, cnp.ndarray scratch, cnp.ndarray grad_output,
                               cnp.ndarray lengths, list params, size_t H):
    """Gradients of transformer_block_forward: grad_input (B, L, E) and the 11 parameter
    gradients (overwritten), from the cache and index the forward left."""
    cdef TransformerBlockDims d
    cdef void* p[11]
    cdef void* g[11]
    cdef size_t sizes[11]
    _tb_dims(&d, grad_output, lengths, H)
    cdef int t = cnp.PyArray_TYPE(grad_output)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise ValueError("block: grad_output must be float32 or float64")
    _blk_array("grad_output", grad_output, t, d.B * d.L * d.E)
    _blk_array("grad_input", grad_input, t, d.B * d.L * d.E, True)
    _blk_array("cache", cache, t, transformer_block_cache_size(&d), True)
    _blk_array("scratch", scratch, t, transformer_block_scratch_size(&d), True)
    _blk_array("index", index, cnp.NPY_INT64, transformer_block_index_size(&d), True)
    _tb_sizes(sizes, d.E, H)
    _blk_fill("params", params, p, t, sizes, HM_TRANSFORMER_BLOCK_PARAMS)
    _blk_fill("grads", grads, g, t, sizes, HM_TRANSFORMER_BLOCK_PARAMS, True)
    cdef void* gi = cnp.PyArray_DATA(grad_input)
    cdef void* cp = cnp.PyArray_DATA(cache)
    cdef int64_t* ip = <int64_t*>cnp.PyArray_DATA(index)
    cdef void* sp = cnp.PyArray_DATA(scratch)
    cdef void* go = cnp.PyArray_DATA(grad_output)
    cdef const int64_t* lp = <const int64_t*>cnp.PyArray_DATA(lengths)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            transformer_block_backward_f32(<float*>gi, <float* const*>g, <float*>cp, ip,
                                           <float*>sp, <const float*>go, lp,
                                           <const float* const*>p, &d)
        else:
            transformer_block_backward_f64(<double*>gi, <double* const*>g, <double*>cp, ip,
                                           <double*>sp, <const double*>go, lp,
                                           <const double* const*>p, &d)
