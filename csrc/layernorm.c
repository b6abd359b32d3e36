/* LayerNorm over the feature axis of every valid token, eps = 1e-5, population variance.
 *
 * Rows at or past lengths[b] are padding: they output 0, cache mean = rstd = 0 and receive a
 * zero input gradient; their input is never read, so garbage there cannot leak. */
#ifndef REAL

#include "layernorm.h"
#include <float.h>
#include <math.h>
#include <string.h>

size_t layernorm_partial_tiles(size_t rows)
{
    return (rows + HM_TILE_ROWS - 1) / HM_TILE_ROWS;
}

/* The row sums run in LN_SUMS independent vectors of LN_LANES doubles (32 partial sums):
 * an add takes 3-4 cycles, and one sum per vector left each pass over a row bound by the
 * adds' latency (E = 128 float32, 1 thread: 84 ns a row forward, 87 backward, before). GCC's
 * vector types, so that every clone of HM_SIMD gets them in its own instruction set. */
#define LN_LANES 8
#define LN_SUMS 4
#define LN_STEP (LN_LANES * LN_SUMS)
typedef double ln_vec __attribute__((vector_size(LN_LANES * sizeof(double))));
typedef int64_t ln_bits __attribute__((vector_size(LN_LANES * sizeof(double))));

/* What a row's xhat is made of (ln_row_stats) */
typedef struct {
    double scale, K, md, inv;
} ln_stats;

/* |v| lane by lane (the sign bit cleared) */
#define LN_ABS(v) ((ln_vec)((ln_bits)(v) & INT64_MAX))

/* The sum of the partial sums acc[0 .. LN_SUMS) and rest, added in one fixed order (never an
 * order the thread count could change) */
HM_INLINE static inline double ln_total(const ln_vec* acc, double rest)
{
    const ln_vec v = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    return (((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))) + rest;
}

#define HM_TEMPLATE_FILE "layernorm.c"
#include "template.h"
#else

#define LN_EPS 1e-5

/* Statistics of one row, in double whatever REAL is (float32 rows lose nothing that way:
 * their squares and sums cannot overflow or cancel in double).
 *   - Deviations are taken from the row's first entry K, so a constant row gives exactly 0
 *     and a large common offset cancels exactly (Sterbenz) before anything is summed.
 *   - float64 rows take two passes: the mean of the deviations, then the variance around it.
 *     float32 rows take one: var = mean(d^2) - mean(d)^2 over the deviations d. Because K is
 *     an entry of the row, mean(d)^2 <= E * var, so the subtraction loses at most a factor
 *     E + 1 of double's precision (2^-52), far below a float32 ulp for any width that fits
 *     in memory; the second pass (a third of the row's time at E = 128) buys nothing there.
 *   - When deviations may exceed LN_HUGE (float64 rows beyond ~1e150, or entries whose difference
 *     overflows), the row is first scaled by a power of two (exact) so that the squares stay
 *     finite; eps is scaled with it. The result is the true O(1) xhat, never 0 or NaN.
 * Returns what the row's xhat is made of: xhat[e] = ((x[e] * scale - K) - md) * inv. */
#define LN_HUGE 0x1p+450

/* LN_LANES entries of a row from p, in double (through a pointer: a 64-byte vector passed by
 * value would have a different ABI in each clone) */
typedef REAL F(ln_reals) __attribute__((vector_size(LN_LANES * sizeof(REAL))));
HM_INLINE static inline void F(ln_load)(ln_vec* out, const REAL* p)
{
    F(ln_reals) v;
    memcpy(&v, p, sizeof v);
    *out = __builtin_convertvector(v, ln_vec);
}

