# Bindings for csrc/hypermixing.c. The layer (hypermixer._hypermixing_compiled) validates
# everything first; the checks here only keep a wrong call from reading out of bounds.
from libc.stdint cimport int64_t

cdef extern from "hypermixing.h" nogil:
    size_t hypermixing_causal_work_size(int d, int k, int h, int chunk)
    int hypermixing_causal_checkpoints(int L, int chunk)
    void hypermixing_token_info_forward_f32(float* z, const float* x, const float* pos,
                                            const int64_t* lengths, int B, int L, int d,
                                            float scale)
    void hypermixing_token_info_forward_f64(double* z, const double* x, const double* pos,
                                            const int64_t* lengths, int B, int L, int d,
                                            double scale)
    void hypermixing_token_info_backward_f32(float* gi, const float* dz, const int64_t* lengths,
                                             int B, int L, int d, float scale)
    void hypermixing_token_info_backward_f64(double* gi, const double* dz,
                                             const int64_t* lengths, int B, int L, int d,
                                             double scale)
    void hypermixing_generator_forward_f32(float* w, float* pre, float* act, const float* z,
                                           const float* A, const float* a, const float* C,
                                           const float* c, int rows, int d, int k, int h)
    void hypermixing_generator_forward_f64(double* w, double* pre, double* act,
                                           const double* z, const double* A, const double* a,
                                           const double* C, const double* c, int rows, int d,
                                           int k, int h)
    void hypermixing_generator_backward_f32(float* dz, float* dA, float* da, float* dC,
                                            float* dc, float* dpre, const float* dw,
                                            const float* z, const float* pre, const float* act,
                                            const float* A, const float* C, int rows, int d,
                                            int k, int h, int accumulate)
    void hypermixing_generator_backward_f64(double* dz, double* dA, double* da, double* dC,
                                            double* dc, double* dpre, const double* dw,
                                            const double* z, const double* pre,
                                            const double* act, const double* A,
                                            const double* C, int rows, int d, int k, int h,
                                            int accumulate)
    void hypermixing_forward_f32(float* y, float* s, float* m, const float* x, const float* w1,
                                 const float* w2, const int64_t* lengths, int B, int L, int d,
                                 int k, int h, int mean)
    void hypermixing_forward_f64(double* y, double* s, double* m, const double* x,
                                 const double* w1, const double* w2, const int64_t* lengths,
                                 int B, int L, int d, int k, int h, int mean)
    void hypermixing_backward_f32(float* gi, float* dw1, float* dw2, float* ds, const float* go,
                                  const float* x, const float* w1, const float* w2,
                                  const float* s, const float* m, const int64_t* lengths,
                                  int B, int L, int d, int k, int h, int mean)
    void hypermixing_backward_f64(double* gi, double* dw1, double* dw2, double* ds,
                                  const double* go, const double* x, const double* w1,
                                  const double* w2, const double* s, const double* m,
                                  const int64_t* lengths, int B, int L, int d, int k, int h,
                                  int mean)
    void hypermixing_causal_forward_f32(float* y, float* ck, float* work, int n_slots,
                                        const float* x, const float* w1, const float* w2,
                                        const int64_t* lengths, int B, int L, int d, int k,
                                        int h, int mean, int chunk)
    void hypermixing_causal_forward_f64(double* y, double* ck, double* work, int n_slots,
                                        const double* x, const double* w1, const double* w2,
                                        const int64_t* lengths, int B, int L, int d, int k,
                                        int h, int mean, int chunk)
    void hypermixing_causal_backward_f32(float* gi, float* dw1, float* dw2, float* work,
                                         int n_slots, const float* go, const float* x,
                                         const float* w1, const float* w2, const float* ck,
                                         const int64_t* lengths, int B, int L, int d, int k,
                                         int h, int mean, int chunk)
    void hypermixing_causal_backward_f64(double* gi, double* dw1, double* dw2, double* work,
                                         int n_slots, const double* go, const double* x,
                                         const double* w1, const double* w2, const double* ck,
                                         const int64_t* lengths, int B, int L, int d, int k,
                                         int h, int mean, int chunk)
    void hypermixing_step_f32(float* y, float* state, const float* x, const float* w1,
                              const float* w2, const int64_t* positions, int B, int d, int k,
                              int h, int mean)
    void hypermixing_step_f64(double* y, double* state, const double* x, const double* w1,
                              const double* w2, const int64_t* positions, int B, int d, int k,
                              int h, int mean)


