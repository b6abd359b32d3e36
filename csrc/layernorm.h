#ifndef HYPERMIXER_LAYERNORM_H
#define HYPERMIXER_LAYERNORM_H
#include "common.h"

/* Per-token layer norm over the last axis (SPEC section 2); see layernorm.c for shapes. */
#define HM_DECLARE_LAYERNORM(R, S)                                                          \
    void layernorm_forward_##S(R* y, R* xhat, R* mean, R* rstd, const R* x,                   \
                               const int64_t* lengths, const R* gamma, const R* beta, int B,  \
                               int L, int E);                                                 \
    void layernorm_backward_##S(R* grad_input, R* dgamma, R* dbeta, R* partial,               \
                                const R* grad_output, const R* xhat, const R* rstd,           \
                                const int64_t* lengths, const R* gamma, int B, int L, int E);
HM_DECLARE_LAYERNORM(float, f32)
HM_DECLARE_LAYERNORM(double, f64)
#undef HM_DECLARE_LAYERNORM

/* Number of (2, E) partial-sum blocks the backward workspace `partial` must hold for B*L
 * rows: the rows are cut into tiles of HM_TILE_ROWS, whatever the thread count. */
size_t layernorm_partial_tiles(size_t rows);

#endif
