/* HyperMixingBlock forward and backward in one call each (see hypermixing_block.h), for the
 * causal block of the hypermixing language model.
 *
 * Like transformer_block.c, this file only chains the sublayer kernels and carves their
 * workspaces; the residual additions are the Python block's, in its order ((FF(c) - c) + y
 * forward; (dc - g), then + g, then + gy backward), so the fused block computes, bit for bit,
 * what the sublayers compute one call at a time (tests/test_hypermixing_block_fused.py).
 *
 * One parallel region each way: where every sublayer has a team form (float32, heads of width
 * 4: hypermixing_team_ready), all threads enter the block once and share each sublayer's loops
 * (orphaned omp for, barriers between the steps), instead of entering 11 regions forward and
 * 21 backward. A region's entry and exit cost a little on a quiet machine and a lot more when
 * the VM is contended (a step's time grew by about 20 us per region in slow spells), which
 * weighed on the LM's short steps. Elsewhere the kernels run one by one.
 *
 * cache (forward to backward): xhat1 n1 z (B,L,E) mean1 rstd1 (B,L) | w1 (B,L,k) act1 slope1
 *   (B,L,E) | untied: w2 (B,L,k) act2 slope2 (B,L,E) | checkpoints (B,h,n_ck,k_h,d_h) |
 *   layer_norm: xhat_in (B,L,E) mean_in rstd_in (B,L) | xp (B*L,E) hidden (B*L,H) | xhat2
 *   (B,L,E) mean2 rstd2 (B,L); index: offsets (B+1).
 * scratch, forward:  m mixed yres c f ffmixed (B,L,E each) | work (slots, scan work)
 * scratch, backward: g0 dc gp gy gmix dvals dact dz (B,L,E each) dhidden (B*L,H) dw1 dw2
 *                    (B,L,k) partial (tiles,2E) | work (slots, scan work) */
#ifndef REAL
#include "hypermixing_block.h"
#include "channel_mixing.h"
#include "hypermixing.h"
#include "layernorm.h"

typedef struct {
    void *xhat1, *mean1, *rstd1, *n1, *z, *w1, *act1, *slope1, *w2, *act2, *slope2, *ck;
    void *xhat_in, *mean_in, *rstd_in, *xp, *hidden, *xhat2, *mean2, *rstd2;
} HbCache;

typedef struct {
    void *m, *mixed, *yres, *c, *f, *ffmixed, *work;
} HbForward;

typedef struct {
    void *g0, *dc, *gp, *gy, *gmix, *dvals, *dact, *dz, *dhidden, *dw1, *dw2, *partial, *work;
} HbBackward;

static size_t hb_checkpoint_elements(const HypermixingBlockDims* d)
{
    return d->B * d->h * hypermixing_causal_checkpoints(d->L, d->chunk) * (d->k / d->h) *
           (d->E / d->h);
}

static size_t hb_work_elements(const HypermixingBlockDims* d)
{
    return d->slots * hypermixing_causal_work_size(d->E, d->k, d->h, d->chunk);
}

static size_t hb_carve_cache(HbCache* p, void* base, size_t item, const HypermixingBlockDims* d)
{
    HmCarver c = {base, 0, item};
    const size_t BL = d->B * d->L, BLE = BL * d->E, BLK = BL * d->k;
    const size_t untied = d->tied ? 0 : 1, ln = d->layer_norm ? 1 : 0;
    p->xhat1 = hm_carve(&c, BLE);
    p->mean1 = hm_carve(&c, BL);
    p->rstd1 = hm_carve(&c, BL);
    p->n1 = hm_carve(&c, BLE);
    p->z = hm_carve(&c, BLE);
    p->w1 = hm_carve(&c, BLK);
    p->act1 = hm_carve(&c, BLE);
    p->slope1 = hm_carve(&c, BLE);
    p->w2 = hm_carve(&c, untied * BLK);
    p->act2 = hm_carve(&c, untied * BLE);
    p->slope2 = hm_carve(&c, untied * BLE);
    p->ck = hm_carve(&c, hb_checkpoint_elements(d));
    p->xhat_in = hm_carve(&c, ln * BLE);
    p->mean_in = hm_carve(&c, ln * BL);
    p->rstd_in = hm_carve(&c, ln * BL);
    p->xp = hm_carve(&c, BLE);
    p->hidden = hm_carve(&c, BL * d->H);
    p->xhat2 = hm_carve(&c, BLE);
    p->mean2 = hm_carve(&c, BL);
    p->rstd2 = hm_carve(&c, BL);
    return c.used;
}

