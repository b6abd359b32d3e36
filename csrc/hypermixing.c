/* HyperMixing (SPEC section 8): token mixing with weights generated per token.
 *
 * Pieces, each a forward/backward pair called in turn by the Python layer:
 *   token_info  z = x * scale + pos (valid rows; padding rows of z are 0, x is not read there)
 *   generator   w = gelu(z_j @ A_j^T + a_j) @ C_j^T + c_j for every head j, on all B*L rows
 *   mixing      bidirectional: s_j = w1_j^T @ v_j (k_h, d_h), y_j = w2_j @ gelu(s_j)
 *   causal      s_j(t) = sum over i <= t of w1_j[i] (x) v_j[i], y_j[t] = w2_j[t] @ gelu(s_j(t))
 *   step        one new token per sequence from a running sum (streaming generation)
 * "mean" divides s by the number of tokens summed.
 *
 * Threads: the generator's products run through gemm_* (fixed tiles, K never split), or for
 * heads of width 8 and 4 through row loops over fixed tiles and per-head sums (one thread per
 * head or group of four heads); the mixing loops over (sequence, head) units, or groups of four
 * neighbouring heads on the width-4 path, each computed by one thread in a fixed order. So no
 * result depends on the thread count. The token information, the width-4 generators and the
 * width-4 scan have team forms (common.h) for the whole-block kernel.
 *
 * Causal memory: the forward keeps only the running sum of each unit, saving a copy of it every
 * `chunk` tokens (checkpoints). The backward walks the chunks from last to first: it rebuilds
 * the chunk's running sums from its checkpoint (the same additions in the same order, so the
 * same bits as the forward; stored transposed, feature-major, for the vector sums of the
 * reverse scan), then runs the reverse scan through them, carrying
 * r(i) = sum over t >= i of ds(t). Memory: L/chunk checkpoints per unit plus chunk sums per
 * thread, instead of L sums per unit. */
#ifndef REAL
#include "hypermixing.h"
#include "gemm.h"
#include "reduce.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int hmx_slot(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Threads for a region whose items need one workspace slot each. */
static int hmx_threads(size_t n_slots)
{
    const int n = hm_num_threads();
    return (size_t)n < n_slots ? n : (int)n_slots;
}

/* Heads of width 4 in float32 (d_h = k_h = 4, the hypermixing LM's 32 heads at E = k = 128)
 * have a scan path of their own, defined after the template passes (see there). It needs
 * AVX-512 or AVX2 with FMA at run time (and GCC or clang on x86-64 to build it); elsewhere the
 * general loops run. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(HM_NO_CLONES)
#define HMX_W4 1
static int hmx_w4_supported(void);
static void hmx_w4_token(float* out, float* state, const float* v, const float* w1t,
                         const float* w2t, float inv);
static void hmx_w4_forward_group(float* y, float* ck, size_t n_ck, const float* x,
                                 const float* w1, const float* w2, size_t row0, size_t n,
                                 size_t L, size_t j, size_t D, size_t K, int mean, size_t chunk,
                                 int count);
static void hmx_w4_backward_group(float* gi, float* dw1, float* dw2, float* sums,
                                  const float* go, const float* x, const float* w1,
                                  const float* w2, const float* ck, size_t n_ck, size_t row0,
                                  size_t n, size_t j, size_t D, size_t K, int mean, size_t chunk,
                                  int tied, int count);
static void hmx_w4_columns(float* cols, const float* M, size_t width, int transposed);
static void hmx_w4_rows_product(float* out, const float* in, const float* cols, size_t m,
                                size_t width, size_t ldi, size_t ldo, int accumulate);
static void hmx_w4_outer_sum(float* out, const float* a, const float* b, size_t R, size_t c,
                             size_t lda, size_t ldb);
/* the widest layer the generators' width-4 path takes: its columns live on the stack */
#define HMX_W4_MAX_WIDTH 256
/* heads whose forward scans run together (hmx_w4_forward_group) */
#define HMX_W4_GROUP 4
#else
#define HMX_W4 0
#endif

size_t hypermixing_causal_work_size(size_t d, size_t k, size_t h, size_t chunk)
{
    const size_t state = (k / h) * (d / h);
    /* running sum / suffix sum, the chunk's sums, a transposed checkpoint, two rows of d_h */
    const size_t general = state * (chunk + 2) + 2 * (d / h);
#if HMX_W4
    if (state == 16 && k / h == 4) {   /* heads of width 4: a group's chunk of sums, slopes */
        const size_t group = 2 * HMX_W4_GROUP * 16 * chunk;
        return group > general ? group : general;
    }
#endif
    return general;
}

size_t hypermixing_causal_checkpoints(size_t L, size_t chunk)
{
    return (L + chunk - 1) / chunk;
}

/* dQ, dP (d_h + 1, d_h); dm (k_h, d_h); the unit's dC1, dc1, dC2, dc2 */
size_t hypermixing_mix_work_size(size_t d, size_t k, size_t h)
{
    const size_t dh = d / h, kh = k / h;
    return 2 * (dh + 1) * dh + kh * dh + 2 * kh * (dh + 1);
}

#define HM_TEMPLATE_FILE "hypermixing.c"
#include "template.h"

#if HMX_W4
/* ---------------------------------------------------- heads of width 4, float32
 * With d_h = k_h = 4 a unit's running sum (k_h, d_h) is 16 floats: one AVX-512 register, two
 * AVX2 ones. The general per-token loops spend more on loop control and 4-wide rows than on
 * arithmetic there (at 32 heads they were twice as slow per token as 16 heads of width 8), so
 * these do a token's products on the whole state at once, lane 4e + f holding s[e][f]:
 *   s += spread(w1t) * repeat(v)            spread(a)[4e + f] = a[e], repeat(b)[4e + f] = b[f]
 *   out[f] = sum over e of (spread(w2t) * gelu(s u))[4e + f]
 * and the generators multiply a row by their block-diagonal 4x4 matrices the same way. The
 * sums over e and over f take a fixed tree of lane shuffles, the same for any thread count.
 * The forward, the streaming step and the backward's rebuild add a token with the same
 * add_token and the first two take their outputs from the same output, so all three get the
 * same bits. hypermixing_w4.h holds the code, compiled for AVX-512 and for AVX2; the CPU
 * picks one at run time (then used throughout), CPUs with neither take the general loops. */
#include <immintrin.h>

#define W4(name) name##_avx512
#define W4_TARGET __attribute__((target("avx512f,fma")))
#define W4_AVX512 1
#include "hypermixing_w4.h"
#undef W4
#undef W4_TARGET
#undef W4_AVX512

#define W4(name) name##_avx2
#define W4_TARGET __attribute__((target("arch=x86-64-v3")))
#define W4_AVX512 0
#include "hypermixing_w4.h"
#undef W4
#undef W4_TARGET
#undef W4_AVX512

/* 2: AVX-512, 1: AVX2 with FMA, 0: neither (the general loops). The environment variable
 * HYPERMIXER_WIDTH4_ISA=avx2 or =none, read once, steps down from what the CPU has: the tests
 * use it to hold the paths against each other, and it measures them. */
static int hmx_w4_isa(void)
{
    static int isa = -1;   /* a race here writes the same value twice */
    if (isa < 0) {
        int best = 0;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            best = __builtin_cpu_supports("avx512f") ? 2 : 1;
        }
        const char* forced = getenv("HYPERMIXER_WIDTH4_ISA");
        if (forced && strcmp(forced, "avx2") == 0 && best > 1) {
            best = 1;
        } else if (forced && strcmp(forced, "none") == 0) {
            best = 0;
        }
        isa = best;
    }
    return isa;
}

static int hmx_w4_supported(void)
{
    return hmx_w4_isa() > 0;
}

/* name_avx512(...) or name_avx2(...), by the instruction set picked above */
#define HMX_W4_DISPATCH(name, ...)                                                            \
    do {                                                                                      \
        if (hmx_w4_isa() == 2) {                                                              \
            name##_avx512(__VA_ARGS__);                                                       \
        } else {                                                                              \
            name##_avx2(__VA_ARGS__);                                                         \
        }                                                                                     \
    } while (0)

static void hmx_w4_token(float* out, float* state, const float* v, const float* w1t,
                         const float* w2t, float inv)
{
    HMX_W4_DISPATCH(token, out, state, v, w1t, w2t, inv);
}

static void hmx_w4_forward_group(float* y, float* ck, size_t n_ck, const float* x,
                                 const float* w1, const float* w2, size_t row0, size_t n,
                                 size_t L, size_t j, size_t D, size_t K, int mean, size_t chunk,
                                 int count)
{
    HMX_W4_DISPATCH(forward_group, y, ck, n_ck, x, w1, w2, row0, n, L, j, D, K, mean, chunk,
                    count);
}

static void hmx_w4_backward_group(float* gi, float* dw1, float* dw2, float* sums,
                                  const float* go, const float* x, const float* w1,
                                  const float* w2, const float* ck, size_t n_ck, size_t row0,
                                  size_t n, size_t j, size_t D, size_t K, int mean, size_t chunk,
                                  int tied, int count)
{
    HMX_W4_DISPATCH(backward_group, gi, dw1, dw2, sums, go, x, w1, w2, ck, n_ck, row0, n, j, D,
                    K, mean, chunk, tied, count);
}

/* cols (4, width): cols[i][o] = M[o * 4 + i] (forward: A or C, rows of 4 per output) or, with
 * `transposed`, M[((o & ~3) + i) * 4 + (o & 3)] (backward: the products with A_j, C_j
 * themselves) */
static void hmx_w4_columns(float* cols, const float* M, size_t width, int transposed)
{
    for (size_t i = 0; i < 4; i++) {
        for (size_t o = 0; o < width; o++) {
            cols[i * width + o] = transposed ? M[((o & ~(size_t)3) + i) * 4 + (o & 3)]
                                             : M[o * 4 + i];
        }
    }
}

static void hmx_w4_rows_product(float* out, const float* in, const float* cols, size_t m,
                                size_t width, size_t ldi, size_t ldo, int accumulate)
{
    HMX_W4_DISPATCH(rows_product, out, in, cols, m, width, ldi, ldo, accumulate);
}

static void hmx_w4_outer_sum(float* out, const float* a, const float* b, size_t R, size_t c,
                             size_t lda, size_t ldb)
{
    HMX_W4_DISPATCH(outer_sum, out, a, b, R, c, lda, ldb);
}
#endif
#else

/* ---------------------------------------------------------------- erf and the exact GELU
 * Written branch-free (both halves computed, one selected) and without libm calls, so a loop
 * of them vectorises under the HM_SIMD clones. Accuracy (tests/test_hypermixing_erf.py):
 * within 2 ulp of math.erf in float64 and in float32.
 *
 * float64, a Chebyshev series on each side of |x| = 1 (Clenshaw's recurrence):
 *   |x| < 1:  erf(x) = x * S(2x^2 - 1), S fitted to erf(x)/x;
 *   |x| >= 1: erfc(a) = exp(-a^2) * R(y), a = min(|x|, 6), y = 14.4 / (3 + a) - 2.6 (the map
 *             t = 3 / (3 + a) stretched from [1/3, 3/4] onto [-1, 1]), R fitted to
 *             erfc(a) exp(a^2); past a = 6, erfc < 2.2e-17 and is taken as 0.
 *   12 + 17 terms, truncation error below 1e-17 relative.
 * float32 erf (hypermixing_erf; the GELU's float32 CDF has its own formula, see hmx_cdf_e),
 * cheaper (no exp, no division), a = min(|x|, 4), split at 1.5:
 *   a < 1.5:  erf(a) = a * P(a^2 / 1.125 - 1), P fitted to erf(a)/a (9 terms, Horner);
 *   a >= 1.5: erfc(a) = Q(0.8 a - 2.2) (14 terms, even and odd powers in two chains),
 *             absolute error 1.2e-9, far below half an ulp of erf there; past a = 4 erf
 *             rounds to 1.
 * The coefficients are Chebyshev interpolants computed with 40-50 digit arithmetic (mpmath),
 * the float32 ones turned into plain polynomials. A NaN stays NaN; +-inf give +-1. */
