/* Output projection to the vocabulary (SPEC section 2): logits = X w + b. */
#ifndef REAL
#include "output.h"
#define HM_TEMPLATE_FILE "output.c"
#include "template.h"
#else

#include <string.h>
#include "gemm.h"

/* The bias gradient's columns are cut into one tile per thread, in multiples of this many
 * (whole vectors); fixed 256-column tiles gave one thread 512 of the 533 columns of the LMs'
 * vocabulary. Each column's sum runs over the rows in order, so the tiles change no bit. */
#define OUT_BIAS_ALIGN 16

/* logits (B,L,V), padding rows 0; x (B,L,E); w (E,V); bias (1,V); lengths (B,).
 * One gemm over all B*L rows with the bias added in its epilogue (a padding row of x only
 * reaches its own logits row, which is then cleared). */
void KERNEL_NAME(output_forward_f32, output_forward_f64)(
    REAL* logits, const REAL* x, const REAL* w, const REAL* bias, const int64_t* lengths, size_t B,
    size_t L, size_t E, size_t V)
{
    const size_t rows = B * L;
    F(gemm_bias_act)(0, 0, rows, V, E, x, E, w, V, 0, logits, V, bias, 0);
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)lengths[b];
        memset(logits + (b * L + n) * V, 0, (L - n) * V * sizeof(REAL));
    }
}

/* dx (B,L,E), padding rows 0; dw (E,V) and dbias (1,V) overwritten; workspaces xp (B*L,E)
 * and gp (B*L,V) receive the real rows of x and grad packed together (left unused when
 * every sequence is full); grad (B,L,V) = dL/dlogits; x (B,L,E); w (E,V). */
void KERNEL_NAME(output_backward_f32, output_backward_f64)(
    REAL* dx, REAL* dw, REAL* dbias, REAL* xp, REAL* gp, const REAL* grad, const REAL* x,
    const REAL* w, const int64_t* lengths, size_t B, size_t L, size_t E, size_t V)
{
    size_t real_rows = 0;
    for (size_t b = 0; b < B; b++) {
        real_rows += (size_t)lengths[b];
    }
    const REAL* xs = x;
    const REAL* gs = grad;
    if (real_rows < B * L) {
        /* pack, so the sums over rows below never touch padding (which may hold anything) */
        #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
        for (size_t b = 0; b < B; b++) {
            size_t start = 0;
            for (size_t c = 0; c < b; c++) {
                start += (size_t)lengths[c];
            }
            const size_t n = (size_t)lengths[b];
            memcpy(xp + start * E, x + b * L * E, n * E * sizeof(REAL));
            memcpy(gp + start * V, grad + b * L * V, n * V * sizeof(REAL));
        }
        xs = xp;
        gs = gp;
    }

    F(gemm)(1, 0, E, V, real_rows, xs, E, gs, V, 0, dw, V);

    const size_t team = (size_t)hm_num_threads();
    const size_t cols = ((V + team - 1) / team + OUT_BIAS_ALIGN - 1) / OUT_BIAS_ALIGN *
                        OUT_BIAS_ALIGN;
    const size_t bias_tiles = (V + cols - 1) / cols;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t tile = 0; tile < bias_tiles; tile++) {
        const size_t j0 = tile * cols;
        const size_t j1 = j0 + cols < V ? j0 + cols : V;
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

    /* dx = grad w^T over all rows in one gemm (padding rows of grad may hold anything: each
     * dx row depends on its own grad row only), then the padding rows are cleared */
    F(gemm)(0, 1, B * L, E, V, grad, V, w, V, 0, dx, E);
    if (real_rows < B * L) {
        for (size_t b = 0; b < B; b++) {
            const size_t n = (size_t)lengths[b];
            memset(dx + (b * L + n) * E, 0, (L - n) * E * sizeof(REAL));
        }
    }
}

#undef OUT_BIAS_ALIGN
#endif
