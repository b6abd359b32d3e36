/* Hypernetwork (SPEC section 2): theta = relu(m @ w1 + b1) @ w2 + b2, applied to every valid
 * row of a padded batch (B, rows, E). Sequence b owns rows 0..lengths[b]-1; the other rows are
 * padding: they are never read, and their outputs and input gradients are 0.
 *
 * The matrix products run through gemm_* on runs of consecutive valid rows: one run of B*rows
 * rows when nothing is padded (the usual case: one mean row per sequence in the bidirectional
 * token mixing, every prefix of full sequences in the causal one), else one run per sequence.
 * Parameter gradients are reduced over rows inside gemm (which never splits its K loop) or by
 * column sums owned by one thread each, so they do not depend on the thread count. */
#ifndef REAL
#include "hypernetwork.h"
#include "mlp.h"
#include "reduce.h"
#include "gemm.h"
#include <string.h>

size_t hypernetwork_prefix_record(size_t L, size_t Ht)
{
    return L * Ht + 2 * Ht + 1;
}

size_t hypernetwork_theta_scratch_rows(size_t L, size_t Ht, int causal)
{
    return causal ? L * (Ht + 1) + 5 * (L + 1) + 1 : 1;
}

/* Run r of the bidirectional compact layout (see F(hypernetwork_theta_forward)): full-layout
 * columns src .. src+width-1 land at compact columns dst .. dst+width-1. L == S is one run. */
static size_t hn_runs(size_t S, size_t Ht, size_t L)
{
    return L == S ? 1 : Ht + 3;
}

static size_t hn_run(size_t r, size_t S, size_t Ht, size_t L, size_t* src, size_t* dst)
{
    if (L == S) {
        *src = *dst = 0;
        return 2 * S * Ht + Ht + S;
    }
    if (r == 0) {                       /* W1[:L] */
        *src = *dst = 0;
        return L * Ht;
    }
    if (r == 1) {                       /* c1 */
        *src = S * Ht;
        *dst = L * Ht;
        return Ht;
    }
    if (r < Ht + 2) {                   /* row h = r - 2 of W2, its first L columns */
        *src = S * Ht + Ht + (r - 2) * S;
        *dst = L * Ht + Ht + (r - 2) * L;
        return L;
    }
    *src = 2 * S * Ht + Ht;             /* c2[:L] */
    *dst = 2 * L * Ht + Ht;
    return L;
}

#define HM_TEMPLATE_FILE "hypernetwork.c"
#include "template.h"
#else

#include "vecmath.h"

static int F(hn_all_full)(const int64_t* lengths, size_t B, size_t rows)
{
    for (size_t b = 0; b < B; b++) {
        if ((size_t)lengths[b] != rows) {
            return 0;
        }
    }
    return 1;
}

static void F(hn_zero)(REAL* a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        a[i] = 0;
    }
}

/* out (B, rows, O); pre, hidden (B, rows, H) keep m @ w1 + b1 and its relu for backward;
 * x (B, rows, E); lengths (B,) with 1 <= lengths[b] <= rows; w1 (E, H); b1 (H,); w2 (H, O);
 * b2 (O,). Padding rows of out, pre and hidden are set to 0. */
void KERNEL_NAME(hypernetwork_forward_f32, hypernetwork_forward_f64)(
    REAL* out, REAL* pre, REAL* hidden, const REAL* x, const int64_t* lengths, const REAL* w1,
    const REAL* b1, const REAL* w2, const REAL* b2, size_t B, size_t rows, size_t E, size_t H,
    size_t O)
{
    const size_t R = rows, e = E, h = H, o = O;
    if (F(hn_all_full)(lengths, B, rows)) {
        F(mlp_forward)(out, pre, hidden, x, B * R, w1, b1, w2, b2, e, h, o);
        return;
    }
    for (size_t b = 0; b < B; b++) {
        const size_t first = b * R, n = (size_t)lengths[b];
        F(mlp_forward)(out + first * o, pre + first * h, hidden + first * h, x + first * e, n,
                       w1, b1, w2, b2, e, h, o);
        F(hn_zero)(out + (first + n) * o, (R - n) * o);
        F(hn_zero)(pre + (first + n) * h, (R - n) * h);
        F(hn_zero)(hidden + (first + n) * h, (R - n) * h);
    }
}