#ifndef HMX_ERF_ONCE
#define HMX_ERF_ONCE
static const double hmx_cheb_small_f64[12] = {
    9.75476939382654118e-01, -1.42261205103713650e-01, 1.00355821875997963e-02,
    -5.76876469976748529e-04, 2.74199312521960603e-05, -1.10431755073445071e-06,
    3.84887554203450361e-08, -1.18085825338754662e-09, 3.23342158260504349e-11,
    -7.99101594667915125e-13, 1.79907230223207626e-14, -3.71737424230677722e-16};
static const double hmx_cheb_tail_f64[17] = {
    2.33768221880925470e-01, 1.64101962784234084e-01, 2.60978126028927580e-02,
    3.28111853149978296e-03, 3.13463890652485077e-04, 2.04605677084600596e-05,
    5.77698770018260207e-07, -3.77264461743661060e-08, -4.11566201732381898e-09,
    2.04012154584318082e-11, 2.07083936961860242e-11, 2.38438494340639956e-13,
    -1.15161525073464794e-13, -1.47628372238177511e-15, 7.37801481279143685e-16,
    -2.72753069018298871e-19, -5.12688511941877962e-18};
/* float32: plain polynomials (Horner) in y on [-1, 1], lowest power first */
static const float hmx_poly_small_f32[9] = {
    8.168361783e-01f, -2.252525389e-01f, 6.590878963e-02f, -1.628759503e-02f,
    3.385072341e-03f, -6.012980011e-04f, 9.299963131e-05f, -1.309938580e-05f,
    1.592293302e-06f};
static const float hmx_poly_large_f32[14] = {
    1.006229795e-04f, -7.328460924e-04f, 2.519056434e-03f, -5.391426850e-03f,
    7.956070825e-03f, -8.409381844e-03f, 6.311665755e-03f, -3.084540600e-03f,
    5.626198836e-04f, 5.415311898e-04f, -5.645445781e-04f, 1.698755368e-04f,
    6.194278831e-05f, -4.063098095e-05f};
/* float32 GELU: erfc(a) exp(a^2) as a polynomial (Horner, lowest power first) in
 * y = 2.5 t - 1.5, t = 1 / (1 + 0.4 a), for a in [0, 10] (t in [0.2, 1]): the degree-10
 * Chebyshev interpolant at 11 nodes (computed in double from math.erfc), turned into powers of
 * y; relative error 8.5e-9 before float32 rounding. See hmx_cdf_e. */
static const float hmx_erfc_scaled_f32[11] = {
    2.962874774e-01f, 3.909840065e-01f, 2.154016631e-01f, 8.094795793e-02f,
    1.725054508e-02f, 6.947349224e-05f, -9.274758178e-04f, -7.657884970e-05f,
    6.269010299e-05f, 4.644663906e-06f, -4.403794921e-06f};
/* 1 / i! */
static const double hmx_inv_factorial[14] = {
    1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
    1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
/* round-to-nearest of |y| < 2^(p-2) is (y + M) - M with M = 1.5 * 2^(p-1) */
#define HMX_ROUND_F32 12582912.0f
/* the causal backward's per-row sums use a pairwise tree up to this width */
#define HMX_TREE 64
#define HMX_ROUND_F64 6755399441055744.0
#endif

#define HMX_SINGLE (sizeof(REAL) == sizeof(float))
#define HMX_SQRT1_2 0.70710678118654752440
#define HMX_INV_SQRT_2PI 0.39894228040143267794

/* sum of c[i] T_i(y) for i = 0..n-1 (Clenshaw's recurrence) */
HM_INLINE
static inline REAL F(hmx_chebyshev)(const REAL* c, int n, REAL y)
{
    const REAL y2 = y + y;
    REAL b1 = 0, b2 = 0;
    for (int i = n - 1; i >= 1; i--) {
        const REAL b = y2 * b1 - b2 + c[i];
        b2 = b1;
        b1 = b;
    }
    return y * b1 - b2 + c[0];
}

/* exp(x) for x <= 0 (NaN stays NaN): x = n ln2 + r, |r| <= ln2/2, ln2 split in two so n ln2
 * is exact; exp(r) by its Taylor polynomial (degree 7 in float32, 13 in float64: remainder
 * under 6e-9 and 4e-18 relative); 2^n from the exponent bits. Below -87 (float32) / -708
 * (float64) the result, tinier than the smallest normal number, is 0. */
HM_INLINE
static inline REAL F(hmx_exp_nonpos)(REAL x)
{
    const REAL lo = HMX_SINGLE ? (REAL)-87 : (REAL)-708;
    const REAL round = HMX_SINGLE ? (REAL)HMX_ROUND_F32 : (REAL)HMX_ROUND_F64;
    const REAL ln2_hi = HMX_SINGLE ? (REAL)0.693359375 : (REAL)6.93147180369123816490e-01;
    const REAL ln2_lo = HMX_SINGLE ? (REAL)-2.12194440e-4 : (REAL)1.90821492927058770002e-10;
    const REAL xc = x < lo ? lo : x;
    const REAL shifted = xc * (REAL)1.44269504088896340736 + round;
    const REAL n = shifted - round;
    const REAL r = (xc - n * ln2_hi) - n * ln2_lo;
    REAL p = (REAL)hmx_inv_factorial[HMX_SINGLE ? 7 : 13];
    for (int i = (HMX_SINGLE ? 7 : 13) - 1; i >= 0; i--) {
        p = p * r + (REAL)hmx_inv_factorial[i];
    }
    REAL scale;
    if (HMX_SINGLE) {
        float sf = (float)shifted, rf = HMX_ROUND_F32, f;
        uint32_t bits, round_bits;
        memcpy(&bits, &sf, sizeof bits);
        memcpy(&round_bits, &rf, sizeof round_bits);
        bits = (bits - round_bits + 127u) << 23;   /* unsigned: defined even for NaN input */
        memcpy(&f, &bits, sizeof f);
        scale = (REAL)f;
    } else {
        double sd = (double)shifted, rd = HMX_ROUND_F64, f;
        uint64_t bits, round_bits;
        memcpy(&bits, &sd, sizeof bits);
        memcpy(&round_bits, &rd, sizeof round_bits);
        bits = (bits - round_bits + 1023u) << 52;
        memcpy(&f, &bits, sizeof f);
        scale = (REAL)f;
    }
    return x < lo ? (REAL)0 : p * scale;
}

/* float64: erf(x) for |x| < 1 */
HM_INLINE
static inline REAL F(hmx_erf_small)(REAL x)
{
    const REAL* c = (const REAL*)(const void*)hmx_cheb_small_f64;
    return x * F(hmx_chebyshev)(c, 12, (REAL)2 * x * x - (REAL)1);
}

/* float64: erfc(a) for a >= 1 (0 past 6) */
HM_INLINE
static inline REAL F(hmx_erfc_large)(REAL a)
{
    const REAL* c = (const REAL*)(const void*)hmx_cheb_tail_f64;
    const REAL ac = a < (REAL)6 ? a : (REAL)6;
    const REAL y = (REAL)14.4 / ((REAL)3 + ac) - (REAL)2.6;
    const REAL e = F(hmx_exp_nonpos)(-ac * ac) * F(hmx_chebyshev)(c, 17, y);
    return a < (REAL)6 ? e : (REAL)0;
}

/* c[0] + c[1] y + ... + c[n-1] y^(n-1) as two interleaved Horner chains in y^2 (even and odd
 * powers), half as long as one: the latency, not the number of operations, bounds these
 * kernels' per-row cost */
HM_INLINE
static inline REAL F(hmx_poly_split)(const REAL* c, int n, REAL y)
{
    const REAL yy = y * y;
    const int last_even = (n - 1) & ~1, last_odd = (n - 2) | 1;
    REAL even = c[last_even], odd = c[last_odd];
    for (int i = last_even - 2; i >= 0; i -= 2) {
        even = even * yy + c[i];
    }
    for (int i = last_odd - 2; i >= 1; i -= 2) {
        odd = odd * yy + c[i];
    }
    return even + y * odd;
}

/* float32: erf(|x|) for |x| < 1.5 (returned) and erfc(|x|) for 1.5 <= |x| <= 4 (*tail, from
 * Q; |x| is taken as 4 beyond), NaN kept */
HM_INLINE
static inline REAL F(hmx_erf_pieces32)(REAL x, REAL* tail_out)
{
    const REAL* p = (const REAL*)(const void*)hmx_poly_small_f32;
    const REAL* q = (const REAL*)(const void*)hmx_poly_large_f32;
    const REAL ax = x < 0 ? -x : x;
    const REAL a = ax > (REAL)4 ? (REAL)4 : ax;
    const REAL y1 = a * a * (REAL)0.888888889 - (REAL)1;
    const REAL y2 = a * (REAL)0.8 - (REAL)2.2;
    REAL small = p[8];
    for (int i = 7; i >= 0; i--) {
        small = small * y1 + p[i];
    }
    *tail_out = F(hmx_poly_split)(q, 14, y2);
    return a * small;
}

/* float32: erf(|x|), NaN kept */
HM_INLINE
static inline REAL F(hmx_erf_abs32)(REAL x)
{
    REAL tail;
    const REAL small = F(hmx_erf_pieces32)(x, &tail);
    const REAL a = x < 0 ? -x : x;
    const REAL large = a >= (REAL)4 ? (REAL)1 : (REAL)1 - tail;
    return a < (REAL)1.5 ? small : large;
}

HM_INLINE
static inline REAL F(hmx_erf)(REAL x)
{
    if (HMX_SINGLE) {
        const REAL e = F(hmx_erf_abs32)(x);
        return x < 0 ? -e : e;
    }
    const REAL a = x < 0 ? -x : x;
    const REAL large = (REAL)1 - F(hmx_erfc_large)(a);
    const REAL small = F(hmx_erf_small)(x);
    return a >= (REAL)1 ? (x < 0 ? -large : large) : small;
}

/* float64: erfc(a) for a >= 6, where the fit above stops: the asymptotic series
 * exp(-a^2) / (a sqrt(pi)) * (1 - u (1 - 3u (1 - 5u (1 - 7u)))), u = 1 / (2 a^2), relative
 * error under 5e-7 at a = 6, on values below 2.2e-17.
 * It keeps the lower tail of GELU nonzero as the reference's erfc does: a GELU of exactly 0
 * turned an infinite generated weight into inf * 0 = NaN where the reference gives +-inf. */
HM_INLINE
static inline REAL F(hmx_erfc_asymptotic_e)(REAL a, REAL e)
{
    /* e = exp(-a^2), which the GELU slope computes anyway */
    const REAL u = (REAL)0.5 / (a * a);
    const REAL series =
        (REAL)1 - u * ((REAL)1 - (REAL)3 * u * ((REAL)1 - (REAL)5 * u * ((REAL)1 - (REAL)7 * u)));
    return e * series / (a * (REAL)1.77245385090551602730);
}

HM_INLINE
static inline REAL F(hmx_erfc_asymptotic)(REAL a)
{
    return F(hmx_erfc_asymptotic_e)(a, F(hmx_exp_nonpos)(-a * a));
}

/* Phi(v) = (1 + erf(v / sqrt 2)) / 2, the standard normal CDF. float32: from one erfc formula
 * (below). float64: for v < -sqrt 2 straight from erfc (no cancellation in 1 - erf), far in
 * the lower tail from the asymptotic erfc. Both sides are computed and one selected, so a loop
 * of it still vectorises. */
HM_INLINE
static inline REAL F(hmx_cdf_e)(REAL v, const REAL* e)
{
    /* e: NULL, or &exp(-v^2 / 2) when the caller has it (the far tail needs exp(-x^2)) */
    const REAL x = v * (REAL)HMX_SQRT1_2;
    const REAL ax = x < 0 ? -x : x;
    if (HMX_SINGLE) {
        /* erfc(|x|) = exp(-v^2 / 2) G(t), t = 1 / (1 + 0.4 |x|), G the polynomial above: one
         * exp (the slope needs it anyway) and one division for the whole range, instead of
         * two polynomials, an asymptotic series and two divisions. Phi = erfc / 2 below 0, so
         * the lower tail keeps its relative accuracy (never 0.5 - erf / 2, which cancels to 0
         * and made inf * gelu NaN where the reference gives +-inf); 1 - erfc / 2 above.
         * Measured against math.erfc (tests/test_hypermixing_erf.py): gelu and slope within
         * 2.5e-7 * max(1, |v|) even without FMA, the tail below v = -2 within 5e-6 relative.
         * Past |x| = 10, t is held at 0.2 and the exp is 0 (v < -13.2: the subnormal band). */
        const REAL* g = (const REAL*)(const void*)hmx_erfc_scaled_f32;
        const REAL ex = e ? *e : F(hmx_exp_nonpos)((REAL)-0.5 * v * v);
        const REAL ac = ax > (REAL)10 ? (REAL)10 : ax;
        const REAL t = (REAL)1 / ((REAL)1 + (REAL)0.4 * ac);
        const REAL y = (REAL)2.5 * t - (REAL)1.5;
        REAL poly = g[10];
        for (int i = 9; i >= 0; i--) {
            poly = poly * y + g[i];
        }
        const REAL half_erfc = (REAL)0.5 * poly * ex;
        return x < 0 ? half_erfc : (REAL)1 - half_erfc;
    }
    const REAL asym = e ? F(hmx_erfc_asymptotic_e)(ax, *e) : F(hmx_erfc_asymptotic)(ax);
    const REAL a = x < 0 ? -x : x;
    const REAL tail = (REAL)0.5 * (a < (REAL)6 ? F(hmx_erfc_large)(a) : asym);
    const REAL small = (REAL)0.5 + (REAL)0.5 * F(hmx_erf_small)(x);
    return a >= (REAL)1 ? (x < 0 ? tail : (REAL)1 - tail) : small;
}

HM_INLINE
static inline REAL F(hmx_cdf)(REAL v)
{
    return F(hmx_cdf_e)(v, NULL);
}

/* Exact GELU v * Phi(v) */
HM_INLINE
static inline REAL F(gelu)(REAL v)
{
    return v * F(hmx_cdf)(v);
}

/* Both at once: *slope = gelu'(v) = Phi(v) + v phi(v); returns gelu(v). */
HM_INLINE
static inline REAL F(gelu_slope)(REAL v, REAL* slope)
{
    const REAL e = F(hmx_exp_nonpos)((REAL)-0.5 * v * v);
    const REAL cdf = F(hmx_cdf_e)(v, &e);
    *slope = cdf + v * (REAL)HMX_INV_SQRT_2PI * e;
    return v * cdf;
}

HM_INLINE
static inline REAL F(gelu_grad)(REAL v)
{
    REAL slope;
    (void)F(gelu_slope)(v, &slope);
    return slope;
}

/* value (n,) = gelu(x), slope (n,) = gelu'(x) when not NULL. For the tests of the erf. */
HM_SIMD
void KERNEL_NAME(hypermixing_gelu_f32, hypermixing_gelu_f64)(REAL* value, REAL* slope,
                                                             const REAL* x, size_t n)
{
    if (slope) {
        for (size_t i = 0; i < n; i++) {
            REAL g;
            value[i] = F(gelu_slope)(x[i], &g);
            slope[i] = g;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            value[i] = F(gelu)(x[i]);
        }
    }
}

/* out (n,) = erf(x). For the tests. */
HM_SIMD
void KERNEL_NAME(hypermixing_erf_f32, hypermixing_erf_f64)(REAL* out, const REAL* x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[i] = F(hmx_erf)(x[i]);
    }
}

