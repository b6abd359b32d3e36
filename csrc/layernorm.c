/* LayerNorm over the feature axis of every valid token, eps = 1e-5, population variance.
 *
 * Rows at or past lengths[b] are padding: they output 0, cache mean = rstd = 0 and receive a
 * zero input gradient; their input is never read, so garbage there cannot leak. */
#ifndef REAL

#include "layernorm.h"
#include <float.h>
#include <math.h>

size_t layernorm_partial_tiles(size_t rows)
{
    return (rows + HM_TILE_ROWS - 1) / HM_TILE_ROWS;
}

#define HM_TEMPLATE_FILE "layernorm.c"
#include "template.h"
#else

#define LN_EPS 1e-5

/* Statistics of one row, in double whatever REAL is (float32 rows lose nothing that way:
 * their squares and sums cannot overflow or cancel in double).
 *   - Deviations are taken from the row's first entry K, so a constant row gives exactly 0
 *     and a large common offset cancels exactly (Sterbenz) before anything is summed.
 *   - Two passes: the mean of the deviations, then the variance around it.
 *   - When deviations may exceed LN_HUGE (float64 rows beyond ~1e150, or entries whose difference
 *     overflows), the row is first scaled by a power of two (exact) so that the squares stay
 *     finite; eps is scaled with it. The result is the true O(1) xhat, never 0 or NaN.
 * Writes xh[e] = (x[e] - mean) * rstd and returns mean and rstd through the pointers. */
#define LN_HUGE 0x1p+450
#define LN_LANES 8

HM_SIMD
static void F(ln_row)(REAL* restrict xh, double* mean_out, double* rstd_out,
                      const REAL* restrict in, size_t width)
{
    double scale = 1.0;
    double K = (double)in[0];
    double spread = 0, sum = 0;
    {
        /* LN_LANES independent partial sums, so the loop vectorises; a fixed order (never
         * the thread count) decides the result. `spread` is the sum of |deviations|, an
         * upper bound of the largest one (a maximum would not vectorise): a row whose
         * bound passes LN_HUGE is rescaled, which is exact, so a needless rescale is
         * harmless. NaN or inf makes the bound fail the test too; the slow path below
         * then sees a non-finite entry and leaves the row as it is. */
        double sums[LN_LANES] = {0}, mags[LN_LANES] = {0};
        size_t e = 0;
        for (; e + LN_LANES <= width; e += LN_LANES) {
            for (size_t j = 0; j < LN_LANES; j++) {
                const double d = (double)in[e + j] - K;
                sums[j] += d;
                mags[j] += fabs(d);
            }
        }
        for (size_t j = 0; j < LN_LANES; j++) {
            sum += sums[j];
            spread += mags[j];
        }
        for (; e < width; e++) {
            const double d = (double)in[e] - K;
            sum += d;
            spread += fabs(d);
        }
    }
    if (!(spread <= LN_HUGE)) {
        double top = 0;
        for (size_t e = 0; e < width; e++) {
            top = fmax(top, fabs((double)in[e]));
        }
        if (top <= DBL_MAX) {   /* all finite: rescale; else NaN/inf propagate below */
            int exponent;
            frexp(top, &exponent);
            scale = ldexp(1.0, -exponent);
            K = (double)in[0] * scale;
            sum = 0;
            for (size_t e = 0; e < width; e++) {
                sum += (double)in[e] * scale - K;
            }
        }
    }
    const double md = sum / (double)width;
    double sq = 0;
    {
        double sqs[LN_LANES] = {0};
        size_t e = 0;
        for (; e + LN_LANES <= width; e += LN_LANES) {
            for (size_t j = 0; j < LN_LANES; j++) {
                const double d = ((double)in[e + j] * scale - K) - md;
                sqs[j] += d * d;
            }
        }
        for (size_t j = 0; j < LN_LANES; j++) {
            sq += sqs[j];
        }
        for (; e < width; e++) {
            const double d = ((double)in[e] * scale - K) - md;
            sq += d * d;
        }
    }
    /* var + eps of the scaled row; 1/sqrt of it normalises the scaled deviations */
    const double inv = 1.0 / sqrt(sq / (double)width + LN_EPS * scale * scale);
    for (size_t e = 0; e < width; e++) {
        xh[e] = (REAL)((((double)in[e] * scale - K) - md) * inv);
    }
    *mean_out = (K + md) / scale;
    *rstd_out = inv * scale;
}

