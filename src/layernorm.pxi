# Bindings for csrc/layernorm.c.
from libc.stdint cimport int64_t

cdef extern from "layernorm.h" nogil:
    size_t layernorm_partial_tiles(size_t rows)
    void layernorm_forward_f32(float* y, float* xhat, float* mean, float* rstd, const float* x,
                               const int64_t* lengths, const float* gamma, const float* beta,
                               size_t B, size_t L, size_t E)
    void layernorm_forward_f64(double* y, double* xhat, double* mean, double* rstd,
                               const double* x, const int64_t* lengths, const double* gamma,
                               const double* beta, size_t B, size_t L, size_t E)
    void layernorm_backward_f32(float* grad_input, float* dgamma, float* dbeta, float* partial,
                                const float* grad_output, const float* xhat, const float* rstd,
                                const int64_t* lengths, const float* gamma, size_t B, size_t L,
                                size_t E)
    void layernorm_backward_f64(double* grad_input, double* dgamma, double* dbeta,
                                double* partial, const double* grad_output, const double* xhat,
                                const double* rstd, const int64_t* lengths, const double* gamma,
                                size_t B, size_t L, size_t E)


def layernorm_partial_rows(Py_ssize_t batch, Py_ssize_t seq_len):
    """How many (2, E) partial-sum blocks layernorm_backward's workspace needs."""
    return layernorm_partial_tiles(<size_t>(batch * seq_len))


def layernorm_forward(floating[:, :, ::1] y, floating[:, :, ::1] xhat, floating[:, ::1] mean,
                      floating[:, ::1] rstd, const floating[:, :, ::1] x,
                      const int64_t[::1] lengths, const floating[::1] gamma,
                      const floating[::1] beta):
    """y, xhat, x: (B, L, E); mean, rstd: (B, L); gamma, beta: (E,)."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2]
    _check_dims((B, L, E))
    if (y.shape[0] != B or y.shape[1] != L or y.shape[2] != E or xhat.shape[0] != B
            or xhat.shape[1] != L or xhat.shape[2] != E):
        raise ValueError("layernorm_forward: y / xhat do not match x's shape")
    if mean.shape[0] != B or mean.shape[1] != L or rstd.shape[0] != B or rstd.shape[1] != L:
        raise ValueError("layernorm_forward: mean / rstd must be (B, L)")
    if gamma.shape[0] != E or beta.shape[0] != E:
        raise ValueError("layernorm_forward: gamma / beta must have E entries")
    _check_lengths(lengths, B, L)
    with nogil:
        if floating is float:
            layernorm_forward_f32(&y[0, 0, 0], &xhat[0, 0, 0], &mean[0, 0], &rstd[0, 0],
                                  &x[0, 0, 0], &lengths[0], &gamma[0], &beta[0], B, L, E)
        else:
            layernorm_forward_f64(&y[0, 0, 0], &xhat[0, 0, 0], &mean[0, 0], &rstd[0, 0],
                                  &x[0, 0, 0], &lengths[0], &gamma[0], &beta[0], B, L, E)


def layernorm_backward(floating[:, :, ::1] grad_input, floating[::1] dgamma,
                       floating[::1] dbeta, floating[:, ::1] partial,
                       const floating[:, :, ::1] grad_output, const floating[:, :, ::1] xhat,
                       const floating[:, ::1] rstd, const int64_t[::1] lengths,
                       const floating[::1] gamma):
    """grad_input, grad_output, xhat: (B, L, E); rstd: (B, L); dgamma, dbeta, gamma: (E,);
    partial: (layernorm_partial_rows(B, L), 2 * E) workspace."""
    cdef Py_ssize_t B = xhat.shape[0], L = xhat.shape[1], E = xhat.shape[2]
    _check_dims((B, L, E))
    if (grad_input.shape[0] != B or grad_input.shape[1] != L or grad_input.shape[2] != E
            or grad_output.shape[0] != B or grad_output.shape[1] != L
            or grad_output.shape[2] != E):
        raise ValueError("layernorm_backward: gradients do not match xhat's shape")
    if rstd.shape[0] != B or rstd.shape[1] != L:
        raise ValueError("layernorm_backward: rstd must be (B, L)")
    if dgamma.shape[0] != E or dbeta.shape[0] != E or gamma.shape[0] != E:
        raise ValueError("layernorm_backward: dgamma / dbeta / gamma must have E entries")
    if (<size_t>partial.shape[0] < layernorm_partial_tiles(<size_t>(B * L))
            or partial.shape[1] != 2 * E):
        raise ValueError("layernorm_backward: partial workspace too small")
    _check_lengths(lengths, B, L)
    with nogil:
        if floating is float:
            layernorm_backward_f32(&grad_input[0, 0, 0], &dgamma[0], &dbeta[0], &partial[0, 0],
                                   &grad_output[0, 0, 0], &xhat[0, 0, 0], &rstd[0, 0],
                                   &lengths[0], &gamma[0], B, L, E)
        else:
            layernorm_backward_f64(&grad_input[0, 0, 0], &dgamma[0], &dbeta[0], &partial[0, 0],
                                   &grad_output[0, 0, 0], &xhat[0, 0, 0], &rstd[0, 0],
                                   &lengths[0], &gamma[0], B, L, E)
