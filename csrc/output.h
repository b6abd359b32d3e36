#ifndef HYPERMIXER_OUTPUT_H
#define HYPERMIXER_OUTPUT_H
#include "common.h"

#define HM_DECLARE_OUTPUT(R, S)                                                             \
    void output_forward_##S(R* logits, const R* x, const R* w, const R* bias,                 \
                            const int64_t* lengths, size_t B, size_t L, size_t E, size_t V);  \
    void output_backward_##S(R* dx, R* dw, R* dbias, R* xp, R* gp, const R* grad,             \
                             const R* x, const R* w, const int64_t* lengths, size_t B,        \
                             size_t L, size_t E, size_t V);
HM_DECLARE_OUTPUT(float, f32)
HM_DECLARE_OUTPUT(double, f64)
#undef HM_DECLARE_OUTPUT

#endif
