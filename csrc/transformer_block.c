/* TransformerBlock forward and backward in one call each (see transformer_block.h).
 *
 * Like block.c, this file only chains the sublayer kernels and carves their workspaces, so
 * the fused block computes, bit for bit, what the sublayers compute one call at a time.
 *
 * cache (forward to backward): xc (B,L,E) qkv (B,L,3E) probs (B,L,L) | xhat1 (B,L,E)
 *   mean1 rstd1 (B,L) | xp (B*L,E) hidden (B*L,H) | xhat2 (B,L,E) mean2 rstd2 (B,L);
 *   index: offsets (B+1).
 * scratch, forward:  a (B,L,E) n1 (B,L,E) f (B,L,E) mixed (B*L,E) kt (B,E,L) wcat (E,3E)
 * scratch, backward: df dn1 da (B,L,E each) gp (B*L,E) dhidden (B*L,H) partial (tiles,2E)
 *                    dqkv (B,L,3E) dscores (B,L,L) vt (B,E,L) wcat dwcat (E,3E) */
#ifndef REAL
#include "transformer_block.h"
#include "attention.h"
#include "channel_mixing.h"
#include "layernorm.h"

typedef struct {
    void *xc, *qkv, *probs, *xhat1, *mean1, *rstd1, *xp, *hidden, *xhat2, *mean2, *rstd2;
} TbCache;

typedef struct {
    void *a, *n1, *f, *mixed, *kt, *wcat;
} TbForward;

typedef struct {
    void *df, *dn1, *da, *gp, *dhidden, *partial, *dqkv, *dscores, *vt, *wcat, *dwcat;
} TbBackward;

static size_t tb_carve_cache(TbCache* p, void* base, size_t item, const TransformerBlockDims* d)
{
    HmCarver c = {base, 0, item};
    const size_t BL = d->B * d->L, BLE = BL * d->E;
    p->xc = hm_carve(&c, BLE);
    p->qkv = hm_carve(&c, 3 * BLE);
    p->probs = hm_carve(&c, BL * d->L);
    p->xhat1 = hm_carve(&c, BLE);
    p->mean1 = hm_carve(&c, BL);
    p->rstd1 = hm_carve(&c, BL);
    p->xp = hm_carve(&c, BLE);
    p->hidden = hm_carve(&c, BL * d->H);
    p->xhat2 = hm_carve(&c, BLE);
    p->mean2 = hm_carve(&c, BL);
    p->rstd2 = hm_carve(&c, BL);
    return c.used;
}

static size_t tb_carve_forward(TbForward* p, void* base, size_t item,
                               const TransformerBlockDims* d)
{
    HmCarver c = {base, 0, item};
    const size_t BLE = d->B * d->L * d->E;
    p->a = hm_carve(&c, BLE);
    p->n1 = hm_carve(&c, BLE);
    p->f = hm_carve(&c, BLE);
    p->mixed = hm_carve(&c, BLE);
    p->kt = hm_carve(&c, BLE);
    p->wcat = hm_carve(&c, 3 * d->E * d->E);
    return c.used;
}

static size_t tb_carve_backward(TbBackward* p, void* base, size_t item,
                                const TransformerBlockDims* d)
{
    HmCarver c = {base, 0, item};
    const size_t BL = d->B * d->L, BLE = BL * d->E;
    p->df = hm_carve(&c, BLE);
    p->dn1 = hm_carve(&c, BLE);
    p->da = hm_carve(&c, BLE);
    p->gp = hm_carve(&c, BLE);
    p->dhidden = hm_carve(&c, BL * d->H);
    p->partial = hm_carve(&c, layernorm_partial_tiles(BL) * 2 * d->E);
    p->dqkv = hm_carve(&c, 3 * BLE);
    p->dscores = hm_carve(&c, BL * d->L);
    p->vt = hm_carve(&c, BLE);
    p->wcat = hm_carve(&c, 3 * d->E * d->E);
    p->dwcat = hm_carve(&c, 3 * d->E * d->E);
    return c.used;
}

size_t transformer_block_cache_size(const TransformerBlockDims* d)
{
    TbCache p;
    return tb_carve_cache(&p, NULL, 0, d);
}

size_t transformer_block_scratch_size(const TransformerBlockDims* d)
{
    TbForward f;
    TbBackward b;
    const size_t nf = tb_carve_forward(&f, NULL, 0, d), nb = tb_carve_backward(&b, NULL, 0, d);
    return nf > nb ? nf : nb;
}

size_t transformer_block_index_size(const TransformerBlockDims* d)
{
    return d->B + 1;
}

/* The step's scratch, d->L the cache's rows: q a n1 xhat1 f xp mixed xhat2 (E each) hidden
 * (H) scores (L) mean1 rstd1 mean2 rstd2 (1 each) */
typedef struct {
    void *q, *a, *n1, *xhat1, *f, *xp, *mixed, *xhat2, *hidden, *scores, *mean1, *rstd1,
        *mean2, *rstd2;
} TbStep;

