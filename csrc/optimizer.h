#ifndef HYPERMIXER_OPTIMIZER_H
#define HYPERMIXER_OPTIMIZER_H
#include "common.h"

/* Gradient entries summed together (in float64) by one thread in the global-norm pass. The
 * blocks are fixed, never derived from the thread count, and their sums are added in block
 * order, so the norm has the same bits for any number of threads. */
#define HM_NORM_BLOCK 4096

#define HM_GRADIENT_NORM(R, name)                                                             \
    double name(const R* grad, size_t n, double* partial)
HM_GRADIENT_NORM(float, gradient_norm_f32);
HM_GRADIENT_NORM(double, gradient_norm_f64);
#undef HM_GRADIENT_NORM

#define HM_ADAM_STEP(R, name)                                                                 \
    double name(R* param, R* m, R* v, const R* grad, double* partial, size_t n, double lr,    \
                double beta1, double beta2, double eps, long step, double max_norm)
HM_ADAM_STEP(float, adam_step_f32);
HM_ADAM_STEP(double, adam_step_f64);
#undef HM_ADAM_STEP

#endif
