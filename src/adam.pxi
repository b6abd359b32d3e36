cdef extern from "adam.h" nogil:
    void adam_update_f32(float* param, float* m, float* v, const float* grad, size_t n,
                         double lr, double beta1, double beta2, double eps, long step)
    void adam_update_f64(double* param, double* m, double* v, const double* grad, size_t n,
                         double lr, double beta1, double beta2, double eps, long step)


def adam_update(floating[::1] param, floating[::1] m, floating[::1] v,
                const floating[::1] grad, double lr, double beta1, double beta2, double eps,
                long step):
    """One in-place Adam step on flat arrays of equal length."""
    cdef size_t n = param.shape[0]
    if m.shape[0] != n or v.shape[0] != n or grad.shape[0] != n:
        raise ValueError("adam_update: arrays differ in length")
    if n == 0:
        return
    with nogil:
        if floating is float:
            adam_update_f32(&param[0], &m[0], &v[0], &grad[0], n, lr, beta1, beta2, eps, step)
        else:
            adam_update_f64(&param[0], &m[0], &v[0], &grad[0], n, lr, beta1, beta2, eps, step)
