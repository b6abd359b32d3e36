/* Causal single-head self-attention (SPEC section 2):
 *   q, k, v = X wq, X wk, X wv;  A = softmax(q k^T / sqrt(E)), A[i,j] = 0 for j > i;
 *   Y = A v + X.
 * The projections and the weight gradients are single large gemm calls over all B*L rows;
 * the per-sequence products run in tiles of HM_TILE_ROWS query rows, one tile per task, with
 * gemm_serial inside the parallel region. Every output element is written by one task. */
#ifndef REAL
#define HM_TEMPLATE_FILE "attention.c"
#include "template.h"
#else

#include <string.h>
#include "gemm.h"

/* dst (E, L) = src (n, E)^T for the first n rows of one sequence; columns >= n untouched. */
static void F(attention_transpose_rows)(REAL* restrict dst, const REAL* restrict src, size_t n,
                                        size_t L, size_t E)
{
    for (size_t t = 0; t < n; t++) {
        for (size_t e = 0; e < E; e++) {
            dst[e * L + t] = src[t * E + e];
        }
    }
}

static void F(attention_zero_rows)(REAL* restrict p, size_t rows, size_t width)
{
    for (size_t i = 0; i < rows * width; i++) {
        p[i] = 0;
    }
}

/* out (B,L,E); caches for the backward: xc (B,L,E) = x with padding rows set to 0 (padding
 * may hold anything, even NaN, and must not reach the weight gradients), q, k, v (B,L,E)
 * and probs (B,L,L) (row i holds A[i, 0..i], zeros after); workspace kt (B,E,L);
 * x (B,L,E); wq, wk, wv (E,E); lengths (B,) with 1 <= lengths[b] <= L.
 * Padding rows of out and probs are 0. */
void F(attention_forward)(REAL* out, REAL* xc, REAL* q, REAL* k, REAL* v, REAL* probs,
                          REAL* kt, const REAL* x, const REAL* wq, const REAL* wk,
                          const REAL* wv, const int64_t* lengths, size_t B, size_t L, size_t E)
{
    const size_t rows = B * L;
    const REAL scale = (REAL)(1.0 / sqrt((double)E));
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)lengths[b];
        memcpy(xc + b * L * E, x + b * L * E, n * E * sizeof(REAL));
        memset(xc + (b * L + n) * E, 0, (L - n) * E * sizeof(REAL));
    }
    F(gemm)(0, 0, rows, E, E, xc, E, wq, E, 0, q, E);
    F(gemm)(0, 0, rows, E, E, xc, E, wk, E, 0, k, E);
    F(gemm)(0, 0, rows, E, E, xc, E, wv, E, 0, v, E);

    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t b = 0; b < B; b++) {
        F(attention_transpose_rows)(kt + b * E * L, k + b * L * E, (size_t)lengths[b], L, E);
    }

    const size_t tiles_per_seq = (L + HM_TILE_ROWS - 1) / HM_TILE_ROWS;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        const size_t b = task / tiles_per_seq;
        const size_t n = (size_t)lengths[b];
        const size_t r0 = (task % tiles_per_seq) * HM_TILE_ROWS;
        const size_t r1 = r0 + HM_TILE_ROWS < L ? r0 + HM_TILE_ROWS : L;
        const size_t i1 = r1 < n ? r1 : n;       /* rows r0..i1 are real, i1..r1 padding */
        const REAL* qb = q + b * L * E;
        const REAL* vb = v + b * L * E;
        const REAL* xb = xc + b * L * E;
        REAL* pb = probs + b * L * L;
        REAL* yb = out + b * L * E;
        if (r0 < i1) {
            /* scores of rows r0..i1 against keys 0..i1 (the causal limit of the tile) */
            F(gemm_serial)(0, 0, i1 - r0, i1, E, qb + r0 * E, E, kt + b * E * L, L, 0,
                           pb + r0 * L, L);
            for (size_t i = r0; i < i1; i++) {
                REAL* restrict p = pb + i * L;
                REAL max = p[0] * scale;
                for (size_t j = 0; j <= i; j++) {
                    p[j] *= scale;
                    max = p[j] > max ? p[j] : max;
                }
                REAL sum = 0;
                for (size_t j = 0; j <= i; j++) {
                    p[j] = EXP(p[j] - max);
                    sum += p[j];
                }
                for (size_t j = 0; j <= i; j++) {
                    p[j] /= sum;
                }
                for (size_t j = i + 1; j < L; j++) {
                    p[j] = 0;
                }
            }
            F(gemm_serial)(0, 0, i1 - r0, E, i1, pb + r0 * L, L, vb, E, 0, yb + r0 * E, E);
            for (size_t i = r0; i < i1; i++) {
                for (size_t e = 0; e < E; e++) {
                    yb[i * E + e] += xb[i * E + e];
                }
            }
        }
        const size_t z0 = r0 > i1 ? r0 : i1;
        if (z0 < r1) {
            F(attention_zero_rows)(yb + z0 * E, r1 - z0, E);
            F(attention_zero_rows)(pb + z0 * L, r1 - z0, L);
        }
    }
}

/* dx (B,L,E) input gradient (padding rows 0); dwq, dwk, dwv (E,E) weight gradients
 * (overwritten); workspaces dq, dk, dv (B,L,E), dscores (B,L,L), vt (B,E,L), wt (3,E,E);
 * grad (B,L,E) = dL/dY; xc (x with zero padding rows), q, k, v, probs as cached by the
 * forward; wq, wk, wv (E,E). */
