/* The optimizer step over a whole model's flat parameter buffer, fused: global gradient norm,
 * clipping and Adam (SPEC section 2) in one call. */
#ifndef REAL
#include "optimizer.h"
#define HM_TEMPLATE_FILE "optimizer.c"
#include "template.h"
#else

/* Below this many entries a step runs on one thread: a parallel region costs more. */
#ifndef HM_OPTIMIZER_PARALLEL
#define HM_OPTIMIZER_PARALLEL 65536
#endif

/* grad (n,), partial (ceil(n / HM_NORM_BLOCK),) float64 workspace.
 * Returns sqrt(sum grad[i]^2): each block summed in float64 with 8 fixed lanes, the block sums
 * added in block order, so the result does not depend on the thread count. */
HM_SIMD
double KERNEL_NAME(gradient_norm_f32, gradient_norm_f64)(
    const REAL* grad, size_t n, double* partial)
{
    const size_t blocks = (n + HM_NORM_BLOCK - 1) / HM_NORM_BLOCK;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
        if (n > HM_OPTIMIZER_PARALLEL)
    for (size_t b = 0; b < blocks; b++) {
        const size_t i0 = b * HM_NORM_BLOCK;
        const size_t i1 = i0 + HM_NORM_BLOCK < n ? i0 + HM_NORM_BLOCK : n;
        double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        size_t i = i0;
        for (; i + 8 <= i1; i += 8) {
            for (int j = 0; j < 8; j++) {
                const double g = (double)grad[i + j];
                lane[j] += g * g;
            }
        }
        for (; i < i1; i++) {
            const double g = (double)grad[i];
            lane[0] += g * g;
        }
        partial[b] = ((lane[0] + lane[1]) + (lane[2] + lane[3]))
                   + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    }
    double total = 0.0;
    for (size_t b = 0; b < blocks; b++) {
        total += partial[b];
    }
    return sqrt(total);
}

/* param, m, v, grad (n,) flat; partial as for gradient_norm; step >= 1 counts this update.
 * max_norm < 0: no norm pass and no clipping (returns 0). Otherwise pass 1 computes the global
 * norm; a non-finite norm updates nothing (the caller reports it); a norm above max_norm
 * scales every gradient by max_norm / norm (rounded to REAL) before pass 2, the Adam update.
 * Returns the norm before clipping. Same operation order as the NumPy reference. */
HM_SIMD
double KERNEL_NAME(adam_step_f32, adam_step_f64)(
    REAL* param, REAL* m, REAL* v, const REAL* grad, double* partial, size_t n, double lr,
    double beta1, double beta2, double eps, long step, double max_norm)
{
    double norm = 0.0;
    int clip = 0;
    REAL scale = 1;
    if (max_norm >= 0) {
        norm = F(gradient_norm)(grad, n, partial);
        if (!isfinite(norm)) {
            return norm;
        }
        if (norm > max_norm) {
            clip = 1;
            scale = (REAL)(max_norm / norm);
        }
    }
    const REAL b1 = (REAL)beta1, b2 = (REAL)beta2;
    const REAL one_minus_b1 = (REAL)(1.0 - beta1), one_minus_b2 = (REAL)(1.0 - beta2);
    const REAL correction1 = (REAL)(1.0 - pow(beta1, (double)step));
    const REAL correction2 = (REAL)(1.0 - pow(beta2, (double)step));
    const REAL rate = (REAL)lr, epsilon = (REAL)eps;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
        if (n > HM_OPTIMIZER_PARALLEL)
    for (size_t i = 0; i < n; i++) {
        const REAL g = clip ? grad[i] * scale : grad[i];
        m[i] = m[i] * b1 + one_minus_b1 * g;
        v[i] = v[i] * b2 + one_minus_b2 * g * g;
        const REAL m_hat = m[i] / correction1;
        const REAL v_hat = v[i] / correction2;
        param[i] -= rate * m_hat / (SQRT(v_hat) + epsilon);
    }
    return norm;
}

#endif
