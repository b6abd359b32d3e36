/* HyperMixerBlock forward and backward in one call each (see block.h).
 *
 * The block is four sublayers in a row; this file only chains their kernels and carves their
 * workspaces out of the caller's buffers. The math lives in the sublayer files, so the fused
 * block computes exactly, bit for bit, what the sublayers compute one call at a time.
 *
 * Workspace layout. cache (kept from forward to backward), in this order:
 *   n1 (B,L,E)  xhat1 (B,L,E)  mean1 (B,L)  rstd1 (B,L)  means (B,R,E)  theta (B,R,P)
 *   pre (B,R,Hh)  hidden_h (B,R,Hh)  act (B,Ht,E) [bidirectional only]  xhat2 (B,L,E)
 *   mean2 (B,L)  rstd2 (B,L)  xp (B*L,E)  hidden_c (B*L,H)
 * with R = 1, P = 2*L*Ht+Ht+L (bidirectional: one mean per sequence) or R = L,
 * P = L*Ht+2*Ht+1 (causal: one prefix mean per position). index: offsets (B+1) | ones (B).
 * scratch, forward:  t (B,L,E)  n2 (B,L,E)  mixed (B*L,E)  wcol  work (slots,Ht*E)
 * scratch, backward: dn2 dt dn1 (B,L,E each)  dtheta  dmeans  dpre  gp (B*L,E)
 *                    dhidden (B*L,H)  partial (tiles,2E)  wcol  work  tm_partial */
#ifndef REAL
#include "block.h"
#include "channel_mixing.h"
#include "hypernetwork.h"
#include "layernorm.h"
#include "token_mixing.h"

static size_t block_rows(const BlockDims* d)
{
    return d->causal ? d->L : 1;
}

static size_t block_theta_record(const BlockDims* d)
{
    return d->causal ? hypernetwork_prefix_record(d->L, d->Ht)
                     : 2 * d->L * d->Ht + d->Ht + d->L;
}

typedef struct {
    void *n1, *xhat1, *mean1, *rstd1, *means, *theta, *pre, *hid_h, *act, *xhat2, *mean2,
        *rstd2, *xp, *hid_c;
} CacheParts;

typedef struct {
    void *t, *n2, *mixed, *wcol, *work;
} ForwardParts;

typedef struct {
    void *dn2, *dt, *dn1, *dtheta, *dmeans, *dpre, *gp, *dhid, *partial, *wcol, *work,
        *tm_partial;
} BackwardParts;

static size_t carve_cache(CacheParts* p, void* base, size_t item, const BlockDims* d)
{
    HmCarver c = {base, 0, item};
    const size_t BLE = d->B * d->L * d->E, BL = d->B * d->L, R = block_rows(d);
    p->n1 = hm_carve(&c, BLE);
    p->xhat1 = hm_carve(&c, BLE);
    p->mean1 = hm_carve(&c, BL);
    p->rstd1 = hm_carve(&c, BL);
    p->means = hm_carve(&c, d->B * R * d->E);
    p->theta = hm_carve(&c, d->B * R * block_theta_record(d));
    p->pre = hm_carve(&c, d->B * R * d->Hh);
    p->hid_h = hm_carve(&c, d->B * R * d->Hh);
    p->act = hm_carve(&c, d->causal ? 0 : d->B * d->Ht * d->E);
    p->xhat2 = hm_carve(&c, BLE);
    p->mean2 = hm_carve(&c, BL);
    p->rstd2 = hm_carve(&c, BL);
    p->xp = hm_carve(&c, BLE);
    p->hid_c = hm_carve(&c, BL * d->H);
    return c.used;
}

static size_t wcol_size(const BlockDims* d)
{
    return hypernetwork_theta_scratch_rows(d->L, d->Ht, d->causal) * d->Hh;
}

