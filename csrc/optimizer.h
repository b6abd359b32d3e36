#ifndef HYPERMIXER_OPTIMIZER_H
#define HYPERMIXER_OPTIMIZER_H
#include "common.h"

/* Gradient entries summed together (in float64) by one thread in the global-norm pass. The
 * blocks are fixed, never derived from the thread count, and their sums are added in block
 * order, so the norm has the same bits for any number of threads. */
#define HM_NORM_BLOCK 4096

#define HM_DECLARE_OPTIMIZER(R, S)                                                         \
    double gradient_norm_##S(const R* grad, size_t n, double* partial);                   \
    double adam_step_##S(R* param, R* m, R* v, const R* grad, double* partial, size_t n,  \
                         double lr, double beta1, double beta2, double eps, long step,    \
                         double max_norm);
HM_DECLARE_OPTIMIZER(float, f32)
HM_DECLARE_OPTIMIZER(double, f64)
#undef HM_DECLARE_OPTIMIZER

#endif
