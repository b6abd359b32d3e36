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
 * Threads: the generator's products run through gemm_* (fixed tiles, K never split); the mixing
 * loops over (sequence, head) units, each computed by one thread in a fixed order. So no result
 * depends on the thread count.
 *
 * Causal memory: the forward keeps only the running sum of each unit, saving a copy of it every
 * `chunk` tokens (checkpoints). The backward walks the chunks from last to first: it rebuilds
 * the chunk's running sums from its checkpoint (the same additions in the same order, so the
 * same bits as the forward), then runs the reverse scan through them, carrying
 * r(i) = sum over t >= i of ds(t). Memory: L/chunk checkpoints per unit plus chunk sums per
 * thread, instead of L sums per unit. */
#ifndef REAL
#include "hypermixing.h"
#include "gemm.h"
#include "reduce.h"
#include <math.h>
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

static int hmx_threads(int n_slots)
{
    const int n = hm_num_threads();
    return n < n_slots ? n : n_slots;
}

size_t hypermixing_causal_work_size(int d, int k, int h, int chunk)
{
    const size_t state = (size_t)(k / h) * (size_t)(d / h);
    /* running sum / suffix sum, the chunk's sums, and two rows of d_h */
    return state * ((size_t)chunk + 1) + 2 * (size_t)(d / h);
}

int hypermixing_causal_checkpoints(int L, int chunk)
{
    return (L + chunk - 1) / chunk;
}

#define HM_TEMPLATE_FILE "hypermixing.c"
#include "template.h"
#else

#define HMX_SQRT1_2 0.70710678118654752440
#define HMX_INV_SQRT_2PI 0.39894228040143267794
/* Phi(v) = erfc(-v / sqrt 2) / 2, in double whatever REAL is, as the reference evaluates it.
 * Not (1 + erf(v / sqrt 2)) / 2: below v = -4 (float) or -8 (double) that cancels to 0, and a
 * gelu of exactly 0 turned an infinite generated weight into inf * 0 = NaN where the
 * reference, with its tiny nonzero gelu, gives +-inf. erfc costs what erf does. */
#define HMX_PHI(v) (0.5 * erfc(-(double)(v) * HMX_SQRT1_2))

/* Exact GELU z * Phi(z) and its derivative Phi(z) + z * phi(z), rounded once to REAL. */
static inline REAL F(gelu)(REAL v)
{
    return (REAL)((double)v * HMX_PHI(v));
}

static inline REAL F(gelu_grad)(REAL v)
{
    const double w = v;
    return (REAL)(HMX_PHI(w) + w * HMX_INV_SQRT_2PI * exp(-0.5 * w * w));
}

/* z, x: (B, L, d); pos: (L, d), the position rows already offset for the flavour.
 * Padding rows of z are 0 (their x is never read). */
