#ifndef HYPERMIXER_HYPERNETWORK_H
#define HYPERMIXER_HYPERNETWORK_H
#include "common.h"

/* Row-wise MLP theta = relu(m @ w1 + b1) @ w2 + b2 on a padded batch of rows; see
 * hypernetwork.c for shapes and the padding rules. hypernetwork_theta_*: the same MLP
 * generating only the token-mixing weights an input of L rows uses (compact layouts, see
 * hypernetwork.c). */
#define HM_DECLARE_HYPERNETWORK(R, S)                                                        \
    void hypernetwork_forward_##S(R* out, R* pre, R* hidden, const R* x,                     \
                                  const int64_t* lengths, const R* w1, const R* b1,          \
                                  const R* w2, const R* b2, int B, int rows, int E, int H,   \
                                  int O);                                                    \
    void hypernetwork_backward_##S(R* grad_input, R* dw1, R* db1, R* dw2, R* db2, R* dpre,   \
                                   const R* grad_output, const R* x, const R* pre,           \
                                   const R* hidden, const int64_t* lengths, const R* w1,     \
                                   const R* w2, int B, int rows, int E, int H, int O);      \
    void hypernetwork_theta_forward_##S(R* theta, R* pre, R* hidden, R* wcol, const R* x,    \
                                        const int64_t* lengths, const R* w1, const R* b1,    \
                                        const R* w2, const R* b2, int B, int rows, int E,    \
                                        int H, int S_, int Ht, int L, int causal);           \
    void hypernetwork_theta_backward_##S(R* grad_input, R* dw1, R* db1, R* dw2, R* db2,      \
                                         R* dpre, R* wcol, const R* dtheta, const R* x,      \
                                         const R* pre, const R* hidden,                      \
                                         const int64_t* lengths, const R* w1, const R* w2,   \
                                         int B, int rows, int E, int H, int S_, int Ht,      \
                                         int L, int causal);
HM_DECLARE_HYPERNETWORK(float, f32)
HM_DECLARE_HYPERNETWORK(double, f64)
#undef HM_DECLARE_HYPERNETWORK

/* Causal token mixing: positions whose generated W1 rows are produced together (one gemm up
 * to the tile's last row). The token-mixing backward zeroes record t's W1 rows past t up to
 * the end of t's tile so the hypernetwork's products over a tile need no mask. */
#define HM_PREFIX_TILE 8

/* Values per position in the causal theta layout: W1 (L, Ht) | c1 (Ht) | W2[:, t] (Ht) | c2[t]. */
size_t hypernetwork_prefix_record(size_t L, size_t Ht);

/* Rows of H values the theta kernels' scratch `wcol` must hold. */
size_t hypernetwork_theta_scratch_rows(size_t L, size_t Ht, int causal);

#endif
