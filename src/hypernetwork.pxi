# Bindings for csrc/hypernetwork.c.
from libc.stdint cimport int64_t

cdef extern from "hypernetwork.h" nogil:
    void hypernetwork_forward_f32(float* out, float* pre, float* hidden, const float* x,
                                  const int64_t* lengths, const float* w1, const float* b1,
                                  const float* w2, const float* b2, size_t B, size_t rows, size_t E,
                                  size_t H, size_t O)
    void hypernetwork_forward_f64(double* out, double* pre, double* hidden, const double* x,
                                  const int64_t* lengths, const double* w1, const double* b1,
                                  const double* w2, const double* b2, size_t B, size_t rows,
                                  size_t E, size_t H, size_t O)
    void hypernetwork_backward_f32(float* grad_input, float* dw1, float* db1, float* dw2,
                                   float* db2, float* dpre, const float* grad_output,
                                   const float* x, const float* pre, const float* hidden,
                                   const int64_t* lengths, const float* w1, const float* w2,
                                   size_t B, size_t rows, size_t E, size_t H, size_t O)
    void hypernetwork_backward_f64(double* grad_input, double* dw1, double* db1, double* dw2,
                                   double* db2, double* dpre, const double* grad_output,
                                   const double* x, const double* pre, const double* hidden,
                                   const int64_t* lengths, const double* w1, const double* w2,
                                   size_t B, size_t rows, size_t E, size_t H, size_t O)
    size_t hypernetwork_prefix_record_c "hypernetwork_prefix_record"(size_t L, size_t Ht)
    size_t hypernetwork_theta_scratch_rows_c "hypernetwork_theta_scratch_rows"(size_t L,
                                                                               size_t Ht,
                                                                               int causal)
    void hypernetwork_theta_forward_f32(float* theta, float* pre, float* hidden, float* wcol,
                                        const float* x, const int64_t* lengths, const float* w1,
                                        const float* b1, const float* w2, const float* b2, size_t B,
                                        size_t rows, size_t E, size_t H, size_t S, size_t Ht,
                                        size_t L, int causal)
    void hypernetwork_theta_forward_f64(double* theta, double* pre, double* hidden, double* wcol,
                                        const double* x, const int64_t* lengths, const double* w1,
                                        const double* b1, const double* w2, const double* b2,
                                        size_t B, size_t rows, size_t E, size_t H, size_t S,
                                        size_t Ht, size_t L, int causal)
    void hypernetwork_theta_backward_f32(float* grad_input, float* dw1, float* db1, float* dw2,
                                         float* db2, float* dpre, float* wcol, const float* dtheta,
                                         const float* x, const float* pre, const float* hidden,
                                         const int64_t* lengths, const float* w1, const float* w2,
                                         size_t B, size_t rows, size_t E, size_t H, size_t S,
                                         size_t Ht, size_t L, int causal)
    void hypernetwork_theta_backward_f64(double* grad_input, double* dw1, double* db1, double* dw2,
                                         double* db2, double* dpre, double* wcol,
                                         const double* dtheta, const double* x, const double* pre,
                                         const double* hidden, const int64_t* lengths,
                                         const double* w1, const double* w2, size_t B, size_t rows,
                                         size_t E, size_t H, size_t S, size_t Ht, size_t L,
                                         int causal)


