# Bindings for csrc/hypermixing.c. The layer (hypermixer._hypermixing_compiled) validates
# everything first; the checks here only keep a wrong call from reading out of bounds.
from libc.stdint cimport int64_t

cdef extern from "hypermixing.h" nogil:
    void hypermixing_gelu_f32(float* value, float* slope, const float* x, size_t n)
    void hypermixing_gelu_f64(double* value, double* slope, const double* x, size_t n)
    void hypermixing_erf_f32(float* out, const float* x, size_t n)
    void hypermixing_erf_f64(double* out, const double* x, size_t n)
    size_t hypermixing_causal_work_size(size_t d, size_t k, size_t h, size_t chunk)
    size_t hypermixing_causal_checkpoints(size_t L, size_t chunk)
    void hypermixing_token_info_forward_f32(float* z, const float* x, const float* pos,
                                            const int64_t* lengths, size_t B, size_t L,
                                            size_t d, float scale)
    void hypermixing_token_info_forward_f64(double* z, const double* x, const double* pos,
                                            const int64_t* lengths, size_t B, size_t L,
                                            size_t d, double scale)
    void hypermixing_token_info_backward_f32(float* gi, const float* dz, const int64_t* lengths,
                                             size_t B, size_t L, size_t d, float scale)
    void hypermixing_token_info_backward_f64(double* gi, const double* dz,
                                             const int64_t* lengths, size_t B, size_t L,
                                             size_t d, double scale)
    size_t hypermixing_mix_work_size(size_t d, size_t k, size_t h)
    void hypermixing_generator_forward_f32(float* w, float* act, float* slope, const float* z,
                                           const float* A, const float* a, const float* C,
                                           const float* c, size_t rows, size_t d, size_t k,
                                           size_t h)
    void hypermixing_generator_forward_f64(double* w, double* act, double* slope,
                                           const double* z, const double* A, const double* a,
                                           const double* C, const double* c, size_t rows,
                                           size_t d, size_t k, size_t h)
    void hypermixing_generator_backward_f32(float* dz, float* dA, float* da, float* dC,
                                            float* dc, float* dact, const float* dw,
                                            const float* z, const float* act,
                                            const float* slope, const float* A,
                                            const float* C, size_t rows, size_t d, size_t k,
                                            size_t h, int accumulate)
    void hypermixing_generator_backward_f64(double* dz, double* dA, double* da, double* dC,
                                            double* dc, double* dact, const double* dw,
                                            const double* z, const double* act,
                                            const double* slope, const double* A,
                                            const double* C, size_t rows, size_t d, size_t k,
                                            size_t h, int accumulate)
    void hypermixing_forward_f32(float* y, float* P, float* s, float* m, float* Q,
                                 const float* x, const float* act1, const float* act2,
                                 const float* C1, const float* c1, const float* C2,
                                 const float* c2, const int64_t* lengths, size_t B, size_t L,
                                 size_t d, size_t k, size_t h, int mean)
    void hypermixing_forward_f64(double* y, double* P, double* s, double* m, double* Q,
                                 const double* x, const double* act1, const double* act2,
                                 const double* C1, const double* c1, const double* C2,
                                 const double* c2, const int64_t* lengths, size_t B, size_t L,
                                 size_t d, size_t k, size_t h, int mean)
    void hypermixing_backward_f32(float* gi, float* dact1, float* dact2, float* dC1,
                                  float* dc1, float* dC2, float* dc2, float* work,
                                  const float* go, const float* x, const float* act1,
                                  const float* act2, const float* C1, const float* c1,
                                  const float* C2, const float* c2, const float* P,
                                  const float* s, const float* m, const float* Q,
                                  const int64_t* lengths, size_t B, size_t L, size_t d,
                                  size_t k, size_t h, int mean, int tied)
    void hypermixing_backward_f64(double* gi, double* dact1, double* dact2, double* dC1,
                                  double* dc1, double* dC2, double* dc2, double* work,
                                  const double* go, const double* x, const double* act1,
                                  const double* act2, const double* C1, const double* c1,
                                  const double* C2, const double* c2, const double* P,
                                  const double* s, const double* m, const double* Q,
                                  const int64_t* lengths, size_t B, size_t L, size_t d,
                                  size_t k, size_t h, int mean, int tied)
    void hypermixing_causal_forward_f32(float* y, float* ck, float* work, size_t n_slots,
                                        const float* x, const float* w1, const float* w2,
                                        const int64_t* lengths, size_t B, size_t L, size_t d,
                                        size_t k, size_t h, int mean, size_t chunk)
    void hypermixing_causal_forward_f64(double* y, double* ck, double* work, size_t n_slots,
                                        const double* x, const double* w1, const double* w2,
                                        const int64_t* lengths, size_t B, size_t L, size_t d,
                                        size_t k, size_t h, int mean, size_t chunk)
    void hypermixing_causal_backward_f32(float* gi, float* dw1, float* dw2, float* work,
                                         size_t n_slots, const float* go, const float* x,
                                         const float* w1, const float* w2, const float* ck,
                                         const int64_t* lengths, size_t B, size_t L, size_t d,
                                         size_t k, size_t h, int mean, size_t chunk, int tied)
    void hypermixing_causal_backward_f64(double* gi, double* dw1, double* dw2, double* work,
                                         size_t n_slots, const double* go, const double* x,
                                         const double* w1, const double* w2, const double* ck,
                                         const int64_t* lengths, size_t B, size_t L, size_t d,
                                         size_t k, size_t h, int mean, size_t chunk, int tied)
    void hypermixing_step_f32(float* y, float* state, const float* x, const float* w1,
                              const float* w2, const int64_t* positions, size_t B, size_t d,
                              size_t k, size_t h, int mean)
    void hypermixing_step_f64(double* y, double* state, const double* x, const double* w1,
                              const double* w2, const int64_t* positions, size_t B, size_t d,
                              size_t k, size_t h, int mean)