/* grad_input (B, rows, E) is written (padding rows 0); dw1 (E, H), db1 (H,), dw2 (H, O),
 * db2 (O,) are overwritten; dpre (B, rows, H) is a
 * workspace; grad_output (B, rows, O), whose padding rows are never read; x, pre, hidden and
 * lengths as given to / produced by the forward; w1 (E, H); w2 (H, O). */
void KERNEL_NAME(hypernetwork_backward_f32, hypernetwork_backward_f64)(
    REAL* grad_input, REAL* dw1, REAL* db1, REAL* dw2, REAL* db2, REAL* dpre,
    const REAL* grad_output, const REAL* x, const REAL* pre, const REAL* hidden,
    const int64_t* lengths, const REAL* w1, const REAL* w2, size_t B, size_t rows, size_t E,
    size_t H, size_t O)
{
    const size_t R = rows, e = E, h = H, o = O;
    F(hn_zero)(dw1, e * h);   /* the row runs below accumulate into them */
    F(hn_zero)(db1, h);
    F(hn_zero)(dw2, h * o);
    F(hn_zero)(db2, o);
    if (F(hn_all_full)(lengths, B, rows)) {
        F(mlp_backward)(grad_input, 0, dw1, db1, dw2, db2, 1, dpre, grad_output, x, hidden,
                        B * R, w1, w2, e, h, o);
        return;
    }
    for (size_t b = 0; b < B; b++) {
        const size_t first = b * R, n = (size_t)lengths[b];
        F(mlp_backward)(grad_input + first * e, 0, dw1, db1, dw2, db2, 1, dpre + first * h,
                        grad_output + first * o, x + first * e, hidden + first * h, n, w1, w2,
                        e, h, o);
        F(hn_zero)(grad_input + (first + n) * e, (R - n) * e);
    }
}

/* ------------------------------------------------------------------------------------------
 * Generated token-mixing weights (theta) in the layout the token mixing reads.
 *
 * The full output layout (O = 2*S*Ht + Ht + S columns of w2 and b2) is W1 (S, Ht) | c1 (Ht) |
 * W2 (Ht, S) | c2 (S), S = max_seq_len. An input of L <= S rows can only use part of it, and
 * only that part is generated; the index arithmetic happens here, no index arrays:
 *   bidirectional (causal = 0): x (B, 1, E) one mean per sequence; theta (B, OL) with
 *     OL = 2*L*Ht + Ht + L: the full layout of S = L (W1[:L], c1, W2[:, :L], c2[:L]).
 *   causal: x (B, L, E) prefix means; theta (B, L, P), P = hypernetwork_prefix_record(L, Ht):
 *     position t gets only what it uses: W1 rows 0..t (L*Ht slots, rows past t unspecified),
 *     c1 (Ht), column t of W2 (Ht contiguous values) and c2[t]. About 4x less work than the
 *     full theta at L = S. W1 rows are generated for HM_PREFIX_TILE positions at a time (one
 *     gemm per tile, up to the tile's last row).
 * wcol (hypernetwork_theta_scratch_rows(L, Ht, causal), H) is scratch; in the causal mode its
 * first L * (Ht + 1) rows receive column t of W2 and c2[t] gathered from w2, so the
 * per-position products read contiguous memory.
 * ------------------------------------------------------------------------------------------ */

