/* Channel-mixing MLP on the valid tokens of a padded batch.
 *
 * The valid rows of every sequence are first copied into one packed (N, E) matrix, N being
 * the total number of valid tokens, and all the matrix products run on it through gemm_*.
 * Padding rows are never read, so whatever they hold (garbage, NaN) cannot reach a valid
 * output or a parameter gradient; they output 0 and get a zero input gradient.
 *
 * offsets (B+1,) locates sequence b in the packed matrices: rows offsets[b] ..
 * offsets[b+1]-1, with 1 <= offsets[b+1] - offsets[b] <= L and offsets[0] = 0. */
#ifndef REAL
#include "channel_mixing.h"
#include "mlp.h"
#include <string.h>
#define HM_TEMPLATE_FILE "channel_mixing.c"
#include "template.h"
#else

/* Each kernel has a team form (channel_mixing_*_team_*): the same work shared by the threads
 * of the caller's parallel region (orphaned omp for loops, the serial steps on one thread of
 * them), for a whole-block kernel that runs its sublayers in one region; the kernels run their
 * team form in one region of their own. */

/* Copy the valid rows of src (B, L, E) into the packed dst (N, E); nothing to do when dst
 * is src and no row is padding (the layouts then coincide). */
static void F(pack_rows_team)(REAL* dst, const REAL* src, const int64_t* offsets, size_t B,
                              size_t L, size_t E)
{
    const size_t width = E;
    if (dst == src && (size_t)offsets[B] == B * L) {
        return;   /* no padding and already in place (a whole-block kernel wrote it there) */
    }
    #pragma omp for schedule(static)
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)(offsets[b + 1] - offsets[b]);
        const REAL* s = src + b * L * width;
        REAL* d = dst + (size_t)offsets[b] * width;
        for (size_t i = 0; i < n * width; i++) {
            d[i] = s[i];
        }
    }
}

/* y, x: (B, L, E); w1: (E, H); b1: (H,); w2: (H, E); b2: (E,).
 * Workspaces (N = offsets[B] rows): xp (N, E) receives the packed valid rows of x and
 * hidden (N, H) receives relu(xp @ w1 + b1), both kept for backward; mixed (N, E) is
 * scratch. */
void KERNEL_NAME(channel_mixing_forward_f32, channel_mixing_forward_f64)(
    REAL* y, REAL* xp, REAL* hidden, REAL* mixed, const REAL* x, const int64_t* offsets,
    const REAL* w1, const REAL* b1, const REAL* w2, const REAL* b2, size_t B, size_t L, size_t E,
    size_t H)
{
    HM_RUN_TEAM(B * L * (E + H) > HM_PARALLEL_MIN ||
                    mlp_wants_threads((size_t)offsets[B], E, H, E),
                F(channel_mixing_forward_team)(y, xp, hidden, mixed, x, offsets, w1, b1, w2,
                                               b2, B, L, E, H));
}

HM_SIMD
void KERNEL_NAME(channel_mixing_forward_team_f32, channel_mixing_forward_team_f64)(
    REAL* y, REAL* xp, REAL* hidden, REAL* mixed, const REAL* x, const int64_t* offsets,
    const REAL* w1, const REAL* b1, const REAL* w2, const REAL* b2, size_t B, size_t L, size_t E,
    size_t H)
{
    const size_t N = (size_t)offsets[B], width = E, hid = H;
    F(pack_rows_team)(xp, x, offsets, B, L, E);
    /* mixed = relu(xp @ w1 + b1) @ w2; b2 and the residual are added while unpacking */
    F(mlp_forward_team)(mixed, NULL, hidden, xp, N, w1, b1, w2, NULL, width, hid, width);
    /* Unpack: y = x + mixed + b2 on valid rows, 0 on padding rows. */
    #pragma omp for schedule(static)
    for (size_t r = 0; r < B * L; r++) {
        const size_t b = r / L, t = r % L;
        REAL* restrict out = y + r * width;
        if ((int64_t)t >= offsets[b + 1] - offsets[b]) {
            for (size_t e = 0; e < width; e++) {
                out[e] = 0;
            }
            continue;
        }
        const size_t p = (size_t)offsets[b] + t;
        const REAL* restrict in = xp + p * width;
        const REAL* restrict m = mixed + p * width;
        for (size_t e = 0; e < width; e++) {
            out[e] = in[e] + m[e] + b2[e];
        }
    }
}