/* z, x: (B, L, d); pos: (L, d), the position rows already offset for the flavour.
 * Padding rows of z are 0 (their x is never read). */
void KERNEL_NAME(hypermixing_token_info_forward_f32, hypermixing_token_info_forward_f64)(
    REAL* z, const REAL* x, const REAL* pos, const int64_t* lengths, size_t B, size_t L, size_t d,
    REAL scale)
{
    HM_RUN_TEAM(B * L * d > HM_PARALLEL_MIN,
                F(hypermixing_token_info_forward_team)(z, x, pos, lengths, B, L, d, scale));
}

/* Team forms (here and below): the kernel's work shared by the threads of the caller's
 * parallel region with an orphaned omp for (all of it when called outside one), so that the
 * whole-block kernel (hypermixing_block.c) runs its sublayers in one region. */
void KERNEL_NAME(hypermixing_token_info_forward_team_f32,
                 hypermixing_token_info_forward_team_f64)(
    REAL* z, const REAL* x, const REAL* pos, const int64_t* lengths, size_t B, size_t L, size_t d,
    REAL scale)
{
    const size_t rows = B * L, width = d;
    #pragma omp for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const size_t b = r / L, t = r % L;
        REAL* restrict zr = z + r * width;
        const REAL* restrict xr = x + r * width;
        const REAL* restrict pr = pos + t * width;
        if ((int64_t)t >= lengths[b]) {
            for (size_t e = 0; e < width; e++) {
                zr[e] = 0;
            }
            continue;
        }
        for (size_t e = 0; e < width; e++) {
            zr[e] = xr[e] * scale + pr[e];
        }
    }
}

/* grad_input, dz: (B, L, d). grad_input += scale * dz on valid rows; padding rows set to 0. */
void KERNEL_NAME(hypermixing_token_info_backward_f32, hypermixing_token_info_backward_f64)(
    REAL* grad_input, const REAL* dz, const int64_t* lengths, size_t B, size_t L, size_t d,
    REAL scale)
{
    HM_RUN_TEAM(B * L * d > HM_PARALLEL_MIN,
                F(hypermixing_token_info_backward_team)(grad_input, dz, lengths, B, L, d, scale));
}

void KERNEL_NAME(hypermixing_token_info_backward_team_f32,
                 hypermixing_token_info_backward_team_f64)(
    REAL* grad_input, const REAL* dz, const int64_t* lengths, size_t B, size_t L, size_t d,
    REAL scale)
{
    const size_t rows = B * L, width = d;
    #pragma omp for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const size_t b = r / L, t = r % L;
        REAL* restrict gr = grad_input + r * width;
        const REAL* restrict dr = dz + r * width;
        if ((int64_t)t >= lengths[b]) {
            for (size_t e = 0; e < width; e++) {
                gr[e] = 0;
            }
            continue;
        }
        for (size_t e = 0; e < width; e++) {
            gr[e] += dr[e] * scale;
        }
    }
}

/* Elementwise passes. They live in functions of their own, called once per row or per state,
 * because the HM_SIMD clones do not reach the bodies OpenMP outlines from a parallel loop. */

/* The mixing state of one sequence and head: s (k_h, d_h) += c (x) colsum (when c is not NULL),
 * then s /= count (mean), m = gelu(s). */
HM_SIMD
static void F(state_forward)(REAL* restrict s, REAL* restrict m, const REAL* restrict c,
                             const REAL* restrict colsum, size_t kh, size_t dh, REAL count,
                             int mean)
{
    for (size_t e = 0; e < kh; e++) {
        REAL* restrict se = s + e * dh;
        REAL* restrict me = m + e * dh;
        if (c) {
            for (size_t f = 0; f < dh; f++) {
                se[f] += c[e] * colsum[f];
            }
        }
        if (mean) {
            for (size_t f = 0; f < dh; f++) {
                se[f] /= count;
            }
        }
        for (size_t f = 0; f < dh; f++) {
            me[f] = F(gelu)(se[f]);
        }
    }
}

/* ds (n,) := ds * gelu'(s), then / count with mean */
HM_SIMD
static void F(state_backward)(REAL* restrict ds, const REAL* restrict s, size_t n, REAL count,
                              int mean)
{
    for (size_t e = 0; e < n; e++) {
        ds[e] *= F(gelu_grad)(s[e]);
    }
    if (mean) {
        for (size_t e = 0; e < n; e++) {
            ds[e] /= count;
        }
    }
}

/* out (cols,) = sum over rows i < n of a[i * lda + .], in row order */
static void F(hmx_column_sums)(REAL* restrict out, const REAL* restrict a, size_t n,
                               size_t lda, size_t cols)
{
    for (size_t f = 0; f < cols; f++) {
        out[f] = 0;
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t f = 0; f < cols; f++) {
            out[f] += a[i * lda + f];
        }
    }
}

/* block (rows, width) with row stride ld := gelu(block + bias); slope := gelu' (same layout)
 * unless NULL; bias (width,) may be NULL */
HM_SIMD
static void F(gelu_block)(REAL* restrict block, REAL* restrict slope, const REAL* restrict bias,
                          size_t rows, size_t width, size_t ld)
{
    for (size_t r = 0; r < rows; r++) {
        REAL* restrict row = block + r * ld;
        if (bias) {
            for (size_t e = 0; e < width; e++) {
                row[e] += bias[e];
            }
        }
        if (slope) {
            REAL* restrict sr = slope + r * ld;
            for (size_t e = 0; e < width; e++) {
                REAL g;
                row[e] = F(gelu_slope)(row[e], &g);
                sr[e] = g;
            }
        } else {
            for (size_t e = 0; e < width; e++) {
                row[e] = F(gelu)(row[e]);
            }
        }
    }
}

/* block (rows, width), stride ld: *= the same block of other (stride ld) */
HM_SIMD
static void F(scale_block)(REAL* restrict block, const REAL* restrict other, size_t rows,
                           size_t width, size_t ld)
{
    for (size_t r = 0; r < rows; r++) {
        for (size_t e = 0; e < width; e++) {
            block[r * ld + e] *= other[r * ld + e];
        }
    }
}

/* block (rows, width), stride ld: += bias (width,) on every row */
static void F(bias_block)(REAL* restrict block, const REAL* restrict bias, size_t rows,
                          size_t width, size_t ld)
{
    for (size_t r = 0; r < rows; r++) {
        for (size_t e = 0; e < width; e++) {
            block[r * ld + e] += bias[e];
        }
    }
}

/* The generators work in tasks of HMX_GEN_TILE rows and one head, each done by one thread
 * start to end (products, GELU, next product) while its rows are in cache; the tiles are
 * fixed, so the results do not depend on the thread count. */
#ifndef HMX_GEN_TILE
#define HMX_GEN_TILE 128
#endif

