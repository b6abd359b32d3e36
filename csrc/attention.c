/* Causal single-head self-attention (SPEC section 2):
 *   q, k, v = X wq, X wk, X wv;  A = softmax(q k^T / sqrt(E)), A[i,j] = 0 for j > i;
 *   Y = A v + X.
 * q, k and v live side by side in one (B*L, 3E) array, so the three projections, their
 * input gradient and their weight gradients are one gemm each over all B*L rows, against
 * the weights concatenated as [wq | wk | wv] (E, 3E). The per-sequence products run in tiles
 * of HM_TILE_ROWS query rows, one tile per task, with gemm_serial inside the parallel region.
 * Every output element is written by one task in a fixed order. */
#ifndef REAL
#include "attention.h"
#define HM_TEMPLATE_FILE "attention.c"
#include "template.h"
#else

#include <string.h>
#include "gemm.h"
#include "softmax.h"

/* Tasks of the per-sequence loops: B sequences of `tiles` tiles of HM_TILE_ROWS query rows.
 * A causal tile's work grows (or, for dk and dv, shrinks) linearly with its position, so in
 * sequence order the static schedule's contiguous halves of one sequence differ 3:1 (B = 1
 * on two threads: one thread idled through a third of the attention). Within a sequence the
 * tasks go 0, T-1, 1, T-2, ...: every contiguous run of them then holds as much work at the
 * front as at the back, and two or more sequences still go one per thread. Which task makes
 * which tile does not change any bits: each tile is computed by one task the same way. */
static inline void F(attention_task)(size_t task, size_t tiles, size_t* b, size_t* r0)
{
    const size_t k = task % tiles;
    *b = task / tiles;
    *r0 = (k % 2 == 0 ? k / 2 : tiles - 1 - k / 2) * HM_TILE_ROWS;
}

/* dst (E, L) = rows r0..r1 of src (rows of stride ld, E columns) transposed into columns
 * r0..r1; other columns of dst are left untouched. Column by column, so each row of dst gets
 * one contiguous run per tile. */
static void F(attention_transpose_rows)(REAL* restrict dst, const REAL* restrict src,
                                        size_t ld, size_t r0, size_t r1, size_t L, size_t E)
{
    for (size_t e = 0; e < E; e++) {
        for (size_t t = r0; t < r1; t++) {
            dst[e * L + t] = src[t * ld + e];
        }
    }
}

/* wcat (E, 3E) = [wq | wk | wv] */
static void F(attention_concat_weights)(REAL* restrict wcat, const REAL* wq, const REAL* wk,
                                        const REAL* wv, size_t E)
{
    for (size_t e = 0; e < E; e++) {
        memcpy(wcat + e * 3 * E, wq + e * E, E * sizeof(REAL));
        memcpy(wcat + e * 3 * E + E, wk + e * E, E * sizeof(REAL));
        memcpy(wcat + e * 3 * E + 2 * E, wv + e * E, E * sizeof(REAL));
    }
}

/* out (B,L,E); caches for the backward: xc (B,L,E) = x with padding rows set to 0 (padding
 * may hold anything, even NaN, and must not reach the weight gradients), qkv (B,L,3E) =
 * [q | k | v] per row, probs (B,L,L) (row i holds A[i, 0..i], zeros after); workspaces
 * kt (B,E,L) and wcat (E,3E); x (B,L,E); wq, wk, wv (E,E); lengths (B,) with
 * 1 <= lengths[b] <= L. Padding rows of out and probs are 0. */