static void F(hn_gather_columns)(REAL* wcol, const REAL* w2, size_t H, size_t O, size_t S,
                                 size_t Ht, size_t L)
{
    for (size_t t = 0; t < L; t++) {
        for (size_t h = 0; h <= Ht; h++) {
            const size_t col = h < Ht ? S * Ht + Ht + h * S + t : 2 * S * Ht + Ht + t;
            REAL* restrict dst = wcol + (t * (Ht + 1) + h) * H;
            for (size_t k = 0; k < H; k++) {
                dst[k] = w2[k * O + col];
            }
        }
    }
}

/* First layer on the valid rows, padding rows of pre and hidden zeroed. */
static void F(hn_first_all)(REAL* pre, REAL* hidden, const REAL* x, const int64_t* lengths,
                            const REAL* w1, const REAL* b1, size_t B, size_t R, size_t E, size_t H)
{
    if (F(hn_all_full)(lengths, B, R)) {
        F(mlp_first_forward)(pre, hidden, x, B * R, w1, b1, E, H);
        return;
    }
    for (size_t b = 0; b < B; b++) {
        const size_t first = b * R, n = (size_t)lengths[b];
        F(mlp_first_forward)(pre + first * H, hidden + first * H, x + first * E, n, w1, b1, E,
                             H);
        F(hn_zero)(pre + (first + n) * H, (R - n) * H);
        F(hn_zero)(hidden + (first + n) * H, (R - n) * H);
    }
}

/* theta, pre, hidden, x, lengths, w1 (E, H), b1 (H,), w2 (H, O), b2 (O,), wcol: see above;
 * rows = 1 (bidirectional) or L (causal). */
HM_SIMD
void KERNEL_NAME(hypernetwork_theta_forward_f32, hypernetwork_theta_forward_f64)(
    REAL* theta, REAL* pre, REAL* hidden, REAL* wcol, const REAL* x, const int64_t* lengths,
    const REAL* w1, const REAL* b1, const REAL* w2, const REAL* b2, size_t B, size_t rows, size_t E,
    size_t H, size_t S, size_t Ht, size_t L, int causal)
{
    const size_t R = rows, e = E, h = H, O = 2 * S * Ht + Ht + S;
    F(hn_first_all)(pre, hidden, x, lengths, w1, b1, B, R, e, h);
    if (!causal) {
        const size_t M = B * R, OL = 2 * L * Ht + Ht + L, runs = hn_runs(S, Ht, L);
        for (size_t r = 0; r < runs; r++) {   /* each run with its slice of b2 */
            size_t src, dst;
            const size_t width = hn_run(r, S, Ht, L, &src, &dst);
            F(gemm_bias_act)(0, 0, M, width, h, hidden, h, w2 + src, O, 0, theta + dst, OL,
                             b2 + src, 0);
        }
        return;
    }
    const size_t P = hypernetwork_prefix_record(L, Ht);
    const size_t tiles = (L + HM_PREFIX_TILE - 1) / HM_PREFIX_TILE;
    F(hn_gather_columns)(wcol, w2, h, O, S, Ht, L);
    #pragma omp parallel for schedule(dynamic, 1) num_threads(hm_num_threads())
    for (size_t item = 0; item < B * tiles; item++) {
        const size_t b = item / tiles, t0 = (item % tiles) * HM_PREFIX_TILE;
        const size_t n = (size_t)lengths[b];
        if (t0 >= n) {
            continue;
        }
        const size_t t1 = t0 + HM_PREFIX_TILE < n ? t0 + HM_PREFIX_TILE : n, m = t1 - t0;
        const REAL* hid = hidden + (b * R + t0) * h;
        REAL* rec = theta + (b * L + t0) * P;
        F(gemm_serial)(0, 0, m, t1 * Ht, h, hid, h, w2, O, 0, rec, P);             /* W1 */
        F(gemm_serial)(0, 0, m, Ht, h, hid, h, w2 + S * Ht, O, 0, rec + L * Ht, P); /* c1 */
        for (size_t i = 0; i < m; i++) {
            const size_t t = t0 + i;
            REAL* restrict r = rec + i * P;
            const REAL* restrict hr = hid + i * h;
            for (size_t c = 0; c < (t + 1) * Ht; c++) {
                r[c] += b2[c];
            }
            for (size_t j = 0; j < Ht; j++) {
                r[L * Ht + j] += b2[S * Ht + j];
            }
            /* column t of W2, then c2[t]: hr (1, H) @ wcol[t]^T ((Ht + 1) gathered columns) */
            F(gemm_serial)(0, 1, 1, Ht + 1, h, hr, h, wcol + t * (Ht + 1) * h, h, 0,
                           r + L * Ht + Ht, Ht + 1);
            for (size_t j = 0; j <= Ht; j++) {
                const size_t col = j < Ht ? S * Ht + Ht + j * S + t : 2 * S * Ht + Ht + t;
                r[L * Ht + Ht + j] += b2[col];
            }
        }
    }
}

