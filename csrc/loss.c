/* Softmax cross-entropy (SPEC section 2): mean over the real positions of a sequence, then
 * mean over the sequences. Rows are independent, so both kernels run one row per task. */
#ifndef REAL
#define HM_TEMPLATE_FILE "loss.c"
#include "template.h"
#else

/* loss (1,) the scalar loss; row_max, row_lognorm (B,L): per real row, max_j z[j] and
 * log sum_j exp(z[j] - max) (kept for the backward; 0 at padding); logits (B,L,V);
 * targets (B,L) in [0,V) at real positions; lengths (B,). */
HM_SIMD
void F(cross_entropy_forward)(double* loss, REAL* row_max, REAL* row_lognorm,
                              const REAL* logits, const int64_t* targets,
                              const int64_t* lengths, size_t B, size_t L, size_t V)
{
    const size_t rows = B * L;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t r = 0; r < rows; r++) {
        if ((int64_t)(r % L) >= lengths[r / L]) {
            row_max[r] = 0;
            row_lognorm[r] = 0;
            continue;
        }
        const REAL* restrict z = logits + r * V;
        REAL max = z[0];
        for (size_t j = 1; j < V; j++) {
            max = z[j] > max ? z[j] : max;
        }
        REAL sum = 0;
        for (size_t j = 0; j < V; j++) {
            sum += EXP(z[j] - max);
        }
        row_max[r] = max;
        row_lognorm[r] = LOG(sum);
    }
    /* serial, in double, in a fixed order */
    double total = 0;
    for (size_t b = 0; b < B; b++) {
        const size_t n = (size_t)lengths[b];
        double seq = 0;
        for (size_t t = 0; t < n; t++) {
            const size_t r = b * L + t;
            /* -log p[target] = lognorm - (z[target] - max) */
            const REAL nll = row_lognorm[r] - (logits[r * V + (size_t)targets[r]] - row_max[r]);
            seq += (double)nll;
        }
        total += seq / (double)n;
    }
    *loss = total / (double)B;
}

/* grad (B,L,V) = d loss / d logits = (softmax(z) - onehot(target)) / (lengths[b] * B) on real
 * rows, 0 on padding; the other arguments as produced by / given to the forward. */
HM_SIMD
void F(cross_entropy_backward)(REAL* grad, const REAL* logits, const REAL* row_max,
                               const REAL* row_lognorm, const int64_t* targets,
                               const int64_t* lengths, size_t B, size_t L, size_t V)
{
    const size_t rows = B * L;
    #pragma omp parallel for schedule(static) num_threads(hm_num_threads())
    for (size_t r = 0; r < rows; r++) {
        REAL* restrict g = grad + r * V;
        const int64_t n = lengths[r / L];
        if ((int64_t)(r % L) >= n) {
            for (size_t j = 0; j < V; j++) {
                g[j] = 0;
            }
            continue;
        }
        const REAL* restrict z = logits + r * V;
        const REAL max = row_max[r], lognorm = row_lognorm[r];
        const REAL count = (REAL)((double)n * (double)B);
        for (size_t j = 0; j < V; j++) {
            g[j] = EXP((z[j] - max) - lognorm);
        }
        g[targets[r]] -= 1;
        for (size_t j = 0; j < V; j++) {
            g[j] /= count;
        }
    }
}

#endif