void F(hypermixing_token_info_forward)(REAL* z, const REAL* x, const REAL* pos,
                                       const int64_t* lengths, int B, int L, int d, REAL scale)
{
    const size_t rows = (size_t)B * (size_t)L, width = (size_t)d;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
        if (rows * width > HM_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        const size_t b = r / (size_t)L, t = r % (size_t)L;
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
void F(hypermixing_token_info_backward)(REAL* grad_input, const REAL* dz,
                                        const int64_t* lengths, int B, int L, int d, REAL scale)
{
    const size_t rows = (size_t)B * (size_t)L, width = (size_t)d;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
        if (rows * width > HM_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        const size_t b = r / (size_t)L, t = r % (size_t)L;
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

/* w: (rows, k); pre, act, z: (rows, d); A: (h, d_h, d_h); a: (h, d_h) or NULL;
 * C: (h, k_h, d_h); c: (h, k_h) or NULL. Head j reads columns j*d_h.. of z and writes columns
 * j*k_h.. of w. pre = z_j @ A_j^T + a_j and act = gelu(pre) are kept for the backward. */
void F(hypermixing_generator_forward)(REAL* w, REAL* pre, REAL* act, const REAL* z,
                                      const REAL* A, const REAL* a, const REAL* C,
                                      const REAL* c, int rows, int d, int k, int h)
{
    const size_t R = (size_t)rows, D = (size_t)d, K = (size_t)k;
    const size_t dh = D / (size_t)h, kh = K / (size_t)h;
    for (size_t j = 0; j < (size_t)h; j++) {
        F(gemm)(0, 1, R, dh, dh, z + j * dh, D, A + j * dh * dh, dh, 0, pre + j * dh, D);
    }
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
        if (R * D > HM_PARALLEL_MIN)
    for (size_t r = 0; r < R; r++) {
        REAL* restrict p = pre + r * D;
        REAL* restrict q = act + r * D;
        for (size_t e = 0; e < D; e++) {
            const REAL v = a ? p[e] + a[e] : p[e];
            p[e] = v;
            q[e] = F(gelu)(v);
        }
    }
    for (size_t j = 0; j < (size_t)h; j++) {
        F(gemm)(0, 1, R, kh, dh, act + j * dh, D, C + j * kh * dh, dh, 0, w + j * kh, K);
    }
    if (c) {
        #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
            if (R * K > HM_PARALLEL_MIN)
        for (size_t r = 0; r < R; r++) {
            REAL* restrict wr = w + r * K;
            for (size_t e = 0; e < K; e++) {
                wr[e] += c[e];
            }
        }
    }
}

/* dw: (rows, k), the gradient of the generated weights (0 on padding rows). dz: (rows, d),
 * overwritten, or added to when `accumulate`. dA, dC: like A, C; da, dc: like a, c, or NULL
 * (all overwritten). dpre: (rows, d) workspace. */
void F(hypermixing_generator_backward)(REAL* dz, REAL* dA, REAL* da, REAL* dC, REAL* dc,
                                       REAL* dpre, const REAL* dw, const REAL* z,
                                       const REAL* pre, const REAL* act, const REAL* A,
                                       const REAL* C, int rows, int d, int k, int h,
                                       int accumulate)
{
    const size_t R = (size_t)rows, D = (size_t)d, K = (size_t)k;
    const size_t dh = D / (size_t)h, kh = K / (size_t)h;
    if (dc) {
        for (size_t e = 0; e < K; e++) {
            dc[e] = 0;
        }
        F(column_sums_add)(dc, dw, R, K);
    }
    for (size_t j = 0; j < (size_t)h; j++) {
        /* dC_j = dw_j^T @ act_j; dpre_j = dw_j @ C_j */
        F(gemm)(1, 0, kh, dh, R, dw + j * kh, K, act + j * dh, D, 0, dC + j * kh * dh, dh);
        F(gemm)(0, 0, R, dh, kh, dw + j * kh, K, C + j * kh * dh, dh, 0, dpre + j * dh, D);
    }
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) \
        if (R * D > HM_PARALLEL_MIN)
    for (size_t r = 0; r < R; r++) {
        REAL* restrict q = dpre + r * D;
        const REAL* restrict p = pre + r * D;
        for (size_t e = 0; e < D; e++) {
            q[e] *= F(gelu_grad)(p[e]);
        }
    }
    if (da) {
        for (size_t e = 0; e < D; e++) {
            da[e] = 0;
        }
        F(column_sums_add)(da, dpre, R, D);
    }
    for (size_t j = 0; j < (size_t)h; j++) {
        /* dA_j = dpre_j^T @ z_j; dz_j (+)= dpre_j @ A_j */
        F(gemm)(1, 0, dh, dh, R, dpre + j * dh, D, z + j * dh, D, 0, dA + j * dh * dh, dh);
        F(gemm)(0, 0, R, dh, dh, dpre + j * dh, D, A + j * dh * dh, dh,
                accumulate ? (REAL)1 : (REAL)0, dz + j * dh, D);
    }
}

/* y, x: (B, L, d); w1, w2: (B, L, k); s, m: (B, h, k_h, d_h), s = w1_j^T v_j (divided by the
 * length with mean) and m = gelu(s), kept for the backward. Padding rows of y are 0. */
void F(hypermixing_forward)(REAL* y, REAL* s, REAL* m, const REAL* x, const REAL* w1,
                            const REAL* w2, const int64_t* lengths, int B, int L, int d,
                            int k, int h, int mean)
{
    const size_t D = (size_t)d, K = (size_t)k, dh = D / (size_t)h, kh = K / (size_t)h;
    const int units = B * h;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (int u = 0; u < units; u++) {
        const size_t b = (size_t)(u / h), j = (size_t)(u % h), n = (size_t)lengths[b];
        const size_t row0 = b * (size_t)L;
        const REAL* xs = x + row0 * D + j * dh;
        REAL* ys = y + row0 * D + j * dh;
        REAL* su = s + (size_t)u * kh * dh;
        REAL* mu = m + (size_t)u * kh * dh;
        F(gemm_serial)(1, 0, kh, dh, n, w1 + row0 * K + j * kh, K, xs, D, 0, su, dh);
        for (size_t e = 0; e < kh * dh; e++) {
            if (mean) {
                su[e] /= (REAL)n;
            }
            mu[e] = F(gelu)(su[e]);
        }
        F(gemm_serial)(0, 0, n, dh, kh, w2 + row0 * K + j * kh, K, mu, dh, 0, ys, D);
        for (size_t t = n; t < (size_t)L; t++) {
            for (size_t f = 0; f < dh; f++) {
                ys[t * D + f] = 0;
            }
        }
    }
}

/* grad_input, grad_output, x: (B, L, d); dw1, dw2, w1, w2: (B, L, k); s, m: the forward's;
 * ds: (B, h, k_h, d_h) workspace. grad_input gets the values' part of the input gradient
 * (the token information's part is added by token_info_backward); dw1, dw2 are overwritten,
 * 0 on padding rows. */
void F(hypermixing_backward)(REAL* grad_input, REAL* dw1, REAL* dw2, REAL* ds,
                             const REAL* grad_output, const REAL* x, const REAL* w1,
                             const REAL* w2, const REAL* s, const REAL* m,
                             const int64_t* lengths, int B, int L, int d, int k, int h,
                             int mean)
{
    const size_t D = (size_t)d, K = (size_t)k, dh = D / (size_t)h, kh = K / (size_t)h;
    const int units = B * h;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (int u = 0; u < units; u++) {
        const size_t b = (size_t)(u / h), j = (size_t)(u % h), n = (size_t)lengths[b];
        const size_t row0 = b * (size_t)L;
        const REAL* gs = grad_output + row0 * D + j * dh;
        const REAL* xs = x + row0 * D + j * dh;
        const REAL* w1s = w1 + row0 * K + j * kh;
        const REAL* w2s = w2 + row0 * K + j * kh;
        REAL* dw1s = dw1 + row0 * K + j * kh;
        REAL* dw2s = dw2 + row0 * K + j * kh;
        REAL* dxs = grad_input + row0 * D + j * dh;
        const REAL* su = s + (size_t)u * kh * dh;
        const REAL* mu = m + (size_t)u * kh * dh;
        REAL* dsu = ds + (size_t)u * kh * dh;
        F(gemm_serial)(0, 1, n, kh, dh, gs, D, mu, dh, 0, dw2s, K);      /* g @ m^T */
        F(gemm_serial)(1, 0, kh, dh, n, w2s, K, gs, D, 0, dsu, dh);      /* w2^T @ g */
        for (size_t e = 0; e < kh * dh; e++) {
            dsu[e] *= F(gelu_grad)(su[e]);
            if (mean) {
                dsu[e] /= (REAL)n;
            }
        }
        F(gemm_serial)(0, 1, n, kh, dh, xs, D, dsu, dh, 0, dw1s, K);     /* v @ ds^T */
        F(gemm_serial)(0, 0, n, dh, kh, w1s, K, dsu, dh, 0, dxs, D);     /* w1 @ ds */
        for (size_t t = n; t < (size_t)L; t++) {
            for (size_t e = 0; e < kh; e++) {
                dw1s[t * K + e] = 0;
                dw2s[t * K + e] = 0;
            }
            for (size_t f = 0; f < dh; f++) {
                dxs[t * D + f] = 0;
            }
        }
    }
}

/* One token's step of the running sum and its output, shared by the causal forward, the
 * backward's rebuild and the streaming step so all three add in the same order:
 * state += w1t (x) v; out = w2t @ gelu(state / count) when out is not NULL. */
HM_SIMD
static void F(causal_token)(REAL* restrict out, REAL* next, const REAL* prev,
                            const REAL* restrict v, const REAL* restrict w1t,
                            const REAL* restrict w2t, size_t kh, size_t dh, REAL count)
{
    if (out) {
        for (size_t f = 0; f < dh; f++) {
            out[f] = 0;
        }
    }
    for (size_t e = 0; e < kh; e++) {
        const REAL a = w1t[e];
        const REAL* p = prev + e * dh;   /* may be next itself: updated in place */
        REAL* q = next + e * dh;
        for (size_t f = 0; f < dh; f++) {
            q[f] = p[f] + a * v[f];
        }
        if (out) {
            const REAL c = w2t[e];
            for (size_t f = 0; f < dh; f++) {
                out[f] += c * F(gelu)(q[f] / count);
            }
        }
    }
}

/* y, x: (B, L, d); w1, w2: (B, L, k); checkpoints: (B, h, n_ck, k_h, d_h) with
 * n_ck = hypermixing_causal_checkpoints(L, chunk): checkpoint c of a unit is its running sum
 * over tokens 0..c*chunk-1. work: n_slots * hypermixing_causal_work_size(d, k, h, chunk). */
void F(hypermixing_causal_forward)(REAL* y, REAL* checkpoints, REAL* work, int n_slots,
                                   const REAL* x, const REAL* w1, const REAL* w2,
                                   const int64_t* lengths, int B, int L, int d, int k, int h,
                                   int mean, int chunk)
{
    const size_t D = (size_t)d, K = (size_t)k, dh = D / (size_t)h, kh = K / (size_t)h;
    const size_t state = kh * dh, n_ck = (size_t)hypermixing_causal_checkpoints(L, chunk);
    const size_t slot_size = hypermixing_causal_work_size(d, k, h, chunk);
    const int units = B * h;
    #pragma omp parallel for schedule(static) num_threads(hmx_threads(n_slots))
    for (int u = 0; u < units; u++) {
        const size_t b = (size_t)(u / h), j = (size_t)(u % h), n = (size_t)lengths[b];
        const size_t row0 = b * (size_t)L;
        REAL* run = work + (size_t)hmx_slot() * slot_size;
        REAL* ck = checkpoints + (size_t)u * n_ck * state;
        for (size_t e = 0; e < state; e++) {
            run[e] = 0;
        }
        for (size_t t = 0; t < (size_t)L; t++) {
            REAL* yt = y + (row0 + t) * D + j * dh;
            if (t % (size_t)chunk == 0) {
                for (size_t e = 0; e < state; e++) {
                    ck[(t / (size_t)chunk) * state + e] = run[e];
                }
            }
            if (t >= n) {
                for (size_t f = 0; f < dh; f++) {
                    yt[f] = 0;
                }
                continue;
            }
            F(causal_token)(yt, run, run, x + (row0 + t) * D + j * dh,
                            w1 + (row0 + t) * K + j * kh, w2 + (row0 + t) * K + j * kh, kh, dh,
                            mean ? (REAL)(t + 1) : (REAL)1);
        }
    }
}

/* Shapes as the causal forward; dw1, dw2: (B, L, k), overwritten, 0 on padding rows.
 * grad_input gets the values' part of the input gradient (overwritten). */
void F(hypermixing_causal_backward)(REAL* grad_input, REAL* dw1, REAL* dw2, REAL* work,
                                    int n_slots, const REAL* grad_output, const REAL* x,
                                    const REAL* w1, const REAL* w2, const REAL* checkpoints,
                                    const int64_t* lengths, int B, int L, int d, int k, int h,
                                    int mean, int chunk)
{
    const size_t D = (size_t)d, K = (size_t)k, dh = D / (size_t)h, kh = K / (size_t)h;
    const size_t state = kh * dh, n_ck = (size_t)hypermixing_causal_checkpoints(L, chunk);
    const size_t slot_size = hypermixing_causal_work_size(d, k, h, chunk);
    const size_t C = (size_t)chunk;
    const int units = B * h;
    #pragma omp parallel for schedule(static) num_threads(hmx_threads(n_slots))
    for (int u = 0; u < units; u++) {
        const size_t b = (size_t)(u / h), j = (size_t)(u % h), n = (size_t)lengths[b];
        const size_t row0 = b * (size_t)L;
        REAL* suffix = work + (size_t)hmx_slot() * slot_size;  /* r, (k_h, d_h) */
        REAL* sums = suffix + state;                            /* (chunk, k_h, d_h) */
        REAL* dv = sums + C * state;                            /* (d_h,) */
        const REAL* ck = checkpoints + (size_t)u * n_ck * state;
        for (size_t t = n; t < (size_t)L; t++) {
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
            /* rebuild the running sums of tokens t0..t1-1 exactly as the forward did */
            for (size_t t = t0; t < t1; t++) {
                F(causal_token)(NULL, sums + (t - t0) * state,
                                t == t0 ? ck + c * state : sums + (t - t0 - 1) * state,
                                x + (row0 + t) * D + j * dh, w1 + (row0 + t) * K + j * kh,
                                NULL, kh, dh, 1);
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
                for (size_t f = 0; f < dh; f++) {
                    dv[f] = 0;
                }
                for (size_t e = 0; e < kh; e++) {
                    const REAL* se = st + e * dh;
                    REAL* re = suffix + e * dh;
                    const REAL c2 = w2t[e], c1 = w1t[e];
                    REAL acc2 = 0, acc1 = 0;
                    for (size_t f = 0; f < dh; f++) {
                        const REAL sv = se[f] / count;
                        /* gelu and its derivative share Phi(sv): one erfc per element */
                        const double cdf = HMX_PHI(sv), w = sv;
                        acc2 += (REAL)(w * cdf) * g[f];
                        const REAL grad = (REAL)(cdf + w * HMX_INV_SQRT_2PI
                                                           * exp(-0.5 * w * w));
                        const REAL dsv = c2 * g[f] * grad;
                        re[f] += dsv / count;
                        acc1 += re[f] * v[f];
                        dv[f] += re[f] * c1;
                    }
                    dw2t[e] = acc2;
                    dw1t[e] = acc1;
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
void F(hypermixing_step)(REAL* y, REAL* state, const REAL* x, const REAL* w1, const REAL* w2,
                         const int64_t* positions, int B, int d, int k, int h, int mean)
{
    const size_t D = (size_t)d, K = (size_t)k, dh = D / (size_t)h, kh = K / (size_t)h;
    const int units = B * h;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (units > 1)
    for (int u = 0; u < units; u++) {
        const size_t b = (size_t)(u / h), j = (size_t)(u % h);
        REAL* st = state + (size_t)u * kh * dh;
        F(causal_token)(y + b * D + j * dh, st, st, x + b * D + j * dh, w1 + b * K + j * kh,
                        w2 + b * K + j * kh, kh, dh, mean ? (REAL)(positions[b] + 1) : (REAL)1);
    }
}

#undef HMX_PHI
#undef HMX_SQRT1_2
#undef HMX_INV_SQRT_2PI
#endif
