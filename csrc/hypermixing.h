#ifndef HYPERMIXER_HYPERMIXING_H
#define HYPERMIXER_HYPERMIXING_H
#include "common.h"

/* HyperMixing (SPEC section 8); shapes are in the comments of hypermixing.c.
 * d = features, k = token-mixing hidden width, h = heads, d_h = d/h, k_h = k/h. */

/* The kernels' exact GELU (value and slope) and erf, exposed for their accuracy tests. */
#define HM_HYPERMIXING_GELU(R, name) void name(R* value, R* slope, const R* x, size_t n)
HM_HYPERMIXING_GELU(float, hypermixing_gelu_f32);
HM_HYPERMIXING_GELU(double, hypermixing_gelu_f64);
#undef HM_HYPERMIXING_GELU

#define HM_HYPERMIXING_ERF(R, name) void name(R* out, const R* x, size_t n)
HM_HYPERMIXING_ERF(float, hypermixing_erf_f32);
HM_HYPERMIXING_ERF(double, hypermixing_erf_f64);
#undef HM_HYPERMIXING_ERF

/* Team forms (the *_team_* names below): the same work shared by the threads of the
 * caller's parallel region, for a whole-block kernel that runs its sublayers in one region.
 * The generators' and the causal scan's exist for the width-4 path only: call them where
 * hypermixing_team_ready says so. */
int hypermixing_team_ready_f32(size_t d, size_t k, size_t h);
int hypermixing_team_ready_f64(size_t d, size_t k, size_t h);

#define HM_HYPERMIXING_TOKEN_INFO_FORWARD(R, name)                                            \
    void name(R* z, const R* x, const R* pos, const int64_t* lengths, size_t B, size_t L,     \
              size_t d, R scale)
HM_HYPERMIXING_TOKEN_INFO_FORWARD(float, hypermixing_token_info_forward_f32);
HM_HYPERMIXING_TOKEN_INFO_FORWARD(double, hypermixing_token_info_forward_f64);
HM_HYPERMIXING_TOKEN_INFO_FORWARD(float, hypermixing_token_info_forward_team_f32);
HM_HYPERMIXING_TOKEN_INFO_FORWARD(double, hypermixing_token_info_forward_team_f64);
#undef HM_HYPERMIXING_TOKEN_INFO_FORWARD

#define HM_HYPERMIXING_TOKEN_INFO_BACKWARD(R, name)                                           \
    void name(R* grad_input, const R* dz, const int64_t* lengths, size_t B, size_t L,         \
              size_t d, R scale)
HM_HYPERMIXING_TOKEN_INFO_BACKWARD(float, hypermixing_token_info_backward_f32);
HM_HYPERMIXING_TOKEN_INFO_BACKWARD(double, hypermixing_token_info_backward_f64);
HM_HYPERMIXING_TOKEN_INFO_BACKWARD(float, hypermixing_token_info_backward_team_f32);
HM_HYPERMIXING_TOKEN_INFO_BACKWARD(double, hypermixing_token_info_backward_team_f64);
#undef HM_HYPERMIXING_TOKEN_INFO_BACKWARD

#define HM_HYPERMIXING_GENERATOR_FORWARD(R, name)                                             \
    void name(R* w, R* act, R* slope, const R* z, const R* A, const R* a, const R* C,         \
              const R* c, size_t rows, size_t d, size_t k, size_t h)
HM_HYPERMIXING_GENERATOR_FORWARD(float, hypermixing_generator_forward_f32);
HM_HYPERMIXING_GENERATOR_FORWARD(double, hypermixing_generator_forward_f64);
HM_HYPERMIXING_GENERATOR_FORWARD(float, hypermixing_generator_forward_team_f32);
HM_HYPERMIXING_GENERATOR_FORWARD(double, hypermixing_generator_forward_team_f64);
#undef HM_HYPERMIXING_GENERATOR_FORWARD

#define HM_HYPERMIXING_GENERATOR_BACKWARD(R, name)                                            \
    void name(R* dz, R* dA, R* da, R* dC, R* dc, R* dact, const R* dw, const R* z,            \
              const R* act, const R* slope, const R* A, const R* C, size_t rows, size_t d,    \
              size_t k, size_t h, int accumulate)
