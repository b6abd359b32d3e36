/* Softmax pieces shared by loss.c and attention.c; included from a template body (REAL and
 * F() defined, see template.h), hence no include guard.
 *
 * Partial sums / maxima of a row are kept in SOFTMAX_LANES lanes (combined in a fixed order
 * at the end), so the loops vectorise without reassociating floating-point sums, and the
 * result never depends on the thread count. */
#include <string.h>
#include "vecmath.h"

#define SOFTMAX_LANES 16

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
            const REAL e = F(vec_exp_nonpos)(z[j + l] * scale - max);
            p[j + l] = e;
            lane[l] += e;
        }
    }
    REAL sum = 0;
    for (size_t l = 0; l < SOFTMAX_LANES; l++) {
        sum += lane[l];
    }
    for (size_t j = body; j < n; j++) {
        p[j] = F(vec_exp_nonpos)(z[j] * scale - max);
        sum += p[j];
    }
    const REAL inv = (REAL)1 / sum;
    for (size_t j = 0; j < n; j++) {
        p[j] *= inv;
    }
    *max_out = max;
    *sum_out = sum;
}