HM_SIMD
void KERNEL_NAME(attention_forward_f32, attention_forward_f64)(
    REAL* out, REAL* xc, REAL* qkv, REAL* probs, REAL* kt, REAL* wcat, const REAL* x,
    const REAL* wq, const REAL* wk, const REAL* wv, const int64_t* lengths, size_t B, size_t L,
    size_t E)
{
    const size_t rows = B * L, E3 = 3 * E;
    const REAL scale = (REAL)(1.0 / sqrt((double)E));
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)lengths[b];
        memcpy(xc + b * L * E, x + b * L * E, n * E * sizeof(REAL));
        memset(xc + (b * L + n) * E, 0, (L - n) * E * sizeof(REAL));
    }
    F(attention_concat_weights)(wcat, wq, wk, wv, E);
    F(gemm)(0, 0, rows, E3, E, xc, E, wcat, E3, 0, qkv, E3);

    const size_t tiles_per_seq = (L + HM_TILE_ROWS - 1) / HM_TILE_ROWS;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        const size_t b = task / tiles_per_seq, r0 = (task % tiles_per_seq) * HM_TILE_ROWS;
        const size_t n = (size_t)lengths[b], r1 = r0 + HM_TILE_ROWS < n ? r0 + HM_TILE_ROWS : n;
        F(attention_transpose_rows)(kt + b * E * L, qkv + b * L * E3 + E, E3, r0, r1, L, E);
    }

    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        size_t b, r0;
        F(attention_task)(task, tiles_per_seq, &b, &r0);
        const size_t n = (size_t)lengths[b];
        const size_t r1 = r0 + HM_TILE_ROWS < L ? r0 + HM_TILE_ROWS : L;
        const size_t i1 = r1 < n ? r1 : n;       /* rows r0..i1 are real, i1..r1 padding */
        const REAL* qb = qkv + b * L * E3;
        const REAL* vb = qb + 2 * E;
        const REAL* xb = xc + b * L * E;
        REAL* pb = probs + b * L * L;
        REAL* yb = out + b * L * E;
        if (r0 < i1) {
            /* scores of rows r0..i1 against keys 0..i1 (the causal limit of the tile) */
            F(gemm_serial)(0, 0, i1 - r0, i1, E, qb + r0 * E3, E3, kt + b * E * L, L, 0,
                           pb + r0 * L, L);
            for (size_t i = r0; i < i1; i++) {
                REAL* p = pb + i * L;
                REAL max, sum;
                F(softmax_row)(p, p, i + 1, scale, &max, &sum);
                for (size_t j = i + 1; j < L; j++) {
                    p[j] = 0;
                }
            }
            F(gemm_serial)(0, 0, i1 - r0, E, i1, pb + r0 * L, L, vb, E3, 0, yb + r0 * E, E);
            for (size_t i = r0 * E; i < i1 * E; i++) {
                yb[i] += xb[i];
            }
        }
        const size_t z0 = r0 > i1 ? r0 : i1;
        if (z0 < r1) {
            memset(yb + z0 * E, 0, (r1 - z0) * E * sizeof(REAL));
            memset(pb + z0 * L, 0, (r1 - z0) * L * sizeof(REAL));
        }
    }
}

/* One new token of the attention above, for generation with a cache of the earlier tokens'
 * keys and values (shapes):
 *   out (E,)           := softmax(q K^T / sqrt(E)) V + x, K and V rows 0..n of the caches;
 *   kcache, vcache (cap, E): rows 0..n-1 hold the earlier tokens' k and v; row n gets this
 *                      token's (the caller keeps n < cap);
 *   q (E,), scores (n + 1,): workspaces;   x (E,) the token's input row at position n;
 *   wq, wk, wv (E, E).
 * The same products as the forward's row n, summed in another order (rounding differs).
 * Serial: one token is O(n E + E^2) work, a few microseconds at the lengths generated, less
 * than starting a parallel region. */
HM_SIMD
void KERNEL_NAME(attention_step_f32, attention_step_f64)(
    REAL* out, REAL* kcache, REAL* vcache, REAL* q, REAL* scores, const REAL* x, const REAL* wq,
    const REAL* wk, const REAL* wv, size_t n, size_t E)
{
    REAL* restrict k = kcache + n * E;
    REAL* restrict v = vcache + n * E;
    for (size_t j = 0; j < E; j++) {
        q[j] = k[j] = v[j] = 0;
    }
    for (size_t i = 0; i < E; i++) {
        const REAL xi = x[i];
        for (size_t j = 0; j < E; j++) {
            q[j] += xi * wq[i * E + j];
            k[j] += xi * wk[i * E + j];
            v[j] += xi * wv[i * E + j];
        }
    }
    for (size_t s = 0; s <= n; s++) {
        scores[s] = F(vec_dot)(q, kcache + s * E, E);
    }
    REAL max, sum;
    F(softmax_row)(scores, scores, n + 1, (REAL)(1.0 / sqrt((double)E)), &max, &sum);
    for (size_t j = 0; j < E; j++) {
        out[j] = 0;
    }
    for (size_t s = 0; s <= n; s++) {
        const REAL p = scores[s];
        const REAL* restrict vs = vcache + s * E;
        for (size_t j = 0; j < E; j++) {
            out[j] += p * vs[j];
        }
    }
    for (size_t j = 0; j < E; j++) {
        out[j] += x[j];
    }
}

/* dx (B,L,E) input gradient (padding rows 0); dwq, dwk, dwv (E,E) weight gradients
 * (overwritten); workspaces dqkv (B,L,3E), dscores (B,L,L), vt (B,E,L), wcat and dwcat
 * (E,3E); grad (B,L,E) = dL/dY; xc, qkv, probs as cached by the forward; wq, wk, wv (E,E). */
