/* Heads of width 4 in float32: the causal scan and the generators' products (see the comment
 * above its inclusion in hypermixing.c). Included twice by hypermixing.c, like template.h does
 * for float/double: once for AVX-512 (W4_AVX512 1: a 16-lane value is one __m512) and once for
 * AVX2 (W4_AVX512 0: two __m256 halves). W4(name) suffixes the names of the pass, W4_TARGET is
 * its instruction set. Both passes do the same products and sums in the same order; the GELU
 * inside is compiled for each instruction set, so the two agree to rounding, not bit for bit
 * (a process uses one of them throughout). No include guard, on purpose. */

/* ---------------------------------------------------------------- 16-lane primitives */
#if W4_AVX512
typedef __m512 W4(v16);

W4_TARGET HM_INLINE static inline W4(v16) W4(zero)(void) { return _mm512_setzero_ps(); }
W4_TARGET HM_INLINE static inline W4(v16) W4(load)(const float* p) { return _mm512_loadu_ps(p); }
W4_TARGET HM_INLINE static inline void W4(store)(float* p, W4(v16) v) { _mm512_storeu_ps(p, v); }
W4_TARGET HM_INLINE static inline W4(v16) W4(set1)(float x) { return _mm512_set1_ps(x); }
W4_TARGET HM_INLINE static inline W4(v16) W4(add)(W4(v16) a, W4(v16) b)
{
    return _mm512_add_ps(a, b);
}
W4_TARGET HM_INLINE static inline W4(v16) W4(mul)(W4(v16) a, W4(v16) b)
{
    return _mm512_mul_ps(a, b);
}
/* a * b + c, fused */
W4_TARGET HM_INLINE static inline W4(v16) W4(fmadd)(W4(v16) a, W4(v16) b, W4(v16) c)
{
    return _mm512_fmadd_ps(a, b, c);
}
/* within every group of four lanes, lane i of the result = lane sel(i) of v (imm as
 * _MM_SHUFFLE) */
#define W4_SHUFFLE(v, imm) _mm512_permute_ps(v, imm)

/* spread(a)[4e + f] = a[e] */
W4_TARGET HM_INLINE static inline W4(v16) W4(spread)(const float* a)
{
    const __m512i index = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(index, _mm512_castps128_ps512(_mm_loadu_ps(a)));
}

/* repeat(b)[4e + f] = b[f] */
W4_TARGET HM_INLINE static inline W4(v16) W4(repeat)(const float* b)
{
    return _mm512_broadcast_f32x4(_mm_loadu_ps(b));
}

/* out[f] = sum over e of p[4e + f], as (p[f] + p[8 + f]) + (p[4 + f] + p[12 + f]) */
W4_TARGET HM_INLINE static inline void W4(store_sum_over_e)(float* out, W4(v16) p)
{
    p = _mm512_add_ps(p, _mm512_shuffle_f32x4(p, p, _MM_SHUFFLE(1, 0, 3, 2)));
    p = _mm512_add_ps(p, _mm512_shuffle_f32x4(p, p, _MM_SHUFFLE(2, 3, 0, 1)));
    _mm_storeu_ps(out, _mm512_castps512_ps128(p));
}

/* The sums over f of two products at once: sum_p[e] = (p[4e] + p[4e + 1]) + (p[4e + 2] +
 * p[4e + 3]), sum_q likewise, sharing the second shuffle (q's pair sums are taken in the
 * other order, q[4e + 1] + q[4e], the same number) */
W4_TARGET HM_INLINE static inline void W4(two_sums_over_f)(__m128* sum_p, __m128* sum_q,
                                                            W4(v16) p, W4(v16) q)
{
    p = _mm512_add_ps(p, _mm512_permute_ps(p, _MM_SHUFFLE(2, 3, 0, 1)));
    q = _mm512_add_ps(q, _mm512_permute_ps(q, _MM_SHUFFLE(2, 3, 0, 1)));
    /* lanes 4e, 4e + 2: p's pair sums; lanes 4e + 1, 4e + 3: q's */
    __m512 m = _mm512_mask_blend_ps((__mmask16)0xAAAA, p, q);
    m = _mm512_add_ps(m, _mm512_permute_ps(m, _MM_SHUFFLE(1, 0, 3, 2)));
    const __m512i lanes = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    m = _mm512_permutexvar_ps(lanes, m);
    *sum_p = _mm512_castps512_ps128(m);
    *sum_q = _mm512_extractf32x4_ps(m, 1);
}

