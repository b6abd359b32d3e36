# Bindings for csrc/attention.c (causal single-head self-attention).
from libc.stdint cimport int64_t

cdef extern from "attention.h" nogil:
    void attention_forward_f32(float* out, float* xc, float* qkv, float* probs, float* kt,
                               float* wcat, const float* x, const float* wq, const float* wk,
                               const float* wv, const int64_t* lengths, size_t B, size_t L,
                               size_t E)
    void attention_forward_f64(double* out, double* xc, double* qkv, double* probs, double* kt,
                               double* wcat, const double* x, const double* wq,
                               const double* wk, const double* wv, const int64_t* lengths,
                               size_t B, size_t L, size_t E)
    void attention_backward_f32(float* dx, float* dwq, float* dwk, float* dwv, float* dqkv,
                                float* dscores, float* vt, float* wcat, float* dwcat,
                                const float* grad, const float* xc, const float* qkv,
                                const float* probs, const float* wq, const float* wk,
                                const float* wv, const int64_t* lengths, size_t B, size_t L,
                                size_t E)
    void attention_backward_f64(double* dx, double* dwq, double* dwk, double* dwv,
                                double* dqkv, double* dscores, double* vt, double* wcat,
                                double* dwcat, const double* grad, const double* xc,
                                const double* qkv, const double* probs, const double* wq,
                                const double* wk, const double* wv, const int64_t* lengths,
                                size_t B, size_t L, size_t E)
    void attention_step_f32(float* out, float* kcache, float* vcache, float* q, float* scores,
                            const float* x, const float* wq, const float* wk, const float* wv,
                            size_t n, size_t E)
    void attention_step_f64(double* out, double* kcache, double* vcache, double* q,
                            double* scores, const double* x, const double* wq,
                            const double* wk, const double* wv, size_t n, size_t E)


cdef int _att_check(str name, Py_ssize_t* shape, int ndim, Py_ssize_t a, Py_ssize_t b,
                    Py_ssize_t c) except -1:
    """ValueError unless shape[:ndim] == (a, b[, c])."""
    cdef Py_ssize_t want[3]
    want[0] = a
    want[1] = b
    want[2] = c
    for i in range(ndim):
        if shape[i] != want[i]:
            got = tuple(shape[j] for j in range(ndim))
            raise ValueError(f"attention: {name} has shape {got}, expected "
                             f"{(a, b, c)[:ndim]}")
    return 0


