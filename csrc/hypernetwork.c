/* Hypernetwork (SPEC section 2): theta = relu(m @ w1 + b1) @ w2 + b2, applied to every valid
 * row of a padded batch (B, rows, E). Sequence b owns rows 0..lengths[b]-1; the other rows are
 * padding: they are never read, and their outputs and input gradients are 0.
 *
 * The matrix products run through gemm_* on runs of consecutive valid rows: one run of B*rows
 * rows when nothing is padded (the usual case: one mean row per sequence in the bidirectional
 * token mixing, every prefix of full sequences in the causal one), else one run per sequence.
 * Parameter gradients are reduced over rows inside gemm (which never splits its K loop) or by
 * column sums owned by one thread each, so they do not depend on the thread count. */
#ifndef REAL
#include "hypernetwork.h"
#include "reduce.h"
#include "gemm.h"
#define HM_TEMPLATE_FILE "hypernetwork.c"
#include "template.h"
#else

/* Forward on M consecutive valid rows: x (M, E) -> pre, hidden (M, H) and out (M, O). */
HM_SIMD
static void F(hn_rows_forward)(REAL* out, REAL* pre, REAL* hidden, const REAL* x, size_t M,
                               const REAL* w1, const REAL* b1, const REAL* w2, const REAL* b2,
                               size_t E, size_t H, size_t O)
{
    F(gemm)(0, 0, M, H, E, x, E, w1, H, 0, pre, H);
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (M * H > 65536)
    for (size_t i = 0; i < M; i++) {
        REAL* restrict p = pre + i * H;
        REAL* restrict h = hidden + i * H;
        for (size_t j = 0; j < H; j++) {
            const REAL v = p[j] + b1[j];
            p[j] = v;
            h[j] = HM_RELU(v);
        }
    }
    F(gemm)(0, 0, M, O, H, hidden, H, w2, O, 0, out, O);
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (M * O > 65536)
    for (size_t i = 0; i < M; i++) {
        REAL* restrict o = out + i * O;
        for (size_t j = 0; j < O; j++) {
            o[j] += b2[j];
        }
    }
}

/* Backward on M consecutive valid rows; accumulates into dw1, db1, dw2, db2 and writes
 * grad_input (M, E) and the workspace dpre (M, H). */
HM_SIMD
static void F(hn_rows_backward)(REAL* grad_input, REAL* dw1, REAL* db1, REAL* dw2, REAL* db2,
                                REAL* dpre, const REAL* g, const REAL* x, const REAL* pre,
                                const REAL* hidden, size_t M, const REAL* w1, const REAL* w2,
                                size_t E, size_t H, size_t O)
{
    F(gemm)(1, 0, H, O, M, hidden, H, g, O, 1, dw2, O);       /* dw2 += hidden^T @ g */
    F(column_sums_add)(db2, g, M, O);
    F(gemm)(0, 1, M, H, O, g, O, w2, O, 0, dpre, H);          /* dpre = g @ w2^T ... */
    const size_t count = M * H;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (count > 65536)
    for (size_t idx = 0; idx < count; idx++) {
        dpre[idx] = HM_RELU_GRAD(dpre[idx], pre[idx]);             /* ... * (pre > 0) */
    }
    F(column_sums_add)(db1, dpre, M, H);
    F(gemm)(1, 0, E, H, M, x, E, dpre, H, 1, dw1, H);         /* dw1 += x^T @ dpre */
    F(gemm)(0, 1, M, E, H, dpre, H, w1, H, 0, grad_input, E); /* grad_input = dpre @ w1^T */
}

static int F(hn_all_full)(const int64_t* lengths, int B, int rows)
{
    for (int b = 0; b < B; b++) {
        if (lengths[b] != rows) {
            return 0;
        }
    }
    return 1;
}

static void F(hn_zero)(REAL* a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        a[i] = 0;
    }
}

/* out (B, rows, O); pre, hidden (B, rows, H) keep m @ w1 + b1 and its relu for backward;
 * x (B, rows, E); lengths (B,) with 1 <= lengths[b] <= rows; w1 (E, H); b1 (H,); w2 (H, O);
 * b2 (O,). Padding rows of out, pre and hidden are set to 0. */
void F(hypernetwork_forward)(REAL* out, REAL* pre, REAL* hidden, const REAL* x,
                             const int64_t* lengths, const REAL* w1, const REAL* b1,
                             const REAL* w2, const REAL* b2, int B, int rows, int E, int H,
                             int O)
{
    const size_t R = (size_t)rows, e = (size_t)E, h = (size_t)H, o = (size_t)O;
    if (F(hn_all_full)(lengths, B, rows)) {
        F(hn_rows_forward)(out, pre, hidden, x, (size_t)B * R, w1, b1, w2, b2, e, h, o);
        return;
    }
    for (int b = 0; b < B; b++) {
        const size_t first = (size_t)b * R, n = (size_t)lengths[b];
        F(hn_rows_forward)(out + first * o, pre + first * h, hidden + first * h, x + first * e,
                           n, w1, b1, w2, b2, e, h, o);
        F(hn_zero)(out + (first + n) * o, (R - n) * o);
        F(hn_zero)(pre + (first + n) * h, (R - n) * h);
        F(hn_zero)(hidden + (first + n) * h, (R - n) * h);
    }
}

/* grad_input (B, rows, E) is written (padding rows 0); dw1 (E, H), db1 (H,), dw2 (H, O),
 * db2 (O,) are accumulated into (+=, the caller zeroes them); dpre (B, rows, H) is a
 * workspace; grad_output (B, rows, O), whose padding rows are never read; x, pre, hidden and
 * lengths as given to / produced by the forward; w1 (E, H); w2 (H, O). */
void F(hypernetwork_backward)(REAL* grad_input, REAL* dw1, REAL* db1, REAL* dw2, REAL* db2,
                              REAL* dpre, const REAL* grad_output, const REAL* x,
                              const REAL* pre, const REAL* hidden, const int64_t* lengths,
                              const REAL* w1, const REAL* w2, int B, int rows, int E, int H,
                              int O)
{
    const size_t R = (size_t)rows, e = (size_t)E, h = (size_t)H, o = (size_t)O;
    if (F(hn_all_full)(lengths, B, rows)) {
        F(hn_rows_backward)(grad_input, dw1, db1, dw2, db2, dpre, grad_output, x, pre, hidden,
                            (size_t)B * R, w1, w2, e, h, o);
        return;
    }
    for (int b = 0; b < B; b++) {
        const size_t first = (size_t)b * R, n = (size_t)lengths[b];
        F(hn_rows_backward)(grad_input + first * e, dw1, db1, dw2, db2, dpre + first * h,
                            grad_output + first * o, x + first * e, pre + first * h,
                            hidden + first * h, n, w1, w2, e, h, o);
        F(hn_zero)(grad_input + (first + n) * e, (R - n) * e);
    }
}

#endif
