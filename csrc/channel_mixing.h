#ifndef HYPERMIXER_CHANNEL_MIXING_H
#define HYPERMIXER_CHANNEL_MIXING_H
#include "common.h"

/* Y = X + relu(X @ w1 + b1) @ w2 + b2 per valid token (SPEC section 2; also the
 * Transformer's FeedForward). See channel_mixing.c for shapes; the *_team_* forms do the same
 * work shared by the threads of the caller's parallel region. */
#define HM_CHANNEL_MIXING_FORWARD(R, name)                                                    \
    void name(R* y, R* xp, R* hidden, R* mixed, const R* x, const int64_t* offsets,           \
              const R* w1, const R* b1, const R* w2, const R* b2, size_t B, size_t L,         \
              size_t E, size_t H)
HM_CHANNEL_MIXING_FORWARD(float, channel_mixing_forward_f32);
HM_CHANNEL_MIXING_FORWARD(double, channel_mixing_forward_f64);
HM_CHANNEL_MIXING_FORWARD(float, channel_mixing_forward_team_f32);
HM_CHANNEL_MIXING_FORWARD(double, channel_mixing_forward_team_f64);
#undef HM_CHANNEL_MIXING_FORWARD

#define HM_CHANNEL_MIXING_BACKWARD(R, name)                                                   \
    void name(R* grad_input, R* dw1, R* db1, R* dw2, R* db2, R* gp, R* dhidden,               \
              const R* grad_output, const R* xp, const R* hidden, const int64_t* offsets,     \
              const R* w1, const R* w2, size_t B, size_t L, size_t E, size_t H)
HM_CHANNEL_MIXING_BACKWARD(float, channel_mixing_backward_f32);
HM_CHANNEL_MIXING_BACKWARD(double, channel_mixing_backward_f64);
HM_CHANNEL_MIXING_BACKWARD(float, channel_mixing_backward_team_f32);
HM_CHANNEL_MIXING_BACKWARD(double, channel_mixing_backward_team_f64);
#undef HM_CHANNEL_MIXING_BACKWARD

#endif