void F(attention_backward)(REAL* dx, REAL* dwq, REAL* dwk, REAL* dwv, REAL* dq, REAL* dk,
                           REAL* dv, REAL* dscores, REAL* vt, REAL* wt, const REAL* grad,
                           const REAL* xc, const REAL* q, const REAL* k, const REAL* v,
                           const REAL* probs, const REAL* wq, const REAL* wk, const REAL* wv,
                           const int64_t* lengths, size_t B, size_t L, size_t E)
{
    const size_t rows = B * L;
    const REAL scale = (REAL)(1.0 / sqrt((double)E));
    const size_t tiles_per_seq = (L + HM_TILE_ROWS - 1) / HM_TILE_ROWS;

    /* transposed copies so every product below streams contiguous rows */
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t b = 0; b < B; b++) {
        F(attention_transpose_rows)(vt + b * E * L, v + b * L * E, (size_t)lengths[b], L, E);
    }
    F(attention_transpose_rows)(wt, wq, E, E, E);
    F(attention_transpose_rows)(wt + E * E, wk, E, E, E);
    F(attention_transpose_rows)(wt + 2 * E * E, wv, E, E, E);

    /* dscores[i, j] = A[i,j] (dA[i,j] - sum_j' A[i,j'] dA[i,j']) / sqrt(E), dA = grad v^T */
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        const size_t b = task / tiles_per_seq;
        const size_t n = (size_t)lengths[b];
        const size_t r0 = (task % tiles_per_seq) * HM_TILE_ROWS;
        const size_t r1 = r0 + HM_TILE_ROWS < L ? r0 + HM_TILE_ROWS : L;
        const size_t i1 = r1 < n ? r1 : n;
        if (r0 >= i1) {
            continue;
        }
        const REAL* pb = probs + b * L * L;
        REAL* sb = dscores + b * L * L;
        F(gemm_serial)(0, 0, i1 - r0, i1, E, grad + b * L * E + r0 * E, E, vt + b * E * L, L,
                       0, sb + r0 * L, L);
        for (size_t i = r0; i < i1; i++) {
            const REAL* restrict p = pb + i * L;
            REAL* restrict s = sb + i * L;
            REAL dot = 0;
            for (size_t j = 0; j <= i; j++) {
                dot += p[j] * s[j];
            }
            for (size_t j = 0; j <= i; j++) {
                s[j] = p[j] * (s[j] - dot) * scale;
            }
            for (size_t j = i + 1; j < L; j++) {
                s[j] = 0;
            }
        }
    }

    /* dq = dscores k, dk = dscores^T q, dv = A^T grad, tile by tile of output rows; the
     * transposed products only need rows i >= j of their (lower-triangular) left factor. */
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        const size_t b = task / tiles_per_seq;
        const size_t n = (size_t)lengths[b];
        const size_t r0 = (task % tiles_per_seq) * HM_TILE_ROWS;
        const size_t r1 = r0 + HM_TILE_ROWS < L ? r0 + HM_TILE_ROWS : L;
        const size_t i1 = r1 < n ? r1 : n;
        const size_t off = b * L * E;
        if (r0 < i1) {
            const REAL* sb = dscores + b * L * L;
            const REAL* pb = probs + b * L * L;
            F(gemm_serial)(0, 0, i1 - r0, E, i1, sb + r0 * L, L, k + off, E, 0,
                           dq + off + r0 * E, E);
            F(gemm_serial)(1, 0, i1 - r0, E, n - r0, sb + r0 * L + r0, L, q + off + r0 * E, E,
                           0, dk + off + r0 * E, E);
            F(gemm_serial)(1, 0, i1 - r0, E, n - r0, pb + r0 * L + r0, L,
                           grad + off + r0 * E, E, 0, dv + off + r0 * E, E);
            /* residual: dx starts as grad on real rows; the gemms below add onto it */
            for (size_t i = r0 * E; i < i1 * E; i++) {
                dx[off + i] = grad[off + i];
            }
        }
        const size_t z0 = r0 > i1 ? r0 : i1;
        if (z0 < r1) {
            F(attention_zero_rows)(dq + off + z0 * E, r1 - z0, E);
            F(attention_zero_rows)(dk + off + z0 * E, r1 - z0, E);
            F(attention_zero_rows)(dv + off + z0 * E, r1 - z0, E);
            F(attention_zero_rows)(dx + off + z0 * E, r1 - z0, E);
        }
    }

    /* padding rows of dq, dk, dv are 0, so they add nothing to the sums over all rows */
    F(gemm)(1, 0, E, E, rows, xc, E, dq, E, 0, dwq, E);
    F(gemm)(1, 0, E, E, rows, xc, E, dk, E, 0, dwk, E);
    F(gemm)(1, 0, E, E, rows, xc, E, dv, E, 0, dwv, E);
    F(gemm)(0, 0, rows, E, E, dq, E, wt, E, 1, dx, E);
    F(gemm)(0, 0, rows, E, E, dk, E, wt + E * E, E, 1, dx, E);
    F(gemm)(0, 0, rows, E, E, dv, E, wt + 2 * E * E, E, 1, dx, E);
}

#endif
