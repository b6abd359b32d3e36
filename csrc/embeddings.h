#ifndef HYPERMIXER_EMBEDDINGS_H
#define HYPERMIXER_EMBEDDINGS_H
#include "common.h"

#define HM_EMBEDDINGS_FORWARD(R, name)                                                        \
    void name(R* out, const int64_t* ids, const int64_t* lengths, const R* token,             \
              const R* position, size_t B, size_t L, size_t E)
HM_EMBEDDINGS_FORWARD(float, embeddings_forward_f32);
HM_EMBEDDINGS_FORWARD(double, embeddings_forward_f64);
#undef HM_EMBEDDINGS_FORWARD

#define HM_EMBEDDINGS_BACKWARD(R, name)                                                       \
    void name(R* dtoken, R* dposition, const R* grad, const int64_t* ids,                     \
              const int64_t* lengths, size_t B, size_t L, size_t E, size_t V, size_t S)
HM_EMBEDDINGS_BACKWARD(float, embeddings_backward_f32);
HM_EMBEDDINGS_BACKWARD(double, embeddings_backward_f64);
#undef HM_EMBEDDINGS_BACKWARD

#endif