def hypernetwork_forward(floating[:, :, ::1] out, floating[:, :, ::1] pre,
                         floating[:, :, ::1] hidden, const floating[:, :, ::1] x,
                         const int64_t[::1] lengths, const floating[:, ::1] w1,
                         const floating[::1] b1, const floating[:, ::1] w2,
                         const floating[::1] b2):
    """out (B,R,O) = relu(x @ w1 + b1) @ w2 + b2 on valid rows; pre/hidden (B,R,H) cached."""
    cdef Py_ssize_t B = x.shape[0], R = x.shape[1], E = x.shape[2]
    cdef Py_ssize_t H = w1.shape[1], O = w2.shape[1]
    _check_dims((B, R, E, H, O))
    _check_shape("w1", (w1.shape[0], w1.shape[1]), (E, H))
    _check_shape("b1", (b1.shape[0],), (H,))
    _check_shape("w2", (w2.shape[0], w2.shape[1]), (H, O))
    _check_shape("b2", (b2.shape[0],), (O,))
    _check_shape("out", (out.shape[0], out.shape[1], out.shape[2]), (B, R, O))
    _check_shape("pre", (pre.shape[0], pre.shape[1], pre.shape[2]), (B, R, H))
    _check_shape("hidden", (hidden.shape[0], hidden.shape[1], hidden.shape[2]), (B, R, H))
    _check_lengths(lengths, B, R)
    with nogil:
        if floating is float:
            hypernetwork_forward_f32(&out[0, 0, 0], &pre[0, 0, 0], &hidden[0, 0, 0],
                                     &x[0, 0, 0], &lengths[0], &w1[0, 0], &b1[0], &w2[0, 0],
                                     &b2[0], B, R, E, H, O)
        else:
            hypernetwork_forward_f64(&out[0, 0, 0], &pre[0, 0, 0], &hidden[0, 0, 0],
                                     &x[0, 0, 0], &lengths[0], &w1[0, 0], &b1[0], &w2[0, 0],
                                     &b2[0], B, R, E, H, O)


def hypernetwork_backward(floating[:, :, ::1] grad_input, floating[:, ::1] dw1,
                          floating[::1] db1, floating[:, ::1] dw2, floating[::1] db2,
                          floating[:, :, ::1] dpre, const floating[:, :, ::1] grad_output,
                          const floating[:, :, ::1] x, const floating[:, :, ::1] pre,
                          const floating[:, :, ::1] hidden, const int64_t[::1] lengths,
                          const floating[:, ::1] w1, const floating[:, ::1] w2):
    """grad_input written; dw1, db1, dw2, db2 overwritten; dpre (B,R,H) scratch."""
    cdef Py_ssize_t B = x.shape[0], R = x.shape[1], E = x.shape[2]
    cdef Py_ssize_t H = w1.shape[1], O = w2.shape[1]
    _check_dims((B, R, E, H, O))
    _check_shape("w1", (w1.shape[0], w1.shape[1]), (E, H))
    _check_shape("w2", (w2.shape[0], w2.shape[1]), (H, O))
    _check_shape("dw1", (dw1.shape[0], dw1.shape[1]), (E, H))
    _check_shape("db1", (db1.shape[0],), (H,))
    _check_shape("dw2", (dw2.shape[0], dw2.shape[1]), (H, O))
    _check_shape("db2", (db2.shape[0],), (O,))
    _check_shape("grad_input", (grad_input.shape[0], grad_input.shape[1],
                                   grad_input.shape[2]), (B, R, E))
    _check_shape("grad_output", (grad_output.shape[0], grad_output.shape[1],
                                    grad_output.shape[2]), (B, R, O))
    _check_shape("pre", (pre.shape[0], pre.shape[1], pre.shape[2]), (B, R, H))
    _check_shape("hidden", (hidden.shape[0], hidden.shape[1], hidden.shape[2]), (B, R, H))
    _check_shape("dpre", (dpre.shape[0], dpre.shape[1], dpre.shape[2]), (B, R, H))
    _check_lengths(lengths, B, R)
    with nogil:
        if floating is float:
            hypernetwork_backward_f32(&grad_input[0, 0, 0], &dw1[0, 0], &db1[0], &dw2[0, 0],
                                      &db2[0], &dpre[0, 0, 0], &grad_output[0, 0, 0],
                                      &x[0, 0, 0], &pre[0, 0, 0], &hidden[0, 0, 0],
                                      &lengths[0], &w1[0, 0], &w2[0, 0], B, R, E, H, O)
        else:
            hypernetwork_backward_f64(&grad_input[0, 0, 0], &dw1[0, 0], &db1[0], &dw2[0, 0],
                                      &db2[0], &dpre[0, 0, 0], &grad_output[0, 0, 0],
                                      &x[0, 0, 0], &pre[0, 0, 0], &hidden[0, 0, 0],
                                      &lengths[0], &w1[0, 0], &w2[0, 0], B, R, E, H, O)