/* C_j = op(A_j) @ op(B_j) for heads j = 0..h-1, A_j = A + j * a_step (leading dimension lda),
 * likewise B_j and C_j (ldc; C_j overwritten). With at least as many heads as threads, one
 * parallel region hands out whole heads (gemm_serial: one barrier instead of h); otherwise
 * each head is split over the threads by gemm. Either way every element is summed by one
 * thread in gemm's fixed order. */
static void F(per_head_gemm)(int trans_a, int trans_b, size_t M, size_t N, size_t Kd,
                             const REAL* A, size_t a_step, size_t lda, const REAL* Bm,
                             size_t b_step, size_t ldb, REAL* Cm, size_t c_step, size_t ldc,
                             size_t h)
{
    const int threads = hm_num_threads();
    if ((size_t)threads > 1 && h >= (size_t)threads && M * N * Kd * h > HM_PARALLEL_MIN) {
        #pragma omp parallel for schedule(static) num_threads(threads)
        for (size_t j = 0; j < h; j++) {
            F(gemm_serial)(trans_a, trans_b, M, N, Kd, A + j * a_step, lda, Bm + j * b_step,
                           ldb, 0, Cm + j * c_step, ldc);
        }
        return;
    }
    for (size_t j = 0; j < h; j++) {
        F(gemm)(trans_a, trans_b, M, N, Kd, A + j * a_step, lda, Bm + j * b_step, ldb, 0,
                Cm + j * c_step, ldc);
    }
}

/* Heads of width 8 (k_h 8 or 16) and of width 4 (k_h 4) skip gemm, whose packing and tiles
 * cost more than the arithmetic of an 8x8 or 4x4 product: each row's product with every
 * head's small matrix is a loop of broadcast-times-vector updates over the head's outputs,
 * and the GELU runs over whole rows (all heads at once, full vectors). Measured (1 thread,
 * 1,280 rows, d = k = 128): forward 0.53 -> 0.21 ms, backward 0.70 -> 0.45 ms at 16 heads;
 * 32 heads (width 4) 2.45 -> 0.31 ms forward, 1.6 -> 0.66 ms backward, and in float32 on
 * AVX-512 the width-4 path below does better still (0.13 ms each way); at 8 heads (width 16)
 * gemm stayed as fast or faster, so they keep it. Each output is still summed by one thread in
 * a fixed order (inputs in turn). */
#define HMX_SMALL_HEAD 16
/* the transposed weights live on each thread's stack: at most 24 KB (float64), so a thread
 * with a small stack (OMP_STACKSIZE, threading.stack_size) is safe; wider layers use gemm */
#define HMX_SMALL_A 1024   /* h d_h^2, the transposed first layers (16 heads of width 8) */
#define HMX_SMALL_C 2048   /* h d_h k_h, the transposed second layers */

static int F(small_heads)(size_t D, size_t K, size_t h)
{
    const size_t dh = D / h, kh = K / h;
    return ((dh == 8 && (kh == 8 || kh == 16)) || (dh == 4 && kh == 4)) &&
           h * dh * dh <= HMX_SMALL_A && h * dh * kh <= HMX_SMALL_C;
}

/* At (h, d_h, d_h) := A_j^T per head; Ct (h, d_h, k_h) := C_j^T per head */
static void F(small_heads_transpose)(REAL* restrict At, REAL* restrict Ct,
                                     const REAL* restrict A, const REAL* restrict C, size_t h,
                                     size_t dh, size_t kh)
{
    for (size_t j = 0; j < h; j++) {
        for (size_t o = 0; o < dh; o++) {
            for (size_t i = 0; i < dh; i++) {
                At[(j * dh + i) * dh + o] = A[(j * dh + o) * dh + i];
            }
            for (size_t e = 0; e < kh; e++) {
                Ct[(j * dh + o) * kh + e] = C[(j * kh + e) * dh + o];
            }
        }
    }
}

/* out (m, h * n_out), stride ldo, := (or += when accumulate) per head j, in_j @ Wt_j, with in
 * (m, h * n_in) of stride ldi and Wt (h, n_in, n_out): out[r, j n_out + o] = sum over i of
 * in[r, j n_in + i] Wt[j, i, o], i in turn. */
HM_INLINE
static inline void F(small_heads_product_body)(REAL* restrict out, const REAL* restrict in,
                                               const REAL* restrict Wt, size_t m, size_t h,
                                               size_t n_in, size_t n_out, size_t ldi,
                                               size_t ldo, int accumulate)
{
    for (size_t r = 0; r < m; r++) {
        for (size_t j = 0; j < h; j++) {
            const REAL* x = in + r * ldi + j * n_in;
            const REAL* W = Wt + j * n_in * n_out;
            REAL acc[HMX_SMALL_HEAD];
            #pragma omp simd
            for (size_t o = 0; o < n_out; o++) {
                acc[o] = 0;
            }
            for (size_t i = 0; i < n_in; i++) {
                const REAL xi = x[i];
                #pragma omp simd
                for (size_t o = 0; o < n_out; o++) {
                    acc[o] += xi * W[i * n_out + o];
                }
            }
            REAL* y = out + r * ldo + j * n_out;
            #pragma omp simd
            for (size_t o = 0; o < n_out; o++) {
                y[o] = accumulate ? y[o] + acc[o] : acc[o];
            }
        }
    }
}

/* with the output width as a constant for the common widths, so acc stays in registers */
HM_SIMD
static void F(small_heads_product)(REAL* restrict out, const REAL* restrict in,
                                   const REAL* restrict Wt, size_t m, size_t h, size_t n_in,
                                   size_t n_out, size_t ldi, size_t ldo, int accumulate)
{
    if (n_out == 16) {
        F(small_heads_product_body)(out, in, Wt, m, h, n_in, 16, ldi, ldo, accumulate);
    } else if (n_out == 8) {
        F(small_heads_product_body)(out, in, Wt, m, h, n_in, 8, ldi, ldo, accumulate);
    } else if (n_out == 4) {
        F(small_heads_product_body)(out, in, Wt, m, h, n_in, 4, ldi, ldo, accumulate);
    } else {
        F(small_heads_product_body)(out, in, Wt, m, h, n_in, n_out, ldi, ldo, accumulate);
    }
}

/* out (h, n_a, n_b) := per head j, the sum over rows r in turn of a_j[r] (x) b_j[r], with a
 * (R, h * n_a) of stride lda and b (R, h * n_b) of stride ldb: the weight gradients of small
 * heads (gemm would pack 8x8 products for nothing). Heads are split over the threads, so each
 * head is summed by one thread, rows in order, whatever the thread count. */
HM_INLINE
static inline void F(small_heads_outer_sum_body)(REAL* restrict out, const REAL* restrict a,
                                                 const REAL* restrict b, size_t R, size_t j,
                                                 size_t n_a, size_t n_b, size_t lda,
                                                 size_t ldb)
{
    REAL acc[HMX_SMALL_HEAD * HMX_SMALL_HEAD];
    for (size_t i = 0; i < n_a * n_b; i++) {
        acc[i] = 0;
    }
    for (size_t r = 0; r < R; r++) {
        const REAL* ar = a + r * lda + j * n_a;
        const REAL* br = b + r * ldb + j * n_b;
        for (size_t e = 0; e < n_a; e++) {
            const REAL ae = ar[e];
            #pragma omp simd
            for (size_t o = 0; o < n_b; o++) {
                acc[e * n_b + o] += ae * br[o];
            }
        }
    }
    for (size_t i = 0; i < n_a * n_b; i++) {
        out[j * n_a * n_b + i] = acc[i];
    }
}

/* one head, with n_b as a constant for width 8; a function of its own so that it runs in the
 * SIMD clones (a loop body inlined into the OpenMP-outlined region is compiled for the
 * baseline instruction set) */
HM_SIMD
static void F(small_heads_outer_sum_head)(REAL* restrict out, const REAL* restrict a,
                                          const REAL* restrict b, size_t R, size_t j,
                                          size_t n_a, size_t n_b, size_t lda, size_t ldb)
{
    if (n_b == 8) {
        F(small_heads_outer_sum_body)(out, a, b, R, j, n_a, 8, lda, ldb);
    } else if (n_b == 4) {
        F(small_heads_outer_sum_body)(out, a, b, R, j, n_a, 4, lda, ldb);
    } else {
        F(small_heads_outer_sum_body)(out, a, b, R, j, n_a, n_b, lda, ldb);
    }
}

static void F(small_heads_outer_sum)(REAL* restrict out, const REAL* restrict a,
                                     const REAL* restrict b, size_t R, size_t h, size_t n_a,
                                     size_t n_b, size_t lda, size_t ldb)
{
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
        if (R * h * n_a * n_b > HM_PARALLEL_MIN && h > 1)
    for (size_t j = 0; j < h; j++) {
        F(small_heads_outer_sum_head)(out, a, b, R, j, n_a, n_b, lda, ldb);
    }
}

/* out (width,) := the column sums of a (R, width), rows in order: a bias's gradient */
static void F(bias_gradient)(REAL* out, const REAL* a, size_t R, size_t width)
{
    for (size_t e = 0; e < width; e++) {
        out[e] = 0;
    }
    F(column_sums_add)(out, a, R, width);
}

/* Whether the generators take the width-4 path (float32, d = k = 4 h, AVX-512) */
static int F(generators_width4)(size_t D, size_t K, size_t h)
{
#if HMX_W4
    return HMX_SINGLE && D == K && D == 4 * h && D % 16 == 0 && D <= HMX_W4_MAX_WIDTH &&
           hmx_w4_supported();
#else
    (void)D, (void)K, (void)h;
    return 0;
#endif
}

/* The generator forward's team form, for the width-4 path only (hypermixing_team_ready):
 * every thread of the team builds the column copies of A and C on its stack. */
void KERNEL_NAME(hypermixing_generator_forward_team_f32,
                 hypermixing_generator_forward_team_f64)(
    REAL* w, REAL* act, REAL* slope, const REAL* z, const REAL* A, const REAL* a, const REAL* C,
    const REAL* c, size_t rows, size_t d, size_t k, size_t h)
{
#if HMX_W4
    const size_t R = rows, D = d, K = k;
    const size_t tiles = (R + HMX_GEN_TILE - 1) / HMX_GEN_TILE;
    float cols_a[4 * HMX_W4_MAX_WIDTH], cols_c[4 * HMX_W4_MAX_WIDTH];
    hmx_w4_columns(cols_a, (const float*)A, D, 0);
    hmx_w4_columns(cols_c, (const float*)C, K, 0);
    #pragma omp for schedule(static)
    for (size_t tile = 0; tile < tiles; tile++) {
        const size_t r0 = tile * HMX_GEN_TILE;
        const size_t m = R - r0 < HMX_GEN_TILE ? R - r0 : HMX_GEN_TILE;
        hmx_w4_rows_product((float*)(act + r0 * D), (const float*)(z + r0 * D), cols_a, m, D,
                            D, D, 0);
        F(gelu_block)(act + r0 * D, slope ? slope + r0 * D : NULL, a, m, D, D);
        if (w) {
            hmx_w4_rows_product((float*)(w + r0 * K), (const float*)(act + r0 * D), cols_c, m,
                                K, D, K, 0);
            if (c) {
                F(bias_block)(w + r0 * K, c, m, K, K);
            }
        }
    }
#else
    (void)w, (void)act, (void)slope, (void)z, (void)A, (void)a, (void)C, (void)c, (void)rows;
    (void)d, (void)k, (void)h;
#endif
}

