/* Adam update, in place (SPEC section 2). */
#ifndef REAL
#define HM_TEMPLATE_FILE "adam.c"
#include "template.h"
#else

/* param, m, v, grad are (n,) flat; step >= 1 is the count of updates including this one.
 * Same operation order as the NumPy reference, in REAL precision. */
HM_SIMD
void F(adam_update)(REAL* param, REAL* m, REAL* v, const REAL* grad, size_t n, double lr,
                    double beta1, double beta2, double eps, long step)
{
    const REAL b1 = (REAL)beta1, b2 = (REAL)beta2;
    const REAL one_minus_b1 = (REAL)(1.0 - beta1), one_minus_b2 = (REAL)(1.0 - beta2);
    const REAL correction1 = (REAL)(1.0 - pow(beta1, (double)step));
    const REAL correction2 = (REAL)(1.0 - pow(beta2, (double)step));
    const REAL rate = (REAL)lr, epsilon = (REAL)eps;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        const REAL g = grad[i];
        m[i] = m[i] * b1 + one_minus_b1 * g;
        v[i] = v[i] * b2 + one_minus_b2 * g * g;
        const REAL m_hat = m[i] / correction1;
        const REAL v_hat = v[i] / correction2;
        param[i] -= rate * m_hat / (SQRT(v_hat) + epsilon);
    }
}

#endif
