#ifndef HYPERMIXER_HYPERNETWORK_H
#define HYPERMIXER_HYPERNETWORK_H
#include "common.h"

/* Row-wise MLP theta = relu(m @ w1 + b1) @ w2 + b2 on a padded batch of rows; see
 * hypernetwork.c for shapes and the padding rules. hypernetwork_theta_*: the same MLP
 * generating only the token-mixing weights an input of L rows uses (compact layouts, see
 * hypernetwork.c). */
#define HM_HYPERNETWORK_FORWARD(R, name)                                                      \
    void name(R* out, R* pre, R* hidden, const R* x, const int64_t* lengths, const R* w1,     \
              const R* b1, const R* w2, const R* b2, size_t B, size_t rows, size_t E,         \
              size_t H, size_t O)
HM_HYPERNETWORK_FORWARD(float, hypernetwork_forward_f32);
HM_HYPERNETWORK_FORWARD(double, hypernetwork_forward_f64);
#undef HM_HYPERNETWORK_FORWARD

#define HM_HYPERNETWORK_BACKWARD(R, name)                                                     \
    void name(R* grad_input, R* dw1, R* db1, R* dw2, R* db2, R* dpre, const R* grad_output,   \
              const R* x, const R* pre, const R* hidden, const int64_t* lengths, const R* w1, \
              const R* w2, size_t B, size_t rows, size_t E, size_t H, size_t O)
HM_HYPERNETWORK_BACKWARD(float, hypernetwork_backward_f32);
HM_HYPERNETWORK_BACKWARD(double, hypernetwork_backward_f64);
#undef HM_HYPERNETWORK_BACKWARD

#define HM_HYPERNETWORK_THETA_FORWARD(R, name)                                                \
    void name(R* theta, R* pre, R* hidden, R* wcol, const R* x, const int64_t* lengths,       \
              const R* w1, const R* b1, const R* w2, const R* b2, size_t B, size_t rows,      \
              size_t E, size_t H, size_t S, size_t Ht, size_t L, int causal)
HM_HYPERNETWORK_THETA_FORWARD(float, hypernetwork_theta_forward_f32);
HM_HYPERNETWORK_THETA_FORWARD(double, hypernetwork_theta_forward_f64);
#undef HM_HYPERNETWORK_THETA_FORWARD

#define HM_HYPERNETWORK_THETA_BACKWARD(R, name)                                               \
    void name(R* grad_input, R* dw1, R* db1, R* dw2, R* db2, R* dpre, R* wcol,                \
              const R* dtheta, const R* x, const R* pre, const R* hidden,                     \
              const int64_t* lengths, const R* w1, const R* w2, size_t B, size_t rows,        \
              size_t E, size_t H, size_t S, size_t Ht, size_t L, int causal)
HM_HYPERNETWORK_THETA_BACKWARD(float, hypernetwork_theta_backward_f32);
HM_HYPERNETWORK_THETA_BACKWARD(double, hypernetwork_theta_backward_f64);
#undef HM_HYPERNETWORK_THETA_BACKWARD

/* Causal token mixing: positions whose generated W1 rows are produced together (one gemm up
 * to the tile's last row). The token-mixing backward zeroes record t's W1 rows past t up to
 * the end of t's tile so the hypernetwork's products over a tile need no mask. */
#define HM_PREFIX_TILE 8

/* Values per position in the causal theta layout: W1 (L, Ht) | c1 (Ht) | W2[:, t] (Ht) | c2[t]. */
size_t hypernetwork_prefix_record(size_t L, size_t Ht);

/* Rows of H values the theta kernels' scratch `wcol` must hold. */
size_t hypernetwork_theta_scratch_rows(size_t L, size_t Ht, int causal);

#endif