static size_t carve_forward(ForwardParts* p, void* base, size_t item, const BlockDims* d)
{
    HmCarver c = {base, 0, item};
    const size_t BLE = d->B * d->L * d->E;
    p->t = hm_carve(&c, BLE);
    p->n2 = hm_carve(&c, BLE);
    p->mixed = hm_carve(&c, BLE);
    p->wcol = hm_carve(&c, wcol_size(d));
    p->work = hm_carve(&c, d->slots * d->Ht * d->E);
    return c.used;
}

static size_t carve_backward(BackwardParts* p, void* base, size_t item, const BlockDims* d)
{
    HmCarver c = {base, 0, item};
    const size_t BLE = d->B * d->L * d->E, R = block_rows(d);
    p->dn2 = hm_carve(&c, BLE);
    p->dt = hm_carve(&c, BLE);
    p->dn1 = hm_carve(&c, BLE);
    p->dtheta = hm_carve(&c, d->B * R * block_theta_record(d));
    p->dmeans = hm_carve(&c, d->B * R * d->E);
    p->dpre = hm_carve(&c, d->B * R * d->Hh);
    p->gp = hm_carve(&c, BLE);
    p->dhid = hm_carve(&c, d->B * d->L * d->H);
    p->partial = hm_carve(&c, layernorm_partial_tiles(d->B * d->L) * 2 * d->E);
    p->wcol = hm_carve(&c, wcol_size(d));
    p->work = hm_carve(&c, d->slots * d->Ht * d->E);
    p->tm_partial = hm_carve(&c, d->causal ? d->B * token_mixing_causal_partial_size(
                                              d->L, d->E, token_mixing_causal_chunk(d->L)) : 0);
    return c.used;
}

size_t block_cache_size(const BlockDims* d)
{
    CacheParts p;
    return carve_cache(&p, NULL, 0, d);
}

size_t block_scratch_size(const BlockDims* d)
{
    ForwardParts f;
    BackwardParts b;
    const size_t nf = carve_forward(&f, NULL, 0, d), nb = carve_backward(&b, NULL, 0, d);
    return nf > nb ? nf : nb;
}

size_t block_index_size(const BlockDims* d)
{
    return 2 * d->B + 1;
}

#define HM_TEMPLATE_FILE "block.c"
#include "template.h"
#else

/* y, x (B, L, E); see block.h. */
void KERNEL_NAME(hypermixer_block_forward_f32, hypermixer_block_forward_f64)(
    REAL* y, REAL* cache, int64_t* index, REAL* scratch, const REAL* x, const int64_t* lengths,
    const REAL* const* params, size_t max_seq_len, const BlockDims* d)
{
    CacheParts c;
    ForwardParts s;
    carve_cache(&c, cache, sizeof(REAL), d);
    carve_forward(&s, scratch, sizeof(REAL), d);
    const size_t B = d->B, L = d->L, E = d->E, H = d->H, Hh = d->Hh, Ht = d->Ht;
    const size_t slots = d->slots, S = max_seq_len;
    int64_t* offsets = index;
    int64_t* ones = index + d->B + 1;
    offsets[0] = 0;
    for (size_t b = 0; b < d->B; b++) {
        offsets[b + 1] = offsets[b] + lengths[b];
        ones[b] = 1;
    }
    REAL* n1 = c.n1;

    F(layernorm_forward)(n1, c.xhat1, c.mean1, c.rstd1, x, lengths, params[0], params[1], B,
                         L, E);
    if (d->causal) {
        F(token_mixing_prefix_pool_forward)(c.means, n1, lengths, B, L, E);
        F(hypernetwork_theta_forward)(c.theta, c.pre, c.hid_h, s.wcol, c.means, lengths,
                                      params[2], params[3], params[4], params[5], B, L, E, Hh,
                                      S, Ht, L, 1);
        F(token_mixing_causal_forward)(s.t, s.work, slots, n1, c.theta, lengths, B, L, E, L,
                                       Ht);
    } else {
        F(token_mixing_pool_forward)(c.means, n1, lengths, B, L, E);
        F(hypernetwork_theta_forward)(c.theta, c.pre, c.hid_h, s.wcol, c.means, ones,
                                      params[2], params[3], params[4], params[5], B, 1, E, Hh,
                                      S, Ht, L, 0);
        F(token_mixing_forward)(s.t, c.act, n1, c.theta, lengths, B, L, E, L, Ht);
    }
    /* without padding the channel mixing's packed input is norm2's output itself: written
     * straight into its place in the cache, it needs no copy */
    REAL* n2 = offsets[d->B] == (int64_t)(d->B * d->L) ? (REAL*)c.xp : (REAL*)s.n2;
    F(layernorm_forward)(n2, c.xhat2, c.mean2, c.rstd2, s.t, lengths, params[6], params[7], B,
                         L, E);
    F(channel_mixing_forward)(y, c.xp, c.hid_c, s.mixed, n2, offsets, params[8], params[9],
                              params[10], params[11], B, L, E, H);
}