static size_t tb_carve_step(TbStep* p, void* base, size_t item, const TransformerBlockDims* d)
{
    HmCarver c = {base, 0, item};
    p->q = hm_carve(&c, d->E);
    p->a = hm_carve(&c, d->E);
    p->n1 = hm_carve(&c, d->E);
    p->xhat1 = hm_carve(&c, d->E);
    p->f = hm_carve(&c, d->E);
    p->xp = hm_carve(&c, d->E);
    p->mixed = hm_carve(&c, d->E);
    p->xhat2 = hm_carve(&c, d->E);
    p->hidden = hm_carve(&c, d->H);
    p->scores = hm_carve(&c, d->L);
    p->mean1 = hm_carve(&c, 1);
    p->rstd1 = hm_carve(&c, 1);
    p->mean2 = hm_carve(&c, 1);
    p->rstd2 = hm_carve(&c, 1);
    return c.used;
}

size_t transformer_block_step_scratch_size(const TransformerBlockDims* d)
{
    TbStep p;
    return tb_carve_step(&p, NULL, 0, d);
}

#define HM_TEMPLATE_FILE "transformer_block.c"
#include "template.h"
#else

/* y, x (B, L, E); see transformer_block.h. */
void KERNEL_NAME(transformer_block_forward_f32, transformer_block_forward_f64)(
    REAL* y, REAL* cache, int64_t* index, REAL* scratch, const REAL* x, const int64_t* lengths,
    const REAL* const* params, const TransformerBlockDims* d)
{
    TbCache c;
    TbForward s;
    tb_carve_cache(&c, cache, sizeof(REAL), d);
    tb_carve_forward(&s, scratch, sizeof(REAL), d);
    const size_t B = d->B, L = d->L, E = d->E, H = d->H;
    int64_t* offsets = index;
    offsets[0] = 0;
    for (size_t b = 0; b < d->B; b++) {
        offsets[b + 1] = offsets[b] + lengths[b];
    }
    F(attention_forward)(s.a, c.xc, c.qkv, c.probs, s.kt, s.wcat, x, params[0], params[1],
                         params[2], lengths, d->B, d->L, d->E);
    /* without padding the feed-forward's packed input is norm1's output itself (no copy) */
    REAL* n1 = offsets[d->B] == (int64_t)(d->B * d->L) ? (REAL*)c.xp : (REAL*)s.n1;
    F(layernorm_forward)(n1, c.xhat1, c.mean1, c.rstd1, s.a, lengths, params[3], params[4], B,
                         L, E);
    F(channel_mixing_forward)(s.f, c.xp, c.hidden, s.mixed, n1, offsets, params[5], params[6],
                              params[7], params[8], B, L, E, H);
    F(layernorm_forward)(y, c.xhat2, c.mean2, c.rstd2, s.f, lengths, params[9], params[10], B,
                         L, E);
}

/* y, x (E,); kcache, vcache (L, E); see transformer_block.h. The Python step's kernels in its
 * order (attention step, norm1, feed-forward, norm2), each on one row. */
void KERNEL_NAME(transformer_block_step_f32, transformer_block_step_f64)(
    REAL* y, REAL* kcache, REAL* vcache, REAL* scratch, const REAL* x, size_t position,
    const REAL* const* params, const TransformerBlockDims* d)
{
    TbStep s;
    tb_carve_step(&s, scratch, sizeof(REAL), d);
    const size_t E = d->E, H = d->H;
    const int64_t one[1] = {1}, offsets[2] = {0, 1};
    F(attention_step)(s.a, kcache, vcache, s.q, s.scores, x, params[0], params[1], params[2],
                      position, E);
    F(layernorm_forward)(s.n1, s.xhat1, s.mean1, s.rstd1, s.a, one, params[3], params[4], 1, 1,
                         E);
    F(channel_mixing_forward)(s.f, s.xp, s.hidden, s.mixed, s.n1, offsets, params[5],
                              params[6], params[7], params[8], 1, 1, E, H);
    F(layernorm_forward)(y, s.xhat2, s.mean2, s.rstd2, s.f, one, params[9], params[10], 1, 1,
                         E);
}

/* grad_input, grad_output (B, L, E); grads: HM_TRANSFORMER_BLOCK_PARAMS outputs,
 * overwritten; cache and index as the forward left them. */
void KERNEL_NAME(transformer_block_backward_f32, transformer_block_backward_f64)(
    REAL* grad_input, REAL* const* grads, REAL* cache, int64_t* index, REAL* scratch,
    const REAL* grad_output, const int64_t* lengths, const REAL* const* params,
    const TransformerBlockDims* d)
{
    TbCache c;
    TbBackward s;
    tb_carve_cache(&c, cache, sizeof(REAL), d);
    tb_carve_backward(&s, scratch, sizeof(REAL), d);
    const size_t B = d->B, L = d->L, E = d->E, H = d->H;
    const int64_t* offsets = index;
    F(layernorm_backward)(s.df, grads[9], grads[10], s.partial, grad_output, c.xhat2, c.rstd2,
                          lengths, params[9], B, L, E);
    F(channel_mixing_backward)(s.dn1, grads[5], grads[6], grads[7], grads[8], s.gp, s.dhidden,
                               s.df, c.xp, c.hidden, offsets, params[5], params[7], B, L, E,
                               H);
    F(layernorm_backward)(s.da, grads[3], grads[4], s.partial, s.dn1, c.xhat1, c.rstd1,
                          lengths, params[3], B, L, E);
    F(attention_backward)(grad_input, grads[0], grads[1], grads[2], s.dqkv, s.dscores, s.vt,
                          s.wcat, s.dwcat, s.da, c.xc, c.qkv, c.probs, params[0], params[1],
                          params[2], lengths, d->B, d->L, d->E);
}

#endif