cdef int _hmx_check(bint ok, str what) except -1:
    if not ok:
        raise ValueError(f"hypermixing kernel: {what}")
    return 0


cdef int _hmx_check_mix(Py_ssize_t B, Py_ssize_t L, Py_ssize_t d, Py_ssize_t k, Py_ssize_t h,
                        const int64_t[::1] lengths) except -1:
    _check_dims((B, L, B * L, d, k, h))
    _hmx_check(d % h == 0 and k % h == 0, "heads must divide d and k")
    return _check_lengths(lengths, B, L)


def hypermixing_erf(floating[::1] out, const floating[::1] x):
    """out = erf(x), the kernels' own vectorised erf (exposed for its accuracy tests)."""
    _hmx_check(out.shape[0] == x.shape[0], "out and x differ in length")
    if x.shape[0] == 0:
        return
    with nogil:
        if floating is float:
            hypermixing_erf_f32(&out[0], &x[0], x.shape[0])
        else:
            hypermixing_erf_f64(&out[0], &x[0], x.shape[0])


def hypermixing_gelu(floating[::1] value, floating[::1] slope, const floating[::1] x):
    """value = gelu(x) and slope = gelu'(x), the kernels' exact GELU (for its tests)."""
    _hmx_check(value.shape[0] == x.shape[0] and slope.shape[0] == x.shape[0],
               "value, slope and x differ in length")
    if x.shape[0] == 0:
        return
    with nogil:
        if floating is float:
            hypermixing_gelu_f32(&value[0], &slope[0], &x[0], x.shape[0])
        else:
            hypermixing_gelu_f64(&value[0], &slope[0], &x[0], x.shape[0])


def hypermixing_work_size(Py_ssize_t d, Py_ssize_t k, Py_ssize_t h, Py_ssize_t chunk):
    """Elements per thread slot of the causal kernels' workspace."""
    _hmx_check(d >= 1 and k >= 1 and h >= 1 and chunk >= 1, "d, k, h and chunk must be >= 1")
    return hypermixing_causal_work_size(d, k, h, chunk)


