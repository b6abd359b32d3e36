#ifndef HYPERMIXER_BLOCK_H
#define HYPERMIXER_BLOCK_H
#include "common.h"

/* A whole HyperMixerBlock (SPEC section 2) in one call each way:
 *   y = channel_mixing(norm2(token_mixing(norm1(x))))
 * The sublayer kernels (layernorm.c, token_mixing.c, hypernetwork.c, channel_mixing.c) run
 * in sequence from C: one entry from Python, one GIL release, one set of argument checks
 * (done by the caller), and workspaces carved out of two caller-owned buffers.
 *
 * Sizes of one call. B, L: batch and padded length (L <= max_seq_len); E embedding_dim;
 * H channel-mixing hidden; Hh hypernetwork hidden; Ht token-mixing hidden; causal 0/1;
 * slots: per-thread scratch rows (>= the thread count the kernels will use). */
typedef struct {
    size_t B, L, E, H, Hh, Ht, slots;
    int causal;
} BlockDims;

/* The twelve parameters (or their gradients), named_parameters() order:
 * norm1.gamma (E) norm1.beta (E) | hypernetwork w1 (E, Hh) b1 (Hh) w2 (Hh, O) b2 (O) |
 * norm2.gamma norm2.beta | channel_mixing w1 (E, H) b1 (H) w2 (H, E) b2 (E), with
 * O = 2 * max_seq_len * Ht + Ht + max_seq_len. */
#define HM_BLOCK_PARAMS 12

/* Elements of the two workspaces, in elements of the block's dtype:
 *   cache: kept from a forward until its backward (layout fixed by the dims);
 *   scratch: used within one call (forward or backward) only.
 * Plus `index` int64 entries (kept with the cache). */
size_t block_cache_size(const BlockDims* d);
size_t block_scratch_size(const BlockDims* d);
size_t block_index_size(const BlockDims* d);

/* x, y: (B, L, E); lengths (B,) with 1 <= lengths[b] <= L; max_seq_len is S of the
 * hypernetwork's output layout. params: HM_BLOCK_PARAMS pointers (above). */
#define HM_HYPERMIXER_BLOCK_FORWARD(R, name)                                                  \
    void name(R* y, R* cache, int64_t* index, R* scratch, const R* x, const int64_t* lengths, \
              const R* const* params, size_t max_seq_len, const BlockDims* d)
HM_HYPERMIXER_BLOCK_FORWARD(float, hypermixer_block_forward_f32);
HM_HYPERMIXER_BLOCK_FORWARD(double, hypermixer_block_forward_f64);
#undef HM_HYPERMIXER_BLOCK_FORWARD

#define HM_HYPERMIXER_BLOCK_BACKWARD(R, name)                                                 \
    void name(R* grad_input, R* const* grads, R* cache, int64_t* index, R* scratch,           \
              const R* grad_output, const int64_t* lengths, const R* const* params,           \
              size_t max_seq_len, const BlockDims* d)
HM_HYPERMIXER_BLOCK_BACKWARD(float, hypermixer_block_backward_f32);
HM_HYPERMIXER_BLOCK_BACKWARD(double, hypermixer_block_backward_f64);
#undef HM_HYPERMIXER_BLOCK_BACKWARD

#endif
