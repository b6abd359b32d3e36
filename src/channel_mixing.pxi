# Bindings for csrc/channel_mixing.c.
from libc.stdint cimport int64_t

cdef extern from "channel_mixing.h" nogil:
    void channel_mixing_forward_f32(float* y, float* xp, float* hidden, float* mixed,
                                    const float* x, const int64_t* offsets, const float* w1,
                                    const float* b1, const float* w2, const float* b2, size_t B,
                                    size_t L, size_t E, size_t H)
    void channel_mixing_forward_f64(double* y, double* xp, double* hidden, double* mixed,
                                    const double* x, const int64_t* offsets, const double* w1,
                                    const double* b1, const double* w2, const double* b2,
                                    size_t B, size_t L, size_t E, size_t H)
    void channel_mixing_backward_f32(float* grad_input, float* dw1, float* db1, float* dw2,
                                     float* db2, float* gp, float* dhidden,
                                     const float* grad_output, const float* xp,
                                     const float* hidden, const int64_t* offsets,
                                     const float* w1, const float* w2, size_t B, size_t L, size_t E,
                                     size_t H)
    void channel_mixing_backward_f64(double* grad_input, double* dw1, double* db1, double* dw2,
                                     double* db2, double* gp, double* dhidden,
                                     const double* grad_output, const double* xp,
                                     const double* hidden, const int64_t* offsets, const double* w1,
                                     const double* w2, size_t B, size_t L, size_t E, size_t H)


cdef Py_ssize_t _cm_check_offsets(const int64_t[::1] offsets, Py_ssize_t B,
                               Py_ssize_t L) except -1:
    """Validate packed-row offsets (B+1,): offsets[0] = 0 and every sequence 1..L rows long.
    Returns N = offsets[B]."""
    cdef Py_ssize_t b
    cdef int64_t n
    if offsets.shape[0] != B + 1:
        raise ValueError(f"offsets has {offsets.shape[0]} entries, expected B + 1 = {B + 1}")
    if offsets[0] != 0:
        raise ValueError("offsets[0] must be 0")
    for b in range(B):
        n = offsets[b + 1] - offsets[b]
        if n < 1 or n > L:
            raise ValueError(f"sequence {b} has length {n}, outside 1..{L}")
    return offsets[B]


def channel_mixing_forward(floating[:, :, ::1] y, floating[:, ::1] xp, floating[:, ::1] hidden,
                           floating[:, ::1] mixed, const floating[:, :, ::1] x,
                           const int64_t[::1] offsets, const floating[:, ::1] w1,
                           const floating[::1] b1, const floating[:, ::1] w2,
                           const floating[::1] b2):
    """y, x: (B, L, E); xp, mixed: (N, E); hidden: (N, H); w1 (E, H), b1 (H,), w2 (H, E),
    b2 (E,); offsets (B+1,) packed-row offsets, N = offsets[B]."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2], H = w1.shape[1]
    cdef Py_ssize_t N
    _check_dims((B, L, E, H))
    N = _cm_check_offsets(offsets, B, L)
    if y.shape[0] != B or y.shape[1] != L or y.shape[2] != E:
        raise ValueError("channel_mixing_forward: y does not match x's shape")
    _check_shape("xp", (xp.shape[0], xp.shape[1]), (N, E))
    _check_shape("mixed", (mixed.shape[0], mixed.shape[1]), (N, E))
    _check_shape("hidden", (hidden.shape[0], hidden.shape[1]), (N, H))
    _check_shape("w1", (w1.shape[0], w1.shape[1]), (E, H))
    _check_shape("w2", (w2.shape[0], w2.shape[1]), (H, E))
    if b1.shape[0] != H or b2.shape[0] != E:
        raise ValueError("channel_mixing_forward: b1 must have H entries and b2 E entries")
    with nogil:
        if floating is float:
            channel_mixing_forward_f32(&y[0, 0, 0], &xp[0, 0], &hidden[0, 0], &mixed[0, 0],
                                       &x[0, 0, 0], &offsets[0], &w1[0, 0], &b1[0], &w2[0, 0],
                                       &b2[0], B, L, E, H)
        else:
            channel_mixing_forward_f64(&y[0, 0, 0], &xp[0, 0], &hidden[0, 0], &mixed[0, 0],
                                       &x[0, 0, 0], &offsets[0], &w1[0, 0], &b1[0], &w2[0, 0],
                                       &b2[0], B, L, E, H)


def channel_mixing_backward(floating[:, :, ::1] grad_input, floating[:, ::1] dw1,
                            floating[::1] db1, floating[:, ::1] dw2, floating[::1] db2,
                            floating[:, ::1] gp, floating[:, ::1] dhidden,
                            const floating[:, :, ::1] grad_output, const floating[:, ::1] xp,
                            const floating[:, ::1] hidden, const int64_t[::1] offsets,
                            const floating[:, ::1] w1, const floating[:, ::1] w2):
    """grad_input, grad_output: (B, L, E); xp, gp: (N, E); hidden, dhidden: (N, H);
    dw1, w1: (E, H); db1: (H,); dw2, w2: (H, E); db2: (E,)."""
    cdef Py_ssize_t B = grad_output.shape[0], L = grad_output.shape[1]
    cdef Py_ssize_t E = grad_output.shape[2], H = w1.shape[1]
    cdef Py_ssize_t N
    _check_dims((B, L, E, H))
    N = _cm_check_offsets(offsets, B, L)
    if grad_input.shape[0] != B or grad_input.shape[1] != L or grad_input.shape[2] != E:
        raise ValueError("channel_mixing_backward: grad_input does not match grad_output")
    _check_shape("xp", (xp.shape[0], xp.shape[1]), (N, E))
    _check_shape("gp", (gp.shape[0], gp.shape[1]), (N, E))
    _check_shape("hidden", (hidden.shape[0], hidden.shape[1]), (N, H))
    _check_shape("dhidden", (dhidden.shape[0], dhidden.shape[1]), (N, H))
    _check_shape("w1", (w1.shape[0], w1.shape[1]), (E, H))
    _check_shape("dw1", (dw1.shape[0], dw1.shape[1]), (E, H))
    _check_shape("w2", (w2.shape[0], w2.shape[1]), (H, E))
    _check_shape("dw2", (dw2.shape[0], dw2.shape[1]), (H, E))
    if db1.shape[0] != H or db2.shape[0] != E:
        raise ValueError("channel_mixing_backward: db1 must have H entries and db2 E entries")
    with nogil:
        if floating is float:
            channel_mixing_backward_f32(&grad_input[0, 0, 0], &dw1[0, 0], &db1[0], &dw2[0, 0],
                                        &db2[0], &gp[0, 0], &dhidden[0, 0],
                                        &grad_output[0, 0, 0], &xp[0, 0], &hidden[0, 0],
                                        &offsets[0], &w1[0, 0], &w2[0, 0], B, L, E, H)
        else:
            channel_mixing_backward_f64(&grad_input[0, 0, 0], &dw1[0, 0], &db1[0], &dw2[0, 0],
                                        &db2[0], &gp[0, 0], &dhidden[0, 0],
                                        &grad_output[0, 0, 0], &xp[0, 0], &hidden[0, 0],
                                        &offsets[0], &w1[0, 0], &w2[0, 0], B, L, E, H)