/* act, slope, z: (rows, d); w: (rows, k) or NULL; A: (h, d_h, d_h); a: (h, d_h) or NULL;
 * C: (h, k_h, d_h); c: (h, k_h) or NULL. Head j reads columns j*d_h.. of z:
 * act_j = gelu(z_j @ A_j^T + a_j), slope_j = gelu'(z_j @ A_j^T + a_j) (not computed when
 * slope is NULL), and, when w is not NULL, w_j = act_j @ C_j^T + c_j in columns j*k_h.. of w. */
void KERNEL_NAME(hypermixing_generator_forward_f32, hypermixing_generator_forward_f64)(
    REAL* w, REAL* act, REAL* slope, const REAL* z, const REAL* A, const REAL* a, const REAL* C,
    const REAL* c, size_t rows, size_t d, size_t k, size_t h)
{
    const size_t R = rows, D = d, K = k;
    const size_t dh = D / h, kh = K / h;
    const size_t tiles = (R + HMX_GEN_TILE - 1) / HMX_GEN_TILE;
    if (F(generators_width4)(D, K, h)) {
        HM_RUN_TEAM(R * D > HM_PARALLEL_MIN && tiles > 1,
                    F(hypermixing_generator_forward_team)(w, act, slope, z, A, a, C, c, rows, d,
                                                          k, h));
        return;
    }
    if (F(small_heads)(D, K, h)) {
        #pragma omp parallel num_threads(hm_num_threads()) if (R * D > HM_PARALLEL_MIN && tiles > 1)
        {
            REAL At[HMX_SMALL_A], Ct[HMX_SMALL_C];
            F(small_heads_transpose)(At, Ct, A, C, h, dh, kh);
            #pragma omp for schedule(static)
            for (size_t tile = 0; tile < tiles; tile++) {
                const size_t r0 = tile * HMX_GEN_TILE;
                const size_t m = R - r0 < HMX_GEN_TILE ? R - r0 : HMX_GEN_TILE;
                F(small_heads_product)(act + r0 * D, z + r0 * D, At, m, h, dh, dh, D, D, 0);
                F(gelu_block)(act + r0 * D, slope ? slope + r0 * D : NULL, a, m, D, D);
                if (w) {
                    F(small_heads_product)(w + r0 * K, act + r0 * D, Ct, m, h, dh, kh, D, K, 0);
                    if (c) {
                        F(bias_block)(w + r0 * K, c, m, K, K);
                    }
                }
            }
        }
        return;
    }
    const size_t tasks = tiles * h;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
        if (R * D > HM_PARALLEL_MIN && tasks > 1)
    for (size_t task = 0; task < tasks; task++) {
        const size_t j = task % h, r0 = (task / h) * HMX_GEN_TILE;
        const size_t m = R - r0 < HMX_GEN_TILE ? R - r0 : HMX_GEN_TILE;
        REAL* act_j = act + r0 * D + j * dh;
        F(gemm_serial)(0, 1, m, dh, dh, z + r0 * D + j * dh, D, A + j * dh * dh, dh, 0, act_j,
                       D);
        F(gelu_block)(act_j, slope ? slope + r0 * D + j * dh : NULL, a ? a + j * dh : NULL, m,
                      dh, D);
        if (w) {
            REAL* w_j = w + r0 * K + j * kh;
            F(gemm_serial)(0, 1, m, kh, dh, act_j, D, C + j * kh * dh, dh, 0, w_j, K);
            if (c) {
                F(bias_block)(w_j, c + j * kh, m, kh, K);
            }
        }
    }
}

#if HMX_W4
/* A generator layer's weight and bias gradients on the width-4 path, in team form: dW (h, 4, 4)
 * := per head, grad_j^T @ in_j (four heads per task), db (D,) := the column sums of grad unless
 * db is NULL; grad, in (R, D) */
static void F(width4_layer_gradients)(REAL* dW, REAL* db, const REAL* grad, const REAL* in,
                                      size_t R, size_t D)
{
    if (db) {   /* the team's column sums (as bias_gradient's, the same bits) */
        #pragma omp single
        memset(db, 0, D * sizeof(REAL));
        F(column_sums_add_team)(db, grad, R, D);
    }
    #pragma omp for schedule(static)
    for (size_t c = 0; c < D / 16; c++) {
        hmx_w4_outer_sum((float*)dW, (const float*)grad, (const float*)in, R, c, D, D);
    }
}
#endif

/* The generator backward's team form, for the width-4 path only (d = k = 4 h,
 * hypermixing_team_ready): as the general one below, with the per-head products and sums of
 * hmx_w4_rows_product and hmx_w4_outer_sum. Arguments as the kernel. */
void KERNEL_NAME(hypermixing_generator_backward_team_f32,
                 hypermixing_generator_backward_team_f64)(
    REAL* dz, REAL* dA, REAL* da, REAL* dC, REAL* dc, REAL* dact, const REAL* dw, const REAL* z,
    const REAL* act, const REAL* slope, const REAL* A, const REAL* C, size_t rows, size_t d,
    size_t k, size_t h, int accumulate)
{
#if HMX_W4
    const size_t R = rows, D = d;
    const size_t tiles = (R + HMX_GEN_TILE - 1) / HMX_GEN_TILE;
    float cols_a[4 * HMX_W4_MAX_WIDTH], cols_c[4 * HMX_W4_MAX_WIDTH];
    hmx_w4_columns(cols_a, (const float*)A, D, 1);
    hmx_w4_columns(cols_c, (const float*)C, D, 1);
    if (dw) {   /* dC_j = dw_j^T @ act_j, dc = colsum(dw) */
        F(width4_layer_gradients)(dC, dc, dw, act, R, D);
    }
    #pragma omp for schedule(static)
    for (size_t tile = 0; tile < tiles; tile++) {
        const size_t r0 = tile * HMX_GEN_TILE;
        const size_t m = R - r0 < HMX_GEN_TILE ? R - r0 : HMX_GEN_TILE;
        if (dw) {
            hmx_w4_rows_product((float*)(dact + r0 * D), (const float*)(dw + r0 * D), cols_c, m,
                                D, D, D, 0);
        }
        F(scale_block)(dact + r0 * D, slope + r0 * D, m, D, D);
        hmx_w4_rows_product((float*)(dz + r0 * D), (const float*)(dact + r0 * D), cols_a, m, D,
                            D, D, accumulate);
    }
    /* dA_j = dpre_j^T @ z_j, da = colsum(dpre) */
    F(width4_layer_gradients)(dA, da, dact, z, R, D);
#else
    (void)dz, (void)dA, (void)da, (void)dC, (void)dc, (void)dact, (void)dw, (void)z, (void)act;
    (void)slope, (void)A, (void)C, (void)rows, (void)d, (void)k, (void)h, (void)accumulate;
#endif
}

/* dact: (rows, d). Without dw it holds the gradient of act on entry; with dw (rows, k), the
 * gradient of the generated weights (0 on padding rows), it is workspace and dC (like C) and
 * dc (like c, or NULL) are overwritten. On return dact holds the gradient of the
 * pre-activation. dz: (rows, d), overwritten, or added to when `accumulate`. dA: like A;
 * da: like a, or NULL (overwritten). slope: the forward's. */
void KERNEL_NAME(hypermixing_generator_backward_f32, hypermixing_generator_backward_f64)(
    REAL* dz, REAL* dA, REAL* da, REAL* dC, REAL* dc, REAL* dact, const REAL* dw, const REAL* z,
    const REAL* act, const REAL* slope, const REAL* A, const REAL* C, size_t rows, size_t d,
    size_t k, size_t h, int accumulate)
{
    const size_t R = rows, D = d, K = k;
    const size_t dh = D / h, kh = K / h;
    const size_t tiles = (R + HMX_GEN_TILE - 1) / HMX_GEN_TILE, tasks = tiles * h;
    const int small = F(small_heads)(D, K, h);
    if (F(generators_width4)(D, K, h)) {
        HM_RUN_TEAM(R * D > HM_PARALLEL_MIN,
                    F(hypermixing_generator_backward_team)(dz, dA, da, dC, dc, dact, dw, z, act,
                                                           slope, A, C, rows, d, k, h,
                                                           accumulate));
        return;
    }
    if (dw) {
        if (dc) {
            F(bias_gradient)(dc, dw, R, K);
        }
        /* dC_j = dw_j^T @ act_j (a sum over all rows) */
        if (small) {
            F(small_heads_outer_sum)(dC, dw, act, R, h, kh, dh, K, D);
        } else {
            F(per_head_gemm)(1, 0, kh, dh, R, dw, kh, K, act, dh, D, dC, kh * dh, dh, h);
        }
    }
    /* row-local, per tile and head: dact_j = dw_j @ C_j; dpre = dact * slope;
     * dz_j (+)= dpre_j @ A_j */
    if (small) {
        /* C (h, k_h, d_h) and A (h, d_h, d_h) are already laid out as the products want */
        #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
            if (R * D > HM_PARALLEL_MIN && tiles > 1)
        for (size_t tile = 0; tile < tiles; tile++) {
            const size_t r0 = tile * HMX_GEN_TILE;
            const size_t m = R - r0 < HMX_GEN_TILE ? R - r0 : HMX_GEN_TILE;
            if (dw) {
                F(small_heads_product)(dact + r0 * D, dw + r0 * K, C, m, h, kh, dh, K, D, 0);
            }
            F(scale_block)(dact + r0 * D, slope + r0 * D, m, D, D);
            F(small_heads_product)(dz + r0 * D, dact + r0 * D, A, m, h, dh, dh, D, D,
                                   accumulate);
        }
    } else {
        #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
            if (R * D > HM_PARALLEL_MIN && tasks > 1)
        for (size_t task = 0; task < tasks; task++) {
            const size_t j = task % h, r0 = (task / h) * HMX_GEN_TILE;
            const size_t m = R - r0 < HMX_GEN_TILE ? R - r0 : HMX_GEN_TILE;
            REAL* dact_j = dact + r0 * D + j * dh;
            if (dw) {
                F(gemm_serial)(0, 0, m, dh, kh, dw + r0 * K + j * kh, K, C + j * kh * dh, dh, 0,
                               dact_j, D);
            }
            F(scale_block)(dact_j, slope + r0 * D + j * dh, m, dh, D);
            F(gemm_serial)(0, 0, m, dh, dh, dact_j, D, A + j * dh * dh, dh,
                           accumulate ? (REAL)1 : (REAL)0, dz + r0 * D + j * dh, D);
        }
    }
    if (da) {
        F(bias_gradient)(da, dact, R, D);
    }
    /* dA_j = dpre_j^T @ z_j (a sum over all rows) */
    if (small) {
        F(small_heads_outer_sum)(dA, dact, z, R, h, dh, dh, D, D);
    } else {
        F(per_head_gemm)(1, 0, dh, dh, R, dact, dh, D, z, dh, D, dA, dh * dh, dh, h);
    }
}

/* Bidirectional mixing without forming the generated weights. With W1 = act1_j C1_j^T + 1 c1_j^T
 * and W2 likewise (the generator's second layer), for sequence b, head j and its values v
 * (rows 0..n-1, columns j*d_h..):
 *   W1^T v = C1_j P + c1_j (x) colsum(v)    with P = act1_j^T v (d_h, d_h)
 *   W2 m   = act2_j Q + 1 (x) (c2_j^T m)    with Q = C2_j^T m (d_h, d_h)
 * so the (n, k_h) weights are never built and the work per token is O(d_h^2), not O(k_h d_h).
 *
 * y, x: (B, L, d); act1, act2: (B*L, d), the generators' activations (the same array when
 * tied); C1, C2: (h, k_h, d_h); c1, c2: (h, k_h) or NULL. Kept for the backward:
 * P, Q: (B, h, d_h + 1, d_h), P = [act1_j^T v; colsum(v)], Q = [C2_j^T m; c2_j^T m];
 * s, m: (B, h, k_h, d_h), s = W1^T v (divided by n with mean) and m = gelu(s).
 * Padding rows of y are 0; padding rows of x and act are never read. */