static size_t hb_carve_forward(HbForward* p, void* base, size_t item,
                               const HypermixingBlockDims* d)
{
    HmCarver c = {base, 0, item};
    const size_t BLE = d->B * d->L * d->E;
    p->m = hm_carve(&c, BLE);
    p->mixed = hm_carve(&c, BLE);
    p->yres = hm_carve(&c, BLE);
    p->c = hm_carve(&c, BLE);
    p->f = hm_carve(&c, BLE);
    p->ffmixed = hm_carve(&c, BLE);
    p->work = hm_carve(&c, hb_work_elements(d));
    return c.used;
}

static size_t hb_carve_backward(HbBackward* p, void* base, size_t item,
                                const HypermixingBlockDims* d)
{
    HmCarver c = {base, 0, item};
    const size_t BL = d->B * d->L, BLE = BL * d->E;
    p->g0 = hm_carve(&c, BLE);
    p->dc = hm_carve(&c, BLE);
    p->gp = hm_carve(&c, BLE);
    p->gy = hm_carve(&c, BLE);
    p->gmix = hm_carve(&c, BLE);
    p->dvals = hm_carve(&c, BLE);
    p->dact = hm_carve(&c, BLE);
    p->dz = hm_carve(&c, BLE);
    p->dhidden = hm_carve(&c, BL * d->H);
    p->dw1 = hm_carve(&c, BL * d->k);
    p->dw2 = hm_carve(&c, BL * d->k);
    p->partial = hm_carve(&c, layernorm_partial_tiles(BL) * 2 * d->E);
    p->work = hm_carve(&c, hb_work_elements(d));
    return c.used;
}

size_t hypermixing_block_cache_size(const HypermixingBlockDims* d)
{
    HbCache p;
    return hb_carve_cache(&p, NULL, 0, d);
}

size_t hypermixing_block_scratch_size(const HypermixingBlockDims* d)
{
    HbForward f;
    HbBackward b;
    const size_t nf = hb_carve_forward(&f, NULL, 0, d), nb = hb_carve_backward(&b, NULL, 0, d);
    return nf > nb ? nf : nb;
}

size_t hypermixing_block_index_size(const HypermixingBlockDims* d)
{
    return d->B + 1;
}

#define HM_TEMPLATE_FILE "hypermixing_block.c"
#include "template.h"
#else

/* Elementwise passes in team form (an orphaned omp for: the threads of the caller's region
 * share the rows; all of them when called outside one). */

/* out (B, L, E) := a + b on the valid rows, 0 on padding rows (out may be a or b) */
static void F(hb_add_valid_team)(REAL* out, const REAL* a, const REAL* b,
                                 const int64_t* lengths, size_t B, size_t L, size_t E)
{
    #pragma omp for schedule(static)
    for (size_t r = 0; r < B * L; r++) {
        REAL* o = out + r * E;
        const int valid = (int64_t)(r % L) < lengths[r / L];
        for (size_t e = 0; e < E; e++) {
            o[e] = valid ? a[r * E + e] + b[r * E + e] : (REAL)0;
        }
    }
}

/* out (B, L, E) := a on the valid rows, 0 on padding rows */
static void F(hb_copy_valid_team)(REAL* out, const REAL* a, const int64_t* lengths, size_t B,
                                  size_t L, size_t E)
{
    #pragma omp for schedule(static)
    for (size_t r = 0; r < B * L; r++) {
        const int valid = (int64_t)(r % L) < lengths[r / L];
        for (size_t e = 0; e < E; e++) {
            out[r * E + e] = valid ? a[r * E + e] : (REAL)0;
        }
    }
}

