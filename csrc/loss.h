#ifndef HYPERMIXER_LOSS_H
#define HYPERMIXER_LOSS_H
#include "common.h"

#define HM_DECLARE_LOSS(R, S)                                                                \
    void cross_entropy_forward_##S(double* loss, double* row_loss, R* probs, const R* logits,  \
                                   const int64_t* targets, const int64_t* lengths, size_t B,   \
                                   size_t L, size_t V);                                        \
    void cross_entropy_backward_##S(R* grad, const R* probs, const int64_t* targets,           \
                                    const int64_t* lengths, size_t B, size_t L, size_t V);
HM_DECLARE_LOSS(float, f32)
HM_DECLARE_LOSS(double, f64)
#undef HM_DECLARE_LOSS

#endif
