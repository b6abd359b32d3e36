#ifndef HYPERMIXER_REDUCE_H
#define HYPERMIXER_REDUCE_H
#include "common.h"

/* out (cols,) += sum over r = 0..rows-1 of a[r, :], a being (rows, cols) row-major: the bias
 * gradients. Blocks of columns are owned by one thread each and every column is summed in row
 * order, so the result does not depend on the thread count. */
#define HM_COLUMN_SUMS_ADD(R, name)                                                           \
    void name(R* out, const R* a, size_t rows, size_t cols)
HM_COLUMN_SUMS_ADD(float, column_sums_add_f32);
HM_COLUMN_SUMS_ADD(double, column_sums_add_f64);
/* the same work shared by the threads of the caller's parallel region */
HM_COLUMN_SUMS_ADD(float, column_sums_add_team_f32);
HM_COLUMN_SUMS_ADD(double, column_sums_add_team_f64);
#undef HM_COLUMN_SUMS_ADD

#endif
