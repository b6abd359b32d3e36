#ifndef HYPERMIXER_OUTPUT_H
#define HYPERMIXER_OUTPUT_H
#include "common.h"

#define HM_OUTPUT_FORWARD(R, name)                                                            \
    void name(R* logits, const R* x, const R* w, const R* bias, const int64_t* lengths,       \
              size_t B, size_t L, size_t E, size_t V)
HM_OUTPUT_FORWARD(float, output_forward_f32);
HM_OUTPUT_FORWARD(double, output_forward_f64);
#undef HM_OUTPUT_FORWARD

#define HM_OUTPUT_BACKWARD(R, name)                                                           \
    void name(R* dx, R* dw, R* dbias, R* xp, R* gp, const R* grad, const R* x, const R* w,    \
              const int64_t* lengths, size_t B, size_t L, size_t E, size_t V)
HM_OUTPUT_BACKWARD(float, output_backward_f32);
HM_OUTPUT_BACKWARD(double, output_backward_f64);
#undef HM_OUTPUT_BACKWARD

#endif