#else   /* AVX2: lanes 0..7 in lo, 8..15 in hi */
typedef struct {
    __m256 lo, hi;
} W4(v16);

W4_TARGET HM_INLINE static inline W4(v16) W4(zero)(void)
{
    W4(v16) r = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    return r;
}
W4_TARGET HM_INLINE static inline W4(v16) W4(load)(const float* p)
{
    W4(v16) r = {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
    return r;
}
W4_TARGET HM_INLINE static inline void W4(store)(float* p, W4(v16) v)
{
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
}
W4_TARGET HM_INLINE static inline W4(v16) W4(set1)(float x)
{
    W4(v16) r = {_mm256_set1_ps(x), _mm256_set1_ps(x)};
    return r;
}
W4_TARGET HM_INLINE static inline W4(v16) W4(add)(W4(v16) a, W4(v16) b)
{
    W4(v16) r = {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
    return r;
}
W4_TARGET HM_INLINE static inline W4(v16) W4(mul)(W4(v16) a, W4(v16) b)
{
    W4(v16) r = {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
    return r;
}
W4_TARGET HM_INLINE static inline W4(v16) W4(fmadd)(W4(v16) a, W4(v16) b, W4(v16) c)
{
    W4(v16) r = {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
    return r;
}
#define W4_SHUFFLE(v, imm) W4(shuffle_pair)(_mm256_permute_ps((v).lo, imm), \
                                            _mm256_permute_ps((v).hi, imm))
W4_TARGET HM_INLINE static inline W4(v16) W4(shuffle_pair)(__m256 lo, __m256 hi)
{
    W4(v16) r = {lo, hi};
    return r;
}

W4_TARGET HM_INLINE static inline W4(v16) W4(spread)(const float* a)
{
    const __m256 a4 = _mm256_broadcast_ps((const __m128*)(const void*)a);
    W4(v16) r = {_mm256_permutevar8x32_ps(a4, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)),
                 _mm256_permutevar8x32_ps(a4, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3))};
    return r;
}

W4_TARGET HM_INLINE static inline W4(v16) W4(repeat)(const float* b)
{
    const __m256 b4 = _mm256_broadcast_ps((const __m128*)(const void*)b);
    W4(v16) r = {b4, b4};
    return r;
}

W4_TARGET HM_INLINE static inline void W4(store_sum_over_e)(float* out, W4(v16) p)
{
    const __m256 a = _mm256_add_ps(p.lo, p.hi);   /* p[f] + p[8 + f], p[4 + f] + p[12 + f] */
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)));
}

W4_TARGET HM_INLINE static inline void W4(two_sums_over_f)(__m128* sum_p, __m128* sum_q,
                                                            W4(v16) p, W4(v16) q)
{
    p = W4(add)(p, W4_SHUFFLE(p, _MM_SHUFFLE(2, 3, 0, 1)));
    q = W4(add)(q, W4_SHUFFLE(q, _MM_SHUFFLE(2, 3, 0, 1)));
    W4(v16) m = {_mm256_blend_ps(p.lo, q.lo, 0xAA), _mm256_blend_ps(p.hi, q.hi, 0xAA)};
    m = W4(add)(m, W4_SHUFFLE(m, _MM_SHUFFLE(1, 0, 3, 2)));
    /* lanes 0, 4, 1, 5 of each half to its front: (e, e + 1) of p, then of q */
    const __m256i lanes = _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0);
    const __m128 lo = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(m.lo, lanes));
    const __m128 hi = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(m.hi, lanes));
    *sum_p = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(1, 0, 1, 0));
    *sum_q = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 2, 3, 2));
}
#endif

/* ---------------------------------------------------------------- the scan */

/* W4_GELU(v, n): v (n,) := gelu(v). With AVX-512 an inline loop (gcc vectorises it, using
 * mask registers for the GELU's selects); gcc leaves the same loop scalar for AVX2 ("control
 * flow in loop"), so that pass calls gelu_block, whose AVX2 clone is vectorised. Either way
 * every value goes through the same vector code, however many are done at once. */
#if W4_AVX512
#define W4_GELU(v, n)                                                                         \
    do {                                                                                      \
        for (size_t i_ = 0; i_ < (n); i_++) {                                                 \
            (v)[i_] = gelu_f32((v)[i_]);                                                      \
        }                                                                                     \
    } while (0)
