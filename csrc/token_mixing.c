/* Token mixing (SPEC section 2) with weights generated per sequence (bidirectional) or per
 * prefix (causal) by a hypernetwork that runs outside these kernels.
 *
 * theta (O = 2*S*Ht + Ht + S values per generated set) splits, row-major, into W1 (S, Ht),
 * c1 (Ht,), W2 (Ht, S) and c2 (S,). A sequence of n valid rows uses rows 0..n-1 of W1 and
 * columns 0..n-1 of W2 and c2.
 *
 * Layout: the hidden activations of one sequence are kept transposed, act (Ht, E), so that
 * every product is one gemm call on the arrays as they lie, with E as the long dimension:
 *     act = relu(W1[:n]^T @ X + c1^T),      Y = X + W2[:, :n]^T @ act + c2^T.
 * Padding rows (t >= lengths[b]) of x and grad_output are never read; their outputs and input
 * gradients are 0, and generated-weight positions >= n get zero gradient.
 *
 * Determinism: every output element is computed by one thread in a fixed order. Work runs
 * over sequences, (sequence, position) pairs or (sequence, chunk) pairs; workspaces are per
 * thread slot but only hold values of the item being processed. The causal backward sums the
 * input-gradient contributions of each fixed-size chunk of positions in its own buffer and
 * adds the chunks in order, so no result depends on the thread count. */
#ifndef REAL
#include "token_mixing.h"
#include "gemm.h"
#include "hypernetwork.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static int tm_slot(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Threads for a region whose items need one workspace slot each. */
static int tm_threads(size_t n_slots)
{
    const int n = hm_num_threads();
    return (size_t)n < n_slots ? n : (int)n_slots;
}

size_t token_mixing_causal_chunk(size_t L)
{
    const size_t c = (L + 15) / 16;
    return c > 4 ? c : 4;
}

size_t token_mixing_causal_partial_size(size_t L, size_t E, size_t chunk)
{
    const size_t chunks = (L + chunk - 1) / chunk;
    return E * (chunk * (chunks - 1) * chunks / 2 + L);
}

#define HM_TEMPLATE_FILE "token_mixing.c"
#include "template.h"
#else

#include "vecmath.h"

/* Features processed together by one thread in the pooling kernels. */
#define TM_POOL_COLS 16

static inline REAL F(tm_sum)(const REAL* a, size_t n)
{
    REAL s = 0;
    for (size_t k = 0; k < n; k++) {
        s += a[k];
    }
    return s;
}

static inline void F(tm_zero)(REAL* a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        a[i] = 0;
    }
}

/* ------------------------------------------------------------------------ pooling */

/* means (B, E): means[b] = mean of rows 0..lengths[b]-1 of x (B, L, E). */
HM_SIMD
void KERNEL_NAME(token_mixing_pool_forward_f32, token_mixing_pool_forward_f64)(
    REAL* means, const REAL* x, const int64_t* lengths, size_t B, size_t L, size_t E)
{
    const size_t e_n = E, l_n = L;
    const int parallel = B * l_n * e_n > HM_PARALLEL_MIN;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (parallel)
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)lengths[b];
        const REAL* xb = x + b * l_n * e_n;
        REAL* restrict m = means + b * e_n;
        F(tm_zero)(m, e_n);
        for (size_t s = 0; s < n; s++) {
            const REAL* restrict row = xb + s * e_n;
            for (size_t e = 0; e < e_n; e++) {
                m[e] += row[e];
            }
        }
        const REAL count = (REAL)n;
        for (size_t e = 0; e < e_n; e++) {
            m[e] /= count;
        }
    }
}

/* grad_input (B, L, E) += dmeans[b] / lengths[b] on the valid rows of sequence b;
 * dmeans (B, E). */
HM_SIMD
void KERNEL_NAME(token_mixing_pool_backward_f32, token_mixing_pool_backward_f64)(
    REAL* grad_input, const REAL* dmeans, const int64_t* lengths, size_t B, size_t L, size_t E)
{
    const size_t e_n = E, l_n = L;
    const int parallel = B * l_n * e_n > HM_PARALLEL_MIN;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (parallel)
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)lengths[b];
        const REAL count = (REAL)n;
        const REAL* dm = dmeans + b * e_n;
        for (size_t s = 0; s < n; s++) {
            REAL* restrict gi = grad_input + (b * l_n + s) * e_n;
            for (size_t e = 0; e < e_n; e++) {
                gi[e] += dm[e] / count;
            }
        }
    }
}

/* means (B, L, E): means[b, t] = mean of rows 0..t of x (B, L, E) for t < lengths[b], 0 on
 * padding rows. Running sums in order, divided by t + 1. */