/* y, xhat, x: (B, L, E); mean, rstd: (B, L); lengths: (B,) with 1 <= lengths[b] <= L;
 * gamma, beta: (E,).
 * xhat = (x - mean) * rstd is kept for backward, so the caller may change x afterwards. */
HM_SIMD
void KERNEL_NAME(layernorm_forward_f32, layernorm_forward_f64)(
    REAL* y, REAL* xhat, REAL* mean, REAL* rstd, const REAL* x, const int64_t* lengths,
    const REAL* gamma, const REAL* beta, size_t B, size_t L, size_t E)
{
    HM_RUN_TEAM(B * L * E > HM_PARALLEL_MIN,
                F(layernorm_forward_team)(y, xhat, mean, rstd, x, lengths, gamma, beta, B, L, E));
}

/* The forward's work shared by the threads of the calling team (an orphaned omp for: the
 * whole work when called outside a parallel region). A whole-block kernel calls it inside its
 * own region instead of opening one per sublayer. */
void KERNEL_NAME(layernorm_forward_team_f32, layernorm_forward_team_f64)(
    REAL* y, REAL* xhat, REAL* mean, REAL* rstd, const REAL* x, const int64_t* lengths,
    const REAL* gamma, const REAL* beta, size_t B, size_t L, size_t E)
{
    const size_t rows = B * L, width = E;
    #pragma omp for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const size_t b = r / L, t = r % L;
        REAL* restrict out = y + r * width;
        REAL* restrict xh = xhat + r * width;
        if ((int64_t)t >= lengths[b]) {
            for (size_t e = 0; e < width; e++) {
                out[e] = 0;
                xh[e] = 0;
            }
            mean[r] = 0;
            rstd[r] = 0;
            continue;
        }
        double mu, s;
        F(ln_row)(xh, &mu, &s, x + r * width, width);
        for (size_t e = 0; e < width; e++) {
            out[e] = xh[e] * gamma[e] + beta[e];
        }
        mean[r] = (REAL)mu;
        rstd[r] = (REAL)s;
    }
}

/* grad_input, grad_output, xhat: (B, L, E); rstd: (B, L); lengths: (B,); gamma: (E,).
 * dgamma, dbeta: (E,), overwritten (not accumulated).
 * partial: workspace of layernorm_partial_tiles(B*L) blocks of (2, E). Tile k holds the
 * dgamma / dbeta sums of rows k*HM_TILE_ROWS .. (k+1)*HM_TILE_ROWS-1 (rows in order); the
 * tiles are then added in order, so the result does not depend on the thread count. */
void KERNEL_NAME(layernorm_backward_f32, layernorm_backward_f64)(
    REAL* grad_input, REAL* dgamma, REAL* dbeta, REAL* partial, const REAL* grad_output,
    const REAL* xhat, const REAL* rstd, const int64_t* lengths, const REAL* gamma, size_t B,
    size_t L, size_t E)
{
    HM_RUN_TEAM(B * L * E > HM_PARALLEL_MIN,
                F(layernorm_backward_team)(grad_input, dgamma, dbeta, partial, grad_output, xhat,
                                           rstd, lengths, gamma, B, L, E));
}

/* The backward's work shared by the calling team, as layernorm_forward_team. In a function
 * of its own (not an OpenMP-outlined body) the row loop runs in the SIMD clones. */