#else
#define W4_GELU(v, n) gelu_block_f32((v), NULL, NULL, 1, (n), (n))
#endif

/* out (4,) = w2t @ gelu(s * inv): the output of one token from its running sum s */
W4_TARGET HM_INLINE
static inline void W4(output)(float* out, W4(v16) s, float inv, const float* w2t)
{
    float g[16];
    W4(store)(g, W4(mul)(s, W4(set1)(inv)));
    W4_GELU(g, 16);
    W4(store_sum_over_e)(out, W4(mul)(W4(spread)(w2t), W4(load)(g)));
}

/* the running sum after one more token: s + w1t (x) v */
W4_TARGET HM_INLINE
static inline W4(v16) W4(add_token)(W4(v16) s, const float* v, const float* w1t)
{
    return W4(fmadd)(W4(spread)(w1t), W4(repeat)(v), s);
}

/* Streaming: one token of one unit, state (16,) updated in place, out (4,) its output */
W4_TARGET
static void W4(token)(float* out, float* state, const float* v, const float* w1t,
                      const float* w2t, float inv)
{
    const W4(v16) s = W4(add_token)(W4(load)(state), v, w1t);
    W4(store)(state, s);
    W4(output)(out, s, inv, w2t);
}

/* The forward scans of `count` (1 or HMX_W4_GROUP) neighbouring heads j.. of the sequence
 * whose rows start at row0, n valid tokens of L. y, x: rows of D; w1, w2: rows of K; ck: the
 * first unit's checkpoints (n_ck, 16), the running sum before tokens 0, chunk, 2 chunk, ...,
 * the next unit's n_ck * 16 further. The sums stay in registers from token to token; heads
 * side by side share their rows' cache lines and give the core independent chains to
 * interleave (1 x 2048, 32 heads, 1 thread: 0.70 -> 0.65 ms against one head at a time).
 * The GELUs of W4_BLOCK tokens go in one pass (see below). Each unit's arithmetic is the same
 * whatever count is, and the same as W4(token)'s. */
#define W4_BLOCK 8
W4_TARGET HM_INLINE
static inline void W4(forward_body)(float* y, float* ck, size_t n_ck, const float* x,
                                    const float* w1, const float* w2, size_t row0, size_t n,
                                    size_t L, size_t j, size_t D, size_t K, int mean,
                                    size_t chunk, int count)
{
    W4(v16) s[HMX_W4_GROUP];
    /* the scaled sums of a block of tokens, then their GELUs: independent values back to
     * back keep the vector units busy, where one state at a time left them waiting on each
     * GELU's chain (1 thread, 2 x 512 tokens, 32 heads: forward 0.46 -> 0.39 ms) */
    float act[W4_BLOCK * HMX_W4_GROUP * 16];
    for (int g = 0; g < count; g++) {
        s[g] = W4(zero)();
    }
    for (size_t t0 = 0, c = 0; t0 < L; t0 += chunk, c++) {
        for (int g = 0; g < count; g++) {
            W4(store)(ck + ((size_t)g * n_ck + c) * 16, s[g]);
        }
        const size_t t1 = t0 + chunk < n ? t0 + chunk : (t0 < n ? n : t0);
        for (size_t b0 = t0; b0 < t1; b0 += W4_BLOCK) {
            const size_t b1 = b0 + W4_BLOCK < t1 ? b0 + W4_BLOCK : t1;
            for (size_t t = b0; t < b1; t++) {
                const size_t r = row0 + t;
                const float inv = mean ? 1.0f / (float)(t + 1) : 1.0f;
                for (int g = 0; g < count; g++) {
                    const size_t col = 4 * (j + (size_t)g);
                    s[g] = W4(add_token)(s[g], x + r * D + col, w1 + r * K + col);
                    W4(store)(act + ((t - b0) * (size_t)count + (size_t)g) * 16,
                              W4(mul)(s[g], W4(set1)(inv)));
                }
            }
            W4_GELU(act, (b1 - b0) * (size_t)count * 16);
            for (size_t t = b0; t < b1; t++) {
                const size_t r = row0 + t;
                for (int g = 0; g < count; g++) {
                    const size_t col = 4 * (j + (size_t)g);
                    W4(store_sum_over_e)(y + r * D + col, W4(mul)(
                        W4(spread)(w2 + r * K + col),
                        W4(load)(act + ((t - b0) * (size_t)count + (size_t)g) * 16)));
                }
            }
        }
        for (size_t t = t1; t < t0 + chunk && t < L; t++) {   /* padding rows */
            for (int g = 0; g < count; g++) {
                _mm_storeu_ps(y + (row0 + t) * D + 4 * (j + (size_t)g), _mm_setzero_ps());
            }
        }
    }
}

