/* Softmax cross-entropy (SPEC section 2): mean over the real positions of a sequence, then
 * mean over the sequences. Rows are independent, so both kernels run one row per task. */
#ifndef REAL
#include "loss.h"
#define HM_TEMPLATE_FILE "loss.c"
#include "template.h"

#else

#include <string.h>

/* Partial sums / maxima of a row are kept in this many lanes (combined in a fixed order at
 * the end), so the loops vectorise without reassociating floating-point sums. */
#define XENT_LANES 16

#if !defined(HM_LOSS_ONCE)
#define HM_LOSS_ONCE
/* Constants of the exp below. Round-to-nearest of y is (y + M) - M for |y| < 2^(p-2), with
 * M = 1.5 * 2^(p-1) (p = mantissa bits), and then the low bits of (y + M) hold that integer. */
#define XENT_MAGIC_F32 12582912.0f                   /* 1.5 * 2^23 */
#define XENT_MAGIC_F64 6755399441055744.0            /* 1.5 * 2^52 */
#endif

/* exp(x) for x <= 0, written so that the compiler can vectorise a loop of it (no libm call,
 * no branch): x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its Taylor
 * polynomial (degree 7 in float, 13 in double: truncation below half an ulp), times 2^n built
 * from the exponent bits. Results under the smallest normal number are returned as 0. */
static inline REAL F(xent_exp_nonpos)(REAL x)
{
    const int single = sizeof(REAL) == 4;
    const REAL lo = single ? (REAL)-87.0 : (REAL)-708.0;
    const REAL magic = single ? (REAL)XENT_MAGIC_F32 : (REAL)XENT_MAGIC_F64;
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
        float m = XENT_MAGIC_F32, s = (float)shifted;
        memcpy(&bits, &s, sizeof bits);
        memcpy(&magic_bits, &m, sizeof magic_bits);
        const uint32_t e = (bits - magic_bits + 127u) << 23;  /* n + bias in the exponent */
        float f;
        memcpy(&f, &e, sizeof f);
        scale = (REAL)f;
    } else {
        uint64_t bits, magic_bits;
        double m = XENT_MAGIC_F64, s = (double)shifted;
        memcpy(&bits, &s, sizeof bits);
        memcpy(&magic_bits, &m, sizeof magic_bits);
        const uint64_t e = (bits - magic_bits + 1023u) << 52;
        double d;
        memcpy(&d, &e, sizeof d);
        scale = (REAL)d;
    }
    return x < lo ? (REAL)0 : p * scale;
}

/* loss (1,) the scalar loss; row_loss (B,L) = -log softmax(z)[target] per real row, 0 at
 * padding; probs (B,L,V) = softmax of each real row, 0 at padding; logits (B,L,V); targets
 * (B,L) in [0,V) at real positions; lengths (B,). */
HM_SIMD
void F(cross_entropy_forward)(double* loss, double* row_loss, REAL* probs, const REAL* logits,
                              const int64_t* targets, const int64_t* lengths, size_t B,
                              size_t L, size_t V)
{
    const size_t rows = B * L;
    const size_t body = V - V % XENT_LANES;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (rows * V > HM_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        REAL* restrict p = probs + r * V;
        if ((int64_t)(r % L) >= lengths[r / L]) {
            memset(p, 0, V * sizeof(REAL));
            row_loss[r] = 0;
            continue;
        }
        const REAL* restrict z = logits + r * V;
        REAL lane[XENT_LANES];
        for (size_t l = 0; l < XENT_LANES; l++) {
            lane[l] = z[0];
        }
        for (size_t j = 0; j < body; j += XENT_LANES) {
            for (size_t l = 0; l < XENT_LANES; l++) {
                lane[l] = z[j + l] > lane[l] ? z[j + l] : lane[l];
            }
        }
        REAL max = lane[0];
        for (size_t l = 1; l < XENT_LANES; l++) {
            max = lane[l] > max ? lane[l] : max;
        }
        for (size_t j = body; j < V; j++) {
            max = z[j] > max ? z[j] : max;
        }
        for (size_t l = 0; l < XENT_LANES; l++) {
            lane[l] = 0;
        }
        for (size_t j = 0; j < body; j += XENT_LANES) {
            for (size_t l = 0; l < XENT_LANES; l++) {
                const REAL e = F(xent_exp_nonpos)(z[j + l] - max);
                p[j + l] = e;
                lane[l] += e;
            }
        }
        REAL sum = 0;
        for (size_t l = 0; l < XENT_LANES; l++) {
            sum += lane[l];
        }
        for (size_t j = body; j < V; j++) {
            p[j] = F(xent_exp_nonpos)(z[j] - max);
            sum += p[j];
        }
        const REAL inv = (REAL)1 / sum;
        for (size_t j = 0; j < V; j++) {
            p[j] *= inv;
        }
        /* -log softmax(z)[t] = log(sum) - (z[t] - max) */
        row_loss[r] = (double)(LOG(sum) - (z[targets[r]] - max));
    }
    /* serial, in double, in a fixed order */
    double total = 0;
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)lengths[b];
        double seq = 0;
        for (size_t t = 0; t < n; t++) {
            seq += row_loss[b * L + t];
        }
        total += seq / (double)n;
    }
    *loss = total / (double)B;
}

/* grad (B,L,V) = d loss / d logits = (probs - onehot(target)) / (lengths[b] * B) on real rows,
 * 0 on padding; probs as produced by the forward. grad may be the probs buffer itself. */
HM_SIMD
void F(cross_entropy_backward)(REAL* grad, const REAL* probs, const int64_t* targets,
                               const int64_t* lengths, size_t B, size_t L, size_t V)
{
    const size_t rows = B * L;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (rows * V > HM_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        REAL* g = grad + r * V;
        const REAL* p = probs + r * V;
        const int64_t n = lengths[r / L];
        if ((int64_t)(r % L) >= n) {
            memset(g, 0, V * sizeof(REAL));
            continue;
        }
        const REAL inv_count = (REAL)(1.0 / ((double)n * (double)B));
        const size_t t = (size_t)targets[r];
        const REAL at_target = p[t] - 1;
        for (size_t j = 0; j < V; j++) {
            g[j] = p[j] * inv_count;
        }
        g[t] = at_target * inv_count;
    }
}

#undef XENT_LANES
#endif