/* grad_input, grad_output (B, L, E); grads: HM_BLOCK_PARAMS outputs, overwritten; cache and
 * index as the forward left them; see block.h. */
void KERNEL_NAME(hypermixer_block_backward_f32, hypermixer_block_backward_f64)(
    REAL* grad_input, REAL* const* grads, REAL* cache, int64_t* index, REAL* scratch,
    const REAL* grad_output, const int64_t* lengths, const REAL* const* params, size_t max_seq_len,
    const BlockDims* d)
{
    CacheParts c;
    BackwardParts s;
    carve_cache(&c, cache, sizeof(REAL), d);
    carve_backward(&s, scratch, sizeof(REAL), d);
    const size_t B = d->B, L = d->L, E = d->E, H = d->H, Hh = d->Hh, Ht = d->Ht;
    const size_t slots = d->slots, S = max_seq_len;
    const int64_t* offsets = index;
    const int64_t* ones = index + d->B + 1;

    F(channel_mixing_backward)(s.dn2, grads[8], grads[9], grads[10], grads[11], s.gp, s.dhid,
                               grad_output, c.xp, c.hid_c, offsets, params[8], params[10], B,
                               L, E, H);
    F(layernorm_backward)(s.dt, grads[6], grads[7], s.partial, s.dn2, c.xhat2, c.rstd2,
                          lengths, params[6], B, L, E);
    if (d->causal) {
        F(token_mixing_causal_backward)(s.dn1, s.dtheta, s.tm_partial, s.work, slots, s.dt,
                                        c.n1, c.theta, lengths, B, L, E, L, Ht,
                                        token_mixing_causal_chunk(d->L));
        F(hypernetwork_theta_backward)(s.dmeans, grads[2], grads[3], grads[4], grads[5],
                                       s.dpre, s.wcol, s.dtheta, c.means, c.pre, c.hid_h,
                                       lengths, params[2], params[4], B, L, E, Hh, S, Ht, L,
                                       1);
        F(token_mixing_prefix_pool_backward)(s.dn1, s.dmeans, lengths, B, L, E);
    } else {
        F(token_mixing_backward)(s.dn1, s.dtheta, s.work, slots, s.dt, c.n1, c.theta, c.act,
                                 lengths, B, L, E, L, Ht);
        F(hypernetwork_theta_backward)(s.dmeans, grads[2], grads[3], grads[4], grads[5],
                                       s.dpre, s.wcol, s.dtheta, c.means, c.pre, c.hid_h, ones,
                                       params[2], params[4], B, 1, E, Hh, S, Ht, L, 0);
        F(token_mixing_pool_backward)(s.dn1, s.dmeans, lengths, B, L, E);
    }
    F(layernorm_backward)(grad_input, grads[0], grads[1], s.partial, s.dn1, c.xhat1, c.rstd1,
                          lengths, params[0], B, L, E);
}

#endif
