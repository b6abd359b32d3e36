#ifndef HYPERMIXER_CHANNEL_MIXING_H
#define HYPERMIXER_CHANNEL_MIXING_H
#include "common.h"

/* Y = X + relu(X @ w1 + b1) @ w2 + b2 per valid token (SPEC section 2; also the
 * Transformer's FeedForward). See channel_mixing.c for shapes. */
#define HM_DECLARE_CHANNEL_MIXING(R, S)                                                      \
    void channel_mixing_forward_##S(R* y, R* xp, R* hidden, R* mixed, const R* x,              \
                                    const int64_t* offsets, const R* w1, const R* b1,          \
                                    const R* w2, const R* b2, int B, int L, int E, int H);     \
    void channel_mixing_backward_##S(R* grad_input, R* dw1, R* db1, R* dw2, R* db2, R* gp,     \
                                     R* dhidden, const R* grad_output, const R* xp,            \
                                     const R* hidden, const int64_t* offsets, const R* w1,     \
                                     const R* w2, int B, int L, int E, int H);
HM_DECLARE_CHANNEL_MIXING(float, f32)
HM_DECLARE_CHANNEL_MIXING(double, f64)
#undef HM_DECLARE_CHANNEL_MIXING

#endif