HM_HYPERMIXING_GENERATOR_BACKWARD(float, hypermixing_generator_backward_f32);
HM_HYPERMIXING_GENERATOR_BACKWARD(double, hypermixing_generator_backward_f64);
HM_HYPERMIXING_GENERATOR_BACKWARD(float, hypermixing_generator_backward_team_f32);
HM_HYPERMIXING_GENERATOR_BACKWARD(double, hypermixing_generator_backward_team_f64);
#undef HM_HYPERMIXING_GENERATOR_BACKWARD

#define HM_HYPERMIXING_FORWARD(R, name)                                                       \
    void name(R* y, R* P, R* s, R* m, R* Q, const R* x, const R* act1, const R* act2,         \
              const R* C1, const R* c1, const R* C2, const R* c2, const int64_t* lengths,     \
              size_t B, size_t L, size_t d, size_t k, size_t h, int mean)
HM_HYPERMIXING_FORWARD(float, hypermixing_forward_f32);
HM_HYPERMIXING_FORWARD(double, hypermixing_forward_f64);
#undef HM_HYPERMIXING_FORWARD

#define HM_HYPERMIXING_BACKWARD(R, name)                                                      \
    void name(R* grad_input, R* dact1, R* dact2, R* dC1, R* dc1, R* dC2, R* dc2, R* work,     \
              const R* grad_output, const R* x, const R* act1, const R* act2, const R* C1,    \
              const R* c1, const R* C2, const R* c2, const R* P, const R* s, const R* m,      \
              const R* Q, const int64_t* lengths, size_t B, size_t L, size_t d, size_t k,     \
              size_t h, int mean, int tied)
HM_HYPERMIXING_BACKWARD(float, hypermixing_backward_f32);
HM_HYPERMIXING_BACKWARD(double, hypermixing_backward_f64);
#undef HM_HYPERMIXING_BACKWARD

#define HM_HYPERMIXING_CAUSAL_FORWARD(R, name)                                                \
    void name(R* y, R* checkpoints, R* work, size_t n_slots, const R* x, const R* w1,         \
              const R* w2, const int64_t* lengths, size_t B, size_t L, size_t d, size_t k,    \
              size_t h, int mean, size_t chunk)
HM_HYPERMIXING_CAUSAL_FORWARD(float, hypermixing_causal_forward_f32);
HM_HYPERMIXING_CAUSAL_FORWARD(double, hypermixing_causal_forward_f64);
HM_HYPERMIXING_CAUSAL_FORWARD(float, hypermixing_causal_forward_team_f32);
HM_HYPERMIXING_CAUSAL_FORWARD(double, hypermixing_causal_forward_team_f64);
#undef HM_HYPERMIXING_CAUSAL_FORWARD

#define HM_HYPERMIXING_CAUSAL_BACKWARD(R, name)                                               \
    void name(R* grad_input, R* dw1, R* dw2, R* work, size_t n_slots, const R* grad_output,   \
              const R* x, const R* w1, const R* w2, const R* checkpoints,                     \
              const int64_t* lengths, size_t B, size_t L, size_t d, size_t k, size_t h,       \
              int mean, size_t chunk, int tied)
HM_HYPERMIXING_CAUSAL_BACKWARD(float, hypermixing_causal_backward_f32);
HM_HYPERMIXING_CAUSAL_BACKWARD(double, hypermixing_causal_backward_f64);
HM_HYPERMIXING_CAUSAL_BACKWARD(float, hypermixing_causal_backward_team_f32);
HM_HYPERMIXING_CAUSAL_BACKWARD(double, hypermixing_causal_backward_team_f64);
#undef HM_HYPERMIXING_CAUSAL_BACKWARD

#define HM_HYPERMIXING_STEP(R, name)                                                          \
    void name(R* y, R* state, const R* x, const R* w1, const R* w2, const int64_t* positions,  \
              size_t B, size_t d, size_t k, size_t h, int mean)
HM_HYPERMIXING_STEP(float, hypermixing_step_f32);
HM_HYPERMIXING_STEP(double, hypermixing_step_f64);
#undef HM_HYPERMIXING_STEP

/* Elements of one thread slot of the causal kernels' workspace, and the number of
 * checkpoints (k_h, d_h) one sequence and head keeps between forward and backward. */
size_t hypermixing_causal_work_size(size_t d, size_t k, size_t h, size_t chunk);
size_t hypermixing_causal_checkpoints(size_t L, size_t chunk);
/* Elements per sequence and head of the bidirectional backward's workspace. */
size_t hypermixing_mix_work_size(size_t d, size_t k, size_t h);

#endif
