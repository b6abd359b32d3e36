/* The two-layer perceptron shared by hypernetwork.c and channel_mixing.c (see mlp.h).
 *
 * Every product is one gemm over the M rows (which never splits a sum, see gemm.h) and every
 * bias gradient a column sum in a fixed order, so the results do not depend on the thread
 * count. */
#ifndef REAL
#include "mlp.h"
#include "gemm.h"
#include "reduce.h"
#include <string.h>
/* Whether an MLP over M rows opens its region with all threads: when gemm would split one of
 * its products or its elementwise pass is over HM_PARALLEL_MIN; small MLPs (the tiny blocks)
 * stay on the calling thread, as their steps did one by one. Changes no result, only who
 * computes it. */
int mlp_wants_threads(size_t M, size_t E, size_t H, size_t O)
{
    return gemm_would_split(M, H, E) || gemm_would_split(M, O, H) || M * H > HM_PARALLEL_MIN;
}

#define HM_TEMPLATE_FILE "mlp.c"
#include "template.h"
#else

/* Each function has a team form (name_team_*): the same work shared by the threads of the
 * caller's parallel region, every step an orphaned omp for (serial steps on one thread of
 * them), for kernels that run several steps in one region. The public functions run their
 * team form inside one region of their own. */

/* First layer: hidden = relu(x @ w1 + b1). pre receives x @ w1 + b1 when not NULL (the
 * hypernetwork keeps it); without it bias and ReLU run inside the gemm's epilogue. */
void KERNEL_NAME(mlp_first_forward_f32, mlp_first_forward_f64)(
    REAL* pre, REAL* hidden, const REAL* x, size_t M, const REAL* w1, const REAL* b1, size_t E,
    size_t H)
{
    HM_RUN_TEAM(mlp_wants_threads(M, E, H, 1),
                F(mlp_first_forward_team)(pre, hidden, x, M, w1, b1, E, H));
}

HM_SIMD
void KERNEL_NAME(mlp_first_forward_team_f32, mlp_first_forward_team_f64)(
    REAL* pre, REAL* hidden, const REAL* x, size_t M, const REAL* w1, const REAL* b1, size_t E,
    size_t H)
{
    if (pre == NULL) {
        F(gemm_bias_act_team)(0, 0, M, H, E, x, E, w1, H, 0, hidden, H, b1, 1);
        return;
    }
    F(gemm_bias_act_team)(0, 0, M, H, E, x, E, w1, H, 0, pre, H, b1, 0);
    const size_t count = M * H;
    #pragma omp for schedule(static)
    for (size_t i = 0; i < count; i++) {
        hidden[i] = HM_RELU(pre[i]);
    }
}

/* Both layers: out = hidden @ w2 + b2 (b2 NULL: no bias, the caller adds it). */
void KERNEL_NAME(mlp_forward_f32, mlp_forward_f64)(
    REAL* out, REAL* pre, REAL* hidden, const REAL* x, size_t M, const REAL* w1, const REAL* b1,
    const REAL* w2, const REAL* b2, size_t E, size_t H, size_t O)
{
    HM_RUN_TEAM(mlp_wants_threads(M, E, H, O),
                F(mlp_forward_team)(out, pre, hidden, x, M, w1, b1, w2, b2, E, H, O));
}

void KERNEL_NAME(mlp_forward_team_f32, mlp_forward_team_f64)(
    REAL* out, REAL* pre, REAL* hidden, const REAL* x, size_t M, const REAL* w1, const REAL* b1,
    const REAL* w2, const REAL* b2, size_t E, size_t H, size_t O)
{
    F(mlp_first_forward_team)(pre, hidden, x, M, w1, b1, E, H);
    F(gemm_bias_act_team)(0, 0, M, O, H, hidden, H, w2, O, 0, out, O, b2, 0);
}

