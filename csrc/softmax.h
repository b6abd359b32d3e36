/* Softmax pieces shared by loss.c and attention.c; included from a template body (REAL and
 * F() defined, see template.h), hence no include guard.
 *
 * Partial sums / maxima of a row are kept in SOFTMAX_LANES lanes (combined in a fixed order
 * at the end), so the loops vectorise without reassociating floating-point sums, and the
 * result never depends on the thread count. */
#include <string.h>

#define SOFTMAX_LANES 16

#if !defined(HM_SOFTMAX_ONCE)
#define HM_SOFTMAX_ONCE
/* Constants of the exp below. Round-to-nearest of y is (y + M) - M for |y| < 2^(p-2), with
 * M = 1.5 * 2^(p-1) (p = mantissa bits), and then the low bits of (y + M) hold that integer. */
#define SOFTMAX_MAGIC_F32 12582912.0f                   /* 1.5 * 2^23 */
#define SOFTMAX_MAGIC_F64 6755399441055744.0            /* 1.5 * 2^52 */
#endif

/* exp(x) for x <= 0, written so that the compiler can vectorise a loop of it (no libm call,
 * no branch): x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its Taylor
 * polynomial (degree 7 in float, 13 in double: truncation below half an ulp), times 2^n built
 * from the exponent bits. Results under the smallest normal number are returned as 0. */
static inline REAL F(softmax_exp_nonpos)(REAL x)
{
    const int single = sizeof(REAL) == 4;
    const REAL lo = single ? (REAL)-87.0 : (REAL)-708.0;
    const REAL magic = single ? (REAL)SOFTMAX_MAGIC_F32 : (REAL)SOFTMAX_MAGIC_F64;
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
        float m = SOFTMAX_MAGIC_F32, s = (float)shifted;
        memcpy(&bits, &s, sizeof bits);
        memcpy(&magic_bits, &m, sizeof magic_bits);
        const uint32_t e = (bits - magic_bits + 127u) << 23;  /* n + bias in the exponent */
        float f;
        memcpy(&f, &e, sizeof f);
        scale = (REAL)f;
    } else {
        uint64_t bits, magic_bits;
        double m = SOFTMAX_MAGIC_F64, s = (double)shifted;
        memcpy(&bits, &s, sizeof bits);
        memcpy(&magic_bits, &m, sizeof magic_bits);
        const uint64_t e = (bits - magic_bits + 1023u) << 52;
        double d;
        memcpy(&d, &e, sizeof d);
        scale = (REAL)d;
    }
    return x < lo ? (REAL)0 : p * scale;
}

/* p[0..n) = softmax(scale * z[0..n)) (p may be z itself). Returns the row's maximum of
 * scale * z through *max_out and the sum of exp(scale * z - max) through *sum_out (before
 * normalising), from which -log softmax follows. */
static inline void F(softmax_row)(REAL* p, const REAL* z, size_t n, REAL scale, REAL* max_out,
                                  REAL* sum_out)
{
    const size_t body = n - n % SOFTMAX_LANES;
    REAL lane[SOFTMAX_LANES];
    for (size_t l = 0; l < SOFTMAX_LANES; l++) {
        lane[l] = z[0] * scale;
    }
    for (size_t j = 0; j < body; j += SOFTMAX_LANES) {
        for (size_t l = 0; l < SOFTMAX_LANES; l++) {
            const REAL v = z[j + l] * scale;
            lane[l] = v > lane[l] ? v : lane[l];
        }
    }
    REAL max = lane[0];
    for (size_t l = 1; l < SOFTMAX_LANES; l++) {
        max = lane[l] > max ? lane[l] : max;
    }
    for (size_t j = body; j < n; j++) {
        const REAL v = z[j] * scale;
        max = v > max ? v : max;
    }
    for (size_t l = 0; l < SOFTMAX_LANES; l++) {
        lane[l] = 0;
    }
    for (size_t j = 0; j < body; j += SOFTMAX_LANES) {
        for (size_t l = 0; l < SOFTMAX_LANES; l++) {
            const REAL e = F(softmax_exp_nonpos)(z[j + l] * scale - max);
            p[j + l] = e;
            lane[l] += e;
        }
    }
    REAL sum = 0;
    for (size_t l = 0; l < SOFTMAX_LANES; l++) {
        sum += lane[l];
    }
    for (size_t j = body; j < n; j++) {
        p[j] = F(softmax_exp_nonpos)(z[j] * scale - max);
        sum += p[j];
    }
    const REAL inv = (REAL)1 / sum;
    for (size_t j = 0; j < n; j++) {
        p[j] *= inv;
    }
    *max_out = max;
    *sum_out = sum;
}