W4_TARGET
static void W4(forward_group)(float* y, float* ck, size_t n_ck, const float* x,
                              const float* w1, const float* w2, size_t row0, size_t n, size_t L,
                              size_t j, size_t D, size_t K, int mean, size_t chunk, int count)
{
    if (count == HMX_W4_GROUP) {
        W4(forward_body)(y, ck, n_ck, x, w1, w2, row0, n, L, j, D, K, mean, chunk,
                         HMX_W4_GROUP);
    } else {
        W4(forward_body)(y, ck, n_ck, x, w1, w2, row0, n, L, j, D, K, mean, chunk, 1);
    }
}

/* The reverse scans of `count` neighbouring heads (arguments as the forward; gi, dw1, dw2 get
 * the units' rows of the valid tokens, overwritten; with `tied`, dw1 gets dw1 + dw2 and dw2 is
 * not written). Chunk by chunk from the last: rebuild the chunk's running sums s from the
 * checkpoints with the forward's additions (the same bits), store s u into sums (chunk, count,
 * 16) and then their GELUs there, their slopes in the slot's second half, then walk them
 * backwards carrying each unit's suffix sum r of ds in a register. Per token, with
 * u = 1 / count of tokens: ds = (w2t (x) g) * u * gelu'(s u); r += ds; dw2t = gelu(s u) @ g
 * (sum over f), dw1t = r @ v (sum over f), dv = w1t @ r (sum over e): what causal_back_token
 * computes, in the forward's layout. */
W4_TARGET HM_INLINE
static inline void W4(backward_body)(float* gi, float* dw1, float* dw2, float* sums,
                                     const float* go, const float* x, const float* w1,
                                     const float* w2, const float* ck, size_t n_ck, size_t row0,
                                     size_t n, size_t j, size_t D, size_t K, int mean,
                                     size_t chunk, int tied, int count)
{
    W4(v16) r[HMX_W4_GROUP];
    for (int g = 0; g < count; g++) {
        r[g] = W4(zero)();
    }
    for (size_t c = (n + chunk - 1) / chunk; c-- > 0;) {
        const size_t t0 = c * chunk, t1 = t0 + chunk < n ? t0 + chunk : n;
        for (int g = 0; g < count; g++) {
            const size_t col = 4 * (j + (size_t)g);
            W4(v16) s = W4(load)(ck + ((size_t)g * n_ck + c) * 16);
            for (size_t t = t0; t < t1; t++) {
                const float inv = mean ? 1.0f / (float)(t + 1) : 1.0f;
                s = W4(add_token)(s, x + (row0 + t) * D + col, w1 + (row0 + t) * K + col);
                W4(store)(sums + ((t - t0) * (size_t)count + (size_t)g) * 16,
                          W4(mul)(s, W4(set1)(inv)));
            }
        }
        /* the chunk's GELUs and slopes in one call: independent values back to back keep
         * the vector units busy, where one state at a time left them waiting on each GELU's
         * chain (1 thread, 2 x 512 tokens, 32 heads: backward 0.58 -> 0.46 ms) */
        float* slopes = sums + chunk * (size_t)count * 16;
        const size_t n_values = (t1 - t0) * (size_t)count * 16;
        gelu_block_f32(sums, slopes, NULL, 1, n_values, n_values);
        for (size_t t = t1; t-- > t0;) {
            const size_t row = row0 + t;
            const float inv = mean ? 1.0f / (float)(t + 1) : 1.0f;
            for (int g = 0; g < count; g++) {
                const size_t col = 4 * (j + (size_t)g);
                const size_t at = ((t - t0) * (size_t)count + (size_t)g) * 16;
                const W4(v16) gr = W4(repeat)(go + row * D + col);
                const W4(v16) p2 = W4(mul)(W4(load)(sums + at), gr);
                const W4(v16) ds = W4(mul)(
                    W4(mul)(W4(mul)(W4(spread)(w2 + row * K + col), W4(set1)(inv)), gr),
                    W4(load)(slopes + at));
                r[g] = W4(add)(r[g], ds);
                __m128 dw1t, dw2t;
                W4(two_sums_over_f)(&dw1t, &dw2t,
                                    W4(mul)(r[g], W4(repeat)(x + row * D + col)), p2);
                if (tied) {
                    _mm_storeu_ps(dw1 + row * K + col, _mm_add_ps(dw1t, dw2t));
                } else {
                    _mm_storeu_ps(dw1 + row * K + col, dw1t);
                    _mm_storeu_ps(dw2 + row * K + col, dw2t);
                }
                W4(store_sum_over_e)(gi + row * D + col,
                                     W4(mul)(W4(spread)(w1 + row * K + col), r[g]));
            }
        }
    }
}

