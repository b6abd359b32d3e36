#ifndef HYPERMIXER_HYPERMIXING_BLOCK_H
#define HYPERMIXER_HYPERMIXING_BLOCK_H
#include "common.h"

/* A whole causal HyperMixingBlock (SPEC section 8) in one call each way, as
 * transformer_block.h does for the TransformerBlock:
 *     y = x + HyperMixing(norm1(x));  out = y + FF(norm2(y))
 * The sublayer kernels (layernorm.c, hypermixing.c, channel_mixing.c) run in sequence from C,
 * in the order and with the arithmetic of the Python layers, so the results are the same bits;
 * workspaces are carved out of two caller-owned buffers (see hypermixing_block.c).
 *
 * B, L: batch and padded length; E embedding_dim; H feed-forward hidden; k token-mixing
 * hidden; h heads; chunk: tokens per checkpoint of the causal scan; slots: per-thread
 * workspaces of the scan (at least the thread count). tied: one generator (slots 6-9 of the
 * parameters unused); mean: normalize="mean"; layer_norm: the HyperMixing LayerNorm (slots
 * 10-11); info_scale: the token information's scale of x. */
typedef struct {
    size_t B, L, E, H, k, h, chunk, slots;
    int tied, mean, layer_norm;
    double info_scale;
} HypermixingBlockDims;

/* The parameters (or gradients) by slot, NULL where the block has none:
 *   0, 1 norm1 gamma, beta (E) | 2-5 the W1 generator: A (h, d_h, d_h), a (h, d_h) or NULL,
 *   C (h, k_h, d_h), c (h, k_h) or NULL | 6-9 the W2 generator, likewise (NULL when tied) |
 *   10, 11 HyperMixing layer_norm weight, bias (E) (NULL without) | 12, 13 norm2 gamma, beta |
 *   14-17 feed_forward w1 (E, H) b1 (H) w2 (H, E) b2 (E). */
#define HM_HYPERMIXING_BLOCK_PARAMS 18

/* Elements of the workspaces (block's dtype): cache kept from forward to backward, scratch
 * used within one call; index: int64 entries kept with the cache. */
size_t hypermixing_block_cache_size(const HypermixingBlockDims* d);
size_t hypermixing_block_scratch_size(const HypermixingBlockDims* d);
size_t hypermixing_block_index_size(const HypermixingBlockDims* d);

/* x, y, grad_input, grad_output: (B, L, E); lengths (B,) with 1 <= lengths[b] <= L; pos
 * (L, E): the token information's position rows. */
#define HM_HYPERMIXING_BLOCK_FORWARD(R, name)                                                 \
    void name(R* y, R* cache, int64_t* index, R* scratch, const R* x, const int64_t* lengths, \
              const R* pos, const R* const* params, const HypermixingBlockDims* d)
HM_HYPERMIXING_BLOCK_FORWARD(float, hypermixing_block_forward_f32);
HM_HYPERMIXING_BLOCK_FORWARD(double, hypermixing_block_forward_f64);
#undef HM_HYPERMIXING_BLOCK_FORWARD

/* Generation: y, x (n, E) one new token of each of n streams at positions (n,), pos (n, E)
 * their position rows, state (n, h, k_h, d_h) their running sums (updated in place); each row
 * is the forward's row for that token, bit for bit. Dims and workspaces: B = 1, L = n. */
#define HM_HYPERMIXING_BLOCK_STEP(R, name)                                                    \
    void name(R* y, R* state, R* cache, int64_t* index, R* scratch, const R* x,              \
              const int64_t* positions, const R* pos, const R* const* params,                 \
              const HypermixingBlockDims* d)
HM_HYPERMIXING_BLOCK_STEP(float, hypermixing_block_step_f32);
HM_HYPERMIXING_BLOCK_STEP(double, hypermixing_block_step_f64);
#undef HM_HYPERMIXING_BLOCK_STEP

/* grads: the slots of params that are not NULL, overwritten; cache and index as the forward
 * left them. */
#define HM_HYPERMIXING_BLOCK_BACKWARD(R, name)                                                \
    void name(R* grad_input, R* const* grads, R* cache, int64_t* index, R* scratch,           \
              const R* grad_output, const int64_t* lengths, const R* const* params,           \
              const HypermixingBlockDims* d)
HM_HYPERMIXING_BLOCK_BACKWARD(float, hypermixing_block_backward_f32);
HM_HYPERMIXING_BLOCK_BACKWARD(double, hypermixing_block_backward_f64);
#undef HM_HYPERMIXING_BLOCK_BACKWARD

#endif