def hypernetwork_theta_size(int L, int Ht, bint causal):
    """Values of theta per row: 2*L*Ht + Ht + L (bidirectional), L*Ht + 2*Ht + 1 (causal)."""
    if L < 1 or Ht < 1:
        raise ValueError("L and Ht must be >= 1")
    if causal:
        return hypernetwork_prefix_record_c(L, Ht)
    return 2 * L * Ht + Ht + L


cdef int _hn_check_theta(Py_ssize_t B, Py_ssize_t R, Py_ssize_t E, Py_ssize_t H,
                         Py_ssize_t O, int S, int Ht, int L, bint causal, tuple theta_shape,
                         Py_ssize_t wcol_rows, Py_ssize_t wcol_cols) except -1:
    _check_dims((B, R, E, H, O))
    if Ht < 1 or L < 1 or S < L:
        raise ValueError(f"need 1 <= L <= S and Ht >= 1, got L={L}, S={S}, Ht={Ht}")
    if O != 2 * S * Ht + Ht + S:
        raise ValueError(f"w2 has {O} columns, S={S} and Ht={Ht} need {2 * S * Ht + Ht + S}")
    if causal:
        _check_shape("x", (R,), (L,))
        _check_shape("theta", theta_shape, (B, L, L * Ht + 2 * Ht + 1))
    else:
        _check_shape("x", (R,), (1,))
        _check_shape("theta", theta_shape, (B, 1, 2 * L * Ht + Ht + L))
    _check_shape("wcol", (wcol_rows, wcol_cols),
                    (hypernetwork_theta_scratch_rows_c(L, Ht, causal), H))
    return 0


def hypernetwork_theta_scratch_rows(int L, int Ht, bint causal):
    """Rows of hidden_dim values the theta kernels' scratch (wcol) holds."""
    if L < 1 or Ht < 1:
        raise ValueError("L and Ht must be >= 1")
    return hypernetwork_theta_scratch_rows_c(L, Ht, causal)


def hypernetwork_theta_forward(floating[:, :, ::1] theta, floating[:, :, ::1] pre,
                               floating[:, :, ::1] hidden, floating[:, ::1] wcol,
                               const floating[:, :, ::1] x, const int64_t[::1] lengths,
                               const floating[:, ::1] w1, const floating[::1] b1,
                               const floating[:, ::1] w2, const floating[::1] b2, int S, int Ht,
                               int L, bint causal):
    """Only the token-mixing weights an input of L rows uses (hypernetwork.c): bidirectional
    x (B, 1, E) -> theta (B, 1, 2*L*Ht+Ht+L); causal x (B, L, E) -> theta (B, L, L*Ht+2*Ht+1).
    pre/hidden (B, rows, H) cached; wcol (hypernetwork_theta_scratch_rows(L, Ht, causal), H)
    scratch."""
    cdef Py_ssize_t B = x.shape[0], R = x.shape[1], E = x.shape[2]
    cdef Py_ssize_t H = w1.shape[1], O = w2.shape[1]
    _hn_check_theta(B, R, E, H, O, S, Ht, L, causal,
                    (theta.shape[0], theta.shape[1], theta.shape[2]), wcol.shape[0],
                    wcol.shape[1])
    _check_shape("w1", (w1.shape[0], w1.shape[1]), (E, H))
    _check_shape("b1", (b1.shape[0],), (H,))
    _check_shape("b2", (b2.shape[0],), (O,))
    _check_shape("pre", (pre.shape[0], pre.shape[1], pre.shape[2]), (B, R, H))
    _check_shape("hidden", (hidden.shape[0], hidden.shape[1], hidden.shape[2]), (B, R, H))
    _check_lengths(lengths, B, R)
    with nogil:
        if floating is float:
            hypernetwork_theta_forward_f32(&theta[0, 0, 0], &pre[0, 0, 0], &hidden[0, 0, 0],
                                           &wcol[0, 0], &x[0, 0, 0], &lengths[0], &w1[0, 0],
                                           &b1[0], &w2[0, 0], &b2[0], B, R, E, H, S, Ht, L, causal)
        else:
            hypernetwork_theta_forward_f64(&theta[0, 0, 0], &pre[0, 0, 0], &hidden[0, 0, 0],
                                           &wcol[0, 0], &x[0, 0, 0], &lengths[0], &w1[0, 0],
                                           &b1[0], &w2[0, 0], &b2[0], B, R, E, H, S, Ht, L, causal)