HM_SIMD
void KERNEL_NAME(layernorm_backward_team_f32, layernorm_backward_team_f64)(
    REAL* grad_input, REAL* dgamma, REAL* dbeta, REAL* partial, const REAL* grad_output,
    const REAL* xhat, const REAL* rstd, const int64_t* lengths, const REAL* gamma, size_t B,
    size_t L, size_t E)
{
    const size_t rows = B * L, width = E;
    const size_t tiles = layernorm_partial_tiles(rows);
    #pragma omp for schedule(static)
    for (size_t k = 0; k < tiles; k++) {
        REAL* restrict pg = partial + k * 2 * width;
        REAL* restrict pb = pg + width;
        for (size_t e = 0; e < width; e++) {
            pg[e] = 0;
            pb[e] = 0;
        }
        const size_t r1 = (k + 1) * HM_TILE_ROWS < rows ? (k + 1) * HM_TILE_ROWS : rows;
        for (size_t r = k * HM_TILE_ROWS; r < r1; r++) {
            const size_t b = r / L, t = r % L;
            REAL* restrict dx = grad_input + r * width;
            if ((int64_t)t >= lengths[b]) {
                for (size_t e = 0; e < width; e++) {
                    dx[e] = 0;
                }
                continue;
            }
            const REAL* restrict g = grad_output + r * width;
            const REAL* restrict xh = xhat + r * width;
            /* dxhat = g * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat*xhat)) */
            /* in double: dx is a difference of these means and the row, which cancels */
            double sum1 = 0, sum2 = 0;
            {
                double s1[LN_LANES] = {0}, s2[LN_LANES] = {0};
                size_t e = 0;
                for (; e + LN_LANES <= width; e += LN_LANES) {
                    for (size_t j = 0; j < LN_LANES; j++) {
                        const REAL d = g[e + j] * gamma[e + j];
                        s1[j] += (double)d;
                        s2[j] += (double)d * (double)xh[e + j];
                    }
                }
                for (size_t j = 0; j < LN_LANES; j++) {
                    sum1 += s1[j];
                    sum2 += s2[j];
                }
                for (; e < width; e++) {
                    const REAL d = g[e] * gamma[e];
                    sum1 += (double)d;
                    sum2 += (double)d * (double)xh[e];
                }
            }
            if (!(fabs(sum1) <= DBL_MAX && fabs(sum2) <= DBL_MAX)) {
                /* g * gamma overflowed REAL (float32 rows of spread 1e10 with gradients near
                 * 1e30: dx, scaled by a small rstd, fits), or the row holds NaN/inf: the sums
                 * again with the products in double, which the first case needs and which
                 * changes nothing in the second */
                sum1 = 0;
                sum2 = 0;
                for (size_t e = 0; e < width; e++) {
                    const double d = (double)g[e] * (double)gamma[e];
                    sum1 += d;
                    sum2 += d * (double)xh[e];
                }
            }
            for (size_t e = 0; e < width; e++) {
                pg[e] += g[e] * xh[e];
                pb[e] += g[e];
            }
            const double mean1 = sum1 / (double)E, mean2 = sum2 / (double)E, s = rstd[r];
            for (size_t e = 0; e < width; e++) {
                dx[e] = (REAL)(s * (((double)g[e] * gamma[e] - mean1) - xh[e] * mean2));
            }
        }
    }
    #pragma omp for schedule(static)
    for (size_t e = 0; e < width; e++) {
        REAL sg = 0, sb = 0;
        for (size_t k = 0; k < tiles; k++) {
            sg += partial[k * 2 * width + e];
            sb += partial[k * 2 * width + width + e];
        }
        dgamma[e] = sg;
        dbeta[e] = sb;
    }
    #pragma omp for schedule(static)
    for (size_t e = 0; e < width; e++) {
        if (isfinite(dgamma[e]) && isfinite(dbeta[e])) {
            continue;
        }
        /* a partial sum overflowed REAL (float32 gradients near 1e38 whose sum fits), or the
         * column holds NaN/inf: this column again over every valid row, in double, which the
         * first case needs and which changes nothing in the second */
        double dg = 0, db = 0;
        for (size_t r = 0; r < rows; r++) {
            if ((int64_t)(r % L) >= lengths[r / L]) {
                continue;
            }
            const double gv = grad_output[r * width + e];
            dg += gv * (double)xhat[r * width + e];
            db += gv;
        }
        dgamma[e] = (REAL)dg;
        dbeta[e] = (REAL)db;
    }
}

#undef LN_EPS
#undef LN_HUGE
#undef LN_LANES
#endif
