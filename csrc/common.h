/* Shared by every kernel file: thread count (threads.h), SIMD dispatch, tiles, the kernel
 * conventions below. */
#ifndef HYPERMIXER_COMMON_H
#define HYPERMIXER_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "threads.h"   /* hm_num_threads() and the thread cap */

/* Runtime dispatch without -march=native: gcc compiles the function three times and the
 * loader picks the widest one the CPU supports. Used on the hot loops only. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(HM_NO_CLONES)
#define HM_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HM_SIMD
#endif

/* Forced inlining, for the helpers of HM_SIMD functions (and of the width-4 and gemm
 * micro-kernels): a helper gcc chooses not to inline runs as a call compiled for the baseline
 * ISA (gcc stopped inlining hmx_cdf once it grew, and the causal forward became 100x slower;
 * LayerNorm's row statistics ran as a baseline SSE2 call, 2.7x slower). */
#if defined(__GNUC__)
#define HM_INLINE __attribute__((always_inline))
#else
#define HM_INLINE
#endif

/* Runs `call`, the team form of a kernel (its loops orphaned omp for constructs), with all
 * threads in a parallel region of its own when `cond`, else on the calling thread without
 * entering a region (an orphaned omp for outside a region runs every iteration), so small calls
 * pay nothing for the threads they do not use. Called from inside a parallel region (a kernel
 * used within another's omp single, say), it always opens its own region, which then has one
 * thread: a bare call there would bind the team form's loops to the outer team. */
#ifdef _OPENMP
#include <omp.h>
#define HM_IN_PARALLEL() omp_in_parallel()
#define HM_TEAM_SIZE() omp_get_num_threads()
#else
#define HM_IN_PARALLEL() 0
#define HM_TEAM_SIZE() 1
#endif
#define HM_RUN_TEAM(cond, call)                                                               \
    do {                                                                                      \
        if ((cond) || HM_IN_PARALLEL()) {                                                     \
            _Pragma("omp parallel num_threads(hm_num_threads())")                             \
            call;                                                                             \
        } else {                                                                              \
            call;                                                                             \
        }                                                                                     \
    } while (0)

/* Work is cut into tiles of a fixed size that does not depend on the thread count, and every
 * output element is computed by exactly one thread in a fixed order. That makes results
 * bit-identical for any number of threads. */
#define HM_TILE_ROWS 32

/* Elementwise passes and reductions over fewer elements than this run on the calling thread
 * (an OpenMP if() clause): a parallel region would cost more than it saves. One value for
 * every kernel; it changes no result, only who computes it. */
#define HM_PARALLEL_MIN 32768

/* Kernel conventions (every csrc/ file):
 *   - one C file per concern, with its own header, which it includes; kernels are named
 *     <layer>_forward / <layer>_backward with a _f32 / _f64 suffix, and defined with both
 *     names written out (KERNEL_NAME, template.h) so that grep finds them; headers list them
 *     by full name too. The build (CMakeLists.txt) compiles these files with
 *     -Wmissing-prototypes -Werror: an exported function without a prototype in a header
 *     does not build;
 *   - sizes, counts and dimensions are size_t; int only for flags (trans_a, relu, causal,
 *     accumulate, ...) and thread counts;
 *   - the caller allocates every output and workspace; no allocation inside a kernel;
 *   - padding: lengths (B,) with 1 <= lengths[b] <= L (channel mixing takes the equivalent
 *     offsets (B+1,)); padding rows are never read and get 0 outputs / input gradients;
 *   - every layer backward OVERWRITES its input gradient and its parameter gradients (it
 *     never accumulates), so the caller may pass uninitialised memory. One exception by
 *     design: token_mixing_(prefix_)pool_backward ADD the pooling path into the input
 *     gradient the token-mixing backward has just written (they are its second half).
 *     Building blocks add only when the caller asks, through an explicit argument: gemm's
 *     beta, column_sums_add (by name), mlp_*'s input_beta / accumulate;
 *   - results do not depend on the thread count (fixed tiles, see HM_TILE_ROWS);
 *   - a kernel a whole-block kernel chains may have a team form, <name>_team_f32/_f64: the
 *     same work with its loops as orphaned omp for constructs (serial steps under omp single),
 *     which the threads of the caller's parallel region share, so that a block enters one
 *     region instead of one per step; the kernel itself runs its team form in a region of its
 *     own (HM_RUN_TEAM), with the same bits. A team form is called by every thread of the
 *     region, and never from inside another loop that is already split among them. */

/* Carves consecutive pieces of `item`-byte elements out of one caller-owned buffer (the
 * whole-block kernels' workspaces); with base NULL it only counts, so the same function gives
 * the size to allocate and the layout. */
typedef struct {
    char* base;
    size_t used;
    size_t item;
} HmCarver;

static inline void* hm_carve(HmCarver* c, size_t n)
{
    void* p = c->base ? c->base + c->used * c->item : NULL;
    c->used += n;
    return p;
}

/* ReLU with the reference's semantics (NumPy's maximum(v, 0)): NaN stays NaN, so a NaN
 * anywhere upstream reaches the output instead of silently becoming 0. */
#define HM_RELU(v) ((v) < 0 ? 0 : (v))
/* Its backward: d * (pre-activation > 0), a multiplication as in the reference, so a NaN or
 * infinite d stays NaN even where the mask is 0 (NaN * 0), and a NaN pre-activation masks. */
#define HM_RELU_GRAD(d, pre) ((d) * (REAL)((pre) > 0))

#endif