/* dpre (M, h) (+)= g (M, width; row stride ldg) @ w^T, w (h, width; row stride ldw), for a
 * few rows M: a (1, width) @ (width, h) product is h long dot products over the generated
 * weights (1.3 MB at the seeds' size), which gemm's packed panels handle poorly. Split over
 * the h rows of w, so both cores stream half of it. Used for up to 4 rows, and up to
 * HN_DOT_ROWS rows while those rows of g stay in cache (HN_DOT_ELEMENTS): every row of w
 * reads all of them again (measured at the seeds' size, 2 threads: B=8 141 -> 92 us, even
 * at B=16, gemm ahead at B=32; at the big size, B=8, gemm is ahead). */
#define HN_DOT_ROWS 12
#define HN_DOT_ELEMENTS 131072
HM_SIMD
static void F(hn_dot_rows)(REAL* dpre, const REAL* g, size_t ldg, const REAL* w, size_t ldw,
                           size_t M, size_t h, size_t width, int accumulate)
{
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (M * h * width > HM_PARALLEL_MIN)
    for (size_t k = 0; k < h; k++) {
        for (size_t i = 0; i < M; i++) {
            const REAL v = F(vec_dot)(g + i * ldg, w + k * ldw, width);
            dpre[i * h + k] = accumulate ? dpre[i * h + k] + v : v;
        }
    }
}

/* Gradients of F(hypernetwork_theta_forward): dtheta in the same layout as theta; in the causal
 * layout, W1 rows t+1 .. (end of t's HM_PREFIX_TILE tile) - 1 of record t must be 0 (the token
 * mixing backward writes them so). grad_input (B, rows, E), dw1 (E, H), db1 (H,), dw2 (H, O) and
 * db2 (O,) are overwritten; columns of w2 that no valid row generated get hidden^T @ 0 (0, or
 * NaN where a hidden unit is NaN/inf), as the reference computes them. dpre (B, rows, H) and
 * wcol (see above) are scratch; x, pre, hidden as given to / left by the forward.
 * Every sum runs over rows in a fixed order on one thread, so results do not depend on the
 * thread count. */
