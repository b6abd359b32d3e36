#ifndef HYPERMIXER_LAYERNORM_H
#define HYPERMIXER_LAYERNORM_H
#include "common.h"

/* Per-token layer norm over the last axis (SPEC section 2); see layernorm.c for shapes. */
#define HM_LAYERNORM_FORWARD(R, name)                                                         \
    void name(R* y, R* xhat, R* mean, R* rstd, const R* x, const int64_t* lengths,            \
              const R* gamma, const R* beta, size_t B, size_t L, size_t E)
HM_LAYERNORM_FORWARD(float, layernorm_forward_f32);
HM_LAYERNORM_FORWARD(double, layernorm_forward_f64);
/* the same work shared by the threads of the caller's parallel region (see layernorm.c) */
HM_LAYERNORM_FORWARD(float, layernorm_forward_team_f32);
HM_LAYERNORM_FORWARD(double, layernorm_forward_team_f64);
#undef HM_LAYERNORM_FORWARD

#define HM_LAYERNORM_BACKWARD(R, name)                                                        \
    void name(R* grad_input, R* dgamma, R* dbeta, R* partial, const R* grad_output,           \
              const R* xhat, const R* rstd, const int64_t* lengths, const R* gamma, size_t B, \
              size_t L, size_t E)
HM_LAYERNORM_BACKWARD(float, layernorm_backward_f32);
HM_LAYERNORM_BACKWARD(double, layernorm_backward_f64);
HM_LAYERNORM_BACKWARD(float, layernorm_backward_team_f32);
HM_LAYERNORM_BACKWARD(double, layernorm_backward_team_f64);
#undef HM_LAYERNORM_BACKWARD

/* Number of (2, E) partial-sum blocks the backward workspace `partial` must hold for B*L
 * rows: the rows are cut into tiles of HM_TILE_ROWS, whatever the thread count. */
size_t layernorm_partial_tiles(size_t rows);

#endif
