# Bindings for csrc/token_mixing.c.
from libc.stdint cimport int64_t

cdef extern from "token_mixing.h" nogil:
    void token_mixing_pool_forward_f32(float* means, const float* x, const int64_t* lengths,
                                       size_t B, size_t L, size_t E)
    void token_mixing_pool_forward_f64(double* means, const double* x, const int64_t* lengths,
                                       size_t B, size_t L, size_t E)
    void token_mixing_pool_backward_f32(float* grad_input, const float* dmeans,
                                        const int64_t* lengths, size_t B, size_t L, size_t E)
    void token_mixing_pool_backward_f64(double* grad_input, const double* dmeans,
                                        const int64_t* lengths, size_t B, size_t L, size_t E)
    void token_mixing_prefix_pool_forward_f32(float* means, const float* x,
                                              const int64_t* lengths, size_t B, size_t L, size_t E)
    void token_mixing_prefix_pool_forward_f64(double* means, const double* x,
                                              const int64_t* lengths, size_t B, size_t L, size_t E)
    void token_mixing_prefix_pool_backward_f32(float* grad_input, const float* dmeans,
                                               const int64_t* lengths, size_t B, size_t L, size_t E)
    void token_mixing_prefix_pool_backward_f64(double* grad_input, const double* dmeans,
                                               const int64_t* lengths, size_t B, size_t L, size_t E)
    void token_mixing_forward_f32(float* y, float* act, const float* x, const float* theta,
                                  const int64_t* lengths, size_t B, size_t L, size_t E, size_t S,
                                  size_t Ht)
    void token_mixing_forward_f64(double* y, double* act, const double* x, const double* theta,
                                  const int64_t* lengths, size_t B, size_t L, size_t E, size_t S,
                                  size_t Ht)
    void token_mixing_backward_f32(float* grad_input, float* dtheta, float* work, size_t n_slots,
                                   const float* grad_output, const float* x, const float* theta,
                                   const float* act, const int64_t* lengths, size_t B, size_t L,
                                   size_t E, size_t S, size_t Ht)
    void token_mixing_backward_f64(double* grad_input, double* dtheta, double* work, size_t n_slots,
                                   const double* grad_output, const double* x, const double* theta,
                                   const double* act, const int64_t* lengths, size_t B, size_t L,
                                   size_t E, size_t S, size_t Ht)
    void token_mixing_causal_forward_f32(float* y, float* work, size_t n_slots, const float* x,
                                         const float* theta, const int64_t* lengths, size_t B,
                                         size_t L, size_t E, size_t S, size_t Ht)
    void token_mixing_causal_forward_f64(double* y, double* work, size_t n_slots, const double* x,
                                         const double* theta, const int64_t* lengths, size_t B,
                                         size_t L, size_t E, size_t S, size_t Ht)
    void token_mixing_causal_backward_f32(float* grad_input, float* dtheta, float* partial,
                                          float* work, size_t n_slots, const float* grad_output,
                                          const float* x, const float* theta,
                                          const int64_t* lengths, size_t B, size_t L, size_t E,
                                          size_t S, size_t Ht, size_t chunk)
    void token_mixing_causal_backward_f64(double* grad_input, double* dtheta, double* partial,
                                          double* work, size_t n_slots,
                                          const double* grad_output, const double* x,
                                          const double* theta, const int64_t* lengths, size_t B,
                                          size_t L, size_t E, size_t S, size_t Ht, size_t chunk)
    size_t token_mixing_causal_partial_size_c "token_mixing_causal_partial_size"(
        size_t L, size_t E, size_t chunk)
    size_t token_mixing_causal_chunk_c "token_mixing_causal_chunk"(size_t L)


cdef Py_ssize_t _tm_theta_size(Py_ssize_t L, Py_ssize_t S, Py_ssize_t Ht) except -1:
    if S < L or Ht < 1:
        raise ValueError(f"need max_seq_len S >= L and Ht >= 1, got S={S}, L={L}, Ht={Ht}")
    if S > 2147483647 or Ht > 2147483647:
        raise ValueError("dimension too large for the kernels")
    return 2 * S * Ht + Ht + S