HM_SIMD
void KERNEL_NAME(hypernetwork_theta_backward_f32, hypernetwork_theta_backward_f64)(
    REAL* grad_input, REAL* dw1, REAL* db1, REAL* dw2, REAL* db2, REAL* dpre, REAL* wcol,
    const REAL* dtheta, const REAL* x, const REAL* pre, const REAL* hidden, const int64_t* lengths,
    const REAL* w1, const REAL* w2, size_t B, size_t rows, size_t E, size_t H, size_t S, size_t Ht,
    size_t L, int causal)
{
    const size_t R = rows, e = E, h = H, O = 2 * S * Ht + Ht + S;
    /* db1 holds 0 * (column sums of hidden) until the first layer's backward overwrites it */
    REAL* hz = db1;
    F(hn_zero)(hz, h);
    for (size_t b = 0; b < B; b++) {
        for (size_t t = 0; t < (size_t)lengths[b]; t++) {
            const REAL* restrict hr = hidden + (b * R + t) * h;
            for (size_t k = 0; k < h; k++) {
                hz[k] += hr[k];
            }
        }
    }
    /* (bidirectional at L == S, the usual case, every column is written below: no fill) */
    if (causal || L < S) {
        for (size_t k = 0; k < h; k++) {
            const REAL z = hz[k] * 0;
            REAL* restrict row = dw2 + k * O;
            for (size_t c = 0; c < O; c++) {
                row[c] = z;
            }
        }
    }
    F(hn_zero)(db2, O);

    /* The reference multiplies full-size arrays, zeros included: a NaN/inf hidden unit or
     * w2 entry turns the products with those zeros into NaN. The terms below are exactly 0
     * or NaN (sums of v * 0) and reproduce that without doing the zero products. */
    if (!causal) {
        const size_t M = B * R, OL = 2 * L * Ht + Ht + L, runs = hn_runs(S, Ht, L);
        REAL* wout = wcol;   /* (h,): 0 * the w2 columns no row generated */
        for (size_t k = 0; k < h; k++) {
            const REAL* restrict row = w2 + k * O;
            REAL z = 0;
            if (L < S) {
                for (size_t c = L * Ht; c < S * Ht; c++) {
                    z += row[c] * 0;
                }
                for (size_t j = 0; j <= Ht; j++) {
                    const size_t c0 = j < Ht ? S * Ht + Ht + j * S : 2 * S * Ht + Ht;
                    for (size_t t = L; t < S; t++) {
                        z += row[c0 + t] * 0;
                    }
                }
            }
            wout[k] = z;
        }
        for (size_t r = 0; r < runs; r++) {
            size_t src, dst;
            const size_t width = hn_run(r, S, Ht, L, &src, &dst);
            F(gemm)(1, 0, h, width, M, hidden, h, dtheta + dst, OL, 0, dw2 + src, O);
            if (M <= 4 || (M <= HN_DOT_ROWS && M * width <= HN_DOT_ELEMENTS)) {
                F(hn_dot_rows)(dpre, dtheta + dst, OL, w2 + src, O, M, h, width, r != 0);
            } else {
                F(gemm)(0, 1, M, h, width, dtheta + dst, OL, w2 + src, O, r ? 1 : 0, dpre, h);
            }
            if (width == OL) {   /* one run, contiguous rows: the parallel column sums */
                F(column_sums_add)(db2 + src, dtheta + dst, M, width);
                continue;
            }
            for (size_t i = 0; i < M; i++) {
                const REAL* restrict d = dtheta + i * OL + dst;
                REAL* restrict out = db2 + src;
                for (size_t j = 0; j < width; j++) {
                    out[j] += d[j];
                }
            }
        }
        for (size_t i = 0; i < M * h; i++) {
            dpre[i] = HM_RELU_GRAD(dpre[i] + wout[i % h], pre[i]);
        }
    } else {
        const size_t P = hypernetwork_prefix_record(L, Ht);
        const size_t tiles = (L + HM_PREFIX_TILE - 1) / HM_PREFIX_TILE;
        F(hn_gather_columns)(wcol, w2, h, O, S, Ht, L);
        /* (L+1, h) each: hp[j] / hs[j] = 0 * hidden rows at positions < j / >= j; ws[j] =
         * 0 * w2's W1 rows >= j (to S); cp[t] / cs[t] = 0 * w2's columns of W2 and c2 for
         * positions < t / >= t; wout = 0 * those columns for positions L..S-1. */
        REAL* hp = wcol + L * (Ht + 1) * h;
        REAL* hs = hp + (L + 1) * h;
        REAL* ws = hs + (L + 1) * h;
        REAL* cp = ws + (L + 1) * h;
        REAL* cs = cp + (L + 1) * h;
        REAL* wout = cs + (L + 1) * h;
        F(hn_zero)(hp, h);
        F(hn_zero)(hs + L * h, h);
        F(hn_zero)(cp, h);
        F(hn_zero)(cs + L * h, h);
        for (size_t t = 0; t < L; t++) {
            for (size_t k = 0; k < h; k++) {
                hp[(t + 1) * h + k] = hp[t * h + k];
                REAL z = 0;
                for (size_t j = 0; j <= Ht; j++) {
                    z += wcol[(t * (Ht + 1) + j) * h + k] * 0;
                }
                cp[(t + 1) * h + k] = cp[t * h + k] + z;
            }
            for (size_t b = 0; b < B; b++) {
                if ((size_t)lengths[b] > t) {
                    const REAL* restrict hr = hidden + (b * R + t) * h;
                    for (size_t k = 0; k < h; k++) {
                        hp[(t + 1) * h + k] += hr[k] * 0;
                    }
                }
            }
        }
        for (size_t t = L; t-- > 0;) {
            for (size_t k = 0; k < h; k++) {
                hs[t * h + k] = hs[(t + 1) * h + k];
                REAL z = 0;
                for (size_t j = 0; j <= Ht; j++) {
                    z += wcol[(t * (Ht + 1) + j) * h + k] * 0;
                }
                cs[t * h + k] = cs[(t + 1) * h + k] + z;
            }
            for (size_t b = 0; b < B; b++) {
                if ((size_t)lengths[b] > t) {
                    const REAL* restrict hr = hidden + (b * R + t) * h;
                    for (size_t k = 0; k < h; k++) {
                        hs[t * h + k] += hr[k] * 0;
                    }
                }
            }
        }
        for (size_t k = 0; k < h; k++) {
            const REAL* restrict row = w2 + k * O;
            REAL z = 0, tail = 0;
            for (size_t c = L * Ht; c < S * Ht; c++) {
                tail += row[c] * 0;
            }
            ws[L * h + k] = tail;
            for (size_t j = L; j-- > 0;) {
                for (size_t c = j * Ht; c < (j + 1) * Ht; c++) {
                    tail += row[c] * 0;
                }
                ws[j * h + k] = tail;
            }
            for (size_t j = 0; j <= Ht; j++) {
                const size_t c0 = j < Ht ? S * Ht + Ht + j * S : 2 * S * Ht + Ht;
                for (size_t t = L; t < S; t++) {
                    z += row[c0 + t] * 0;
                }
            }
            wout[k] = z;
        }
        /* dpre, HM_PREFIX_TILE positions of one sequence per item */
        #pragma omp parallel for schedule(dynamic, 1) num_threads(hm_num_threads())
        for (size_t item = 0; item < B * tiles; item++) {
            const size_t b = item / tiles, t0 = (item % tiles) * HM_PREFIX_TILE;
            const size_t n = (size_t)lengths[b];
            if (t0 >= n) {
                continue;
            }
            const size_t t1 = t0 + HM_PREFIX_TILE < n ? t0 + HM_PREFIX_TILE : n, m = t1 - t0;
            const REAL* rec = dtheta + (b * L + t0) * P;
            REAL* dp = dpre + (b * R + t0) * h;
            F(gemm_serial)(0, 1, m, h, t1 * Ht, rec, P, w2, O, 0, dp, h);
            F(gemm_serial)(0, 1, m, h, Ht, rec + L * Ht, P, w2 + S * Ht, O, 1, dp, h);
            for (size_t i = 0; i < m; i++) {
                const size_t t = t0 + i;
                REAL* restrict d = dp + i * h;
                const REAL* restrict p = pre + (b * R + t) * h;
                for (size_t j = 0; j <= Ht; j++) {
                    const REAL g = rec[i * P + L * Ht + Ht + j];
                    const REAL* restrict wc = wcol + (t * (Ht + 1) + j) * h;
                    for (size_t k = 0; k < h; k++) {
                        d[k] += g * wc[k];
                    }
                }
                for (size_t k = 0; k < h; k++) {
                    const REAL z = ((ws[(t + 1) * h + k] + cp[t * h + k]) +
                                    cs[(t + 1) * h + k]) + wout[k];
                    d[k] = HM_RELU_GRAD(d[k] + z, p[k]);
                }
            }
        }
        /* dw2 and db2 of W1, one tile of W1 rows per item: positions t >= j0 use them */
        #pragma omp parallel for schedule(dynamic, 1) num_threads(hm_num_threads())
        for (size_t J = 0; J < tiles; J++) {
            const size_t j0 = J * HM_PREFIX_TILE;
            const size_t j1 = j0 + HM_PREFIX_TILE < L ? j0 + HM_PREFIX_TILE : L;
            const size_t width = (j1 - j0) * Ht;
            int first = 1;
            for (size_t b = 0; b < B; b++) {
                const size_t n = (size_t)lengths[b];
                if (n <= j0) {
                    continue;
                }
                const REAL* rec = dtheta + (b * L + j0) * P + j0 * Ht;
                if (first) {   /* positions < j of every sequence skip W1 row j */
                    for (size_t k = 0; k < h; k++) {
                        for (size_t j = j0; j < j1; j++) {
                            for (size_t c = j * Ht; c < (j + 1) * Ht; c++) {
                                dw2[k * O + c] = hp[j * h + k];
                            }
                        }
                    }
                }
                first = 0;
                F(gemm_serial)(1, 0, h, width, n - j0, hidden + (b * R + j0) * h, h,
                               rec, P, 1, dw2 + j0 * Ht, O);
                for (size_t t = j0; t < n; t++) {
                    const REAL* restrict d = rec + (t - j0) * P;
                    REAL* restrict out = db2 + j0 * Ht;
                    for (size_t c = 0; c < width; c++) {
                        out[c] += d[c];
                    }
                }
            }
        }
        /* c1: every valid position */
        for (size_t b = 0; b < B; b++) {
            const size_t n = (size_t)lengths[b];
            const REAL* rec = dtheta + b * L * P + L * Ht;
            F(gemm)(1, 0, h, Ht, n, hidden + b * R * h, h, rec, P, b ? 1 : 0,
                    dw2 + S * Ht, O);
            for (size_t t = 0; t < n; t++) {
                for (size_t j = 0; j < Ht; j++) {
                    db2[S * Ht + j] += rec[t * P + j];
                }
            }
        }
        /* column t of W2 and c2[t]: the positions t of every sequence that has one */
        #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
        for (size_t t = 0; t < L; t++) {
            for (size_t j = 0; j <= Ht; j++) {
                const size_t col = j < Ht ? S * Ht + Ht + j * S + t : 2 * S * Ht + Ht + t;
                int used = 0;
                for (size_t b = 0; b < B; b++) {
                    if ((size_t)lengths[b] > t) {
                        const REAL g = dtheta[(b * L + t) * P + L * Ht + Ht + j];
                        const REAL* restrict hr = hidden + (b * R + t) * h;
                        for (size_t k = 0; k < h; k++) {
                            const REAL start = hp[t * h + k] + hs[(t + 1) * h + k];
                            dw2[k * O + col] = (used ? dw2[k * O + col] : start) + hr[k] * g;
                        }
                        db2[col] += g;
                        used = 1;
                    }
                }
            }
        }
    }

    /* first layer, from the masked dpre of the valid rows */
    F(hn_zero)(dw1, e * h);
    F(hn_zero)(db1, h);
    if (F(hn_all_full)(lengths, B, rows)) {
        F(mlp_first_backward)(grad_input, 0, dw1, db1, 1, dpre, x, B * R, w1, e, h);
        return;
    }
    for (size_t b = 0; b < B; b++) {
        const size_t first = b * R, n = (size_t)lengths[b];
        F(mlp_first_backward)(grad_input + first * e, 0, dw1, db1, 1, dpre + first * h,
                              x + first * e, n, w1, e, h);
        F(hn_zero)(grad_input + (first + n) * e, (R - n) * e);
    }
}

#endif
