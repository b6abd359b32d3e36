/* Matrix multiply used by every layer. Straightforward loops for now: the i-k-j order keeps
 * the innermost loop contiguous so the compiler vectorises it. */
#ifndef REAL
#define HM_TEMPLATE_FILE "gemm.c"
#include "template.h"
#else

#define GEMM_TILE_COLS 256

/* Rows i0..i1 and columns j0..j1 of C; see gemm.h for the meaning of the arguments. */
HM_SIMD
static void F(gemm_tile)(int trans_a, int trans_b, size_t i0, size_t i1, size_t j0, size_t j1,
                         size_t K, const REAL* A, size_t lda, const REAL* B, size_t ldb,
                         REAL beta, REAL* C, size_t ldc)
{
    for (size_t i = i0; i < i1; i++) {
        REAL* restrict c = C + i * ldc;
        if (beta == 0) {
            for (size_t j = j0; j < j1; j++) {
                c[j] = 0;
            }
        } else if (beta != 1) {
            for (size_t j = j0; j < j1; j++) {
                c[j] *= beta;
            }
        }
        if (!trans_b) {
            for (size_t k = 0; k < K; k++) {
                const REAL a = trans_a ? A[k * lda + i] : A[i * lda + k];
                const REAL* restrict b = B + k * ldb;
                for (size_t j = j0; j < j1; j++) {
                    c[j] += a * b[j];
                }
            }
        } else {
            for (size_t j = j0; j < j1; j++) {
                const REAL* restrict b = B + j * ldb;
                REAL sum = 0;
                for (size_t k = 0; k < K; k++) {
                    sum += (trans_a ? A[k * lda + i] : A[i * lda + k]) * b[k];
                }
                c[j] += sum;
            }
        }
    }
}

void F(gemm_serial)(int trans_a, int trans_b, size_t M, size_t N, size_t K, const REAL* A,
                    size_t lda, const REAL* B, size_t ldb, REAL beta, REAL* C, size_t ldc)
{
    for (size_t j0 = 0; j0 < N; j0 += GEMM_TILE_COLS) {
        size_t j1 = j0 + GEMM_TILE_COLS < N ? j0 + GEMM_TILE_COLS : N;
        F(gemm_tile)(trans_a, trans_b, 0, M, j0, j1, K, A, lda, B, ldb, beta, C, ldc);
    }
}

void F(gemm)(int trans_a, int trans_b, size_t M, size_t N, size_t K, const REAL* A,
             size_t lda, const REAL* B, size_t ldb, REAL beta, REAL* C, size_t ldc)
{
    const size_t row_tiles = (M + HM_TILE_ROWS - 1) / HM_TILE_ROWS;
    const size_t col_tiles = (N + GEMM_TILE_COLS - 1) / GEMM_TILE_COLS;
    const size_t tiles = row_tiles * col_tiles;
    const int parallel = (double)M * (double)N * (double)K > 1e5;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (parallel)
    for (size_t t = 0; t < tiles; t++) {
        const size_t i0 = (t / col_tiles) * HM_TILE_ROWS, j0 = (t % col_tiles) * GEMM_TILE_COLS;
        const size_t i1 = i0 + HM_TILE_ROWS < M ? i0 + HM_TILE_ROWS : M;
        const size_t j1 = j0 + GEMM_TILE_COLS < N ? j0 + GEMM_TILE_COLS : N;
        F(gemm_tile)(trans_a, trans_b, i0, i1, j0, j1, K, A, lda, B, ldb, beta, C, ldc);
    }
}

#endif