def attention_forward(floating[:, :, ::1] out, floating[:, :, ::1] xc,
                      floating[:, :, ::1] qkv, floating[:, :, ::1] probs,
                      floating[:, :, ::1] kt, floating[:, ::1] wcat,
                      const floating[:, :, ::1] x, const floating[:, ::1] wq,
                      const floating[:, ::1] wk, const floating[:, ::1] wv,
                      const int64_t[::1] lengths):
    """x, out, xc (B, L, E); qkv (B, L, 3E); probs (B, L, L); kt (B, E, L); wcat (E, 3E);
    wq, wk, wv (E, E)."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2]
    _check_lengths(lengths, B, L)
    if E < 1:
        raise ValueError("attention: E must be >= 1")
    _att_check("out", out.shape, 3, B, L, E)
    _att_check("xc", xc.shape, 3, B, L, E)
    _att_check("qkv", qkv.shape, 3, B, L, 3 * E)
    _att_check("probs", probs.shape, 3, B, L, L)
    _att_check("kt", kt.shape, 3, B, E, L)
    _att_check("wcat", wcat.shape, 2, E, 3 * E, 0)
    _att_check("wq", wq.shape, 2, E, E, 0)
    _att_check("wk", wk.shape, 2, E, E, 0)
    _att_check("wv", wv.shape, 2, E, E, 0)
    with nogil:
        if floating is float:
            attention_forward_f32(&out[0, 0, 0], &xc[0, 0, 0], &qkv[0, 0, 0], &probs[0, 0, 0],
                                  &kt[0, 0, 0], &wcat[0, 0], &x[0, 0, 0], &wq[0, 0],
                                  &wk[0, 0], &wv[0, 0], &lengths[0], B, L, E)
        else:
            attention_forward_f64(&out[0, 0, 0], &xc[0, 0, 0], &qkv[0, 0, 0], &probs[0, 0, 0],
                                  &kt[0, 0, 0], &wcat[0, 0], &x[0, 0, 0], &wq[0, 0],
                                  &wk[0, 0], &wv[0, 0], &lengths[0], B, L, E)


def attention_backward(floating[:, :, ::1] dx, floating[:, ::1] dwq, floating[:, ::1] dwk,
                       floating[:, ::1] dwv, floating[:, :, ::1] dqkv,
                       floating[:, :, ::1] dscores, floating[:, :, ::1] vt,
                       floating[:, ::1] wcat, floating[:, ::1] dwcat,
                       const floating[:, :, ::1] grad, const floating[:, :, ::1] xc,
                       const floating[:, :, ::1] qkv, const floating[:, :, ::1] probs,
                       const floating[:, ::1] wq, const floating[:, ::1] wk,
                       const floating[:, ::1] wv, const int64_t[::1] lengths):
    """Gradients of the forward above; dqkv (B, L, 3E), dscores (B, L, L), vt (B, E, L),
    wcat and dwcat (E, 3E) are workspaces."""
    cdef Py_ssize_t B = xc.shape[0], L = xc.shape[1], E = xc.shape[2]
    _check_lengths(lengths, B, L)
    if E < 1:
        raise ValueError("attention: E must be >= 1")
    _att_check("dx", dx.shape, 3, B, L, E)
    _att_check("grad", grad.shape, 3, B, L, E)
    _att_check("dqkv", dqkv.shape, 3, B, L, 3 * E)
    _att_check("qkv", qkv.shape, 3, B, L, 3 * E)
    _att_check("dscores", dscores.shape, 3, B, L, L)
    _att_check("probs", probs.shape, 3, B, L, L)
    _att_check("vt", vt.shape, 3, B, E, L)
    _att_check("wcat", wcat.shape, 2, E, 3 * E, 0)
    _att_check("dwcat", dwcat.shape, 2, E, 3 * E, 0)
    _att_check("wq", wq.shape, 2, E, E, 0)
    _att_check("wk", wk.shape, 2, E, E, 0)
    _att_check("wv", wv.shape, 2, E, E, 0)
    _att_check("dwq", dwq.shape, 2, E, E, 0)
    _att_check("dwk", dwk.shape, 2, E, E, 0)
    _att_check("dwv", dwv.shape, 2, E, E, 0)
    with nogil:
        if floating is float:
            attention_backward_f32(&dx[0, 0, 0], &dwq[0, 0], &dwk[0, 0], &dwv[0, 0],
                                   &dqkv[0, 0, 0], &dscores[0, 0, 0], &vt[0, 0, 0],
                                   &wcat[0, 0], &dwcat[0, 0], &grad[0, 0, 0], &xc[0, 0, 0],
                                   &qkv[0, 0, 0], &probs[0, 0, 0], &wq[0, 0], &wk[0, 0],
                                   &wv[0, 0], &lengths[0], B, L, E)
        else:
            attention_backward_f64(&dx[0, 0, 0], &dwq[0, 0], &dwk[0, 0], &dwv[0, 0],
                                   &dqkv[0, 0, 0], &dscores[0, 0, 0], &vt[0, 0, 0],
                                   &wcat[0, 0], &dwcat[0, 0], &grad[0, 0, 0], &xc[0, 0, 0],
                                   &qkv[0, 0, 0], &probs[0, 0, 0], &wq[0, 0], &wk[0, 0],
                                   &wv[0, 0], &lengths[0], B, L, E)


def attention_step(floating[::1] out, floating[:, ::1] kcache, floating[:, ::1] vcache,
                   floating[::1] q, floating[::1] scores, const floating[::1] x,
                   const floating[:, ::1] wq, const floating[:, ::1] wk,
                   const floating[:, ::1] wv, Py_ssize_t n):
    """One new token at position n (generation with a key/value cache): x, out, q (E,);
    kcache, vcache (cap, E), rows 0..n-1 filled, row n written here; scores (>= n + 1,)."""
    cdef Py_ssize_t E = x.shape[0], cap = kcache.shape[0]
    if E < 1:
        raise ValueError("attention_step: E must be >= 1")
    if n < 0 or n >= cap:
        raise ValueError(f"attention_step: position {n} is outside the cache of {cap} rows")
    _att_check("out", out.shape, 1, E, 0, 0)
    _att_check("q", q.shape, 1, E, 0, 0)
    _att_check("kcache", kcache.shape, 2, cap, E, 0)
    _att_check("vcache", vcache.shape, 2, cap, E, 0)
    _att_check("wq", wq.shape, 2, E, E, 0)
    _att_check("wk", wk.shape, 2, E, E, 0)
    _att_check("wv", wv.shape, 2, E, E, 0)
    if scores.shape[0] < n + 1:
        raise ValueError(f"attention_step: scores has {scores.shape[0]} entries, needs {n + 1}")
    with nogil:
        if floating is float:
            attention_step_f32(&out[0], &kcache[0, 0], &vcache[0, 0], &q[0], &scores[0], &x[0],
                               &wq[0, 0], &wk[0, 0], &wv[0, 0], n, E)
        else:
            attention_step_f64(&out[0], &kcache[0, 0], &vcache[0, 0], &q[0], &scores[0], &x[0],
                               &wq[0, 0], &wk[0, 0], &wv[0, 0], n, E)
