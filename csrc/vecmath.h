/* Vectorisable building blocks shared by the kernels; included from a template body (REAL
 * and F() defined, see template.h), hence no include guard. Every sum here runs in a fixed
 * order of independent lanes, so a loop of them vectorises without -ffast-math and the
 * result never depends on the thread count. */
#include <stdint.h>
#include <string.h>

/* Independent partial sums in F(vec_dot): a fixed count, so the rounding is fixed too, and
 * enough of them for several vector accumulators at once. */
#define VEC_DOT_LANES 32

/* sum_k a[k] * b[k] in a fixed order (VEC_DOT_LANES interleaved partial sums, then the tail). */
static inline REAL F(vec_dot)(const REAL* restrict a, const REAL* restrict b, size_t n)
{
    REAL acc[VEC_DOT_LANES] = {0};
    size_t k = 0;
    for (; k + VEC_DOT_LANES <= n; k += VEC_DOT_LANES) {
        for (int j = 0; j < VEC_DOT_LANES; j++) {
            acc[j] += a[k + j] * b[k + j];
        }
    }
    REAL tail = 0;
    for (; k < n; k++) {
        tail += a[k] * b[k];
    }
    for (int width = VEC_DOT_LANES / 2; width > 0; width /= 2) {   /* fixed pairwise tree */
        for (int j = 0; j < width; j++) {
            acc[j] += acc[j + width];
        }
    }
    return acc[0] + tail;
}

#if !defined(HM_VECMATH_ONCE)
#define HM_VECMATH_ONCE
/* Constants of the exp below. Round-to-nearest of y is (y + M) - M for |y| < 2^(p-2), with
 * M = 1.5 * 2^(p-1) (p = mantissa bits), and then the low bits of (y + M) hold that integer. */
#define VEC_EXP_MAGIC_F32 12582912.0f                   /* 1.5 * 2^23 */
#define VEC_EXP_MAGIC_F64 6755399441055744.0            /* 1.5 * 2^52 */
#endif

/* exp(x) for x <= 0, written so that the compiler can vectorise a loop of it (no libm call,
 * no branch): x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its Taylor
 * polynomial (degree 7 in float, 13 in double: truncation below half an ulp), times 2^n built
 * from the exponent bits. Results under the smallest normal number are returned as 0. */
static inline REAL F(vec_exp_nonpos)(REAL x)
{
    const int single = sizeof(REAL) == 4;
    const REAL lo = single ? (REAL)-87.0 : (REAL)-708.0;
    const REAL magic = single ? (REAL)VEC_EXP_MAGIC_F32 : (REAL)VEC_EXP_MAGIC_F64;
    const REAL log2e = (REAL)1.44269504088896340736;
    const REAL ln2_hi = single ? (REAL)0.693359375 : (REAL)6.93147180369123816490e-01;
    const REAL ln2_lo = single ? (REAL)-2.12194440e-4 : (REAL)1.90821492927058770002e-10;
    const REAL xc = x < lo ? lo : x;
    const REAL shifted = xc * log2e + magic;
    const REAL n = shifted - magic;
    const REAL r = (xc - n * ln2_hi) - n * ln2_lo;
    REAL p;
    if (single) {
        p = (REAL)(1.0 / 5040);
        p = p * r + (REAL)(1.0 / 720);
        p = p * r + (REAL)(1.0 / 120);
        p = p * r + (REAL)(1.0 / 24);
        p = p * r + (REAL)(1.0 / 6);
        p = p * r + (REAL)0.5;
        p = p * r + (REAL)1;
        p = p * r + (REAL)1;
    } else {
        static const double inv_fact[14] = {
            1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
            1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600,
            1.0 / 6227020800.0};
        p = (REAL)inv_fact[13];
        for (int i = 12; i >= 0; i--) {
            p = p * r + (REAL)inv_fact[i];
        }
    }
    REAL scale;
    if (single) {
        /* unsigned: for a NaN x the difference is huge and a signed shift would be undefined
         * behaviour (UBSan); the result is then NaN anyway, through p */
        uint32_t bits, magic_bits;
        float m = VEC_EXP_MAGIC_F32, s = (float)shifted;
        memcpy(&bits, &s, sizeof bits);
        memcpy(&magic_bits, &m, sizeof magic_bits);
        const uint32_t e = (bits - magic_bits + 127u) << 23;  /* n + bias in the exponent */
        float f;
        memcpy(&f, &e, sizeof f);
        scale = (REAL)f;
    } else {
        uint64_t bits, magic_bits;
        double m = VEC_EXP_MAGIC_F64, s = (double)shifted;
        memcpy(&bits, &s, sizeof bits);
        memcpy(&magic_bits, &m, sizeof magic_bits);
        const uint64_t e = (bits - magic_bits + 1023u) << 52;
        double d;
        memcpy(&d, &e, sizeof d);
        scale = (REAL)d;
    }
    return x < lo ? (REAL)0 : p * scale;
}

