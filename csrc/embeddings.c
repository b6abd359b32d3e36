/* Token + position embeddings (SPEC section 2): X[t] = token[id_t] + position[t]. */
#ifndef REAL
#include "embeddings.h"
#define HM_TEMPLATE_FILE "embeddings.c"
#include "template.h"
#else

#include <string.h>

/* Columns of the embedding handled by one task of the backward pass. Fixed, so the split of
 * the work does not depend on the thread count. */
#define EMB_TILE_COLS 16

/* out (B,L,E); ids (B,L) in [0,V) at t < lengths[b] (padding ids are never read);
 * lengths (B,); token (V,E); position (S,E) with S >= L. Padding rows of out are 0. */
HM_SIMD
void KERNEL_NAME(embeddings_forward_f32, embeddings_forward_f64)(
    REAL* out, const int64_t* ids, const int64_t* lengths, const REAL* token, const REAL* position,
    size_t B, size_t L, size_t E)
{
    const size_t rows = B * L;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (rows * E > HM_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        const size_t b = r / L, t = r % L;
        REAL* restrict y = out + r * E;
        if ((int64_t)t >= lengths[b]) {
            for (size_t e = 0; e < E; e++) {
                y[e] = 0;
            }
            continue;
        }
        const REAL* restrict tok = token + (size_t)ids[r] * E;
        const REAL* restrict pos = position + t * E;
        for (size_t e = 0; e < E; e++) {
            y[e] = tok[e] + pos[e];
        }
    }
}

/* Overwrites dtoken (V,E) and dposition (S,E) (rows no token reached are 0).
 * grad (B,L,E); ids, lengths as in the forward. Work is split over fixed blocks of
 * EMB_TILE_COLS columns: one thread owns a block and adds the tokens in (b, t) order, so
 * repeated ids accumulate in the same order for any thread count. */
HM_SIMD
void KERNEL_NAME(embeddings_backward_f32, embeddings_backward_f64)(
    REAL* dtoken, REAL* dposition, const REAL* grad, const int64_t* ids, const int64_t* lengths,
    size_t B, size_t L, size_t E, size_t V, size_t S)
{
    memset(dtoken, 0, V * E * sizeof(REAL));
    memset(dposition, 0, S * E * sizeof(REAL));
    const size_t tiles = (E + EMB_TILE_COLS - 1) / EMB_TILE_COLS;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (B * L * E > HM_PARALLEL_MIN)
    for (size_t tile = 0; tile < tiles; tile++) {
        const size_t e0 = tile * EMB_TILE_COLS;
        const size_t e1 = e0 + EMB_TILE_COLS < E ? e0 + EMB_TILE_COLS : E;
        for (size_t b = 0; b < B; b++) {
            const size_t n = (size_t)lengths[b];
            for (size_t t = 0; t < n; t++) {
                const size_t r = b * L + t;
                const REAL* restrict g = grad + r * E;
                REAL* restrict dtok = dtoken + (size_t)ids[r] * E;
                REAL* restrict dpos = dposition + t * E;
                for (size_t e = e0; e < e1; e++) {
                    dtok[e] += g[e];
                    dpos[e] += g[e];
                }
            }
        }
    }
}

#undef EMB_TILE_COLS
#endif