HM_SIMD
void KERNEL_NAME(token_mixing_prefix_pool_forward_f32, token_mixing_prefix_pool_forward_f64)(
    REAL* means, const REAL* x, const int64_t* lengths, size_t B, size_t L, size_t E)
{
    const size_t e_n = E, l_n = L;
    const size_t blocks = (e_n + TM_POOL_COLS - 1) / TM_POOL_COLS;
    const size_t items = B * blocks;
    const int parallel = B * l_n * e_n > HM_PARALLEL_MIN;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (parallel)
    for (size_t item = 0; item < items; item++) {
        const size_t b = item / blocks, e0 = (item % blocks) * TM_POOL_COLS;
        const size_t w = e0 + TM_POOL_COLS < e_n ? TM_POOL_COLS : e_n - e0;
        const size_t n = (size_t)lengths[b];
        REAL acc[TM_POOL_COLS] = {0};
        for (size_t t = 0; t < l_n; t++) {
            REAL* restrict m = means + (b * l_n + t) * e_n + e0;
            if (t >= n) {
                F(tm_zero)(m, w);
                continue;
            }
            const REAL* restrict row = x + (b * l_n + t) * e_n + e0;
            const REAL count = (REAL)(t + 1);
            for (size_t j = 0; j < w; j++) {
                acc[j] += row[j];
                m[j] = acc[j] / count;
            }
        }
    }
}

/* grad_input (B, L, E) += exact gradient of the prefix means: row s of sequence b receives
 * dmeans[b, t] / (t + 1) from every t with s <= t < lengths[b]; dmeans (B, L, E). */
HM_SIMD
void KERNEL_NAME(token_mixing_prefix_pool_backward_f32, token_mixing_prefix_pool_backward_f64)(
    REAL* grad_input, const REAL* dmeans, const int64_t* lengths, size_t B, size_t L, size_t E)
{
    const size_t e_n = E, l_n = L;
    const size_t blocks = (e_n + TM_POOL_COLS - 1) / TM_POOL_COLS;
    const size_t items = B * blocks;
    const int parallel = B * l_n * e_n > HM_PARALLEL_MIN;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (parallel)
    for (size_t item = 0; item < items; item++) {
        const size_t b = item / blocks, e0 = (item % blocks) * TM_POOL_COLS;
        const size_t w = e0 + TM_POOL_COLS < e_n ? TM_POOL_COLS : e_n - e0;
        const size_t n = (size_t)lengths[b];
        REAL acc[TM_POOL_COLS] = {0};
        for (size_t s = n; s-- > 0;) {
            const REAL* restrict dm = dmeans + (b * l_n + s) * e_n + e0;
            REAL* restrict gi = grad_input + (b * l_n + s) * e_n + e0;
            const REAL count = (REAL)(s + 1);
            for (size_t j = 0; j < w; j++) {
                acc[j] += dm[j] / count;
                gi[j] += acc[j];
            }
        }
    }
}

/* ------------------------------------------------------------------------ bidirectional */

/* gemm_serial_* or gemm_*: they give the same bits for the same arguments (neither splits K,
 * see gemm.h), so a kernel may pick either without changing its results. */
typedef void (*F(tm_gemm_fn))(int, int, size_t, size_t, size_t, const REAL*, size_t,
                              const REAL*, size_t, REAL, REAL*, size_t);

/* Forward of sequence b, n valid rows; see F(token_mixing_forward). */
HM_SIMD
static void F(tm_forward_one)(F(tm_gemm_fn) mm, REAL* Y, REAL* A, const REAL* X,
                              const REAL* th, size_t n, size_t l_n, size_t e_n, size_t s_n,
                              size_t h_n)
{
    const REAL* W1 = th;
    const REAL* c1 = W1 + s_n * h_n;
    const REAL* W2 = c1 + h_n;
    const REAL* c2 = W2 + h_n * s_n;
    mm(1, 0, h_n, e_n, n, W1, h_n, X, e_n, 0, A, e_n);        /* A = W1[:n]^T @ X */
    for (size_t h = 0; h < h_n; h++) {
        REAL* restrict a = A + h * e_n;
        const REAL bias = c1[h];
        for (size_t e = 0; e < e_n; e++) {
            const REAL v = a[e] + bias;
            a[e] = HM_RELU(v);
        }
    }
    mm(1, 0, n, e_n, h_n, W2, s_n, A, e_n, 0, Y, e_n);        /* Y = W2[:, :n]^T @ A */
    for (size_t t = 0; t < n; t++) {
        REAL* restrict yr = Y + t * e_n;
        const REAL* restrict xr = X + t * e_n;
        const REAL bias = c2[t];
        for (size_t e = 0; e < e_n; e++) {
            yr[e] = xr[e] + (yr[e] + bias);
        }
    }
    F(tm_zero)(Y + n * e_n, (l_n - n) * e_n);
}

