#ifndef HYPERMIXER_TOKEN_MIXING_H
#define HYPERMIXER_TOKEN_MIXING_H
#include "common.h"

/* Token mixing with hypernetwork-generated weights (SPEC section 2), bidirectional and causal;
 * see token_mixing.c for the shapes. The hypernetwork itself runs separately
 * (hypernetwork.h): these kernels pool its input, consume theta and produce dtheta. */
#define HM_DECLARE_TOKEN_MIXING(R, S)                                                        \
    void token_mixing_pool_forward_##S(R* means, const R* x, const int64_t* lengths, int B,  \
                                       int L, int E);                                        \
    void token_mixing_pool_backward_##S(R* grad_input, const R* dmeans,                      \
                                        const int64_t* lengths, int B, int L, int E);        \
    void token_mixing_prefix_pool_forward_##S(R* means, const R* x, const int64_t* lengths,  \
                                              int B, int L, int E);                          \
    void token_mixing_prefix_pool_backward_##S(R* grad_input, const R* dmeans,               \
                                               const int64_t* lengths, int B, int L, int E); \
    void token_mixing_forward_##S(R* y, R* act, const R* x, const R* theta,                  \
                                  const int64_t* lengths, int B, int L, int E, int S_,       \
                                  int Ht);                                                   \
    void token_mixing_backward_##S(R* grad_input, R* dtheta, R* work, int n_slots,           \
                                   const R* grad_output, const R* x, const R* theta,         \
                                   const R* act, const int64_t* lengths, int B, int L,       \
                                   int E, int S_, int Ht);                                   \
    void token_mixing_causal_forward_##S(R* y, R* work, int n_slots, const R* x,             \
                                         const R* theta, const int64_t* lengths, int B,      \
                                         int L, int E, int S_, int Ht);                      \
    void token_mixing_causal_backward_##S(R* grad_input, R* dtheta, R* partial, R* work,     \
                                          int n_slots, const R* grad_output, const R* x,     \
                                          const R* theta, const int64_t* lengths, int B,     \
                                          int L, int E, int S_, int Ht, int chunk);
HM_DECLARE_TOKEN_MIXING(float, f32)
HM_DECLARE_TOKEN_MIXING(double, f64)
#undef HM_DECLARE_TOKEN_MIXING

/* Positions per partial-sum chunk of the causal backward, for sequences of L: about 16
 * chunks whatever L is (at least 4 positions each), so the partial buffers stay near 8x the
 * input size. Depends on L only, never on the thread count. */
size_t token_mixing_causal_chunk(size_t L);

/* Elements of the causal backward's partial-sum buffer for one sequence: chunk c of `chunk`
 * consecutive positions t keeps rows 0..min((c+1)*chunk, L)-1 of its (L, E) contribution. */
size_t token_mixing_causal_partial_size(int L, int E, int chunk);

#endif