W4_TARGET
static void W4(backward_group)(float* gi, float* dw1, float* dw2, float* sums,
                               const float* go, const float* x, const float* w1,
                               const float* w2, const float* ck, size_t n_ck, size_t row0,
                               size_t n, size_t j, size_t D, size_t K, int mean, size_t chunk,
                               int tied, int count)
{
    if (count == HMX_W4_GROUP) {
        W4(backward_body)(gi, dw1, dw2, sums, go, x, w1, w2, ck, n_ck, row0, n, j, D, K, mean,
                          chunk, tied, HMX_W4_GROUP);
    } else {
        W4(backward_body)(gi, dw1, dw2, sums, go, x, w1, w2, ck, n_ck, row0, n, j, D, K, mean,
                          chunk, tied, 1);
    }
}

/* ---------------------------------------------------------------- the generators */

/* out (m, width) of stride ldo := (or += when accumulate) the block-diagonal product of in
 * (m, width) of stride ldi with cols (4, width) (hmx_w4_columns); width a multiple of 16 */
W4_TARGET
static void W4(rows_product)(float* out, const float* in, const float* cols, size_t m,
                             size_t width, size_t ldi, size_t ldo, int accumulate)
{
    for (size_t r = 0; r < m; r++) {
        const float* xr = in + r * ldi;
        float* yr = out + r * ldo;
        for (size_t o = 0; o < width; o += 16) {
            const W4(v16) v = W4(load)(xr + o);
            W4(v16) acc = W4(mul)(W4_SHUFFLE(v, 0x00), W4(load)(cols + o));
            acc = W4(fmadd)(W4_SHUFFLE(v, 0x55), W4(load)(cols + width + o), acc);
            acc = W4(fmadd)(W4_SHUFFLE(v, 0xAA), W4(load)(cols + 2 * width + o), acc);
            acc = W4(fmadd)(W4_SHUFFLE(v, 0xFF), W4(load)(cols + 3 * width + o), acc);
            if (accumulate) {
                acc = W4(add)(W4(load)(yr + o), acc);
            }
            W4(store)(yr + o, acc);
        }
    }
}

/* The weight-gradient sums of heads 4c..4c+3: out[j][e][o] = sum over rows r < R in turn of
 * a[r][4j + e] * b[r][4j + o], out (h, 4, 4) */
W4_TARGET
static void W4(outer_sum)(float* out, const float* a, const float* b, size_t R, size_t c,
                          size_t lda, size_t ldb)
{
    W4(v16) acc0 = W4(zero)(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (size_t r = 0; r < R; r++) {
        const W4(v16) va = W4(load)(a + r * lda + 16 * c);
        const W4(v16) vb = W4(load)(b + r * ldb + 16 * c);
        acc0 = W4(fmadd)(W4_SHUFFLE(va, 0x00), vb, acc0);
        acc1 = W4(fmadd)(W4_SHUFFLE(va, 0x55), vb, acc1);
        acc2 = W4(fmadd)(W4_SHUFFLE(va, 0xAA), vb, acc2);
        acc3 = W4(fmadd)(W4_SHUFFLE(va, 0xFF), vb, acc3);
    }
    float sums[4][16];
    W4(store)(sums[0], acc0);
    W4(store)(sums[1], acc1);
    W4(store)(sums[2], acc2);
    W4(store)(sums[3], acc3);
    for (size_t j = 0; j < 4; j++) {
        for (size_t e = 0; e < 4; e++) {
            for (size_t o = 0; o < 4; o++) {
                out[((4 * c + j) * 4 + e) * 4 + o] = sums[e][4 * j + o];
            }
        }
    }
}

#undef W4_SHUFFLE
#undef W4_GELU
#undef W4_BLOCK
