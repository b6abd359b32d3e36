#ifndef HYPERMIXER_TOKEN_MIXING_H
#define HYPERMIXER_TOKEN_MIXING_H
#include "common.h"

/* Token mixing with hypernetwork-generated weights (SPEC section 2), bidirectional and causal;
 * see token_mixing.c for the shapes. The hypernetwork itself runs separately
 * (hypernetwork.h): these kernels pool its input, consume theta and produce dtheta. */
#define HM_TOKEN_MIXING_POOL_FORWARD(R, name)                                                 \
    void name(R* means, const R* x, const int64_t* lengths, size_t B, size_t L, size_t E)
HM_TOKEN_MIXING_POOL_FORWARD(float, token_mixing_pool_forward_f32);
HM_TOKEN_MIXING_POOL_FORWARD(double, token_mixing_pool_forward_f64);
#undef HM_TOKEN_MIXING_POOL_FORWARD

#define HM_TOKEN_MIXING_POOL_BACKWARD(R, name)                                                \
    void name(R* grad_input, const R* dmeans, const int64_t* lengths, size_t B, size_t L,     \
              size_t E)
HM_TOKEN_MIXING_POOL_BACKWARD(float, token_mixing_pool_backward_f32);
HM_TOKEN_MIXING_POOL_BACKWARD(double, token_mixing_pool_backward_f64);
#undef HM_TOKEN_MIXING_POOL_BACKWARD

#define HM_TOKEN_MIXING_PREFIX_POOL_FORWARD(R, name)                                          \
    void name(R* means, const R* x, const int64_t* lengths, size_t B, size_t L, size_t E)
HM_TOKEN_MIXING_PREFIX_POOL_FORWARD(float, token_mixing_prefix_pool_forward_f32);
HM_TOKEN_MIXING_PREFIX_POOL_FORWARD(double, token_mixing_prefix_pool_forward_f64);
#undef HM_TOKEN_MIXING_PREFIX_POOL_FORWARD

#define HM_TOKEN_MIXING_PREFIX_POOL_BACKWARD(R, name)                                         \
    void name(R* grad_input, const R* dmeans, const int64_t* lengths, size_t B, size_t L,     \
              size_t E)
HM_TOKEN_MIXING_PREFIX_POOL_BACKWARD(float, token_mixing_prefix_pool_backward_f32);
HM_TOKEN_MIXING_PREFIX_POOL_BACKWARD(double, token_mixing_prefix_pool_backward_f64);
#undef HM_TOKEN_MIXING_PREFIX_POOL_BACKWARD

#define HM_TOKEN_MIXING_FORWARD(R, name)                                                      \
    void name(R* y, R* act, const R* x, const R* theta, const int64_t* lengths, size_t B,     \
              size_t L, size_t E, size_t S, size_t Ht)
HM_TOKEN_MIXING_FORWARD(float, token_mixing_forward_f32);
HM_TOKEN_MIXING_FORWARD(double, token_mixing_forward_f64);
#undef HM_TOKEN_MIXING_FORWARD

#define HM_TOKEN_MIXING_BACKWARD(R, name)                                                     \
    void name(R* grad_input, R* dtheta, R* work, size_t n_slots, const R* grad_output,        \
              const R* x, const R* theta, const R* act, const int64_t* lengths, size_t B,     \
              size_t L, size_t E, size_t S, size_t Ht)
HM_TOKEN_MIXING_BACKWARD(float, token_mixing_backward_f32);
HM_TOKEN_MIXING_BACKWARD(double, token_mixing_backward_f64);
#undef HM_TOKEN_MIXING_BACKWARD

#define HM_TOKEN_MIXING_CAUSAL_FORWARD(R, name)                                               \
    void name(R* y, R* work, size_t n_slots, const R* x, const R* theta,                      \
              const int64_t* lengths, size_t B, size_t L, size_t E, size_t S, size_t Ht)
HM_TOKEN_MIXING_CAUSAL_FORWARD(float, token_mixing_causal_forward_f32);
HM_TOKEN_MIXING_CAUSAL_FORWARD(double, token_mixing_causal_forward_f64);
#undef HM_TOKEN_MIXING_CAUSAL_FORWARD

#define HM_TOKEN_MIXING_CAUSAL_BACKWARD(R, name)                                              \
    void name(R* grad_input, R* dtheta, R* partial, R* work, size_t n_slots,                  \
              const R* grad_output, const R* x, const R* theta, const int64_t* lengths,       \
              size_t B, size_t L, size_t E, size_t S, size_t Ht, size_t chunk)
HM_TOKEN_MIXING_CAUSAL_BACKWARD(float, token_mixing_causal_backward_f32);
HM_TOKEN_MIXING_CAUSAL_BACKWARD(double, token_mixing_causal_backward_f64);
#undef HM_TOKEN_MIXING_CAUSAL_BACKWARD

/* Positions per partial-sum chunk of the causal backward, for sequences of L: about 16
 * chunks whatever L is (at least 4 positions each), so the partial buffers stay near 8x the
 * input size. Depends on L only, never on the thread count. */
size_t token_mixing_causal_chunk(size_t L);

/* Elements of the causal backward's partial-sum buffer for one sequence: chunk c of `chunk`
 * consecutive positions t keeps rows 0..min((c+1)*chunk, L)-1 of its (L, E) contribution. */
size_t token_mixing_causal_partial_size(size_t L, size_t E, size_t chunk);

#endif