def hypernetwork_theta_backward(floating[:, :, ::1] grad_input, floating[:, ::1] dw1,
                                floating[::1] db1, floating[:, ::1] dw2, floating[::1] db2,
                                floating[:, :, ::1] dpre, floating[:, ::1] wcol,
                                const floating[:, :, ::1] dtheta, const floating[:, :, ::1] x,
                                const floating[:, :, ::1] pre,
                                const floating[:, :, ::1] hidden, const int64_t[::1] lengths,
                                const floating[:, ::1] w1, const floating[:, ::1] w2, int S,
                                int Ht, int L, bint causal):
    """Gradients of hypernetwork_theta_forward; all four parameter gradients overwritten
    (full size), grad_input (B, rows, E) written; dpre and wcol scratch."""
    cdef Py_ssize_t B = x.shape[0], R = x.shape[1], E = x.shape[2]
    cdef Py_ssize_t H = w1.shape[1], O = w2.shape[1]
    _hn_check_theta(B, R, E, H, O, S, Ht, L, causal,
                    (dtheta.shape[0], dtheta.shape[1], dtheta.shape[2]), wcol.shape[0],
                    wcol.shape[1])
    _check_shape("w1", (w1.shape[0], w1.shape[1]), (E, H))
    _check_shape("dw1", (dw1.shape[0], dw1.shape[1]), (E, H))
    _check_shape("db1", (db1.shape[0],), (H,))
    _check_shape("dw2", (dw2.shape[0], dw2.shape[1]), (H, O))
    _check_shape("db2", (db2.shape[0],), (O,))
    _check_shape("grad_input", (grad_input.shape[0], grad_input.shape[1],
                                   grad_input.shape[2]), (B, R, E))
    _check_shape("pre", (pre.shape[0], pre.shape[1], pre.shape[2]), (B, R, H))
    _check_shape("hidden", (hidden.shape[0], hidden.shape[1], hidden.shape[2]), (B, R, H))
    _check_shape("dpre", (dpre.shape[0], dpre.shape[1], dpre.shape[2]), (B, R, H))
    _check_lengths(lengths, B, R)
    with nogil:
        if floating is float:
            hypernetwork_theta_backward_f32(&grad_input[0, 0, 0], &dw1[0, 0], &db1[0],
                                            &dw2[0, 0], &db2[0], &dpre[0, 0, 0], &wcol[0, 0],
                                            &dtheta[0, 0, 0], &x[0, 0, 0], &pre[0, 0, 0],
                                            &hidden[0, 0, 0], &lengths[0], &w1[0, 0],
                                            &w2[0, 0], B, R, E, H, S, Ht, L, causal)
        else:
            hypernetwork_theta_backward_f64(&grad_input[0, 0, 0], &dw1[0, 0], &db1[0],
                                            &dw2[0, 0], &db2[0], &dpre[0, 0, 0], &wcol[0, 0],
                                            &dtheta[0, 0, 0], &x[0, 0, 0], &pre[0, 0, 0],
                                            &hidden[0, 0, 0], &lengths[0], &w1[0, 0],
                                            &w2[0, 0], B, R, E, H, S, Ht, L, causal)