cdef int _hmx_check(bint ok, str what) except -1:
    if not ok:
        raise ValueError(f"hypermixing kernel: {what}")
    return 0


cdef int _hmx_check_mix(Py_ssize_t B, Py_ssize_t L, Py_ssize_t d, Py_ssize_t k, int h,
                        const int64_t[::1] lengths) except -1:
    cdef Py_ssize_t b
    _hmx_check(B >= 1 and L >= 1 and d >= 1 and k >= 1 and h >= 1, "empty shape")
    _hmx_check(d % h == 0 and k % h == 0, "heads must divide d and k")
    _hmx_check(B * L <= 2147483647 and d <= 2147483647 and k <= 2147483647,
               "dimension too large for the kernels")
    _hmx_check(lengths.shape[0] == B, "lengths must have B entries")
    for b in range(B):
        _hmx_check(1 <= lengths[b] <= L, f"lengths[{b}] outside 1..{L}")
    return 0


def hypermixing_work_size(int d, int k, int h, int chunk):
    """Elements per thread slot of the causal kernels' workspace."""
    return hypermixing_causal_work_size(d, k, h, chunk)


def hypermixing_checkpoint_count(int L, int chunk):
    """Checkpoints (k_h, d_h) per sequence and head between causal forward and backward."""
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


