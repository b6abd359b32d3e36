/* Matrix multiply used by every layer (see gemm.h for the contract).
 *
 * gemm_naive_*: the plain loops, kept as the reference the tests compare against.
 * gemm_serial_* / gemm_*: a blocked kernel (csrc/gemm_kernel.h) with packed panels and a
 * register-tiled micro-kernel, compiled for AVX-512, AVX2+FMA and baseline x86-64 (or plain C
 * elsewhere) and chosen at run time with __builtin_cpu_supports; no -march flags needed.
 *
 * Determinism: every element of C is one chain of multiply-adds over k in ascending order,
 * cut into fixed KC-deep slices; the parallel version only decides which thread computes
 * which rectangle of C, never splits K, so any thread count gives the same bits.
 *
 * Scratch memory: one thread-local buffer (static storage, 64-byte aligned) holds the packed
 * panels. gemm_serial runs inside the layers' parallel regions, one call per sequence on many
 * threads at once, so the buffer must be per thread; a thread-local array costs nothing per
 * call (no malloc/free, no page faults after the first use) and is released at thread exit.
 * Its size is fixed by the block sizes below, not by the problem. */
#ifndef REAL
#include "gemm.h"

/* Small products stay on one thread, unless they stream a lot of memory (a hypernetwork row at
 * B=1 is a (1, 32) @ (32, 10384) product: few flops, 1.3 MB of weights), which two cores read
 * faster than one. */
int gemm_would_split(size_t M, size_t N, size_t K)
{
    const double touched = (double)M * K + (double)K * N + (double)M * N;
    return !((double)M * (double)N * (double)K < 1e6 && touched < 65536);
}

#define HM_TEMPLATE_FILE "gemm.c"
#include "template.h"
#else

#include <string.h>

#ifndef HM_GEMM_ONCE
#define HM_GEMM_ONCE
#if defined(__GNUC__) && defined(__x86_64__) && !defined(HM_NO_CLONES)
#define HM_GEMM_X86 1
#else
#define HM_GEMM_X86 0
#endif
/* Largest GK_KC * (GK_NC + GK_MC) * sizeof(REAL) over the variants below, in bytes. */
#define HM_GEMM_WORK_BYTES (256 * (256 + 128) * 4)
static __thread unsigned char hm_gemm_work[HM_GEMM_WORK_BYTES] __attribute__((aligned(64)));

/* Cap on the instruction set, so the tests can run every variant on one machine:
 * 0 = widest supported, 1 = baseline, 2 = at most AVX2, 3 = at most AVX-512. */
static int hm_gemm_variant_cap = 0;

int gemm_set_variant(int cap)
{
    const int previous = hm_gemm_variant_cap;
    hm_gemm_variant_cap = cap >= 0 && cap <= 3 ? cap : 0;
    return previous;
}

/* The instruction set pick_region below chooses (3 AVX-512, 2 AVX2+FMA, 1 baseline x86-64
 * SSE2, 0 plain C), for 'hypermixer check' to report; the same tests in the same order. */
int gemm_active_variant(void)
{
#if HM_GEMM_X86
    const int cap = hm_gemm_variant_cap == 0 ? 3 : hm_gemm_variant_cap;
    if (cap >= 3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
        return 3;
    }
    if (cap >= 2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return 2;
    }
    return 1;
#else
    return 0;
#endif
}
#endif

#define GEMM_NAIVE_TILE_COLS 256

