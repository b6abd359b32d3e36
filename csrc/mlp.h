#ifndef HYPERMIXER_MLP_H
#define HYPERMIXER_MLP_H
#include "common.h"

/* The two-layer perceptron that the hypernetwork, the channel-mixing MLP and the
 * Transformer's feed-forward all are, on M consecutive rows (row-major):
 *   pre = x @ w1 + b1,  hidden = relu(pre),  out = hidden @ w2 (+ b2)
 * x (M, E); w1 (E, H); b1 (H,); w2 (H, O); b2 (O,) or NULL; pre, hidden (M, H); out (M, O).
 * See mlp.c for each function's contract; the *_team_* forms do the same work shared by the
 * threads of the caller's parallel region. */
/* Whether the public functions below give an MLP of these sizes all threads (see mlp.c) */
int mlp_wants_threads(size_t M, size_t E, size_t H, size_t O);

#define HM_MLP_FIRST_FORWARD(R, name)                                                         \
    void name(R* pre, R* hidden, const R* x, size_t M, const R* w1, const R* b1, size_t E,    \
              size_t H)
HM_MLP_FIRST_FORWARD(float, mlp_first_forward_f32);
HM_MLP_FIRST_FORWARD(double, mlp_first_forward_f64);
HM_MLP_FIRST_FORWARD(float, mlp_first_forward_team_f32);
HM_MLP_FIRST_FORWARD(double, mlp_first_forward_team_f64);
#undef HM_MLP_FIRST_FORWARD

#define HM_MLP_FORWARD(R, name)                                                               \
    void name(R* out, R* pre, R* hidden, const R* x, size_t M, const R* w1, const R* b1,      \
              const R* w2, const R* b2, size_t E, size_t H, size_t O)
HM_MLP_FORWARD(float, mlp_forward_f32);
HM_MLP_FORWARD(double, mlp_forward_f64);
HM_MLP_FORWARD(float, mlp_forward_team_f32);
HM_MLP_FORWARD(double, mlp_forward_team_f64);
#undef HM_MLP_FORWARD

#define HM_MLP_FIRST_BACKWARD(R, name)                                                        \
    void name(R* grad_input, R input_beta, R* dw1, R* db1, int accumulate, const R* dpre,     \
              const R* x, size_t M, const R* w1, size_t E, size_t H)
HM_MLP_FIRST_BACKWARD(float, mlp_first_backward_f32);
HM_MLP_FIRST_BACKWARD(double, mlp_first_backward_f64);
HM_MLP_FIRST_BACKWARD(float, mlp_first_backward_team_f32);
HM_MLP_FIRST_BACKWARD(double, mlp_first_backward_team_f64);
#undef HM_MLP_FIRST_BACKWARD

#define HM_MLP_BACKWARD(R, name)                                                              \
    void name(R* grad_input, R input_beta, R* dw1, R* db1, R* dw2, R* db2, int accumulate,    \
              R* dhidden, const R* grad_output, const R* x, const R* hidden, size_t M,        \
              const R* w1, const R* w2, size_t E, size_t H, size_t O)
HM_MLP_BACKWARD(float, mlp_backward_f32);
HM_MLP_BACKWARD(double, mlp_backward_f64);
HM_MLP_BACKWARD(float, mlp_backward_team_f32);
HM_MLP_BACKWARD(double, mlp_backward_team_f64);
#undef HM_MLP_BACKWARD

#endif