cdef Py_ssize_t _tm_record_size(Py_ssize_t L, Py_ssize_t S, Py_ssize_t Ht) except -1:
    _tm_theta_size(L, S, Ht)
    return S * Ht + 2 * Ht + 1


cdef int _tm_check_work(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t need) except -1:
    if rows < 1 or rows > 2147483647 or cols != need:
        raise ValueError(f"work has shape ({rows}, {cols}), expected (n_slots >= 1, {need})")
    return 0


def token_mixing_causal_chunk(Py_ssize_t L):
    """Positions per partial-sum chunk of the causal backward (csrc/token_mixing.h)."""
    if L < 1:
        raise ValueError("L must be >= 1")
    return token_mixing_causal_chunk_c(<size_t>L)


def token_mixing_causal_partial_size(int L, int E, int chunk):
    """Elements per sequence of the causal backward's partial buffer."""
    if L < 1 or E < 1 or chunk < 1:
        raise ValueError("L, E and chunk must be >= 1")
    return token_mixing_causal_partial_size_c(L, E, chunk)


def token_mixing_pool_forward(floating[:, ::1] means, const floating[:, :, ::1] x,
                              const int64_t[::1] lengths):
    """means (B, E) = mean of the valid rows of x (B, L, E)."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2]
    _check_dims((B, L, E))
    _check_lengths(lengths, B, L)
    _check_shape("means", (means.shape[0], means.shape[1]), (B, E))
    with nogil:
        if floating is float:
            token_mixing_pool_forward_f32(&means[0, 0], &x[0, 0, 0], &lengths[0], B, L, E)
        else:
            token_mixing_pool_forward_f64(&means[0, 0], &x[0, 0, 0], &lengths[0], B, L, E)


def token_mixing_pool_backward(floating[:, :, ::1] grad_input, const floating[:, ::1] dmeans,
                               const int64_t[::1] lengths):
    """grad_input (B, L, E) += dmeans[b] / lengths[b] on the valid rows."""
    cdef Py_ssize_t B = grad_input.shape[0], L = grad_input.shape[1], E = grad_input.shape[2]
    _check_dims((B, L, E))
    _check_lengths(lengths, B, L)
    _check_shape("dmeans", (dmeans.shape[0], dmeans.shape[1]), (B, E))
    with nogil:
        if floating is float:
            token_mixing_pool_backward_f32(&grad_input[0, 0, 0], &dmeans[0, 0], &lengths[0],
                                           B, L, E)
        else:
            token_mixing_pool_backward_f64(&grad_input[0, 0, 0], &dmeans[0, 0], &lengths[0],
                                           B, L, E)


def token_mixing_prefix_pool_forward(floating[:, :, ::1] means, const floating[:, :, ::1] x,
                                     const int64_t[::1] lengths):
    """means (B, L, E): prefix means of x on valid rows, 0 on padding rows."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2]
    _check_dims((B, L, E))
    _check_lengths(lengths, B, L)
    _check_shape("means", (means.shape[0], means.shape[1], means.shape[2]), (B, L, E))
    with nogil:
        if floating is float:
            token_mixing_prefix_pool_forward_f32(&means[0, 0, 0], &x[0, 0, 0], &lengths[0],
                                                 B, L, E)
        else:
            token_mixing_prefix_pool_forward_f64(&means[0, 0, 0], &x[0, 0, 0], &lengths[0],
                                                 B, L, E)