/* First layer backward from dpre (M, H), already masked by the ReLU:
 * grad_input (M, E) = input_beta * grad_input + dpre @ w1^T (input_beta 1 adds a residual
 * path already there); dw1 = x^T @ dpre and db1 = column sums of dpre, overwritten, or added
 * to what they hold when accumulate (a caller summing over several runs of rows). */
void KERNEL_NAME(mlp_first_backward_f32, mlp_first_backward_f64)(
    REAL* grad_input, REAL input_beta, REAL* dw1, REAL* db1, int accumulate, const REAL* dpre,
    const REAL* x, size_t M, const REAL* w1, size_t E, size_t H)
{
    HM_RUN_TEAM(mlp_wants_threads(M, E, H, 1),
                F(mlp_first_backward_team)(grad_input, input_beta, dw1, db1, accumulate, dpre,
                                           x, M, w1, E, H));
}

void KERNEL_NAME(mlp_first_backward_team_f32, mlp_first_backward_team_f64)(
    REAL* grad_input, REAL input_beta, REAL* dw1, REAL* db1, int accumulate, const REAL* dpre,
    const REAL* x, size_t M, const REAL* w1, size_t E, size_t H)
{
    if (!accumulate) {
        #pragma omp single
        memset(db1, 0, H * sizeof(REAL));
    }
    F(column_sums_add_team)(db1, dpre, M, H);
    F(gemm_team)(1, 0, E, H, M, x, E, dpre, H, accumulate ? 1 : 0, dw1, H);
    F(gemm_team)(0, 1, M, E, H, dpre, H, w1, H, input_beta, grad_input, E);
}

/* Both layers backward from grad_output (M, O); hidden as left by the forward (hidden > 0
 * exactly where the pre-activation is, NaN included); dhidden (M, H) scratch. Parameter
 * gradients overwritten or accumulated, grad_input as in F(mlp_first_backward). */
void KERNEL_NAME(mlp_backward_f32, mlp_backward_f64)(
    REAL* grad_input, REAL input_beta, REAL* dw1, REAL* db1, REAL* dw2, REAL* db2, int accumulate,
    REAL* dhidden, const REAL* grad_output, const REAL* x, const REAL* hidden, size_t M,
    const REAL* w1, const REAL* w2, size_t E, size_t H, size_t O)
{
    HM_RUN_TEAM(mlp_wants_threads(M, E, H, O),
                F(mlp_backward_team)(grad_input, input_beta, dw1, db1, dw2, db2, accumulate,
                                     dhidden, grad_output, x, hidden, M, w1, w2, E, H, O));
}

HM_SIMD
void KERNEL_NAME(mlp_backward_team_f32, mlp_backward_team_f64)(
    REAL* grad_input, REAL input_beta, REAL* dw1, REAL* db1, REAL* dw2, REAL* db2, int accumulate,
    REAL* dhidden, const REAL* grad_output, const REAL* x, const REAL* hidden, size_t M,
    const REAL* w1, const REAL* w2, size_t E, size_t H, size_t O)
{
    const REAL* g = grad_output;
    F(gemm_team)(1, 0, H, O, M, hidden, H, g, O, accumulate ? 1 : 0, dw2, O); /* dw2 = hidden^T g */
    if (!accumulate) {
        #pragma omp single
        memset(db2, 0, O * sizeof(REAL));
    }
    F(column_sums_add_team)(db2, g, M, O);
    F(gemm_team)(0, 1, M, H, O, g, O, w2, O, 0, dhidden, H);                 /* g @ w2^T ... */
    const size_t count = M * H;
    #pragma omp for schedule(static)
    for (size_t i = 0; i < count; i++) {
        dhidden[i] = HM_RELU_GRAD(dhidden[i], hidden[i]);                     /* ... masked */
    }
    F(mlp_first_backward_team)(grad_input, input_beta, dw1, db1, accumulate, dhidden, x, M, w1,
                               E, H);
}

#endif
