#ifndef HYPERMIXER_REDUCE_H
#define HYPERMIXER_REDUCE_H
#include "common.h"

/* out (cols,) += sum over r = 0..rows-1 of a[r, :], a being (rows, cols) row-major: the bias
 * gradients. Blocks of columns are owned by one thread each and every column is summed in row
 * order, so the result does not depend on the thread count. */
#define HM_DECLARE_REDUCE(R, S)                                                            \
    void column_sums_add_##S(R* out, const R* a, size_t rows, size_t cols);
HM_DECLARE_REDUCE(float, f32)
HM_DECLARE_REDUCE(double, f64)
#undef HM_DECLARE_REDUCE

#endif
