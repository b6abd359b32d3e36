/* Softmax cross-entropy (SPEC section 2): mean over the real positions of a sequence, then
 * mean over the sequences. Rows are independent, so both kernels run one row per task. */
#ifndef REAL
#include "loss.h"
#define HM_TEMPLATE_FILE "loss.c"
#include "template.h"

#else

#include <string.h>

#include "softmax.h"

/* loss (1,) the scalar loss; row_loss (B,L) = -log softmax(z)[target] per real row, 0 at
 * padding; probs (B,L,V) = softmax of each real row, 0 at padding; logits (B,L,V); targets
 * (B,L) in [0,V) at real positions; lengths (B,). */
HM_SIMD
void KERNEL_NAME(cross_entropy_forward_f32, cross_entropy_forward_f64)(
    double* loss, double* row_loss, REAL* probs, const REAL* logits, const int64_t* targets,
    const int64_t* lengths, size_t B, size_t L, size_t V)
{
    const size_t rows = B * L;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (rows * V > HM_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        REAL* restrict p = probs + r * V;
        if ((int64_t)(r % L) >= lengths[r / L]) {
            memset(p, 0, V * sizeof(REAL));
            row_loss[r] = 0;
            continue;
        }
        const REAL* restrict z = logits + r * V;
        REAL max, sum;
        F(softmax_row)(p, z, V, 1, &max, &sum);
        /* -log softmax(z)[t] = log(sum) - (z[t] - max) */
        row_loss[r] = (double)(LOG(sum) - (z[targets[r]] - max));
    }
    /* serial, in double, in a fixed order */
    double total = 0;
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)lengths[b];
        double seq = 0;
        for (size_t t = 0; t < n; t++) {
            seq += row_loss[b * L + t];
        }
        total += seq / (double)n;
    }
    *loss = total / (double)B;
}

/* grad (B,L,V) = d loss / d logits = (probs - onehot(target)) / (lengths[b] * B) on real rows,
 * 0 on padding; probs as produced by the forward. grad may be the probs buffer itself. */
HM_SIMD
void KERNEL_NAME(cross_entropy_backward_f32, cross_entropy_backward_f64)(
    REAL* grad, const REAL* probs, const int64_t* targets, const int64_t* lengths, size_t B,
    size_t L, size_t V)
{
    const size_t rows = B * L;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads()) if (rows * V > HM_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        REAL* g = grad + r * V;
        const REAL* p = probs + r * V;
        const int64_t n = lengths[r / L];
        if ((int64_t)(r % L) >= n) {
            memset(g, 0, V * sizeof(REAL));
            continue;
        }
        const REAL inv_count = (REAL)(1.0 / ((double)n * (double)B));
        const size_t t = (size_t)targets[r];
        const REAL at_target = p[t] - 1;
        for (size_t j = 0; j < V; j++) {
            g[j] = p[j] * inv_count;
        }
        g[t] = at_target * inv_count;
    }
}

#endif