/* out (n,) := (a - b) + c, or a - b when c is NULL, or a + b when `add` (c NULL); out may be a */
static void F(hb_combine_team)(REAL* out, const REAL* a, const REAL* b, const REAL* c,
                               size_t n, int add)
{
    #pragma omp for schedule(static)
    for (size_t i = 0; i < n; i++) {
        out[i] = c ? (a[i] - b[i]) + c[i] : (add ? a[i] + b[i] : a[i] - b[i]);
    }
}

/* Runs a sublayer kernel: its team form inside the caller's region when `team`, else the
 * kernel itself (which opens its own regions) */
#define HB_STEP(kernel, ...)                                                                  \
    do {                                                                                      \
        if (team) {                                                                           \
            F(kernel##_team)(__VA_ARGS__);                                                    \
        } else {                                                                              \
            F(kernel)(__VA_ARGS__);                                                           \
        }                                                                                     \
    } while (0)
/* The elementwise passes: inside the caller's region when `team`, else in a region of their
 * own when `big` */
#define HB_PASS(pass, ...)                                                                    \
    do {                                                                                      \
        if (team) {                                                                           \
            F(pass##_team)(__VA_ARGS__);                                                      \
        } else {                                                                              \
            HM_RUN_TEAM(big, F(pass##_team)(__VA_ARGS__));                                    \
        }                                                                                     \
    } while (0)

/* The forward's steps: y = x + HyperMixing(norm1(x)) into yres, norm2(y) into cn, then the
 * output (FF(cn) - cn) + yres. Called by every thread of one parallel region with `team` (the
 * width-4 path: hypermixing_team_ready), else once, the kernels opening their own regions.
 * With `state` (generation: hypermixing_block_step), the L rows are one new token each of L
 * streams, and the scan's token step on their running sums takes the causal scan's place. */
static void F(hb_forward_steps)(const HbCache* c, const HbForward* s, REAL* y, REAL* cn,
                                const REAL* x, const int64_t* lengths, const int64_t* offsets,
                                const REAL* pos, const REAL* const* p,
                                const HypermixingBlockDims* d, int team, REAL* state,
                                const int64_t* positions)
{
    const size_t B = d->B, L = d->L, E = d->E, H = d->H, K = d->k, h = d->h, BL = B * L;
    const int big = BL * E > HM_PARALLEL_MIN;
    REAL *n1 = c->n1, *w1 = c->w1, *w2 = d->tied ? c->w1 : (REAL*)c->w2;
    HB_STEP(layernorm_forward, n1, c->xhat1, c->mean1, c->rstd1, x, lengths, p[0], p[1], B, L,
            E);
    /* HyperMixing(n1): token information, the generators, the causal scan, its LayerNorm */
    HB_STEP(hypermixing_token_info_forward, c->z, n1, pos, lengths, B, L, E,
            (REAL)d->info_scale);
    HB_STEP(hypermixing_generator_forward, w1, c->act1, c->slope1, c->z, p[2], p[3], p[4], p[5],
            BL, E, K, h);
    if (!d->tied) {
        HB_STEP(hypermixing_generator_forward, w2, c->act2, c->slope2, c->z, p[6], p[7], p[8],
                p[9], BL, E, K, h);
    }
    if (state != NULL) {
        F(hypermixing_step)(s->m, state, n1, w1, w2, positions, BL, E, K, h, d->mean);
    } else {
        HB_STEP(hypermixing_causal_forward, s->m, c->ck, s->work, d->slots, n1, w1, w2, lengths,
                B, L, E, K, h, d->mean, d->chunk);
    }
    REAL* mixed = s->m;
    if (d->layer_norm) {
        mixed = s->mixed;
        HB_STEP(layernorm_forward, mixed, c->xhat_in, c->mean_in, c->rstd_in, s->m, lengths,
                p[10], p[11], B, L, E);
    }
    HB_PASS(hb_add_valid, s->yres, x, mixed, lengths, B, L, E);        /* y = x + mixed */
    HB_STEP(layernorm_forward, cn, c->xhat2, c->mean2, c->rstd2, s->yres, lengths, p[12], p[13],
            B, L, E);
    /* the feed-forward adds its own input cn back; this block's residual is y instead */
    HB_STEP(channel_mixing_forward, s->f, c->xp, c->hidden, s->ffmixed, cn, offsets, p[14],
            p[15], p[16], p[17], B, L, E, H);
    HB_PASS(hb_combine, y, s->f, cn, s->yres, BL * E, 0);
}

/* The backward's steps, `team` as hb_forward_steps. Padding rows of the output gradient
 * count as 0 (whatever they hold): g0 gets it with them zeroed when there are any. */
static void F(hb_backward_steps)(REAL* grad_input, REAL* const* grads, const HbCache* c,
                                 const HbBackward* s, const REAL* grad_output,
                                 const int64_t* lengths, const int64_t* offsets,
                                 const REAL* const* p, const HypermixingBlockDims* d, int team)
{
    const size_t B = d->B, L = d->L, E = d->E, H = d->H, K = d->k, h = d->h, BL = B * L;
    const int big = BL * E > HM_PARALLEL_MIN;
    const REAL* w2 = d->tied ? c->w1 : (REAL*)c->w2;
    const REAL* g = grad_output;
    if ((size_t)offsets[B] != BL) {
        HB_PASS(hb_copy_valid, s->g0, grad_output, lengths, B, L, E);
        g = s->g0;
    }
    HB_STEP(channel_mixing_backward, s->dc, grads[14], grads[15], grads[16], grads[17], s->gp,
            s->dhidden, g, c->xp, c->hidden, offsets, p[14], p[16], B, L, E, H);
    HB_PASS(hb_combine, s->dc, s->dc, g, NULL, BL * E, 0);           /* FF's own residual off */
    HB_STEP(layernorm_backward, s->gy, grads[12], grads[13], s->partial, s->dc, c->xhat2,
            c->rstd2, lengths, p[12], B, L, E);
    HB_PASS(hb_combine, s->gy, s->gy, g, NULL, BL * E, 1);           /* gy = dy + g */
    const REAL* gmix = s->gy;
    if (d->layer_norm) {
        HB_STEP(layernorm_backward, s->gmix, grads[10], grads[11], s->partial, s->gy,
                c->xhat_in, c->rstd_in, lengths, p[10], B, L, E);
        gmix = s->gmix;
    }
    /* tied: dw1 receives dw1 + dw2 */
    HB_STEP(hypermixing_causal_backward, s->dvals, s->dw1, s->dw2, s->work, d->slots, gmix,
            c->n1, c->w1, w2, c->ck, lengths, B, L, E, K, h, d->mean, d->chunk, d->tied);
    HB_STEP(hypermixing_generator_backward, s->dz, grads[2], grads[3], grads[4], grads[5],
            s->dact, s->dw1, c->z, c->act1, c->slope1, p[2], p[4], BL, E, K, h, 0);
    if (!d->tied) {
        HB_STEP(hypermixing_generator_backward, s->dz, grads[6], grads[7], grads[8], grads[9],
                s->dact, s->dw2, c->z, c->act2, c->slope2, p[6], p[8], BL, E, K, h, 1);
    }
    HB_STEP(hypermixing_token_info_backward, s->dvals, s->dz, lengths, B, L, E,
            (REAL)d->info_scale);
    HB_STEP(layernorm_backward, grad_input, grads[0], grads[1], s->partial, s->dvals, c->xhat1,
            c->rstd1, lengths, p[0], B, L, E);
    HB_PASS(hb_add_valid, grad_input, s->gy, grad_input, lengths, B, L, E);   /* gx = gy + gx */
}

/* The threads of the one region the mixing runs in (at most the scan's workspace slots), or 0
 * when the sublayers take paths without team forms */
static int F(hb_team_threads)(const HypermixingBlockDims* d)
{
    if (!F(hypermixing_team_ready)(d->E, d->k, d->h)) {
        return 0;
    }
    const int n = hm_num_threads();
    return (size_t)n < d->slots ? n : (int)d->slots;
}

/* y, x (B, L, E); see hypermixing_block.h. */
void KERNEL_NAME(hypermixing_block_forward_f32, hypermixing_block_forward_f64)(
    REAL* y, REAL* cache, int64_t* index, REAL* scratch, const REAL* x, const int64_t* lengths,
    const REAL* pos, const REAL* const* p, const HypermixingBlockDims* d)
{
    HbCache c;
    HbForward s;
    hb_carve_cache(&c, cache, sizeof(REAL), d);
    hb_carve_forward(&s, scratch, sizeof(REAL), d);
    const size_t B = d->B, BL = B * d->L;
    int64_t* offsets = index;
    offsets[0] = 0;
    for (size_t b = 0; b < B; b++) {
        offsets[b + 1] = offsets[b] + lengths[b];
    }
    /* without padding the feed-forward's packed input is norm2's output itself (no copy) */
    REAL* cn = (size_t)offsets[B] == BL ? (REAL*)c.xp : (REAL*)s.c;
    const int threads = F(hb_team_threads)(d);
    if (threads > 0) {
        #pragma omp parallel num_threads(threads)
        F(hb_forward_steps)(&c, &s, y, cn, x, lengths, offsets, pos, p, d, 1, NULL, NULL);
    } else {
        F(hb_forward_steps)(&c, &s, y, cn, x, lengths, offsets, pos, p, d, 0, NULL, NULL);
    }
}

/* y, x (n, E): one new token of each of n streams, at positions (n,); pos (n, E) their
 * position rows; state (n, h, k_h, d_h) their running sums, updated in place. d describes
 * B = 1, L = n (the workspaces are the forward's for that shape). */
void KERNEL_NAME(hypermixing_block_step_f32, hypermixing_block_step_f64)(
    REAL* y, REAL* state, REAL* cache, int64_t* index, REAL* scratch, const REAL* x,
    const int64_t* positions, const REAL* pos, const REAL* const* p,
    const HypermixingBlockDims* d)
{
    HbCache c;
    HbForward s;
    hb_carve_cache(&c, cache, sizeof(REAL), d);
    hb_carve_forward(&s, scratch, sizeof(REAL), d);
    const int64_t length = (int64_t)d->L;   /* the n tokens as one sequence of n rows */
    index[0] = 0;
    index[1] = length;
    /* no padding: the feed-forward's packed input is norm2's output itself, as the forward */
    F(hb_forward_steps)(&c, &s, y, (REAL*)c.xp, x, &length, index, pos, p, d, 0, state,
                        positions);
}

/* grad_input, grad_output (B, L, E); grads: see hypermixing_block.h; cache and index as the
 * forward left them. */
void KERNEL_NAME(hypermixing_block_backward_f32, hypermixing_block_backward_f64)(
    REAL* grad_input, REAL* const* grads, REAL* cache, int64_t* index, REAL* scratch,
    const REAL* grad_output, const int64_t* lengths, const REAL* const* p,
    const HypermixingBlockDims* d)
{
    HbCache c;
    HbBackward s;
    hb_carve_cache(&c, cache, sizeof(REAL), d);
    hb_carve_backward(&s, scratch, sizeof(REAL), d);
    const int threads = F(hb_team_threads)(d);
    if (threads > 0) {
        #pragma omp parallel num_threads(threads)
        F(hb_backward_steps)(grad_input, grads, &c, &s, grad_output, lengths, index, p, d, 1);
    } else {
        F(hb_backward_steps)(grad_input, grads, &c, &s, grad_output, lengths, index, p, d, 0);
    }
}

#undef HB_STEP
#undef HB_PASS

#endif