def token_mixing_prefix_pool_backward(floating[:, :, ::1] grad_input,
                                      const floating[:, :, ::1] dmeans,
                                      const int64_t[::1] lengths):
    """grad_input (B, L, E) += exact gradient of the prefix means given dmeans (B, L, E)."""
    cdef Py_ssize_t B = grad_input.shape[0], L = grad_input.shape[1], E = grad_input.shape[2]
    _check_dims((B, L, E))
    _check_lengths(lengths, B, L)
    _check_shape("dmeans", (dmeans.shape[0], dmeans.shape[1], dmeans.shape[2]), (B, L, E))
    with nogil:
        if floating is float:
            token_mixing_prefix_pool_backward_f32(&grad_input[0, 0, 0], &dmeans[0, 0, 0],
                                                  &lengths[0], B, L, E)
        else:
            token_mixing_prefix_pool_backward_f64(&grad_input[0, 0, 0], &dmeans[0, 0, 0],
                                                  &lengths[0], B, L, E)


def token_mixing_forward(floating[:, :, ::1] y, floating[:, :, ::1] act,
                         const floating[:, :, ::1] x, const floating[:, ::1] theta,
                         const int64_t[::1] lengths, int S, int Ht):
    """Bidirectional mixing: y (B, L, E), act (B, Ht, E) cached; theta (B, O)."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2]
    _check_dims((B, L, E))
    _check_lengths(lengths, B, L)
    cdef Py_ssize_t O = _tm_theta_size(L, S, Ht)
    _check_shape("y", (y.shape[0], y.shape[1], y.shape[2]), (B, L, E))
    _check_shape("act", (act.shape[0], act.shape[1], act.shape[2]), (B, Ht, E))
    _check_shape("theta", (theta.shape[0], theta.shape[1]), (B, O))
    with nogil:
        if floating is float:
            token_mixing_forward_f32(&y[0, 0, 0], &act[0, 0, 0], &x[0, 0, 0], &theta[0, 0],
                                     &lengths[0], B, L, E, S, Ht)
        else:
            token_mixing_forward_f64(&y[0, 0, 0], &act[0, 0, 0], &x[0, 0, 0], &theta[0, 0],
                                     &lengths[0], B, L, E, S, Ht)


def token_mixing_backward(floating[:, :, ::1] grad_input, floating[:, ::1] dtheta,
                          floating[:, ::1] work, const floating[:, :, ::1] grad_output,
                          const floating[:, :, ::1] x, const floating[:, ::1] theta,
                          const floating[:, :, ::1] act, const int64_t[::1] lengths, int S,
                          int Ht):
    """Bidirectional backward: grad_input (B, L, E) and dtheta (B, O) written in full;
    work (n_slots, Ht*E) scratch, one slot per thread that may run."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2]
    _check_dims((B, L, E))
    _check_lengths(lengths, B, L)
    cdef Py_ssize_t O = _tm_theta_size(L, S, Ht)
    _check_shape("grad_input", (grad_input.shape[0], grad_input.shape[1],
                                   grad_input.shape[2]), (B, L, E))
    _check_shape("grad_output", (grad_output.shape[0], grad_output.shape[1],
                                    grad_output.shape[2]), (B, L, E))
    _check_shape("act", (act.shape[0], act.shape[1], act.shape[2]), (B, Ht, E))
    _check_shape("theta", (theta.shape[0], theta.shape[1]), (B, O))
    _check_shape("dtheta", (dtheta.shape[0], dtheta.shape[1]), (B, O))
    _tm_check_work(work.shape[0], work.shape[1], Ht * E)
    cdef size_t n_slots = work.shape[0]
    with nogil:
        if floating is float:
            token_mixing_backward_f32(&grad_input[0, 0, 0], &dtheta[0, 0], &work[0, 0], n_slots,
                                      &grad_output[0, 0, 0], &x[0, 0, 0], &theta[0, 0],
                                      &act[0, 0, 0], &lengths[0], B, L, E, S, Ht)
        else:
            token_mixing_backward_f64(&grad_input[0, 0, 0], &dtheta[0, 0], &work[0, 0], n_slots,
                                      &grad_output[0, 0, 0], &x[0, 0, 0], &theta[0, 0],
                                      &act[0, 0, 0], &lengths[0], B, L, E, S, Ht)