/* y, x (B, L, E); act (B, Ht, E) receives relu(W1[:n]^T @ X + c1^T) of every sequence for
 * the backward; theta (B, O), O = 2*S*Ht + Ht + S. One sequence per thread; with fewer
 * sequences than threads, the sequences run one after another on parallel gemms instead. */
void KERNEL_NAME(token_mixing_forward_f32, token_mixing_forward_f64)(
    REAL* y, REAL* act, const REAL* x, const REAL* theta, const int64_t* lengths, size_t B,
    size_t L, size_t E, size_t S, size_t Ht)
{
    const size_t e_n = E, l_n = L, s_n = S, h_n = Ht;
    const size_t o_n = 2 * s_n * h_n + h_n + s_n;
    if (B < (size_t)hm_num_threads()) {
        for (size_t b = 0; b < B; b++) {
            F(tm_forward_one)(F(gemm), y + b * l_n * e_n, act + b * h_n * e_n,
                              x + b * l_n * e_n, theta + b * o_n,
                              (size_t)lengths[b], l_n, e_n, s_n, h_n);
        }
        return;
    }
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t b = 0; b < B; b++) {
        F(tm_forward_one)(F(gemm_serial), y + b * l_n * e_n,
                          act + b * h_n * e_n, x + b * l_n * e_n,
                          theta + b * o_n, (size_t)lengths[b], l_n, e_n, s_n, h_n);
    }
}

/* Backward of sequence b, n valid rows, D (Ht, E) scratch; see F(token_mixing_backward). */
HM_SIMD
static void F(tm_backward_one)(F(tm_gemm_fn) mm, REAL* GI, REAL* dth, REAL* D, const REAL* G,
                               const REAL* X, const REAL* th, const REAL* A, size_t n,
                               size_t l_n, size_t e_n, size_t s_n, size_t h_n)
{
    const size_t o_n = 2 * s_n * h_n + h_n + s_n;
    const REAL* W1 = th;
    const REAL* W2 = W1 + s_n * h_n + h_n;
    REAL* dW1 = dth;
    REAL* dc1 = dW1 + s_n * h_n;
    REAL* dW2 = dc1 + h_n;
    REAL* dc2 = dW2 + h_n * s_n;
    F(tm_zero)(dth, o_n);
    for (size_t t = 0; t < n; t++) {
        dc2[t] = F(tm_sum)(G + t * e_n, e_n);
    }
    mm(0, 1, h_n, n, e_n, A, e_n, G, e_n, 0, dW2, s_n);       /* dW2[:, :n] = A @ G^T */
    mm(0, 0, h_n, e_n, n, W2, s_n, G, e_n, 0, D, e_n);        /* D = W2[:, :n] @ G ... */
    for (size_t h = 0; h < h_n; h++) {
        REAL* restrict d = D + h * e_n;
        const REAL* restrict a = A + h * e_n;
        for (size_t e = 0; e < e_n; e++) {
            d[e] = HM_RELU_GRAD(d[e], a[e]);                      /* ... masked: dZ^T */
        }
        dc1[h] = F(tm_sum)(d, e_n);
    }
    mm(0, 1, n, h_n, e_n, X, e_n, D, e_n, 0, dW1, h_n);       /* dW1[:n] = X @ D^T */
    mm(0, 0, n, e_n, h_n, W1, h_n, D, e_n, 0, GI, e_n);       /* GI = W1[:n] @ D ... */
    for (size_t i = 0; i < n * e_n; i++) {
        GI[i] += G[i];                                        /* ... + residual */
    }
    F(tm_zero)(GI + n * e_n, (l_n - n) * e_n);
}

/* grad_input (B, L, E) and dtheta (B, O) are written in full; work (n_slots, Ht*E) is
 * scratch; grad_output, x (B, L, E); theta (B, O) and act (B, Ht, E) from the forward.
 * Parallel as F(token_mixing_forward). */
