#ifndef HYPERMIXER_ATTENTION_H
#define HYPERMIXER_ATTENTION_H
#include "common.h"

#define HM_DECLARE_ATTENTION(R, S)                                                          \
    void attention_forward_##S(R* out, R* xc, R* qkv, R* probs, R* kt, R* wcat, const R* x,   \
                               const R* wq, const R* wk, const R* wv, const int64_t* lengths,  \
                               size_t B, size_t L, size_t E);                                 \
    void attention_backward_##S(R* dx, R* dwq, R* dwk, R* dwv, R* dqkv, R* dscores, R* vt,    \
                                R* wcat, R* dwcat, const R* grad, const R* xc, const R* qkv,  \
                                const R* probs, const R* wq, const R* wk, const R* wv,        \
                                const int64_t* lengths, size_t B, size_t L, size_t E);
HM_DECLARE_ATTENTION(float, f32)
HM_DECLARE_ATTENTION(double, f64)
#undef HM_DECLARE_ATTENTION

#endif