def token_mixing_causal_forward(floating[:, :, ::1] y, floating[:, ::1] work,
                                const floating[:, :, ::1] x, const floating[:, :, ::1] theta,
                                const int64_t[::1] lengths, int S, int Ht):
    """Causal mixing: y (B, L, E); theta (B, L, P) one record per position (the causal layout of
    hypernetwork_theta_forward, P = hypernetwork_prefix_record(S, Ht)); work (n_slots, Ht*E)."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2]
    _check_dims((B, L, E))
    _check_lengths(lengths, B, L)
    cdef Py_ssize_t O = _tm_record_size(L, S, Ht)
    _check_shape("y", (y.shape[0], y.shape[1], y.shape[2]), (B, L, E))
    _check_shape("theta", (theta.shape[0], theta.shape[1], theta.shape[2]), (B, L, O))
    _tm_check_work(work.shape[0], work.shape[1], Ht * E)
    cdef size_t n_slots = work.shape[0]
    with nogil:
        if floating is float:
            token_mixing_causal_forward_f32(&y[0, 0, 0], &work[0, 0], n_slots, &x[0, 0, 0],
                                            &theta[0, 0, 0], &lengths[0], B, L, E, S, Ht)
        else:
            token_mixing_causal_forward_f64(&y[0, 0, 0], &work[0, 0], n_slots, &x[0, 0, 0],
                                            &theta[0, 0, 0], &lengths[0], B, L, E, S, Ht)


def token_mixing_causal_backward(floating[:, :, ::1] grad_input, floating[:, :, ::1] dtheta,
                                 floating[:, ::1] partial, floating[:, ::1] work,
                                 const floating[:, :, ::1] grad_output,
                                 const floating[:, :, ::1] x, const floating[:, :, ::1] theta,
                                 const int64_t[::1] lengths, int S, int Ht, int chunk):
    """Causal backward: grad_input (B, L, E) written, dtheta (B, L, P) as the records the
    hypernetwork reads (see token_mixing.c); partial
    (B, token_mixing_causal_partial_size(L, E, chunk)) and work (n_slots, Ht*E) scratch."""
    cdef Py_ssize_t B = x.shape[0], L = x.shape[1], E = x.shape[2]
    _check_dims((B, L, E))
    _check_lengths(lengths, B, L)
    cdef Py_ssize_t O = _tm_record_size(L, S, Ht)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    cdef Py_ssize_t per_seq = token_mixing_causal_partial_size_c(L, E, chunk)
    _check_shape("grad_input", (grad_input.shape[0], grad_input.shape[1],
                                   grad_input.shape[2]), (B, L, E))
    _check_shape("grad_output", (grad_output.shape[0], grad_output.shape[1],
                                    grad_output.shape[2]), (B, L, E))
    _check_shape("theta", (theta.shape[0], theta.shape[1], theta.shape[2]), (B, L, O))
    _check_shape("dtheta", (dtheta.shape[0], dtheta.shape[1], dtheta.shape[2]), (B, L, O))
    _check_shape("partial", (partial.shape[0], partial.shape[1]), (B, per_seq))
    _tm_check_work(work.shape[0], work.shape[1], Ht * E)
    cdef size_t n_slots = work.shape[0]
    with nogil:
        if floating is float:
            token_mixing_causal_backward_f32(&grad_input[0, 0, 0], &dtheta[0, 0, 0],
                                             &partial[0, 0], &work[0, 0], n_slots,
                                             &grad_output[0, 0, 0], &x[0, 0, 0],
                                             &theta[0, 0, 0], &lengths[0], B, L, E, S, Ht,
                                             chunk)
        else:
            token_mixing_causal_backward_f64(&grad_input[0, 0, 0], &dtheta[0, 0, 0],
                                             &partial[0, 0], &work[0, 0], n_slots,
                                             &grad_output[0, 0, 0], &x[0, 0, 0],
                                             &theta[0, 0, 0], &lengths[0], B, L, E, S, Ht,
                                             chunk)
