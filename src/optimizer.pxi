cdef extern from "optimizer.h" nogil:
    enum: HM_NORM_BLOCK
    double gradient_norm_f32(const float* grad, size_t n, double* partial)
    double gradient_norm_f64(const double* grad, size_t n, double* partial)
    double adam_step_f32(float* param, float* m, float* v, const float* grad, double* partial,
                         size_t n, double lr, double beta1, double beta2, double eps,
                         long step, double max_norm)
    double adam_step_f64(double* param, double* m, double* v, const double* grad,
                         double* partial, size_t n, double lr, double beta1, double beta2,
                         double eps, long step, double max_norm)


def norm_partial_size(size_t n):
    """Length of the float64 workspace that gradient_norm/adam_step need for n entries."""
    return max(1, (n + HM_NORM_BLOCK - 1) // HM_NORM_BLOCK)


def gradient_norm(const floating[::1] grad, double[::1] partial):
    """Global L2 norm of a flat gradient, thread-count independent (float64 block sums)."""
    cdef size_t n = grad.shape[0]
    cdef double norm = 0.0
    if <size_t>partial.shape[0] < <size_t>norm_partial_size(n):
        raise ValueError("gradient_norm: partial workspace too short")
    if n == 0:
        return 0.0
    with nogil:
        if floating is float:
            norm = gradient_norm_f32(&grad[0], n, &partial[0])
        else:
            norm = gradient_norm_f64(&grad[0], n, &partial[0])
    return norm


def adam_step(floating[::1] param, floating[::1] m, floating[::1] v, const floating[::1] grad,
              double[::1] partial, double lr, double beta1, double beta2, double eps,
              long step, double max_norm):
    """One fused step over flat arrays of equal length: optional global-norm clipping
    (max_norm >= 0), then Adam. Returns the norm before clipping (0 when not computed)."""
    cdef size_t n = param.shape[0]
    cdef double norm = 0.0
    if m.shape[0] != n or v.shape[0] != n or grad.shape[0] != n:
        raise ValueError("adam_step: arrays differ in length")
    if <size_t>partial.shape[0] < <size_t>norm_partial_size(n):
        raise ValueError("adam_step: partial workspace too short")
    if n == 0:
        return 0.0
    with nogil:
        if floating is float:
            norm = adam_step_f32(&param[0], &m[0], &v[0], &grad[0], &partial[0], n, lr,
                                 beta1, beta2, eps, step, max_norm)
        else:
            norm = adam_step_f64(&param[0], &m[0], &v[0], &grad[0], &partial[0], n, lr,
                                 beta1, beta2, eps, step, max_norm)
    return norm
