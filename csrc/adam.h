#ifndef HYPERMIXER_ADAM_H
#define HYPERMIXER_ADAM_H
#include "common.h"

#define HM_DECLARE_ADAM(R, S)                                                        \
    void adam_update_##S(R* param, R* m, R* v, const R* grad, size_t n, double lr,     \
                         double beta1, double beta2, double eps, long step);
HM_DECLARE_ADAM(float, f32)
HM_DECLARE_ADAM(double, f64)
#undef HM_DECLARE_ADAM

#endif