/* grad_input, grad_output: (B, L, E); xp (N, E), hidden (N, H): as left by the forward;
 * w1: (E, H); w2: (H, E). dw1 (E, H), db1 (H,), dw2 (H, E), db2 (E,) are overwritten.
 * Workspaces: gp (N, E), dhidden (N, H). Every parameter gradient is a gemm over the N
 * packed rows (which tiles its output and never splits the sum) or a column sum, so the
 * result does not depend on the thread count. */
void KERNEL_NAME(channel_mixing_backward_f32, channel_mixing_backward_f64)(
    REAL* grad_input, REAL* dw1, REAL* db1, REAL* dw2, REAL* db2, REAL* gp, REAL* dhidden,
    const REAL* grad_output, const REAL* xp, const REAL* hidden, const int64_t* offsets,
    const REAL* w1, const REAL* w2, size_t B, size_t L, size_t E, size_t H)
{
    HM_RUN_TEAM(B * L * (E + H) > HM_PARALLEL_MIN ||
                    mlp_wants_threads((size_t)offsets[B], E, H, E),
                F(channel_mixing_backward_team)(grad_input, dw1, db1, dw2, db2, gp, dhidden,
                                                grad_output, xp, hidden, offsets, w1, w2, B, L,
                                                E, H));
}

HM_SIMD
void KERNEL_NAME(channel_mixing_backward_team_f32, channel_mixing_backward_team_f64)(
    REAL* grad_input, REAL* dw1, REAL* db1, REAL* dw2, REAL* db2, REAL* gp, REAL* dhidden,
    const REAL* grad_output, const REAL* xp, const REAL* hidden, const int64_t* offsets,
    const REAL* w1, const REAL* w2, size_t B, size_t L, size_t E, size_t H)
{
    const size_t N = (size_t)offsets[B], width = E, hid = H;
    if (N == B * L) {
        /* no padding: grad_input itself is the packed gradient; it starts as the residual
         * path and receives the MLP's (gp is not needed) */
        #pragma omp for schedule(static)   /* row by row: every thread copies a share */
        for (size_t r = 0; r < N; r++) {
            memcpy(grad_input + r * width, grad_output + r * width, width * sizeof(REAL));
        }
        F(mlp_backward_team)(grad_input, 1, dw1, db1, dw2, db2, 0, dhidden, grad_output, xp,
                             hidden, N, w1, w2, width, hid, width);
        return;
    }
    F(pack_rows_team)(gp, grad_output, offsets, B, L, E);
    /* gp = g (the residual path) + the MLP's input gradient (gp is both the MLP's output
     * gradient and, read last, its input gradient), then unpack */
    F(mlp_backward_team)(gp, 1, dw1, db1, dw2, db2, 0, dhidden, gp, xp, hidden, N, w1, w2,
                         width, hid, width);
    #pragma omp for schedule(static)
    for (size_t r = 0; r < B * L; r++) {
        const size_t b = r / L, t = r % L;
        REAL* restrict dx = grad_input + r * width;
        if ((int64_t)t >= offsets[b + 1] - offsets[b]) {
            for (size_t e = 0; e < width; e++) {
                dx[e] = 0;
            }
            continue;
        }
        const REAL* restrict g = gp + ((size_t)offsets[b] + t) * width;
        for (size_t e = 0; e < width; e++) {
            dx[e] = g[e];
        }
    }
}

#endif