def hypermixing_checkpoint_count(Py_ssize_t L, Py_ssize_t chunk):
    """Checkpoints (k_h, d_h) per sequence and head between causal forward and backward."""
    _hmx_check(L >= 1 and chunk >= 1, "L and chunk must be >= 1")
    return hypermixing_causal_checkpoints(L, chunk)


def hypermixing_token_info_forward(floating[:, :, ::1] z, const floating[:, :, ::1] x,
                                   const floating[:, ::1] pos, const int64_t[::1] lengths,
                                   double scale):
    """z, x: (B, L, d); pos: (L, d)."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], d = x.shape[2]
    _hmx_check_mix(B, L, d, 1, 1, lengths)
    _hmx_check(z.shape[0] == B and z.shape[1] == L and z.shape[2] == d, "z shape")
    _hmx_check(pos.shape[0] >= L and pos.shape[1] == d, "pos shape")
    with nogil:
        if floating is float:
            hypermixing_token_info_forward_f32(&z[0, 0, 0], &x[0, 0, 0], &pos[0, 0],
                                               &lengths[0], B, L, d, <float>scale)
        else:
            hypermixing_token_info_forward_f64(&z[0, 0, 0], &x[0, 0, 0], &pos[0, 0],
                                               &lengths[0], B, L, d, scale)


def hypermixing_token_info_backward(floating[:, :, ::1] grad_input,
                                    const floating[:, :, ::1] dz, const int64_t[::1] lengths,
                                    double scale):
    """grad_input += scale * dz on valid rows, 0 on padding rows; both (B, L, d)."""
    cdef Py_ssize_t B = dz.shape[0], L = dz.shape[1], d = dz.shape[2]
    _hmx_check_mix(B, L, d, 1, 1, lengths)
    _hmx_check(grad_input.shape[0] == B and grad_input.shape[1] == L
               and grad_input.shape[2] == d, "grad_input shape")
    with nogil:
        if floating is float:
            hypermixing_token_info_backward_f32(&grad_input[0, 0, 0], &dz[0, 0, 0],
                                                &lengths[0], B, L, d, <float>scale)
        else:
            hypermixing_token_info_backward_f64(&grad_input[0, 0, 0], &dz[0, 0, 0],
                                                &lengths[0], B, L, d, scale)


cdef int _hmx_check_generator(Py_ssize_t rows, Py_ssize_t d, Py_ssize_t k, Py_ssize_t h,
                              Py_ssize_t A0, Py_ssize_t A1, Py_ssize_t A2, Py_ssize_t C0,
                              Py_ssize_t C1, Py_ssize_t C2) except -1:
    _check_dims((rows, d, k, h))
    _hmx_check(d % h == 0 and k % h == 0, "heads must divide d and k")
    _hmx_check(A0 == h and A1 == d // h and A2 == d // h, "A shape")
    _hmx_check(C0 == h and C1 == k // h and C2 == d // h, "C shape")
    return 0


cdef int _hmx_check_bias(Py_ssize_t r, Py_ssize_t c, Py_ssize_t h, Py_ssize_t width,
                         str what) except -1:
    """A bias is (h, width), or (0, 0) for none; returns 1 when present."""
    if r == 0:
        return 0
    _hmx_check(r == h and c == width, what + " shape")
    return 1


def hypermixing_generator_forward(floating[:, ::1] w, floating[:, ::1] act,
                                  floating[:, ::1] slope, const floating[:, ::1] z,
                                  const floating[:, :, ::1] A, const floating[:, ::1] a,
                                  const floating[:, :, ::1] C, const floating[:, ::1] c):
    """act, slope, z: (rows, d); w: (rows, k); A: (h, d_h, d_h); C: (h, k_h, d_h);
    a: (h, d_h) and c: (h, k_h). w, slope, a, c may be (0, 0) arrays: w and slope not
    computed, no biases."""
    cdef Py_ssize_t rows = z.shape[0], d = z.shape[1], h = A.shape[0]
    cdef Py_ssize_t k = C.shape[0] * C.shape[1]
    cdef floating* pw = NULL
    cdef floating* ps = NULL
    cdef const floating* pa = NULL
    cdef const floating* pc = NULL
    _hmx_check_generator(rows, d, k, h, A.shape[0], A.shape[1], A.shape[2], C.shape[0],
                         C.shape[1], C.shape[2])
    _hmx_check(act.shape[0] == rows and act.shape[1] == d, "act shape")
    if w.shape[0] > 0:
        _hmx_check(w.shape[0] == rows and w.shape[1] == k, "w shape")
        pw = &w[0, 0]
    if slope.shape[0] > 0:
        _hmx_check(slope.shape[0] == rows and slope.shape[1] == d, "slope shape")
        ps = &slope[0, 0]
    if _hmx_check_bias(a.shape[0], a.shape[1], h, d // h, "a"):
        pa = &a[0, 0]
    if _hmx_check_bias(c.shape[0], c.shape[1], h, k // h, "c"):
        pc = &c[0, 0]
    with nogil:
        if floating is float:
            hypermixing_generator_forward_f32(pw, &act[0, 0], ps, &z[0, 0], &A[0, 0, 0], pa,
                                              &C[0, 0, 0], pc, rows, d, k, h)
        else:
            hypermixing_generator_forward_f64(pw, &act[0, 0], ps, &z[0, 0], &A[0, 0, 0], pa,
                                              &C[0, 0, 0], pc, rows, d, k, h)


def hypermixing_generator_backward(floating[:, ::1] dz, floating[:, :, ::1] dA,
                                   floating[:, ::1] da, floating[:, :, ::1] dC,
                                   floating[:, ::1] dc, floating[:, ::1] dact,
                                   const floating[:, ::1] dw, const floating[:, ::1] z,
                                   const floating[:, ::1] act, const floating[:, ::1] slope,
                                   const floating[:, :, ::1] A, const floating[:, :, ::1] C,
                                   bint accumulate):
    """Shapes as the forward. With dw (rows, k): dact is workspace, dC (like C) and dc (like
    c, or (0, 0)) are computed. With dw a (0, 0) array: dact holds the gradient of act and dC,
    dc are not touched. da may be (0, 0) (no bias)."""
    cdef Py_ssize_t rows = z.shape[0], d = z.shape[1], h = A.shape[0]
    cdef Py_ssize_t k = C.shape[0] * C.shape[1]
    cdef const floating* pdw = NULL
    cdef floating* pda = NULL
    cdef floating* pdc = NULL
    cdef floating* pdC = NULL
    _hmx_check_generator(rows, d, k, h, A.shape[0], A.shape[1], A.shape[2], C.shape[0],
                         C.shape[1], C.shape[2])
    _hmx_check(dz.shape[0] == rows and dz.shape[1] == d and dact.shape[0] == rows
               and dact.shape[1] == d and act.shape[0] == rows and act.shape[1] == d
               and slope.shape[0] == rows and slope.shape[1] == d, "row shapes")
    _hmx_check(dA.shape[0] == h and dA.shape[1] == d // h and dA.shape[2] == d // h,
               "dA shape")
    if _hmx_check_bias(da.shape[0], da.shape[1], h, d // h, "da"):
        pda = &da[0, 0]
    if dw.shape[0] > 0:
        _hmx_check(dw.shape[0] == rows and dw.shape[1] == k, "dw shape")
        _hmx_check(dC.shape[0] == h and dC.shape[1] == k // h and dC.shape[2] == d // h,
                   "dC shape")
        pdw = &dw[0, 0]
        pdC = &dC[0, 0, 0]
        if _hmx_check_bias(dc.shape[0], dc.shape[1], h, k // h, "dc"):
            pdc = &dc[0, 0]
    with nogil:
        if floating is float:
            hypermixing_generator_backward_f32(&dz[0, 0], &dA[0, 0, 0], pda, pdC, pdc,
                                               &dact[0, 0], pdw, &z[0, 0], &act[0, 0],
                                               &slope[0, 0], &A[0, 0, 0], &C[0, 0, 0], rows,
                                               d, k, h, accumulate)
        else:
            hypermixing_generator_backward_f64(&dz[0, 0], &dA[0, 0, 0], pda, pdC, pdc,
                                               &dact[0, 0], pdw, &z[0, 0], &act[0, 0],
                                               &slope[0, 0], &A[0, 0, 0], &C[0, 0, 0], rows,
                                               d, k, h, accumulate)


def hypermixing_mix_work_elements(Py_ssize_t d, Py_ssize_t k, Py_ssize_t h):
    """Elements per sequence and head of the bidirectional backward's workspace."""
    _hmx_check(d >= 1 and k >= 1 and h >= 1, "d, k and h must be >= 1")
    return hypermixing_mix_work_size(d, k, h)