HM_SIMD
void KERNEL_NAME(attention_backward_f32, attention_backward_f64)(
    REAL* dx, REAL* dwq, REAL* dwk, REAL* dwv, REAL* dqkv, REAL* dscores, REAL* vt, REAL* wcat,
    REAL* dwcat, const REAL* grad, const REAL* xc, const REAL* qkv, const REAL* probs,
    const REAL* wq, const REAL* wk, const REAL* wv, const int64_t* lengths, size_t B, size_t L,
    size_t E)
{
    const size_t rows = B * L, E3 = 3 * E;
    const REAL scale = (REAL)(1.0 / sqrt((double)E));
    const size_t tiles_per_seq = (L + HM_TILE_ROWS - 1) / HM_TILE_ROWS;

    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        const size_t b = task / tiles_per_seq, r0 = (task % tiles_per_seq) * HM_TILE_ROWS;
        const size_t n = (size_t)lengths[b], r1 = r0 + HM_TILE_ROWS < n ? r0 + HM_TILE_ROWS : n;
        F(attention_transpose_rows)(vt + b * E * L, qkv + b * L * E3 + 2 * E, E3, r0, r1, L,
                                    E);
    }
    F(attention_concat_weights)(wcat, wq, wk, wv, E);

    /* dscores[i, j] = A[i,j] (dA[i,j] - sum_j' A[i,j'] dA[i,j']) / sqrt(E), dA = grad v^T */
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        size_t b, r0;
        F(attention_task)(task, tiles_per_seq, &b, &r0);
        const size_t n = (size_t)lengths[b];
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
     * transposed products only need rows i >= r0 of their (lower-triangular) left factor. */
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        size_t b, r0;
        F(attention_task)(task, tiles_per_seq, &b, &r0);
        const size_t n = (size_t)lengths[b];
        const size_t r1 = r0 + HM_TILE_ROWS < L ? r0 + HM_TILE_ROWS : L;
        const size_t i1 = r1 < n ? r1 : n;
        const REAL* qb = qkv + b * L * E3;
        const REAL* gb = grad + b * L * E;
        REAL* db = dqkv + b * L * E3;
        REAL* dxb = dx + b * L * E;
        if (r0 < i1) {
            const REAL* sb = dscores + b * L * L;
            const REAL* pb = probs + b * L * L;
            F(gemm_serial)(0, 0, i1 - r0, E, i1, sb + r0 * L, L, qb + E, E3, 0,
                           db + r0 * E3, E3);
            F(gemm_serial)(1, 0, i1 - r0, E, n - r0, sb + r0 * L + r0, L, qb + r0 * E3, E3, 0,
                           db + r0 * E3 + E, E3);
            F(gemm_serial)(1, 0, i1 - r0, E, n - r0, pb + r0 * L + r0, L, gb + r0 * E, E, 0,
                           db + r0 * E3 + 2 * E, E3);
            /* residual: dx starts as grad on real rows; the gemm below adds onto it */
            memcpy(dxb + r0 * E, gb + r0 * E, (i1 - r0) * E * sizeof(REAL));
        }
        const size_t z0 = r0 > i1 ? r0 : i1;
        if (z0 < r1) {
            memset(db + z0 * E3, 0, (r1 - z0) * E3 * sizeof(REAL));
            memset(dxb + z0 * E, 0, (r1 - z0) * E * sizeof(REAL));
        }
    }

    /* padding rows of dqkv are 0, so they add nothing to the sums over all rows */
    F(gemm)(1, 0, E, E3, rows, xc, E, dqkv, E3, 0, dwcat, E3);
    for (size_t e = 0; e < E; e++) {
        memcpy(dwq + e * E, dwcat + e * E3, E * sizeof(REAL));
        memcpy(dwk + e * E, dwcat + e * E3 + E, E * sizeof(REAL));
        memcpy(dwv + e * E, dwcat + e * E3 + 2 * E, E * sizeof(REAL));
    }
    /* dx += [dq | dk | dv] [wq | wk | wv]^T */
    F(gemm)(0, 1, rows, E, E3, dqkv, E3, wcat, E3, 1, dx, E);
    /* That product also ran over the padding rows, where 0 * a NaN or infinite weight is NaN:
     * set them back to 0. */
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)lengths[b];
        memset(dx + (b * L + n) * E, 0, (L - n) * E * sizeof(REAL));
    }
}

#endif
