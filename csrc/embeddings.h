#ifndef HYPERMIXER_EMBEDDINGS_H
#define HYPERMIXER_EMBEDDINGS_H
#include "common.h"

#define HM_DECLARE_EMBEDDINGS(R, S)                                                        \
    void embeddings_forward_##S(R* out, const int64_t* ids, const int64_t* lengths,          \
                                const R* token, const R* position, size_t B, size_t L,       \
                                size_t E);                                                   \
    void embeddings_backward_##S(R* dtoken, R* dposition, const R* grad, const int64_t* ids, \
                                 const int64_t* lengths, size_t B, size_t L, size_t E,    \
                                 size_t V, size_t S);
HM_DECLARE_EMBEDDINGS(float, f32)
HM_DECLARE_EMBEDDINGS(double, f64)
#undef HM_DECLARE_EMBEDDINGS

#endif
