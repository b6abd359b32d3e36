#ifndef HYPERMIXER_TRANSFORMER_BLOCK_H
#define HYPERMIXER_TRANSFORMER_BLOCK_H
#include "common.h"

/* A whole TransformerBlock (SPEC section 2) in one call each way, as block.h does for the
 * HyperMixerBlock:  y = norm2(feed_forward(norm1(self_attention(x)))).
 * The sublayer kernels (attention.c, layernorm.c, channel_mixing.c) run in sequence from C;
 * workspaces are carved out of two caller-owned buffers (see transformer_block.c).
 *
 * B, L: batch and padded length; E embedding_dim; H feed-forward hidden. */
typedef struct {
    size_t B, L, E, H;
} TransformerBlockDims;

/* The eleven parameters (or gradients), named_parameters() order: self_attention wq, wk, wv
 * (E, E each) | norm1 gamma, beta (E) | feed_forward w1 (E, H) b1 (H) w2 (H, E) b2 (E) |
 * norm2 gamma, beta (E). */
#define HM_TRANSFORMER_BLOCK_PARAMS 11

/* Elements of the workspaces (block's dtype): cache kept from forward to backward, scratch
 * used within one call; index: int64 entries kept with the cache. */
size_t transformer_block_cache_size(const TransformerBlockDims* d);
size_t transformer_block_scratch_size(const TransformerBlockDims* d);
size_t transformer_block_index_size(const TransformerBlockDims* d);

/* x, y, grad_input, grad_output: (B, L, E); lengths (B,) with 1 <= lengths[b] <= L. */
#define HM_TRANSFORMER_BLOCK_FORWARD(R, name)                                                 \
    void name(R* y, R* cache, int64_t* index, R* scratch, const R* x, const int64_t* lengths, \
              const R* const* params, const TransformerBlockDims* d)
HM_TRANSFORMER_BLOCK_FORWARD(float, transformer_block_forward_f32);
HM_TRANSFORMER_BLOCK_FORWARD(double, transformer_block_forward_f64);
#undef HM_TRANSFORMER_BLOCK_FORWARD

/* Generation with a key/value cache: y (E,) the output of one new token x (E,) at
 * `position`; kcache, vcache (L, E) hold the earlier tokens' keys and values in rows
 * 0..position-1 (position < L) and get this token's in row `position`. B = 1; scratch:
 * transformer_block_step_scratch_size(d) elements. The same bits as the sublayers' steps one
 * call at a time. */
size_t transformer_block_step_scratch_size(const TransformerBlockDims* d);
#define HM_TRANSFORMER_BLOCK_STEP(R, name)                                                    \
    void name(R* y, R* kcache, R* vcache, R* scratch, const R* x, size_t position,            \
              const R* const* params, const TransformerBlockDims* d)
HM_TRANSFORMER_BLOCK_STEP(float, transformer_block_step_f32);
HM_TRANSFORMER_BLOCK_STEP(double, transformer_block_step_f64);
#undef HM_TRANSFORMER_BLOCK_STEP

#define HM_TRANSFORMER_BLOCK_BACKWARD(R, name)                                                \
    void name(R* grad_input, R* const* grads, R* cache, int64_t* index, R* scratch,           \
              const R* grad_output, const int64_t* lengths, const R* const* params,           \
              const TransformerBlockDims* d)
HM_TRANSFORMER_BLOCK_BACKWARD(float, transformer_block_backward_f32);
HM_TRANSFORMER_BLOCK_BACKWARD(double, transformer_block_backward_f64);
#undef HM_TRANSFORMER_BLOCK_BACKWARD

#endif
