#ifndef HYPERMIXER_HYPERNETWORK_H
#define HYPERMIXER_HYPERNETWORK_H
#include "common.h"

/* Row-wise MLP theta = relu(m @ w1 + b1) @ w2 + b2 on a padded batch of rows; see
 * hypernetwork.c for shapes and the padding rules. */
#define HM_DECLARE_HYPERNETWORK(R, S)                                                        \
    void hypernetwork_forward_##S(R* out, R* pre, R* hidden, const R* x,                     \
                                  const int64_t* lengths, const R* w1, const R* b1,          \
                                  const R* w2, const R* b2, int B, int rows, int E, int H,   \
                                  int O);                                                    \
    void hypernetwork_backward_##S(R* grad_input, R* dw1, R* db1, R* dw2, R* db2, R* dpre,   \
                                   const R* grad_output, const R* x, const R* pre,           \
                                   const R* hidden, const int64_t* lengths, const R* w1,     \
                                   const R* w2, int B, int rows, int E, int H, int O);
HM_DECLARE_HYPERNETWORK(float, f32)
HM_DECLARE_HYPERNETWORK(double, f64)
#undef HM_DECLARE_HYPERNETWORK

#endif