void KERNEL_NAME(hypermixing_forward_f32, hypermixing_forward_f64)(
    REAL* y, REAL* P, REAL* s, REAL* m, REAL* Q, const REAL* x, const REAL* act1,
    const REAL* act2, const REAL* C1, const REAL* c1, const REAL* C2, const REAL* c2,
    const int64_t* lengths, size_t B, size_t L, size_t d, size_t k, size_t h, int mean)
{
    const size_t D = d, K = k, dh = D / h, kh = K / h;
    const size_t pq = (dh + 1) * dh, state = kh * dh;
    const size_t units = B * h;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t u = 0; u < units; u++) {
        const size_t b = u / h, j = u % h, n = (size_t)lengths[b];
        const size_t off = b * L * D + j * dh;
        const REAL* xs = x + off;
        const REAL* a1 = act1 + off;
        const REAL* a2 = act2 + off;
        REAL* ys = y + off;
        REAL* Pu = P + u * pq;
        REAL* Qu = Q + u * pq;
        REAL* su = s + u * state;
        REAL* mu = m + u * state;
        F(gemm_serial)(1, 0, dh, dh, n, a1, D, xs, D, 0, Pu, dh);
        F(hmx_column_sums)(Pu + dh * dh, xs, n, D, dh);
        F(gemm_serial)(0, 0, kh, dh, dh, C1 + j * state, dh, Pu, dh, 0, su, dh);
        F(state_forward)(su, mu, c1 ? c1 + j * kh : NULL, Pu + dh * dh, kh, dh, (REAL)n, mean);
        F(gemm_serial)(1, 0, dh, dh, kh, C2 + j * state, dh, mu, dh, 0, Qu, dh);
        REAL* q = Qu + dh * dh;
        for (size_t f = 0; f < dh; f++) {
            q[f] = 0;
        }
        if (c2) {
            for (size_t e = 0; e < kh; e++) {
                for (size_t f = 0; f < dh; f++) {
                    q[f] += c2[j * kh + e] * mu[e * dh + f];
                }
            }
        }
        F(gemm_serial)(0, 0, n, dh, dh, a2, D, Qu, dh, 0, ys, D);
        for (size_t t = 0; t < L; t++) {
            REAL* yt = ys + t * D;
            for (size_t f = 0; f < dh; f++) {
                yt[f] = t < n ? yt[f] + q[f] : (REAL)0;
            }
        }
    }
}

/* Shapes as the forward. grad_input: (B, L, d), the values' part of the input gradient
 * (overwritten; token_info_backward adds the token information's part). dact1, dact2:
 * (B*L, d), the gradients of act1 and act2 (overwritten, 0 on padding rows); when `tied`
 * act2 == act1 and C2, c2 == C1, c1: both parts go to dact1 and dC1, dc1, and dact2, dC2,
 * dc2 are not used. dC1, dC2: like C1; dc1, dc2: like c1, or NULL. work:
 * B * h * hypermixing_mix_work_size(d, k, h) elements. */
void KERNEL_NAME(hypermixing_backward_f32, hypermixing_backward_f64)(
    REAL* grad_input, REAL* dact1, REAL* dact2, REAL* dC1, REAL* dc1, REAL* dC2, REAL* dc2,
    REAL* work, const REAL* grad_output, const REAL* x, const REAL* act1, const REAL* act2,
    const REAL* C1, const REAL* c1, const REAL* C2, const REAL* c2, const REAL* P, const REAL* s,
    const REAL* m, const REAL* Q, const int64_t* lengths, size_t B, size_t L, size_t d, size_t k,
    size_t h, int mean, int tied)
{
    const size_t D = d, K = k, dh = D / h, kh = K / h;
    const size_t pq = (dh + 1) * dh, state = kh * dh, part = kh * (dh + 1);
    const size_t unit_work = hypermixing_mix_work_size(d, k, h);
    const size_t units = B * h;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t u = 0; u < units; u++) {
        const size_t b = u / h, j = u % h, n = (size_t)lengths[b];
        const size_t off = b * L * D + j * dh;
        const REAL* gs = grad_output + off;
        const REAL* xs = x + off;
        const REAL* a1 = act1 + off;
        const REAL* a2 = act2 + off;
        REAL* gi = grad_input + off;
        REAL* da1 = dact1 + off;
        REAL* da2 = tied ? da1 : dact2 + off;
        const REAL* Pu = P + u * pq;
        const REAL* Qu = Q + u * pq;
        const REAL* su = s + u * state;
        const REAL* mu = m + u * state;
        REAL* dQ = work + u * unit_work;             /* (d_h + 1, d_h) */
        REAL* dP = dQ + pq;                          /* (d_h + 1, d_h) */
        REAL* dm = dP + pq;                          /* (k_h, d_h), then ds */
        REAL* p1 = dm + state;                       /* dC1 (k_h, d_h), dc1 (k_h) of this unit */
        REAL* p2 = p1 + part;                        /* dC2, dc2 */
        REAL* p2c = p2 + state;
        REAL* p1c = p1 + state;
        /* the output side: y = act2 Q + 1 (x) q */
        F(gemm_serial)(1, 0, dh, dh, n, a2, D, gs, D, 0, dQ, dh);       /* act2^T g */
        F(hmx_column_sums)(dQ + dh * dh, gs, n, D, dh);                 /* colsum(g) */
        F(gemm_serial)(0, 1, n, dh, dh, gs, D, Qu, dh, 0, da2, D);      /* dact2 = g Q^T */
        F(gemm_serial)(0, 1, kh, dh, dh, mu, dh, dQ, dh, 0, p2, dh);    /* dC2 = m dQ^T */
        for (size_t e = 0; e < kh; e++) {
            REAL acc = 0;
            for (size_t f = 0; f < dh; f++) {
                acc += mu[e * dh + f] * dQ[dh * dh + f];
            }
            p2c[e] = acc;                                               /* dc2 = m colsum(g) */
        }
        F(gemm_serial)(0, 0, kh, dh, dh, C2 + j * state, dh, dQ, dh, 0, dm, dh);   /* dm */
        if (c2) {
            for (size_t e = 0; e < kh; e++) {
                for (size_t f = 0; f < dh; f++) {
                    dm[e * dh + f] += c2[j * kh + e] * dQ[dh * dh + f];
                }
            }
        }
        /* through the GELU: ds = dm * gelu'(s) (/ n) */
        F(state_backward)(dm, su, state, (REAL)n, mean);
        /* the input side: S = C1 P + c1 (x) colsum(v) */
        F(gemm_serial)(0, 1, kh, dh, dh, dm, dh, Pu, dh, 0, p1, dh);    /* dC1 = ds P^T */
        for (size_t e = 0; e < kh; e++) {
            REAL acc = 0;
            for (size_t f = 0; f < dh; f++) {
                acc += dm[e * dh + f] * Pu[dh * dh + f];
            }
            p1c[e] = acc;                                               /* dc1 = ds colsum(v) */
        }
        F(gemm_serial)(1, 0, dh, dh, kh, C1 + j * state, dh, dm, dh, 0, dP, dh);   /* C1^T ds */
        REAL* dcol = dP + dh * dh;
        for (size_t f = 0; f < dh; f++) {
            dcol[f] = 0;
        }
        if (c1) {
            for (size_t e = 0; e < kh; e++) {
                for (size_t f = 0; f < dh; f++) {
                    dcol[f] += c1[j * kh + e] * dm[e * dh + f];
                }
            }
        }
        F(gemm_serial)(0, 1, n, dh, dh, xs, D, dP, dh, tied ? (REAL)1 : (REAL)0, da1, D);
        F(gemm_serial)(0, 0, n, dh, dh, a1, D, dP, dh, 0, gi, D);       /* dv = act1 dP */
        for (size_t t = 0; t < L; t++) {
            REAL* git = gi + t * D;
            REAL* d1 = da1 + t * D;
            REAL* d2 = da2 + t * D;
            for (size_t f = 0; f < dh; f++) {
                git[f] = t < n ? git[f] + dcol[f] : (REAL)0;
                if (t >= n) {
                    d1[f] = 0;
                    d2[f] = 0;
                }
            }
        }
    }
    /* the parameters' gradients: sums over the sequences in order b = 0, 1, ... */
    const size_t total = h * part;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
        if (total * B > HM_PARALLEL_MIN)
    for (size_t i = 0; i < total; i++) {
        const size_t j = i / part, o = i % part;
        REAL acc1 = 0, acc2 = 0;
        for (size_t b = 0; b < B; b++) {
            const REAL* p1 = work + (b * h + j) * unit_work + 2 * pq + state;
            if (tied) {
                acc1 += p1[o] + p1[part + o];
            } else {
                acc1 += p1[o];
                acc2 += p1[part + o];
            }
        }
        if (o < state) {
            dC1[j * state + o] = acc1;
            if (!tied) {
                dC2[j * state + o] = acc2;
            }
        } else {
            if (dc1) {
                dc1[j * kh + o - state] = acc1;
            }
            if (!tied && dc2) {
                dc2[j * kh + o - state] = acc2;
            }
        }
    }
}

/* The GELUs of a token's state run over the flat (rows, width) block, HMX_GELU_BLOCK values at
 * a time, into a buffer on the stack: full vectors whatever the row width (16 heads of width 8
 * fill a register as well as 8 heads of width 16). Rows wider than the block take the row loop. */
#define HMX_GELU_BLOCK 256

/* One token's step of the running sum and its output, shared by the causal forward, the
 * backward's rebuild and the streaming step so all three add in the same order:
 * state += w1t (x) v; out = w2t @ gelu(state * (1 / count)) when out is not NULL (a product
 * with the reciprocal: one division per token, not one per state element). */
HM_INLINE
static inline void F(causal_token_body)(REAL* restrict out, REAL* next, const REAL* prev,
                                        const REAL* restrict v, const REAL* restrict w1t,
                                        const REAL* restrict w2t, size_t kh, size_t dh,
                                        REAL count)
{
    const REAL inv = (REAL)1 / count;
    for (size_t e = 0; e < kh; e++) {
        const REAL a = w1t[e];
        const REAL* p = prev + e * dh;   /* may be next itself: updated in place */
        REAL* q = next + e * dh;
        #pragma omp simd
        for (size_t f = 0; f < dh; f++) {
            q[f] = p[f] + a * v[f];
        }
    }
    if (!out) {
        return;
    }
    for (size_t f = 0; f < dh; f++) {
        out[f] = 0;
    }
    if (dh > HMX_GELU_BLOCK) {
        for (size_t e = 0; e < kh; e++) {
            const REAL c = w2t[e];
            const REAL* q = next + e * dh;
            #pragma omp simd
            for (size_t f = 0; f < dh; f++) {
                out[f] += c * F(gelu)(q[f] * inv);
            }
        }
        return;
    }
    const size_t rows = HMX_GELU_BLOCK / dh;
    REAL g[HMX_GELU_BLOCK];
    for (size_t e0 = 0; e0 < kh; e0 += rows) {
        const size_t e1 = e0 + rows < kh ? e0 + rows : kh;
        const REAL* q = next + e0 * dh;
        #pragma omp simd
        for (size_t i = 0; i < (e1 - e0) * dh; i++) {
            g[i] = F(gelu)(q[i] * inv);
        }
        for (size_t e = e0; e < e1; e++) {
            const REAL c = w2t[e];
            const REAL* ge = g + (e - e0) * dh;
            #pragma omp simd
            for (size_t f = 0; f < dh; f++) {
                out[f] += c * ge[f];
            }
        }
    }
}