/* Rows i0..i1 and columns j0..j1 of C with the naive i-k-j loops. */
static void F(naive_tile)(int trans_a, int trans_b, size_t i0, size_t i1, size_t j0, size_t j1,
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

void KERNEL_NAME(gemm_naive_f32, gemm_naive_f64)(
    int trans_a, int trans_b, size_t M, size_t N, size_t K, const REAL* A, size_t lda,
    const REAL* B, size_t ldb, REAL beta, REAL* C, size_t ldc)
{
    for (size_t j0 = 0; j0 < N; j0 += GEMM_NAIVE_TILE_COLS) {
        size_t j1 = j0 + GEMM_NAIVE_TILE_COLS < N ? j0 + GEMM_NAIVE_TILE_COLS : N;
        F(naive_tile)(trans_a, trans_b, 0, M, j0, j1, K, A, lda, B, ldb, beta, C, ldc);
    }
}

/* ---- The blocked variants. Register tiles: AVX-512 8 x 32 floats / 12 x 16 doubles (16 or
 * 24 of 32 zmm registers accumulate; 12 rows measured faster for doubles, while 8 rows fit the
 * layers' float shapes, multiples of 8 or 16 rows, without ragged panels), AVX2 6 x 16 /
 * 6 x 8 (12 of 16 ymm), SSE2 4 x 8 / 4 x 4.
 * KC keeps one B micro-panel (KC x NR) within L1; the packed B block (KC x NC) and the A block
 * (MC x KC) sit in L2. ---- */
#if HM_GEMM_X86
#define GK(name) F(name##_avx512)
#define GK_TARGET __attribute__((target("avx512f,fma")))
#define GK_VBYTES 64
#define GK_MR (sizeof(REAL) == 4 ? 8 : 12)
#define GK_NV 2
#define GK_KC 256
#define GK_MC (sizeof(REAL) == 4 ? 128 : 60)
#define GK_NC (sizeof(REAL) == 4 ? 256 : 128)
#include "gemm_kernel.h"

#define GK(name) F(name##_avx2)
#define GK_TARGET __attribute__((target("avx2,fma")))
#define GK_VBYTES 32
#define GK_MR 6
#define GK_NV 2
#define GK_KC 256
#define GK_MC (sizeof(REAL) == 4 ? 120 : 60)
#define GK_NC (sizeof(REAL) == 4 ? 256 : 128)
#include "gemm_kernel.h"
#endif

#define GK(name) F(name##_base)
#define GK_TARGET
#define GK_VBYTES 16
#define GK_MR 4
#define GK_NV 2
#define GK_KC 256
#define GK_MC (sizeof(REAL) == 4 ? 120 : 60)
#define GK_NC (sizeof(REAL) == 4 ? 256 : 128)
#include "gemm_kernel.h"

typedef void (*F(region_fn))(int, int, size_t, size_t, size_t, size_t, size_t, const REAL*,
                             size_t, const REAL*, size_t, REAL, REAL*, size_t, REAL*);

/* The widest variant this CPU (and OS) runs; __builtin_cpu_supports reads a table that
 * libgcc fills once at load time, so this is a few loads per call. Also reports the register
 * tile, which the parallel version uses to round its rectangles. */
static F(region_fn) F(pick_region)(size_t* mr, size_t* nr)
{
#if HM_GEMM_X86
    const int cap = hm_gemm_variant_cap == 0 ? 3 : hm_gemm_variant_cap;
    if (cap >= 3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
        *mr = F(tile_rows_avx512);
        *nr = F(tile_cols_avx512);
        return F(region_avx512);
    }
    if (cap >= 2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *mr = F(tile_rows_avx2);
        *nr = F(tile_cols_avx2);
        return F(region_avx2);
    }
#endif
    *mr = F(tile_rows_base);
    *nr = F(tile_cols_base);
    return F(region_base);
}

/* K == 0: the product is empty, C = beta * C (beta == 0 writes zeros without reading C). */
static void F(scale_only)(size_t M, size_t N, REAL beta, REAL* C, size_t ldc)
{
    for (size_t i = 0; i < M; i++) {
        for (size_t j = 0; j < N; j++) {
            C[i * ldc + j] = beta == 0 ? 0 : beta * C[i * ldc + j];
        }
    }
}

void KERNEL_NAME(gemm_serial_f32, gemm_serial_f64)(
    int trans_a, int trans_b, size_t M, size_t N, size_t K, const REAL* A, size_t lda,
    const REAL* B, size_t ldb, REAL beta, REAL* C, size_t ldc)
{
    if (M == 0 || N == 0) {
        return;
    }
    if (K == 0) {
        F(scale_only)(M, N, beta, C, ldc);
        return;
    }
    size_t mr, nr;
    F(region_fn) region = F(pick_region)(&mr, &nr);
    region(trans_a, trans_b, 0, M, 0, N, K, A, lda, B, ldb, beta, C, ldc, (REAL*)hm_gemm_work);
}

/* Rectangles of C handed to threads: 128 x 256 at most, halved (the larger side first, in
 * whole register tiles) until there are at least 4 of them. The sizes depend on M and N only,
 * never on the thread count. No rectangle splits K, and each element's chain of operations is
 * the same wherever the rectangle edges fall (see the top of this file), so the bits do not
 * depend on the rectangles either: one thread, or a product too small to share, takes C whole
 * and skips the duplicate packing that rectangles cost. */
/* The epilogue of F(gemm_bias_act) on rows i0..i1, columns j0..j1 of C: C += bias (per
 * column), then ReLU when relu. The same operations, in the same order, as a separate pass
 * after the product would do, so the bits are those of gemm followed by that pass; done on
 * the rectangle a thread has just computed, while it is still in cache. */
HM_SIMD
static void F(bias_act)(REAL* C, size_t ldc, size_t i0, size_t i1, size_t j0, size_t j1,
                        const REAL* bias, int relu)
{
    for (size_t i = i0; i < i1; i++) {
        REAL* restrict c = C + i * ldc;
        if (bias != NULL) {
            for (size_t j = j0; j < j1; j++) {
                c[j] += bias[j];
            }
        }
        if (relu) {
            for (size_t j = j0; j < j1; j++) {
                c[j] = HM_RELU(c[j]);
            }
        }
    }
}

void KERNEL_NAME(gemm_f32, gemm_f64)(
    int trans_a, int trans_b, size_t M, size_t N, size_t K, const REAL* A, size_t lda,
    const REAL* B, size_t ldb, REAL beta, REAL* C, size_t ldc)
{
    F(gemm_bias_act)(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc, NULL, 0);
}

void KERNEL_NAME(gemm_team_f32, gemm_team_f64)(
    int trans_a, int trans_b, size_t M, size_t N, size_t K, const REAL* A, size_t lda,
    const REAL* B, size_t ldb, REAL beta, REAL* C, size_t ldc)
{
    F(gemm_bias_act_team)(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc, NULL, 0);
}

void KERNEL_NAME(gemm_bias_act_f32, gemm_bias_act_f64)(
    int trans_a, int trans_b, size_t M, size_t N, size_t K, const REAL* A, size_t lda,
    const REAL* B, size_t ldb, REAL beta, REAL* C, size_t ldc, const REAL* bias, int relu)
{
    HM_RUN_TEAM(hm_num_threads() > 1 && M > 0 && N > 0 && K > 0 && gemm_would_split(M, N, K),
                F(gemm_bias_act_team)(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc,
                                      bias, relu));
}

/* The work of gemm_bias_act shared by the threads of the caller's parallel region (an orphaned
 * omp for over the tiles; a small product on one thread of them), for kernels that run several
 * steps in one region. The bits do not depend on the thread count. */
void KERNEL_NAME(gemm_bias_act_team_f32, gemm_bias_act_team_f64)(
    int trans_a, int trans_b, size_t M, size_t N, size_t K, const REAL* A, size_t lda,
    const REAL* B, size_t ldb, REAL beta, REAL* C, size_t ldc, const REAL* bias, int relu)
{
    const int epilogue = bias != NULL || relu;
    if (M == 0 || N == 0) {
        return;
    }
    if (K == 0) {
        #pragma omp single
        {
            F(scale_only)(M, N, beta, C, ldc);
            if (epilogue) {
                F(bias_act)(C, ldc, 0, M, 0, N, bias, relu);
            }
        }
        return;
    }
    size_t mr, nr;
    F(region_fn) region = F(pick_region)(&mr, &nr);
    if (!gemm_would_split(M, N, K)) {
        #pragma omp single
        {
            region(trans_a, trans_b, 0, M, 0, N, K, A, lda, B, ldb, beta, C, ldc,
                   (REAL*)hm_gemm_work);
            if (epilogue) {
                F(bias_act)(C, ldc, 0, M, 0, N, bias, relu);
            }
        }
        return;
    }
    size_t tm = (128 + mr - 1) / mr * mr, tn = (256 + nr - 1) / nr * nr;
    if (tm > (M + mr - 1) / mr * mr) {
        tm = (M + mr - 1) / mr * mr;
    }
    if (tn > (N + nr - 1) / nr * nr) {
        tn = (N + nr - 1) / nr * nr;
    }
    while (((M + tm - 1) / tm) * ((N + tn - 1) / tn) < 4) {
        if (tn > nr && (tn >= tm || tm <= mr)) {
            tn = (tn / 2 + nr - 1) / nr * nr;
        } else if (tm > mr) {
            tm = (tm / 2 + mr - 1) / mr * mr;
        } else {
            break;
        }
    }
    size_t row_tiles = (M + tm - 1) / tm;
    const size_t col_tiles = (N + tn - 1) / tn;
    /* A tile count the team does not divide leaves threads idle at the end (the output
     * layer's weight gradient, 533 x 128: 5 row tiles, 384 rows against 149): more, smaller
     * row tiles until it divides, still whole micro-tiles. Only where tiles of C begin and
     * end changes with the team; each entry is the same K-blocked sum in any tile, so the
     * bits do not. */
    const size_t team = (size_t)HM_TEAM_SIZE();
    if (team > 1 && (row_tiles * col_tiles) % team != 0) {
        size_t want = row_tiles;
        while ((want * col_tiles) % team != 0) {
            want++;
        }
        const size_t even = ((M + want - 1) / want + mr - 1) / mr * mr;
        if ((M + even - 1) / even * col_tiles % team == 0) {
            tm = even;
            row_tiles = (M + tm - 1) / tm;
        }
    }
    const size_t tiles = row_tiles * col_tiles;
    #pragma omp for schedule(static)
    for (size_t t = 0; t < tiles; t++) {
        const size_t i0 = (t / col_tiles) * tm, j0 = (t % col_tiles) * tn;
        const size_t i1 = i0 + tm < M ? i0 + tm : M;
        const size_t j1 = j0 + tn < N ? j0 + tn : N;
        region(trans_a, trans_b, i0, i1, j0, j1, K, A, lda, B, ldb, beta, C, ldc,
               (REAL*)hm_gemm_work);
        if (epilogue) {
            F(bias_act)(C, ldc, i0, i1, j0, j1, bias, relu);
        }
    }
}

#endif
