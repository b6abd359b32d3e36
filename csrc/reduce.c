/* Reductions over rows shared by the layers (see reduce.h). */
#ifndef REAL
#include "reduce.h"
#define HM_TEMPLATE_FILE "reduce.c"
#include "template.h"
#else

/* Columns summed together by one thread. */
#define REDUCE_BLOCK_COLS 64

void KERNEL_NAME(column_sums_add_f32, column_sums_add_f64)(
    REAL* out, const REAL* a, size_t rows, size_t cols)
{
    HM_RUN_TEAM(rows * cols > HM_PARALLEL_MIN, F(column_sums_add_team)(out, a, rows, cols));
}

/* The same shared by the threads of the caller's parallel region (an orphaned omp for) */
HM_SIMD
void KERNEL_NAME(column_sums_add_team_f32, column_sums_add_team_f64)(
    REAL* out, const REAL* a, size_t rows, size_t cols)
{
    const size_t blocks = (cols + REDUCE_BLOCK_COLS - 1) / REDUCE_BLOCK_COLS;
    #pragma omp for schedule(static)
    for (size_t c = 0; c < blocks; c++) {
        const size_t j0 = c * REDUCE_BLOCK_COLS;
        const size_t j1 = j0 + REDUCE_BLOCK_COLS < cols ? j0 + REDUCE_BLOCK_COLS : cols;
        REAL* restrict o = out + j0;
        for (size_t r = 0; r < rows; r++) {
            const REAL* restrict row = a + r * cols + j0;
            for (size_t j = 0; j < j1 - j0; j++) {
                o[j] += row[j];
            }
        }
    }
}

#endif
