#ifndef HYPERMIXER_ATTENTION_H
#define HYPERMIXER_ATTENTION_H
#include "common.h"

#define HM_ATTENTION_FORWARD(R, name)                                                         \
    void name(R* out, R* xc, R* qkv, R* probs, R* kt, R* wcat, const R* x, const R* wq,       \
              const R* wk, const R* wv, const int64_t* lengths, size_t B, size_t L, size_t E)
HM_ATTENTION_FORWARD(float, attention_forward_f32);
HM_ATTENTION_FORWARD(double, attention_forward_f64);
#undef HM_ATTENTION_FORWARD

#define HM_ATTENTION_BACKWARD(R, name)                                                        \
    void name(R* dx, R* dwq, R* dwk, R* dwv, R* dqkv, R* dscores, R* vt, R* wcat, R* dwcat,   \
              const R* grad, const R* xc, const R* qkv, const R* probs, const R* wq,          \
              const R* wk, const R* wv, const int64_t* lengths, size_t B, size_t L, size_t E)
HM_ATTENTION_BACKWARD(float, attention_backward_f32);
HM_ATTENTION_BACKWARD(double, attention_backward_f64);
#undef HM_ATTENTION_BACKWARD

#define HM_ATTENTION_STEP(R, name)                                                            \
    void name(R* out, R* kcache, R* vcache, R* q, R* scores, const R* x, const R* wq,         \
              const R* wk, const R* wv, size_t n, size_t E)
HM_ATTENTION_STEP(float, attention_step_f32);
HM_ATTENTION_STEP(double, attention_step_f64);
#undef HM_ATTENTION_STEP

#endif
