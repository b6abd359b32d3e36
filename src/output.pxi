# Bindings for csrc/output.c (projection to vocabulary logits).
from libc.stdint cimport int64_t

cdef extern from "output.h" nogil:
    void output_forward_f32(float* logits, const float* x, const float* w, const float* bias,
                            const int64_t* lengths, size_t B, size_t L, size_t E, size_t V)
    void output_forward_f64(double* logits, const double* x, const double* w,
                            const double* bias, const int64_t* lengths, size_t B, size_t L,
                            size_t E, size_t V)
    void output_backward_f32(float* dx, float* dw, float* dbias, float* xp, float* gp,
                             const float* grad, const float* x, const float* w,
                             const int64_t* lengths, size_t B, size_t L, size_t E, size_t V)
    void output_backward_f64(double* dx, double* dw, double* dbias, double* xp, double* gp,
                             const double* grad, const double* x, const double* w,
                             const int64_t* lengths, size_t B, size_t L, size_t E, size_t V)


def output_forward(floating[:, :, ::1] logits, const floating[:, :, ::1] x,
                   const floating[:, ::1] w, const floating[:, ::1] bias,
                   const int64_t[::1] lengths):
    """logits (B, L, V) = x (B, L, E) @ w (E, V) + bias (1, V); padding rows 0."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2], V = w.shape[1]
    _check_lengths(lengths, B, L)
    if E < 1 or V < 1 or w.shape[0] != E:
        raise ValueError("output_forward: w must be (E, V) with E, V >= 1")
    if bias.shape[0] != 1 or bias.shape[1] != V:
        raise ValueError("output_forward: bias must be (1, V)")
    if logits.shape[0] != B or logits.shape[1] != L or logits.shape[2] != V:
        raise ValueError("output_forward: logits must be (B, L, V)")
    with nogil:
        if floating is float:
            output_forward_f32(&logits[0, 0, 0], &x[0, 0, 0], &w[0, 0], &bias[0, 0],
                               &lengths[0], B, L, E, V)
        else:
            output_forward_f64(&logits[0, 0, 0], &x[0, 0, 0], &w[0, 0], &bias[0, 0],
                               &lengths[0], B, L, E, V)


def output_backward(floating[:, :, ::1] dx, floating[:, ::1] dw, floating[:, ::1] dbias,
                    floating[:, ::1] xp, floating[:, ::1] gp, const floating[:, :, ::1] grad,
                    const floating[:, :, ::1] x, const floating[:, ::1] w,
                    const int64_t[::1] lengths):
    """dx (B, L, E), dw (E, V), dbias (1, V); workspaces xp (N, E), gp (N, V) with N the
    number of real rows (sum of lengths) when some sequence is shorter than L, else >= 1."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2], V = w.shape[1]
    _check_lengths(lengths, B, L)
    if E < 1 or V < 1 or w.shape[0] != E:
        raise ValueError("output_backward: w must be (E, V) with E, V >= 1")
    if (dx.shape[0] != B or dx.shape[1] != L or dx.shape[2] != E or grad.shape[0] != B
            or grad.shape[1] != L or grad.shape[2] != V):
        raise ValueError("output_backward: dx must be (B, L, E) and grad (B, L, V)")
    if dw.shape[0] != E or dw.shape[1] != V or dbias.shape[0] != 1 or dbias.shape[1] != V:
        raise ValueError("output_backward: dw (E, V) and dbias (1, V) expected")
    cdef Py_ssize_t b, real_rows = 0
    for b in range(B):
        real_rows += lengths[b]
    if xp.shape[1] != E or gp.shape[1] != V or xp.shape[0] < 1 or gp.shape[0] < 1:
        raise ValueError("output_backward: workspaces must be (rows, E) and (rows, V)")
    if real_rows < B * L and (xp.shape[0] < real_rows or gp.shape[0] < real_rows):
        raise ValueError(f"output_backward: workspaces need {real_rows} rows to pack the "
                         "real rows of a ragged batch")
    with nogil:
        if floating is float:
            output_backward_f32(&dx[0, 0, 0], &dw[0, 0], &dbias[0, 0], &xp[0, 0], &gp[0, 0],
                                &grad[0, 0, 0], &x[0, 0, 0], &w[0, 0],
                                &lengths[0], B, L, E, V)
        else:
            output_backward_f64(&dx[0, 0, 0], &dw[0, 0], &dbias[0, 0], &xp[0, 0], &gp[0, 0],
                                &grad[0, 0, 0], &x[0, 0, 0], &w[0, 0],
                                &lengths[0], B, L, E, V)