def hypermixing_generator_forward(floating[:, ::1] w, floating[:, ::1] pre,
                                  floating[:, ::1] act, const floating[:, ::1] z,
                                  const floating[:, :, ::1] A, const floating[:, ::1] a,
                                  const floating[:, :, ::1] C, const floating[:, ::1] c):
    """w: (rows, k); pre, act, z: (rows, d); A: (h, d_h, d_h); C: (h, k_h, d_h);
    a: (h, d_h) and c: (h, k_h), or (0, 0) arrays for no biases."""
    cdef Py_ssize_t rows = z.shape[0], d = z.shape[1], k = w.shape[1], h = A.shape[0]
    cdef const floating* pa = NULL
    cdef const floating* pc = NULL
    _hmx_check(rows >= 1 and h >= 1 and d % h == 0 and k % h == 0, "shapes")
    _hmx_check(w.shape[0] == rows and pre.shape[0] == rows and act.shape[0] == rows
               and pre.shape[1] == d and act.shape[1] == d, "row shapes")
    _hmx_check(A.shape[1] == d // h and A.shape[2] == d // h, "A shape")
    _hmx_check(C.shape[0] == h and C.shape[1] == k // h and C.shape[2] == d // h, "C shape")
    if a.shape[0] > 0:
        _hmx_check(a.shape[0] == h and a.shape[1] == d // h, "a shape")
        pa = &a[0, 0]
    if c.shape[0] > 0:
        _hmx_check(c.shape[0] == h and c.shape[1] == k // h, "c shape")
        pc = &c[0, 0]
    with nogil:
        if floating is float:
            hypermixing_generator_forward_f32(&w[0, 0], &pre[0, 0], &act[0, 0], &z[0, 0],
                                              &A[0, 0, 0], pa, &C[0, 0, 0], pc, rows, d, k, h)
        else:
            hypermixing_generator_forward_f64(&w[0, 0], &pre[0, 0], &act[0, 0], &z[0, 0],
                                              &A[0, 0, 0], pa, &C[0, 0, 0], pc, rows, d, k, h)


def hypermixing_generator_backward(floating[:, ::1] dz, floating[:, :, ::1] dA,
                                   floating[:, ::1] da, floating[:, :, ::1] dC,
                                   floating[:, ::1] dc, floating[:, ::1] dpre,
                                   const floating[:, ::1] dw, const floating[:, ::1] z,
                                   const floating[:, ::1] pre, const floating[:, ::1] act,
                                   const floating[:, :, ::1] A, const floating[:, :, ::1] C,
                                   bint accumulate):
    """Shapes as the forward; da, dc may be (0, 0) arrays (no biases)."""
    cdef Py_ssize_t rows = z.shape[0], d = z.shape[1], k = dw.shape[1], h = A.shape[0]
    cdef floating* pda = NULL
    cdef floating* pdc = NULL
    _hmx_check(rows >= 1 and h >= 1 and d % h == 0 and k % h == 0, "shapes")
    _hmx_check(dz.shape[0] == rows and dz.shape[1] == d and dpre.shape[0] == rows
               and dpre.shape[1] == d and dw.shape[0] == rows and pre.shape[0] == rows
               and pre.shape[1] == d and act.shape[0] == rows and act.shape[1] == d,
               "row shapes")
    _hmx_check(A.shape[1] == d // h and A.shape[2] == d // h and dA.shape[0] == h
               and dA.shape[1] == d // h and dA.shape[2] == d // h, "A shape")
    _hmx_check(C.shape[0] == h and C.shape[1] == k // h and C.shape[2] == d // h
               and dC.shape[0] == h and dC.shape[1] == k // h and dC.shape[2] == d // h,
               "C shape")
    if da.shape[0] > 0:
        _hmx_check(da.shape[0] == h and da.shape[1] == d // h, "da shape")
        pda = &da[0, 0]
    if dc.shape[0] > 0:
        _hmx_check(dc.shape[0] == h and dc.shape[1] == k // h, "dc shape")
        pdc = &dc[0, 0]
    with nogil:
        if floating is float:
            hypermixing_generator_backward_f32(&dz[0, 0], &dA[0, 0, 0], pda, &dC[0, 0, 0], pdc,
                                               &dpre[0, 0], &dw[0, 0], &z[0, 0], &pre[0, 0],
                                               &act[0, 0], &A[0, 0, 0], &C[0, 0, 0], rows, d,
                                               k, h, accumulate)
        else:
            hypermixing_generator_backward_f64(&dz[0, 0], &dA[0, 0, 0], pda, &dC[0, 0, 0], pdc,
                                               &dpre[0, 0], &dw[0, 0], &z[0, 0], &pre[0, 0],
                                               &act[0, 0], &A[0, 0, 0], &C[0, 0, 0], rows, d,
                                               k, h, accumulate)


def hypermixing_forward(floating[:, :, ::1] y, floating[:, :, :, ::1] s,
                        floating[:, :, :, ::1] m, const floating[:, :, ::1] x,
                        const floating[:, :, ::1] w1, const floating[:, :, ::1] w2,
                        const int64_t[::1] lengths, bint mean):
    """y, x: (B, L, d); w1, w2: (B, L, k); s, m: (B, h, k_h, d_h)."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], d = x.shape[2], k = w1.shape[2]
    cdef int h = s.shape[1]
    _hmx_check_mix(B, L, d, k, h, lengths)
    _hmx_check(y.shape[0] == B and y.shape[1] == L and y.shape[2] == d, "y shape")
    _hmx_check(w1.shape[0] == B and w1.shape[1] == L and w2.shape[0] == B
               and w2.shape[1] == L and w2.shape[2] == k, "w shapes")
    _hmx_check(s.shape[0] == B and s.shape[2] == k // h and s.shape[3] == d // h
               and m.shape[0] == B and m.shape[1] == h and m.shape[2] == k // h
               and m.shape[3] == d // h, "s / m shapes")
    with nogil:
        if floating is float:
            hypermixing_forward_f32(&y[0, 0, 0], &s[0, 0, 0, 0], &m[0, 0, 0, 0], &x[0, 0, 0],
                                    &w1[0, 0, 0], &w2[0, 0, 0], &lengths[0], B, L, d, k, h,
                                    mean)
        else:
            hypermixing_forward_f64(&y[0, 0, 0], &s[0, 0, 0, 0], &m[0, 0, 0, 0], &x[0, 0, 0],
                                    &w1[0, 0, 0], &w2[0, 0, 0], &lengths[0], B, L, d, k, h,
                                    mean)


def hypermixing_backward(floating[:, :, ::1] grad_input, floating[:, :, ::1] dw1,
                         floating[:, :, ::1] dw2, floating[:, :, :, ::1] ds,
                         const floating[:, :, ::1] grad_output, const floating[:, :, ::1] x,
                         const floating[:, :, ::1] w1, const floating[:, :, ::1] w2,
                         const floating[:, :, :, ::1] s, const floating[:, :, :, ::1] m,
                         const int64_t[::1] lengths, bint mean):
    """Shapes as the forward; dw1, dw2 like w1; ds like s."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], d = x.shape[2], k = w1.shape[2]
    cdef int h = s.shape[1]
    _hmx_check_mix(B, L, d, k, h, lengths)
    _hmx_check(grad_input.shape[0] == B and grad_input.shape[1] == L
               and grad_input.shape[2] == d and grad_output.shape[0] == B
               and grad_output.shape[1] == L and grad_output.shape[2] == d, "gradient shapes")
    _hmx_check(w1.shape[0] == B and w1.shape[1] == L and w2.shape[0] == B and w2.shape[1] == L
               and w2.shape[2] == k and dw1.shape[0] == B and dw1.shape[1] == L
               and dw1.shape[2] == k and dw2.shape[0] == B and dw2.shape[1] == L
               and dw2.shape[2] == k, "w shapes")
    _hmx_check(s.shape[0] == B and s.shape[2] == k // h and s.shape[3] == d // h
               and m.shape[0] == B and m.shape[1] == h and m.shape[2] == k // h
               and m.shape[3] == d // h and ds.shape[0] == B and ds.shape[1] == h
               and ds.shape[2] == k // h and ds.shape[3] == d // h, "s / m / ds shapes")
    with nogil:
        if floating is float:
            hypermixing_backward_f32(&grad_input[0, 0, 0], &dw1[0, 0, 0], &dw2[0, 0, 0],
                                     &ds[0, 0, 0, 0], &grad_output[0, 0, 0], &x[0, 0, 0],
                                     &w1[0, 0, 0], &w2[0, 0, 0], &s[0, 0, 0, 0],
                                     &m[0, 0, 0, 0], &lengths[0], B, L, d, k, h, mean)
        else:
            hypermixing_backward_f64(&grad_input[0, 0, 0], &dw1[0, 0, 0], &dw2[0, 0, 0],
                                     &ds[0, 0, 0, 0], &grad_output[0, 0, 0], &x[0, 0, 0],
                                     &w1[0, 0, 0], &w2[0, 0, 0], &s[0, 0, 0, 0],
                                     &m[0, 0, 0, 0], &lengths[0], B, L, d, k, h, mean)


cdef int _hmx_check_causal(Py_ssize_t B, Py_ssize_t L, Py_ssize_t d, Py_ssize_t k, int h,
                           int chunk, Py_ssize_t ck_size, Py_ssize_t work_rows,
                           Py_ssize_t work_cols) except -1:
    _hmx_check(chunk >= 1, "chunk must be >= 1")
    _hmx_check(ck_size >= <Py_ssize_t>(B * h * hypermixing_causal_checkpoints(L, chunk)
                                      * (k // h) * (d // h)), "checkpoints too small")
    _hmx_check(work_rows >= 1 and work_cols >= <Py_ssize_t>hypermixing_causal_work_size(
        d, k, h, chunk), "work too small")
    return 0


def hypermixing_causal_forward(floating[:, :, ::1] y, floating[::1] checkpoints,
                               floating[:, ::1] work, const floating[:, :, ::1] x,
                               const floating[:, :, ::1] w1, const floating[:, :, ::1] w2,
                               const int64_t[::1] lengths, int heads, bint mean, int chunk):
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
                                const int64_t[::1] lengths, int heads, bint mean, int chunk):
    """Shapes as the causal forward; dw1, dw2 like w1."""
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
                                            mean, chunk)
        else:
            hypermixing_causal_backward_f64(&grad_input[0, 0, 0], &dw1[0, 0, 0], &dw2[0, 0, 0],
                                            &work[0, 0], work.shape[0], &grad_output[0, 0, 0],
                                            &x[0, 0, 0], &w1[0, 0, 0], &w2[0, 0, 0],
                                            &checkpoints[0], &lengths[0], B, L, d, k, heads,
                                            mean, chunk)


def hypermixing_step(floating[:, ::1] y, floating[:, :, :, ::1] state,
                     const floating[:, ::1] x, const floating[:, ::1] w1,
                     const floating[:, ::1] w2, const int64_t[::1] positions, bint mean):
    """y, x: (B, d); w1, w2: (B, k); state: (B, h, k_h, d_h), updated; positions: (B,)."""
    cdef Py_ssize_t B = x.shape[0], d = x.shape[1], k = w1.shape[1]
    cdef int h = state.shape[1]
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