void KERNEL_NAME(token_mixing_backward_f32, token_mixing_backward_f64)(
    REAL* grad_input, REAL* dtheta, REAL* work, size_t n_slots, const REAL* grad_output,
    const REAL* x, const REAL* theta, const REAL* act, const int64_t* lengths, size_t B, size_t L,
    size_t E, size_t S, size_t Ht)
{
    const size_t e_n = E, l_n = L, s_n = S, h_n = Ht;
    const size_t o_n = 2 * s_n * h_n + h_n + s_n;
    const size_t seq = l_n * e_n;
    if (B < (size_t)hm_num_threads()) {
        for (size_t b = 0; b < B; b++) {
            F(tm_backward_one)(F(gemm), grad_input + b * seq, dtheta + b * o_n,
                               work, grad_output + b * seq, x + b * seq,
                               theta + b * o_n, act + b * h_n * e_n,
                               (size_t)lengths[b], l_n, e_n, s_n, h_n);
        }
        return;
    }
    #pragma omp parallel for schedule(static) num_threads(tm_threads(n_slots))
    for (size_t b = 0; b < B; b++) {
        F(tm_backward_one)(F(gemm_serial), grad_input + b * seq,
                           dtheta + b * o_n, work + (size_t)tm_slot() * h_n * e_n,
                           grad_output + b * seq, x + b * seq,
                           theta + b * o_n, act + b * h_n * e_n,
                           (size_t)lengths[b], l_n, e_n, s_n, h_n);
    }
}

/* ------------------------------------------------------------------------ causal */

/* A (Ht, E) = relu(W1_t[:t+1]^T @ X[:t+1] + c1_t^T) for the weights th of position t. */
static void F(tm_causal_act)(REAL* A, const REAL* X, const REAL* th, size_t t, size_t e_n,
                             size_t s_n, size_t h_n)
{
    const REAL* c1 = th + s_n * h_n;
    F(gemm_serial)(1, 0, h_n, e_n, t + 1, th, h_n, X, e_n, 0, A, e_n);
    for (size_t h = 0; h < h_n; h++) {
        REAL* restrict a = A + h * e_n;
        const REAL bias = c1[h];
        for (size_t e = 0; e < e_n; e++) {
            const REAL v = a[e] + bias;
            a[e] = HM_RELU(v);
        }
    }
}

/* y, x (B, L, E); theta (B, L, P): per position the record of hypernetwork_theta_forward's
 * causal layout, P = hypernetwork_prefix_record(S, Ht) with S = L: W1 rows 0..t (of S
 * slots), c1, column t of W2 (Ht contiguous values), c2[t]; records past lengths[b] unused.
 * work (n_slots, Ht*E) scratch. Parallel over (sequence, position) pairs, dealt round-robin
 * because position t costs O(t). */
HM_SIMD
void KERNEL_NAME(token_mixing_causal_forward_f32, token_mixing_causal_forward_f64)(
    REAL* y, REAL* work, size_t n_slots, const REAL* x, const REAL* theta, const int64_t* lengths,
    size_t B, size_t L, size_t E, size_t S, size_t Ht)
{
    const size_t e_n = E, l_n = L, s_n = S, h_n = Ht;
    const size_t o_n = hypernetwork_prefix_record(s_n, h_n);
    const size_t items = B * l_n;
    #pragma omp parallel for schedule(static, 1) num_threads(tm_threads(n_slots))
    for (size_t item = 0; item < items; item++) {
        const size_t b = item / l_n, t = item % l_n;
        REAL* restrict yr = y + item * e_n;
        if (t >= (size_t)lengths[b]) {
            F(tm_zero)(yr, e_n);
            continue;
        }
        const REAL* X = x + b * l_n * e_n;
        const REAL* th = theta + item * o_n;
        const REAL* w2t = th + s_n * h_n + h_n;       /* column t of W2, then c2[t] */
        REAL* A = work + (size_t)tm_slot() * h_n * e_n;
        F(tm_causal_act)(A, X, th, t, e_n, s_n, h_n);
        /* yr = column t of W2 (as a 1 x Ht row) @ A */
        F(gemm_serial)(0, 0, 1, e_n, h_n, w2t, h_n, A, e_n, 0, yr, e_n);
        const REAL* restrict xr = X + t * e_n;
        const REAL bias = w2t[h_n];
        for (size_t e = 0; e < e_n; e++) {
            yr[e] = (xr[e] + yr[e]) + bias;
        }
    }
}

/* grad_input (B, L, E) is written in full; dtheta (B, L, record) in the layout of theta (see
 * F(token_mixing_causal_forward)): for each valid position t every value it uses, and W1 rows
 * past t up to the end of t's HM_PREFIX_TILE tile set to 0; records of padding positions are
 * not written. partial (B, token_mixing_causal_partial_size(L, E, chunk)) and work
 * (n_slots, Ht*E) are scratch; grad_output, x (B, L, E); theta from the forward. The
 * activations of each position are recomputed rather than cached (they would take B*L*Ht*E
 * values).
 *
 * Phase 1, parallel over (sequence, chunk of `chunk` positions): dtheta rows, and the
 * chunk's contributions to the input gradient summed in its own partial buffer.
 * Phase 2, parallel over rows: grad_input = sum of the chunks' partials in order + residual. */
