#ifndef HYPERMIXER_HYPERMIXING_H
#define HYPERMIXER_HYPERMIXING_H
#include "common.h"

/* HyperMixing (SPEC section 8); shapes are in the comments of hypermixing.c.
 * d = features, k = token-mixing hidden width, h = heads, d_h = d/h, k_h = k/h. */
#define HM_DECLARE_HYPERMIXING(R, S)                                                          \
    void hypermixing_gelu_##S(R* value, R* slope, const R* x, size_t n);                     \
    void hypermixing_erf_##S(R* out, const R* x, size_t n);                                  \
    void hypermixing_token_info_forward_##S(R* z, const R* x, const R* pos,                  \
                                            const int64_t* lengths, int B, int L, int d,     \
                                            R scale);                                        \
    void hypermixing_token_info_backward_##S(R* grad_input, const R* dz,                     \
                                             const int64_t* lengths, int B, int L, int d,    \
                                             R scale);                                       \
    void hypermixing_generator_forward_##S(R* w, R* act, R* slope, const R* z, const R* A,   \
                                           const R* a, const R* C, const R* c, int rows,     \
                                           int d, int k, int h);                             \
    void hypermixing_generator_backward_##S(R* dz, R* dA, R* da, R* dC, R* dc, R* dact,      \
                                            const R* dw, const R* z, const R* act,           \
                                            const R* slope, const R* A, const R* C, int rows,\
                                            int d, int k, int h, int accumulate);            \
    void hypermixing_forward_##S(R* y, R* P, R* s, R* m, R* Q, const R* x, const R* act1,    \
                                 const R* act2, const R* C1, const R* c1, const R* C2,       \
                                 const R* c2, const int64_t* lengths, int B, int L, int d,   \
                                 int k, int h, int mean);                                    \
    void hypermixing_backward_##S(R* grad_input, R* dact1, R* dact2, R* dC1, R* dc1,         \
                                  R* dC2, R* dc2, R* work, const R* grad_output, const R* x, \
                                  const R* act1, const R* act2, const R* C1, const R* c1,    \
                                  const R* C2, const R* c2, const R* P, const R* s,          \
                                  const R* m, const R* Q, const int64_t* lengths, int B,     \
                                  int L, int d, int k, int h, int mean, int tied);           \
    void hypermixing_causal_forward_##S(R* y, R* checkpoints, R* work, int n_slots,          \
                                        const R* x, const R* w1, const R* w2,                \
                                        const int64_t* lengths, int B, int L, int d, int k,  \
                                        int h, int mean, int chunk);                         \
    void hypermixing_causal_backward_##S(R* grad_input, R* dw1, R* dw2, R* work,             \
                                         int n_slots, const R* grad_output, const R* x,      \
                                         const R* w1, const R* w2, const R* checkpoints,     \
                                         const int64_t* lengths, int B, int L, int d, int k, \
                                         int h, int mean, int chunk);                        \
    void hypermixing_step_##S(R* y, R* state, const R* x, const R* w1, const R* w2,          \
                              const int64_t* positions, int B, int d, int k, int h,          \
                              int mean);
HM_DECLARE_HYPERMIXING(float, f32)
HM_DECLARE_HYPERMIXING(double, f64)
#undef HM_DECLARE_HYPERMIXING

/* Elements of one thread slot of the causal kernels' workspace, and the number of
 * checkpoints (k_h, d_h) one sequence and head keeps between forward and backward. */
size_t hypermixing_causal_work_size(int d, int k, int h, int chunk);
/* Elements per sequence and head of the bidirectional backward's workspace. */
size_t hypermixing_mix_work_size(int d, int k, int h);
int hypermixing_causal_checkpoints(int L, int chunk);

#endif