cdef int _hmx_check_bidir(Py_ssize_t B, Py_ssize_t L, Py_ssize_t d, Py_ssize_t k, Py_ssize_t h,
                          const floating[:, ::1] act1, const floating[:, ::1] act2,
                          const floating[:, :, ::1] C1, const floating[:, :, ::1] C2,
                          const floating[:, :, :, ::1] P, const floating[:, :, :, ::1] s,
                          const floating[:, :, :, ::1] m,
                          const floating[:, :, :, ::1] Q) except -1:
    _hmx_check(act1.shape[0] == B * L and act1.shape[1] == d and act2.shape[0] == B * L
               and act2.shape[1] == d, "act shapes")
    _hmx_check(C1.shape[0] == h and C1.shape[1] == k // h and C1.shape[2] == d // h
               and C2.shape[0] == h and C2.shape[1] == k // h and C2.shape[2] == d // h,
               "C shapes")
    _hmx_check(P.shape[0] == B and P.shape[1] == h and P.shape[2] == d // h + 1
               and P.shape[3] == d // h and Q.shape[0] == B and Q.shape[1] == h
               and Q.shape[2] == d // h + 1 and Q.shape[3] == d // h, "P / Q shapes")
    _hmx_check(s.shape[0] == B and s.shape[1] == h and s.shape[2] == k // h
               and s.shape[3] == d // h and m.shape[0] == B and m.shape[1] == h
               and m.shape[2] == k // h and m.shape[3] == d // h, "s / m shapes")
    return 0


def hypermixing_forward(floating[:, :, ::1] y, floating[:, :, :, ::1] P,
                        floating[:, :, :, ::1] s, floating[:, :, :, ::1] m,
                        floating[:, :, :, ::1] Q, const floating[:, :, ::1] x,
                        const floating[:, ::1] act1, const floating[:, ::1] act2,
                        const floating[:, :, ::1] C1, const floating[:, ::1] c1,
                        const floating[:, :, ::1] C2, const floating[:, ::1] c2,
                        const int64_t[::1] lengths, bint mean):
    """y, x: (B, L, d); act1, act2: (B*L, d); C1, C2: (h, k_h, d_h); c1, c2: (h, k_h) or
    (0, 0); P, Q: (B, h, d_h + 1, d_h); s, m: (B, h, k_h, d_h)."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], d = x.shape[2]
    cdef Py_ssize_t h = C1.shape[0]
    cdef Py_ssize_t k = C1.shape[0] * C1.shape[1]
    cdef const floating* pc1 = NULL
    cdef const floating* pc2 = NULL
    _hmx_check_mix(B, L, d, k, h, lengths)
    _hmx_check(y.shape[0] == B and y.shape[1] == L and y.shape[2] == d, "y shape")
    _hmx_check_bidir(B, L, d, k, h, act1, act2, C1, C2, P, s, m, Q)
    if _hmx_check_bias(c1.shape[0], c1.shape[1], h, k // h, "c1"):
        pc1 = &c1[0, 0]
    if _hmx_check_bias(c2.shape[0], c2.shape[1], h, k // h, "c2"):
        pc2 = &c2[0, 0]
    with nogil:
        if floating is float:
            hypermixing_forward_f32(&y[0, 0, 0], &P[0, 0, 0, 0], &s[0, 0, 0, 0], &m[0, 0, 0, 0],
                                    &Q[0, 0, 0, 0], &x[0, 0, 0], &act1[0, 0], &act2[0, 0],
                                    &C1[0, 0, 0], pc1, &C2[0, 0, 0], pc2, &lengths[0], B, L,
                                    d, k, h, mean)
        else:
            hypermixing_forward_f64(&y[0, 0, 0], &P[0, 0, 0, 0], &s[0, 0, 0, 0], &m[0, 0, 0, 0],
                                    &Q[0, 0, 0, 0], &x[0, 0, 0], &act1[0, 0], &act2[0, 0],
                                    &C1[0, 0, 0], pc1, &C2[0, 0, 0], pc2, &lengths[0], B, L,
                                    d, k, h, mean)


def hypermixing_backward(floating[:, :, ::1] grad_input, floating[:, ::1] dact1,
                         floating[:, ::1] dact2, floating[:, :, ::1] dC1, floating[:, ::1] dc1,
                         floating[:, :, ::1] dC2, floating[:, ::1] dc2, floating[::1] work,
                         const floating[:, :, ::1] grad_output, const floating[:, :, ::1] x,
                         const floating[:, ::1] act1, const floating[:, ::1] act2,
                         const floating[:, :, ::1] C1, const floating[:, ::1] c1,
                         const floating[:, :, ::1] C2, const floating[:, ::1] c2,
                         const floating[:, :, :, ::1] P, const floating[:, :, :, ::1] s,
                         const floating[:, :, :, ::1] m, const floating[:, :, :, ::1] Q,
                         const int64_t[::1] lengths, bint mean, bint tied):
    """Shapes as the forward; dact1, dact2 like act1; dC1, dC2 like C1; dc1, dc2 like c1 (or
    (0, 0)); work: B * h * hypermixing_mix_work_elements(d, k, h). When tied, act2, C2, c2
    must be act1, C1, c1 and dact2, dC2, dc2 are not used."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], d = x.shape[2]
    cdef Py_ssize_t h = C1.shape[0]
    cdef Py_ssize_t k = C1.shape[0] * C1.shape[1]
    cdef const floating* pc1 = NULL
    cdef const floating* pc2 = NULL
    cdef floating* pdc1 = NULL
    cdef floating* pdc2 = NULL
    _hmx_check_mix(B, L, d, k, h, lengths)
    _hmx_check(grad_input.shape[0] == B and grad_input.shape[1] == L
               and grad_input.shape[2] == d and grad_output.shape[0] == B
               and grad_output.shape[1] == L and grad_output.shape[2] == d, "gradient shapes")
    _hmx_check_bidir(B, L, d, k, h, act1, act2, C1, C2, P, s, m, Q)
    _hmx_check(dact1.shape[0] == B * L and dact1.shape[1] == d and dact2.shape[0] == B * L
               and dact2.shape[1] == d, "dact shapes")
    _hmx_check(dC1.shape[0] == h and dC1.shape[1] == k // h and dC1.shape[2] == d // h
               and dC2.shape[0] == h and dC2.shape[1] == k // h and dC2.shape[2] == d // h,
               "dC shapes")
    _hmx_check(work.shape[0] >= B * h * <Py_ssize_t>hypermixing_mix_work_size(d, k, h),
               "work too small")
    if _hmx_check_bias(c1.shape[0], c1.shape[1], h, k // h, "c1"):
        pc1 = &c1[0, 0]
        _hmx_check_bias(dc1.shape[0], dc1.shape[1], h, k // h, "dc1")
        _hmx_check(dc1.shape[0] == h, "dc1 missing")
        pdc1 = &dc1[0, 0]
    if _hmx_check_bias(c2.shape[0], c2.shape[1], h, k // h, "c2"):
        pc2 = &c2[0, 0]
        _hmx_check_bias(dc2.shape[0], dc2.shape[1], h, k // h, "dc2")
        _hmx_check(dc2.shape[0] == h, "dc2 missing")
        pdc2 = &dc2[0, 0]
    if tied:
        _hmx_check(&act1[0, 0] == &act2[0, 0] and &C1[0, 0, 0] == &C2[0, 0, 0]
                   and pc1 == pc2, "tied needs act2, C2, c2 to be act1, C1, c1")
    with nogil:
        if floating is float:
            hypermixing_backward_f32(&grad_input[0, 0, 0], &dact1[0, 0], &dact2[0, 0],
                                     &dC1[0, 0, 0], pdc1, &dC2[0, 0, 0], pdc2, &work[0],
                                     &grad_output[0, 0, 0], &x[0, 0, 0], &act1[0, 0],
                                     &act2[0, 0], &C1[0, 0, 0], pc1, &C2[0, 0, 0], pc2,
                                     &P[0, 0, 0, 0], &s[0, 0, 0, 0], &m[0, 0, 0, 0],
                                     &Q[0, 0, 0, 0], &lengths[0], B, L, d, k, h, mean, tied)
        else:
            hypermixing_backward_f64(&grad_input[0, 0, 0], &dact1[0, 0], &dact2[0, 0],
                                     &dC1[0, 0, 0], pdc1, &dC2[0, 0, 0], pdc2, &work[0],
                                     &grad_output[0, 0, 0], &x[0, 0, 0], &act1[0, 0],
                                     &act2[0, 0], &C1[0, 0, 0], pc1, &C2[0, 0, 0], pc2,
                                     &P[0, 0, 0, 0], &s[0, 0, 0, 0], &m[0, 0, 0, 0],
                                     &Q[0, 0, 0, 0], &lengths[0], B, L, d, k, h, mean, tied)


cdef int _hmx_check_causal(Py_ssize_t B, Py_ssize_t L, Py_ssize_t d, Py_ssize_t k,
                           Py_ssize_t h, Py_ssize_t chunk, Py_ssize_t ck_size,
                           Py_ssize_t work_rows, Py_ssize_t work_cols) except -1:
    _hmx_check(chunk >= 1, "chunk must be >= 1")
    cdef Py_ssize_t n_ck = <Py_ssize_t>hypermixing_causal_checkpoints(L, chunk)
    _hmx_check(ck_size >= B * h * n_ck * (k // h) * (d // h), "checkpoints too small")
    _hmx_check(work_rows >= 1 and work_cols >= <Py_ssize_t>hypermixing_causal_work_size(
        d, k, h, chunk), "work too small")
    return 0


def hypermixing_causal_forward(floating[:, :, ::1] y, floating[::1] checkpoints,
                               floating[:, ::1] work, const floating[:, :, ::1] x,
                               const floating[:, :, ::1] w1, const floating[:, :, ::1] w2,
                               const int64_t[::1] lengths, Py_ssize_t heads, bint mean,
                               Py_ssize_t chunk):
    """y, x: (B, L, d); w1, w2: (B, L, k); checkpoints: flat, B * h * n_ck * k_h * d_h;
    work: (slots, hypermixing_work_size(d, k, h, chunk))."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], d = x.shape[2], k = w1.shape[2]
    _hmx_check_mix(B, L, d, k, heads, lengths)
    _hmx_check(y.shape[0] == B and y.shape[1] == L and y.shape[2] == d, "y shape")
    _hmx_check(w1.shape[0] == B and w1.shape[1] == L and w2.shape[0] == B
               and w2.shape[1] == L and w2.shape[2] == k, "w shapes")
    _hmx_check_causal(B, L, d, k, heads, chunk, checkpoints.shape[0], work.shape[0],
                      work.shape[1])
    with nogil:
        if floating is float:
            hypermixing_causal_forward_f32(&y[0, 0, 0], &checkpoints[0], &work[0, 0],
                                           work.shape[0], &x[0, 0, 0], &w1[0, 0, 0],
                                           &w2[0, 0, 0], &lengths[0], B, L, d, k, heads, mean,
                                           chunk)
        else:
            hypermixing_causal_forward_f64(&y[0, 0, 0], &checkpoints[0], &work[0, 0],
                                           work.shape[0], &x[0, 0, 0], &w1[0, 0, 0],
                                           &w2[0, 0, 0], &lengths[0], B, L, d, k, heads, mean,
                                           chunk)


def hypermixing_causal_backward(floating[:, :, ::1] grad_input, floating[:, :, ::1] dw1,
                                floating[:, :, ::1] dw2, floating[:, ::1] work,
                                const floating[:, :, ::1] grad_output,
                                const floating[:, :, ::1] x, const floating[:, :, ::1] w1,
                                const floating[:, :, ::1] w2, const floating[::1] checkpoints,
                                const int64_t[::1] lengths, Py_ssize_t heads, bint mean,
                                Py_ssize_t chunk, bint tied=False):
    """Shapes as the causal forward; dw1, dw2 like w1 (tied: dw1 gets dw1 + dw2)."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], d = x.shape[2], k = w1.shape[2]
    _hmx_check_mix(B, L, d, k, heads, lengths)
    _hmx_check(grad_input.shape[0] == B and grad_input.shape[1] == L
               and grad_input.shape[2] == d and grad_output.shape[0] == B
               and grad_output.shape[1] == L and grad_output.shape[2] == d, "gradient shapes")
    _hmx_check(w1.shape[0] == B and w1.shape[1] == L and w2.shape[0] == B and w2.shape[1] == L
               and w2.shape[2] == k and dw1.shape[0] == B and dw1.shape[1] == L
               and dw1.shape[2] == k and dw2.shape[0] == B and dw2.shape[1] == L
               and dw2.shape[2] == k, "w shapes")
    _hmx_check_causal(B, L, d, k, heads, chunk, checkpoints.shape[0], work.shape[0],
                      work.shape[1])
    with nogil:
        if floating is float:
            hypermixing_causal_backward_f32(&grad_input[0, 0, 0], &dw1[0, 0, 0], &dw2[0, 0, 0],
                                            &work[0, 0], work.shape[0], &grad_output[0, 0, 0],
                                            &x[0, 0, 0], &w1[0, 0, 0], &w2[0, 0, 0],
                                            &checkpoints[0], &lengths[0], B, L, d, k, heads,
                                            mean, chunk, tied)
        else:
            hypermixing_causal_backward_f64(&grad_input[0, 0, 0], &dw1[0, 0, 0], &dw2[0, 0, 0],
                                            &work[0, 0], work.shape[0], &grad_output[0, 0, 0],
                                            &x[0, 0, 0], &w1[0, 0, 0], &w2[0, 0, 0],
                                            &checkpoints[0], &lengths[0], B, L, d, k, heads,
                                            mean, chunk, tied)


def hypermixing_step(floating[:, ::1] y, floating[:, :, :, ::1] state,
                     const floating[:, ::1] x, const floating[:, ::1] w1,
                     const floating[:, ::1] w2, const int64_t[::1] positions, bint mean):
    """y, x: (B, d); w1, w2: (B, k); state: (B, h, k_h, d_h), updated; positions: (B,)."""
    cdef Py_ssize_t B = x.shape[0], d = x.shape[1], k = w1.shape[1]
    cdef Py_ssize_t h = state.shape[1]
    _hmx_check(B >= 1 and h >= 1 and d % h == 0 and k % h == 0, "shapes")
    _hmx_check(y.shape[0] == B and y.shape[1] == d and w1.shape[0] == B and w2.shape[0] == B
               and w2.shape[1] == k and positions.shape[0] == B, "row shapes")
    _hmx_check(state.shape[0] == B and state.shape[2] == k // h and state.shape[3] == d // h,
               "state shape")
    with nogil:
        if floating is float:
            hypermixing_step_f32(&y[0, 0], &state[0, 0, 0, 0], &x[0, 0], &w1[0, 0], &w2[0, 0],
                                 &positions[0], B, d, k, h, mean)
        else:
            hypermixing_step_f64(&y[0, 0], &state[0, 0, 0, 0], &x[0, 0], &w1[0, 0], &w2[0, 0],
                                 &positions[0], B, d, k, h, mean)