HM_SIMD
void KERNEL_NAME(token_mixing_causal_backward_f32, token_mixing_causal_backward_f64)(
    REAL* grad_input, REAL* dtheta, REAL* partial, REAL* work, size_t n_slots,
    const REAL* grad_output, const REAL* x, const REAL* theta, const int64_t* lengths, size_t B,
    size_t L, size_t E, size_t S, size_t Ht, size_t chunk)
{
    const size_t e_n = E, l_n = L, s_n = S, h_n = Ht;
    const size_t o_n = hypernetwork_prefix_record(s_n, h_n);
    const size_t tc = chunk;
    const size_t chunks = (l_n + tc - 1) / tc;
    const size_t per_seq = token_mixing_causal_partial_size(L, E, chunk);
    const size_t items = B * chunks;
    #pragma omp parallel for schedule(static, 1) num_threads(tm_threads(n_slots))
    for (size_t item = 0; item < items; item++) {
        const size_t b = item / chunks, c = item % chunks;
        const size_t n = (size_t)lengths[b];
        const size_t t0 = c * tc, t1 = t0 + tc < l_n ? t0 + tc : l_n;
        REAL* P = partial + b * per_seq + e_n * tc * c * (c + 1) / 2;   /* (t1, E) */
        if (t0 < n) {
            F(tm_zero)(P, t1 * e_n);
        }
        const REAL* X = x + b * l_n * e_n;
        REAL* D = work + (size_t)tm_slot() * h_n * e_n;   /* (Ht, E) */
        for (size_t t = t0; t < t1; t++) {
            if (t >= n) {
                break;
            }
            REAL* dW1 = dtheta + (b * l_n + t) * o_n;
            /* W1 rows past t up to the end of t's tile: 0 (see hypernetwork.h) */
            const size_t tile_end = (t / HM_PREFIX_TILE + 1) * HM_PREFIX_TILE;
            const size_t zero_end = tile_end < s_n ? tile_end : s_n;
            F(tm_zero)(dW1 + (t + 1) * h_n, (zero_end - t - 1) * h_n);
            REAL* dc1 = dW1 + s_n * h_n;
            REAL* dw2t = dc1 + h_n;                   /* column t of W2, then c2[t] */
            const REAL* th = theta + (b * l_n + t) * o_n;
            const REAL* w2t = th + s_n * h_n + h_n;
            const REAL* g = grad_output + (b * l_n + t) * e_n;
            F(tm_causal_act)(D, X, th, t, e_n, s_n, h_n);
            dw2t[h_n] = F(tm_sum)(g, e_n);
            for (size_t h = 0; h < h_n; h++) {
                REAL* restrict d = D + h * e_n;
                const REAL w = w2t[h];
                dw2t[h] = F(vec_dot)(d, g, e_n);
                /* act -> gradient of the pre-activation, in place */
                for (size_t e = 0; e < e_n; e++) {
                    d[e] = HM_RELU_GRAD(g[e] * w, d[e]);
                }
                dc1[h] = F(tm_sum)(d, e_n);
            }
            F(gemm_serial)(0, 1, t + 1, h_n, e_n, X, e_n, D, e_n, 0, dW1, h_n);
            F(gemm_serial)(0, 0, t + 1, e_n, h_n, th, h_n, D, e_n, 1, P, e_n);
        }
    }
    const size_t rows = B * l_n;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t row = 0; row < rows; row++) {
        const size_t b = row / l_n, s = row % l_n;
        const size_t n = (size_t)lengths[b];
        REAL* restrict gi = grad_input + row * e_n;
        if (s >= n) {
            F(tm_zero)(gi, e_n);
            continue;
        }
        const REAL* restrict g = grad_output + row * e_n;
        const size_t c_end = (n + tc - 1) / tc;   /* chunks holding a valid position */
        size_t c = s / tc;
        const REAL* P = partial + b * per_seq + e_n * tc * c * (c + 1) / 2 + s * e_n;
        for (size_t e = 0; e < e_n; e++) {
            gi[e] = P[e];
        }
        for (c++; c < c_end; c++) {
            P = partial + b * per_seq + e_n * tc * c * (c + 1) / 2 + s * e_n;
            for (size_t e = 0; e < e_n; e++) {
                gi[e] += P[e];
            }
        }
        for (size_t e = 0; e < e_n; e++) {
            gi[e] += g[e];
        }
    }
}

#endif
