#ifndef HYPERMIXER_LOSS_H
#define HYPERMIXER_LOSS_H
#include "common.h"

#define HM_CROSS_ENTROPY_FORWARD(R, name)                                                     \
    void name(double* loss, double* row_loss, R* probs, const R* logits,                      \
              const int64_t* targets, const int64_t* lengths, size_t B, size_t L, size_t V)
HM_CROSS_ENTROPY_FORWARD(float, cross_entropy_forward_f32);
HM_CROSS_ENTROPY_FORWARD(double, cross_entropy_forward_f64);
#undef HM_CROSS_ENTROPY_FORWARD

#define HM_CROSS_ENTROPY_BACKWARD(R, name)                                                    \
    void name(R* grad, const R* probs, const int64_t* targets, const int64_t* lengths,        \
              size_t B, size_t L, size_t V)
HM_CROSS_ENTROPY_BACKWARD(float, cross_entropy_backward_f32);
HM_CROSS_ENTROPY_BACKWARD(double, cross_entropy_backward_f64);
#undef HM_CROSS_ENTROPY_BACKWARD

#endif