/* The causal backward keeps its states feature-major, (d_h, k_h): one row per feature f,
 * vectors along k_h. Then the sums over d_h that the weights' gradients need are plain vector
 * additions across rows, and only dv needs a sum within a row.
 *
 * Rebuild one token's running sum from the previous one, next = prev + v (x) w1t (the same
 * products and additions as causal_token, transposed). */
HM_INLINE
static inline void F(causal_rebuild_body)(REAL* restrict next, const REAL* restrict prev,
                                          const REAL* restrict v, const REAL* restrict w1t,
                                          size_t kh, size_t dh)
{
    for (size_t f = 0; f < dh; f++) {
        const REAL vf = v[f];
        #pragma omp simd
        for (size_t e = 0; e < kh; e++) {
            next[f * kh + e] = prev[f * kh + e] + w1t[e] * vf;
        }
    }
}

/* One token of the reverse scan for one unit: with st its running sum (d_h, k_h),
 * u = 1 / count and ds = (g (x) w2t u) * gelu'(st u), the suffix sum r (d_h, k_h) += ds;
 * dw2t (k_h,) = g @ gelu(st u), dw1t (k_h,) = v @ r, dv (d_h,) = r @ w1t. The sums over d_h
 * run row by row in order; the sum over k_h within a row in a fixed pairwise tree
 * (power-of-two k_h up to HMX_TREE) or an omp simd reduction (order fixed by the instruction
 * set chosen at load time). Never by the thread count. */
HM_INLINE
static inline void F(causal_back_token_body)(REAL* restrict dw1t, REAL* restrict dw2t,
                                             REAL* restrict dv, REAL* restrict suffix,
                                             const REAL* restrict st, const REAL* restrict g,
                                             const REAL* restrict v, const REAL* restrict w1t,
                                             const REAL* restrict w2t, size_t kh, size_t dh,
                                             REAL count)
{
    const REAL inv = (REAL)1 / count;
    const int tree = kh <= HMX_TREE && (kh & (kh - 1)) == 0;
    /* the GELUs and slopes of a block of rows first, over the flat block (full vectors);
     * rows wider than the block compute theirs in the row loop */
    const int blocked = kh <= HMX_GELU_BLOCK;
    const size_t rows = blocked ? HMX_GELU_BLOCK / kh : 1;
    REAL gv[HMX_GELU_BLOCK], gs[HMX_GELU_BLOCK];
    for (size_t e = 0; e < kh; e++) {
        dw1t[e] = 0;
        dw2t[e] = 0;
    }
    for (size_t f0 = 0; f0 < dh; f0 += rows) {
        const size_t f1 = f0 + rows < dh ? f0 + rows : dh;
        if (blocked) {
            const REAL* sb = st + f0 * kh;
            #pragma omp simd
            for (size_t i = 0; i < (f1 - f0) * kh; i++) {
                REAL slope;
                gv[i] = F(gelu_slope)(sb[i] * inv, &slope);
                gs[i] = slope;
            }
        }
        for (size_t f = f0; f < f1; f++) {
            const REAL* restrict vf_g = gv + (f - f0) * kh;
            const REAL* restrict vf_s = gs + (f - f0) * kh;
            REAL* restrict rf = suffix + f * kh;
            const REAL gf = g[f], vf = v[f];
            if (tree) {
                REAL t[HMX_TREE];
                #pragma omp simd
                for (size_t e = 0; e < kh; e++) {
                    dw2t[e] += vf_g[e] * gf;
                    rf[e] += w2t[e] * inv * gf * vf_s[e];
                    dw1t[e] += rf[e] * vf;
                    t[e] = rf[e] * w1t[e];
                }
                for (size_t w = kh / 2; w >= 1; w /= 2) {
                    for (size_t e = 0; e < w; e++) {
                        t[e] += t[e + w];
                    }
                }
                dv[f] = t[0];
                continue;
            }
            REAL acc = 0;
            if (blocked) {
                #pragma omp simd reduction(+:acc)
                for (size_t e = 0; e < kh; e++) {
                    dw2t[e] += vf_g[e] * gf;
                    rf[e] += w2t[e] * inv * gf * vf_s[e];
                    dw1t[e] += rf[e] * vf;
                    acc += rf[e] * w1t[e];
                }
            } else {
                const REAL* restrict sf = st + f * kh;
                #pragma omp simd reduction(+:acc)
                for (size_t e = 0; e < kh; e++) {
                    REAL slope;
                    dw2t[e] += F(gelu_slope)(sf[e] * inv, &slope) * gf;
                    rf[e] += w2t[e] * inv * gf * slope;
                    dw1t[e] += rf[e] * vf;
                    acc += rf[e] * w1t[e];
                }
            }
            dv[f] = acc;
        }
    }
}

/* The per-token kernels with the row width (d_h forward, k_h backward) as a constant for the
 * common widths (16: one AVX-512 register of float32 per row), so the row loops compile
 * without loop control; other widths take the general loop.
 * Same operations in the same order either way. */
HM_SIMD
static void F(causal_token)(REAL* restrict out, REAL* next, const REAL* prev,
                            const REAL* restrict v, const REAL* restrict w1t,
                            const REAL* restrict w2t, size_t kh, size_t dh, REAL count)
{
    if (dh == 16) {
        F(causal_token_body)(out, next, prev, v, w1t, w2t, kh, 16, count);
    } else if (dh == 8) {
        F(causal_token_body)(out, next, prev, v, w1t, w2t, kh, 8, count);
    } else {
        F(causal_token_body)(out, next, prev, v, w1t, w2t, kh, dh, count);
    }
}

HM_SIMD
static void F(causal_back_token)(REAL* restrict dw1t, REAL* restrict dw2t, REAL* restrict dv,
                                 REAL* restrict suffix, const REAL* restrict st,
                                 const REAL* restrict g, const REAL* restrict v,
                                 const REAL* restrict w1t, const REAL* restrict w2t, size_t kh,
                                 size_t dh, REAL count)
{
    if (kh == 16) {
        F(causal_back_token_body)(dw1t, dw2t, dv, suffix, st, g, v, w1t, w2t, 16, dh, count);
    } else if (kh == 8) {
        F(causal_back_token_body)(dw1t, dw2t, dv, suffix, st, g, v, w1t, w2t, 8, dh, count);
    } else {
        F(causal_back_token_body)(dw1t, dw2t, dv, suffix, st, g, v, w1t, w2t, kh, dh, count);
    }
}

HM_SIMD
static void F(causal_rebuild)(REAL* restrict next, const REAL* restrict prev,
                              const REAL* restrict v, const REAL* restrict w1t, size_t kh,
                              size_t dh)
{
    if (kh == 16) {
        F(causal_rebuild_body)(next, prev, v, w1t, 16, dh);
    } else if (kh == 8) {
        F(causal_rebuild_body)(next, prev, v, w1t, 8, dh);
    } else {
        F(causal_rebuild_body)(next, prev, v, w1t, kh, dh);
    }
}

/* Whether a unit's scan takes the width-4 path (defined after the template passes) */
static int F(scan_width4)(size_t kh, size_t dh)
{
#if HMX_W4
    return HMX_SINGLE && kh == 4 && dh == 4 && hmx_w4_supported();
#else
    (void)kh, (void)dh;
    return 0;
#endif
}

/* The width-4 token step where the build has it (the float pass only; never reached with
 * double, whose pointers are cast here only so that both passes compile) */
static inline void F(width4_token)(REAL* out, REAL* state, const REAL* v, const REAL* w1t,
                                   const REAL* w2t, REAL count)
{
#if HMX_W4
    hmx_w4_token((float*)out, (float*)state, (const float*)v, (const float*)w1t,
                 (const float*)w2t, (float)((REAL)1 / count));
#else
    (void)out, (void)state, (void)v, (void)w1t, (void)w2t, (void)count;
#endif
}

/* Whether the team forms of the generators and of the causal scan apply: float32, heads of
 * width 4 with d = k (a multiple of 16, at most HMX_W4_MAX_WIDTH), a CPU with AVX2 or AVX-512.
 * The whole-block kernel runs its sublayers in one parallel region then. */
int KERNEL_NAME(hypermixing_team_ready_f32, hypermixing_team_ready_f64)(size_t d, size_t k,
                                                                        size_t h)
{
    return F(generators_width4)(d, k, h) && F(scan_width4)(k / h, d / h);
}

/* The causal scan's team forms, for the width-4 path only (hypermixing_team_ready), float
 * pass (double never reaches them; its pointers are cast only so that both passes compile):
 * work split over groups of HMX_W4_GROUP neighbouring heads (single heads when h is not a
 * multiple), each group computed by one thread, so no result depends on the thread count. The
 * team must have at most n_slots threads (the workspace slots). Arguments as the kernels. */
void KERNEL_NAME(hypermixing_causal_forward_team_f32, hypermixing_causal_forward_team_f64)(
    REAL* y, REAL* checkpoints, REAL* work, size_t n_slots, const REAL* x, const REAL* w1,
    const REAL* w2, const int64_t* lengths, size_t B, size_t L, size_t d, size_t k, size_t h,
    int mean, size_t chunk)
{
#if HMX_W4
    const size_t n_ck = hypermixing_causal_checkpoints(L, chunk);
    const size_t count = h % HMX_W4_GROUP == 0 ? HMX_W4_GROUP : 1, groups = B * h / count;
    #pragma omp for schedule(static)
    for (size_t q = 0; q < groups; q++) {
        const size_t u = q * count, b = u / h;
        hmx_w4_forward_group((float*)y, (float*)(checkpoints + u * n_ck * 16), n_ck,
                             (const float*)x, (const float*)w1, (const float*)w2, b * L,
                             (size_t)lengths[b], L, u % h, d, k, mean, chunk, (int)count);
    }
#else
    (void)y, (void)checkpoints, (void)x, (void)w1, (void)w2, (void)lengths, (void)B, (void)L;
    (void)d, (void)k, (void)h, (void)mean, (void)chunk;
#endif
    (void)work, (void)n_slots;
}

void KERNEL_NAME(hypermixing_causal_backward_team_f32, hypermixing_causal_backward_team_f64)(
    REAL* grad_input, REAL* dw1, REAL* dw2, REAL* work, size_t n_slots, const REAL* grad_output,
    const REAL* x, const REAL* w1, const REAL* w2, const REAL* checkpoints,
    const int64_t* lengths, size_t B, size_t L, size_t d, size_t k, size_t h, int mean,
    size_t chunk, int tied)
{
#if HMX_W4
    const size_t D = d, K = k;
    const size_t n_ck = hypermixing_causal_checkpoints(L, chunk);
    const size_t slot_size = hypermixing_causal_work_size(D, K, h, chunk);
    const size_t count = h % HMX_W4_GROUP == 0 ? HMX_W4_GROUP : 1, groups = B * h / count;
    #pragma omp for schedule(static)
    for (size_t q = 0; q < groups; q++) {
        const size_t u = q * count, b = u / h, j = u % h, n = (size_t)lengths[b];
        for (size_t t = n; t < L; t++) {   /* padding rows of the group's columns: 0 */
            for (size_t e = 0; e < 4 * count; e++) {
                dw1[(b * L + t) * K + 4 * j + e] = 0;
                dw2[(b * L + t) * K + 4 * j + e] = 0;
                grad_input[(b * L + t) * D + 4 * j + e] = 0;
            }
        }
        hmx_w4_backward_group((float*)grad_input, (float*)dw1, (float*)dw2,
                              (float*)(work + (size_t)hmx_slot() * slot_size),
                              (const float*)grad_output, (const float*)x, (const float*)w1,
                              (const float*)w2, (const float*)(checkpoints + u * n_ck * 16),
                              n_ck, b * L, n, j, D, K, mean, chunk, tied, (int)count);
    }
#else
    (void)grad_input, (void)dw1, (void)dw2, (void)work, (void)grad_output, (void)x, (void)w1;
    (void)w2, (void)checkpoints, (void)lengths, (void)B, (void)L, (void)d, (void)k, (void)h;
    (void)mean, (void)chunk, (void)tied;
#endif
    (void)n_slots;
}

