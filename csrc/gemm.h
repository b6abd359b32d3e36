#ifndef HYPERMIXER_GEMM_H
#define HYPERMIXER_GEMM_H
#include "common.h"

/* C (M,N) = beta * C + op(A) @ op(B), all row-major with leading dimensions lda/ldb/ldc.
 * op(A) is (M,K): A itself is (M,K), or (K,M) when trans_a. Likewise op(B) is (K,N): B is
 * (K,N), or (N,K) when trans_b. beta == 0 overwrites C without reading it.
 *
 * gemm_serial_*: the calling thread only (for use inside a parallel region, e.g. one
 * sequence per thread). gemm_*: splits C into fixed tiles over the OpenMP threads; each
 * element is summed by one thread in a fixed order, so the result does not depend on the
 * thread count.
 *
 * gemm_bias_act_*: gemm_*, then C += bias (N,) on every row (bias may be NULL) and ReLU when
 * relu != 0, applied by each thread to the rectangle it has just computed; the bits are those
 * of gemm_* followed by that pass.
 *
 * gemm_team_*, gemm_bias_act_team_*: the same work shared by the threads of the caller's
 * parallel region (for kernels that chain several steps in one region); same bits.
 *
 * gemm_naive_*: the same contract with plain loops, single-threaded; the reference the tests
 * hold the fast kernels to. */
/* Whether gemm_* gives an (M, N) x K product to all threads (else the calling thread does it
 * alone): the same bits either way. */
int gemm_would_split(size_t M, size_t N, size_t K);

#define HM_GEMM(R, name)                                                                      \
    void name(int trans_a, int trans_b, size_t M, size_t N, size_t K, const R* A, size_t lda, \
              const R* B, size_t ldb, R beta, R* C, size_t ldc)
HM_GEMM(float, gemm_serial_f32);
HM_GEMM(double, gemm_serial_f64);
HM_GEMM(float, gemm_f32);
HM_GEMM(double, gemm_f64);
HM_GEMM(float, gemm_team_f32);
HM_GEMM(double, gemm_team_f64);
HM_GEMM(float, gemm_naive_f32);
HM_GEMM(double, gemm_naive_f64);
#undef HM_GEMM

#define HM_GEMM_BIAS_ACT(R, name)                                                             \
    void name(int trans_a, int trans_b, size_t M, size_t N, size_t K, const R* A, size_t lda, \
              const R* B, size_t ldb, R beta, R* C, size_t ldc, const R* bias, int relu)
HM_GEMM_BIAS_ACT(float, gemm_bias_act_f32);
HM_GEMM_BIAS_ACT(double, gemm_bias_act_f64);
HM_GEMM_BIAS_ACT(float, gemm_bias_act_team_f32);
HM_GEMM_BIAS_ACT(double, gemm_bias_act_team_f64);
#undef HM_GEMM_BIAS_ACT

/* Testing aid: cap the instruction-set variant the fast kernels use (0 = widest the CPU
 * supports, 1 = baseline x86-64 / plain C, 2 = AVX2+FMA, 3 = AVX-512). Returns the previous
 * cap. Not thread-safe; set it while no gemm runs. */
int gemm_set_variant(int cap);

/* The variant the fast kernels run with now: 3 AVX-512, 2 AVX2+FMA, 1 baseline x86-64 (SSE2),
 * 0 plain C (not x86-64 or built without clones). */
int gemm_active_variant(void);

#endif
