/* Output projection to the vocabulary (SPEC section 2): logits = X w + b. */
#ifndef REAL
#define HM_TEMPLATE_FILE "output.c"
#include "template.h"
#else

#include "gemm.h"

/* Columns of the bias gradient summed by one task. */
#define OUT_BIAS_COLS 256

/* logits (B,L,V), padding rows 0; x (B,L,E); w (E,V); bias (1,V); lengths (B,).
 * One task per tile of HM_TILE_ROWS rows of one sequence; padding rows are skipped. */
void F(output_forward)(REAL* logits, const REAL* x, const REAL* w, const REAL* bias,
                       const int64_t* lengths, size_t B, size_t L, size_t E, size_t V)
{
    const size_t tiles_per_seq = (L + HM_TILE_ROWS - 1) / HM_TILE_ROWS;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        const size_t b = task / tiles_per_seq;
        const size_t n = (size_t)lengths[b];
        const size_t r0 = (task % tiles_per_seq) * HM_TILE_ROWS;
        const size_t r1 = r0 + HM_TILE_ROWS < L ? r0 + HM_TILE_ROWS : L;
        const size_t i1 = r1 < n ? r1 : n;
        REAL* yb = logits + b * L * V;
        if (r0 < i1) {
            F(gemm_serial)(0, 0, i1 - r0, V, E, x + b * L * E + r0 * E, E, w, V, 0,
                           yb + r0 * V, V);
            for (size_t i = r0; i < i1; i++) {
                REAL* restrict y = yb + i * V;
                for (size_t j = 0; j < V; j++) {
                    y[j] += bias[j];
                }
            }
        }
        for (size_t i = (r0 > i1 ? r0 : i1) * V; i < r1 * V; i++) {
            yb[i] = 0;
        }
    }
}

/* dx (B,L,E), padding rows 0; dw (E,V) and dbias (1,V) overwritten; workspaces xp (B*L,E)
 * and gp (B*L,V) receive the real rows of x and grad packed together (left unused when
 * every sequence is full), wt (V,E) = w^T; grad (B,L,V) = dL/dlogits; x (B,L,E); w (E,V). */
void F(output_backward)(REAL* dx, REAL* dw, REAL* dbias, REAL* xp, REAL* gp, REAL* wt,
                        const REAL* grad, const REAL* x, const REAL* w,
                        const int64_t* lengths, size_t B, size_t L, size_t E, size_t V)
{
    size_t real_rows = 0;
    for (size_t b = 0; b < B; b++) {
        real_rows += (size_t)lengths[b];
    }
    const REAL* xs = x;
    const REAL* gs = grad;
    if (real_rows < B * L) {
        #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
        for (size_t b = 0; b < B; b++) {
            size_t start = 0;
            for (size_t c = 0; c < b; c++) {
                start += (size_t)lengths[c];
            }
            const size_t n = (size_t)lengths[b];
            for (size_t i = 0; i < n * E; i++) {
                xp[start * E + i] = x[b * L * E + i];
            }
            for (size_t i = 0; i < n * V; i++) {
                gp[start * V + i] = grad[b * L * V + i];
            }
        }
        xs = xp;
        gs = gp;
    }

    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t j = 0; j < V; j++) {
        for (size_t e = 0; e < E; e++) {
            wt[j * E + e] = w[e * V + j];
        }
    }

    F(gemm)(1, 0, E, V, real_rows, xs, E, gs, V, 0, dw, V);

    const size_t bias_tiles = (V + OUT_BIAS_COLS - 1) / OUT_BIAS_COLS;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t tile = 0; tile < bias_tiles; tile++) {
        const size_t j0 = tile * OUT_BIAS_COLS;
        const size_t j1 = j0 + OUT_BIAS_COLS < V ? j0 + OUT_BIAS_COLS : V;
        for (size_t j = j0; j < j1; j++) {
            dbias[j] = 0;
        }
        for (size_t r = 0; r < real_rows; r++) {
            const REAL* restrict g = gs + r * V;
            for (size_t j = j0; j < j1; j++) {
                dbias[j] += g[j];
            }
        }
    }

    const size_t tiles_per_seq = (L + HM_TILE_ROWS - 1) / HM_TILE_ROWS;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t task = 0; task < B * tiles_per_seq; task++) {
        const size_t b = task / tiles_per_seq;
        const size_t n = (size_t)lengths[b];
        const size_t r0 = (task % tiles_per_seq) * HM_TILE_ROWS;
        const size_t r1 = r0 + HM_TILE_ROWS < L ? r0 + HM_TILE_ROWS : L;
        const size_t i1 = r1 < n ? r1 : n;
        REAL* db = dx + b * L * E;
        if (r0 < i1) {
            F(gemm_serial)(0, 0, i1 - r0, E, V, grad + b * L * V + r0 * V, V, wt, E, 0,
                           db + r0 * E, E);
        }
        for (size_t i = (r0 > i1 ? r0 : i1) * E; i < r1 * E; i++) {
            db[i] = 0;
        }
    }
}

#undef OUT_BIAS_COLS
#endif