HM_INLINE static inline ln_stats F(ln_row_stats)(const REAL* restrict in, size_t width)
{
    const int one_pass = sizeof(REAL) == sizeof(float);
    double scale = 1.0;
    double K = (double)in[0];
    double spread = 0, sum = 0, sq = 0;
    {
        /* `spread` is the sum of |deviations|, an upper bound of the largest one (a maximum
         * would not vectorise): a row whose bound passes LN_HUGE is rescaled, which is exact,
         * so a needless rescale is harmless. NaN or inf makes the bound fail the test too;
         * the slow path below then sees a non-finite entry and leaves the row as it is. */
        ln_vec sums[LN_SUMS] = {{0}}, mags[LN_SUMS] = {{0}}, sqs[LN_SUMS] = {{0}};
        double sum_rest = 0, mag_rest = 0, sq_rest = 0;
        size_t e = 0;
        for (; e + LN_STEP <= width; e += LN_STEP) {
            for (size_t k = 0; k < LN_SUMS; k++) {
                ln_vec d;
                F(ln_load)(&d, in + e + k * LN_LANES);
                d -= K;
                sums[k] += d;
                mags[k] += LN_ABS(d);
                if (one_pass) {
                    sqs[k] += d * d;
                }
            }
        }
        for (; e < width; e++) {
            const double d = (double)in[e] - K;
            sum_rest += d;
            mag_rest += fabs(d);
            sq_rest += d * d;
        }
        sum = ln_total(sums, sum_rest);
        spread = ln_total(mags, mag_rest);
        sq = ln_total(sqs, sq_rest);
    }
    if (one_pass && spread <= LN_HUGE) {
        const double md = sum / (double)width;
        double var = sq / (double)width - md * md;
        var = var < 0 ? 0 : var;   /* rounding of a (near) constant row; NaN stays NaN */
        return (ln_stats){1.0, K, md, 1.0 / sqrt(var + LN_EPS)};
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
    {
        ln_vec sqs[LN_SUMS] = {{0}};
        double sq_rest = 0;
        size_t e = 0;
        for (; e + LN_STEP <= width; e += LN_STEP) {
            for (size_t k = 0; k < LN_SUMS; k++) {
                ln_vec d;
                F(ln_load)(&d, in + e + k * LN_LANES);
                d = (d * scale - K) - md;
                sqs[k] += d * d;
            }
        }
        for (; e < width; e++) {
            const double d = ((double)in[e] * scale - K) - md;
            sq_rest += d * d;
        }
        sq = ln_total(sqs, sq_rest);
    }
    /* var + eps of the scaled row; 1/sqrt of it normalises the scaled deviations */
    return (ln_stats){scale, K, md, 1.0 / sqrt(sq / (double)width + LN_EPS * scale * scale)};
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
 * own region instead of opening one per sublayer. Its row loop runs in the SIMD clones, with
 * ln_row_stats inlined in each. */
HM_SIMD
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
        const REAL* restrict in = x + r * width;
        const ln_stats st = F(ln_row_stats)(in, width);
        for (size_t e = 0; e < width; e++) {
            const REAL h = (REAL)((((double)in[e] * st.scale - st.K) - st.md) * st.inv);
            xh[e] = h;
            out[e] = h * gamma[e] + beta[e];
        }
        mean[r] = (REAL)((st.K + st.md) / st.scale);
        rstd[r] = (REAL)(st.inv * st.scale);
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
                ln_vec s1[LN_SUMS] = {{0}}, s2[LN_SUMS] = {{0}};
                double rest1 = 0, rest2 = 0;
                size_t e = 0;
                for (; e + LN_STEP <= width; e += LN_STEP) {
                    for (size_t k = 0; k < LN_SUMS; k++) {
                        const size_t at = e + k * LN_LANES;
                        F(ln_reals) gv, cv;
                        memcpy(&gv, g + at, sizeof gv);
                        memcpy(&cv, gamma + at, sizeof cv);
                        const ln_vec d = __builtin_convertvector(gv * cv, ln_vec);
                        s1[k] += d;
                        ln_vec x;
                        F(ln_load)(&x, xh + at);
                        s2[k] += d * x;
                    }
                }
                for (; e < width; e++) {
                    const REAL d = g[e] * gamma[e];
                    rest1 += (double)d;
                    rest2 += (double)d * (double)xh[e];
                }
                sum1 = ln_total(s1, rest1);
                sum2 = ln_total(s2, rest2);
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
#endif