/* The general loops' forward scan of unit u (sequence b = u / h, head j = u % h) over chunks
 * c0..c1-1. ck: the unit's checkpoints (k_h, d_h); run: a state of scratch. With
 * `store`, the scan starts from zero at chunk c0 = 0 and writes each chunk's checkpoint as it
 * passes; without, it starts from checkpoint c0 (written before). y NULL: the running sums
 * only (no GELU, no output), for the checkpoints. Rows past the length get y = 0. */
static void F(causal_scan_chunk)(REAL* y, REAL* ck, int store, REAL* run, const REAL* x,
                                 const REAL* w1, const REAL* w2, const int64_t* lengths,
                                 size_t u, size_t L, size_t d, size_t k, size_t h, int mean,
                                 size_t chunk, size_t c0, size_t c1)
{
    const size_t D = d, K = k, dh = D / h, kh = K / h, state = kh * dh;
    const size_t b = u / h, j = u % h, n = (size_t)lengths[b], row0 = b * L;
    for (size_t e = 0; e < state; e++) {
        run[e] = store ? 0 : ck[c0 * state + e];
    }
    const size_t t_end = c1 * chunk < L ? c1 * chunk : L;
    for (size_t t = c0 * chunk; t < t_end; t++) {
        if (store && t % chunk == 0) {
            for (size_t e = 0; e < state; e++) {
                ck[(t / chunk) * state + e] = run[e];
            }
        }
        REAL* yt = y ? y + (row0 + t) * D + j * dh : NULL;
        if (t >= n) {   /* padding: no addition; its output row is 0 */
            if (yt) {
                memset(yt, 0, dh * sizeof(REAL));
            }
            continue;
        }
        F(causal_token)(yt, run, run, x + (row0 + t) * D + j * dh,
                        w1 + (row0 + t) * K + j * kh, w2 + (row0 + t) * K + j * kh, kh, dh,
                        mean ? (REAL)(t + 1) : (REAL)1);
    }
}

/* y, x: (B, L, d); w1, w2: (B, L, k); checkpoints: (B, h, n_ck, k_h, d_h) with
 * n_ck = hypermixing_causal_checkpoints(L, chunk): checkpoint c of a unit is its running sum
 * over tokens 0..c*chunk-1. work: n_slots * hypermixing_causal_work_size(d, k, h, chunk). */
void KERNEL_NAME(hypermixing_causal_forward_f32, hypermixing_causal_forward_f64)(
    REAL* y, REAL* checkpoints, REAL* work, size_t n_slots, const REAL* x, const REAL* w1,
    const REAL* w2, const int64_t* lengths, size_t B, size_t L, size_t d, size_t k, size_t h,
    int mean, size_t chunk)
{
    const size_t D = d, K = k, dh = D / h, kh = K / h;
    const size_t state = kh * dh, n_ck = hypermixing_causal_checkpoints(L, chunk);
    const size_t slot_size = hypermixing_causal_work_size(d, k, h, chunk);
    const size_t units = B * h;
    if (F(scan_width4)(kh, dh)) {
        #pragma omp parallel num_threads(hmx_threads(n_slots))
        F(hypermixing_causal_forward_team)(y, checkpoints, work, n_slots, x, w1, w2, lengths, B,
                                           L, d, k, h, mean, chunk);
        return;
    }
    const int threads = hmx_threads(n_slots);
    if (units < (size_t)threads && n_ck > 1) {
        /* Fewer units than threads (one sequence, few heads): the chunks share the threads.
         * First every checkpoint, with the additions alone (no GELU: a fraction of the
         * work), then each chunk's outputs from its checkpoint. The same additions in the
         * same order as the loop below, so the same bits. */
        #pragma omp parallel num_threads(threads)
        {
            #pragma omp for schedule(static)
            for (size_t u = 0; u < units; u++) {
                F(causal_scan_chunk)(NULL, checkpoints + u * n_ck * state, 1,
                                     work + (size_t)hmx_slot() * slot_size, x, w1, w2,
                                     lengths, u, L, d, k, h, mean, chunk, 0, n_ck);
            }
            #pragma omp for schedule(dynamic, 1)
            for (size_t task = 0; task < units * n_ck; task++) {
                const size_t u = task / n_ck, c = task % n_ck;
                F(causal_scan_chunk)(y, checkpoints + u * n_ck * state, 0,
                                     work + (size_t)hmx_slot() * slot_size, x, w1, w2,
                                     lengths, u, L, d, k, h, mean, chunk, c, c + 1);
            }
        }
        return;
    }
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (size_t u = 0; u < units; u++) {
        F(causal_scan_chunk)(y, checkpoints + u * n_ck * state, 1,
                             work + (size_t)hmx_slot() * slot_size, x, w1, w2, lengths, u, L,
                             d, k, h, mean, chunk, 0, n_ck);
    }
}

/* Shapes as the causal forward; dw1, dw2: (B, L, k), overwritten, 0 on padding rows; with
 * `tied` (w1 and w2 the same generated weights) dw1 gets their sum dw1 + dw2, added per
 * element after both are computed, and dw2 is scratch. grad_input gets the values' part of
 * the input gradient (overwritten). */
void KERNEL_NAME(hypermixing_causal_backward_f32, hypermixing_causal_backward_f64)(
    REAL* grad_input, REAL* dw1, REAL* dw2, REAL* work, size_t n_slots, const REAL* grad_output,
    const REAL* x, const REAL* w1, const REAL* w2, const REAL* checkpoints,
    const int64_t* lengths, size_t B, size_t L, size_t d, size_t k, size_t h, int mean,
    size_t chunk, int tied)
{
    const size_t D = d, K = k, dh = D / h, kh = K / h;
    const size_t state = kh * dh, n_ck = hypermixing_causal_checkpoints(L, chunk);
    const size_t slot_size = hypermixing_causal_work_size(d, k, h, chunk);
    const size_t C = chunk;
    const size_t units = B * h;
    if (F(scan_width4)(kh, dh)) {
        #pragma omp parallel num_threads(hmx_threads(n_slots))
        F(hypermixing_causal_backward_team)(grad_input, dw1, dw2, work, n_slots, grad_output, x,
                                            w1, w2, checkpoints, lengths, B, L, d, k, h, mean,
                                            chunk, tied);
        return;
    }
    #pragma omp parallel for schedule(static) num_threads(hmx_threads(n_slots))
    for (size_t u = 0; u < units; u++) {
        const size_t b = u / h, j = u % h, n = (size_t)lengths[b];
        const size_t row0 = b * L;
        REAL* suffix = work + (size_t)hmx_slot() * slot_size;  /* r, (d_h, k_h) */
        REAL* sums = suffix + state;                            /* (chunk, d_h, k_h) */
        REAL* start = sums + C * state;                         /* a checkpoint, (d_h, k_h) */
        REAL* dv = start + state;                               /* (d_h,) */
        const REAL* ck = checkpoints + u * n_ck * state;
        for (size_t t = n; t < L; t++) {
            for (size_t e = 0; e < kh; e++) {
                dw1[(row0 + t) * K + j * kh + e] = 0;
                dw2[(row0 + t) * K + j * kh + e] = 0;
            }
            for (size_t f = 0; f < dh; f++) {
                grad_input[(row0 + t) * D + j * dh + f] = 0;
            }
        }
        for (size_t e = 0; e < state; e++) {
            suffix[e] = 0;
        }
        for (size_t c = (n + C - 1) / C; c-- > 0;) {
            const size_t t0 = c * C, t1 = t0 + C < n ? t0 + C : n;
            /* rebuild the running sums of tokens t0..t1-1 as the forward did, transposed */
            const REAL* ckc = ck + c * state;
            for (size_t e = 0; e < kh; e++) {
                for (size_t f = 0; f < dh; f++) {
                    start[f * kh + e] = ckc[e * dh + f];
                }
            }
            for (size_t t = t0; t < t1; t++) {
                F(causal_rebuild)(sums + (t - t0) * state,
                                  t == t0 ? start : sums + (t - t0 - 1) * state,
                                  x + (row0 + t) * D + j * dh, w1 + (row0 + t) * K + j * kh, kh,
                                  dh);
            }
            for (size_t t = t1; t-- > t0;) {
                const REAL* st = sums + (t - t0) * state;
                const REAL* g = grad_output + (row0 + t) * D + j * dh;
                const REAL* v = x + (row0 + t) * D + j * dh;
                const REAL* w1t = w1 + (row0 + t) * K + j * kh;
                const REAL* w2t = w2 + (row0 + t) * K + j * kh;
                REAL* dw1t = dw1 + (row0 + t) * K + j * kh;
                REAL* dw2t = dw2 + (row0 + t) * K + j * kh;
                const REAL count = mean ? (REAL)(t + 1) : (REAL)1;
                F(causal_back_token)(dw1t, dw2t, dv, suffix, st, g, v, w1t, w2t, kh, dh, count);
                if (tied) {
                    for (size_t e = 0; e < kh; e++) {
                        dw1t[e] += dw2t[e];
                    }
                }
                REAL* gi = grad_input + (row0 + t) * D + j * dh;
                for (size_t f = 0; f < dh; f++) {
                    gi[f] = dv[f];
                }
            }
        }
    }
}

/* Streaming: one new token per sequence. y, x: (B, d); w1, w2: (B, k); state: (B, h, k_h, d_h),
 * the running sum of each sequence's earlier tokens, updated in place; positions: (B,), how
 * many tokens each state holds (the new token's position). */
void KERNEL_NAME(hypermixing_step_f32, hypermixing_step_f64)(
    REAL* y, REAL* state, const REAL* x, const REAL* w1, const REAL* w2,
    const int64_t* positions, size_t B, size_t d, size_t k, size_t h, int mean)
{
    const size_t D = d, K = k, dh = D / h, kh = K / h;
    const size_t units = B * h;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (units > 1)
    for (size_t u = 0; u < units; u++) {
        const size_t b = u / h, j = u % h;
        REAL* st = state + u * kh * dh;
        const REAL count = mean ? (REAL)(positions[b] + 1) : (REAL)1;
        if (F(scan_width4)(kh, dh)) {
            F(width4_token)(y + b * D + j * dh, st, x + b * D + j * dh, w1 + b * K + j * kh,
                            w2 + b * K + j * kh, count);
        } else {
            F(causal_token)(y + b * D + j * dh, st, st, x + b * D + j * dh,
                            w1 + b * K + j * kh, w2 + b * K + j * kh, kh, dh, count);
        }
    }
}

#undef HMX_SINGLE
#undef HMX_SQRT1_2
#undef HMX_INV_SQRT_2PI
#endif
