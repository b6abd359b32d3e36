/* One instruction-set variant of the blocked gemm, included by gemm.c once per (precision,
 * instruction set). No include guard, on purpose.
 *
 * The includer defines:
 *   REAL, F(name)           precision (see template.h)
 *   GK(name)                name suffix of this variant, e.g. F(name##_avx512)
 *   GK_TARGET               function attribute selecting the instruction set (may be empty)
 *   GK_VBYTES               SIMD register width in bytes
 *   GK_MR, GK_NV            register tile: GK_MR rows by GK_NV vectors of C
 *   GK_KC, GK_MC, GK_NC     cache blocks: depth, rows of A, columns of B
 *
 * Layout of the work (the usual Goto/BLIS scheme):
 *   for each NC-wide column block of C and each KC-deep slice of the product:
 *     pack op(B)[pc:pc+kc, jc:jc+nc] into panels of NR columns (zero-padded, k-major)
 *     for each MC-high row block:
 *       A is either packed the same way (MR-row panels) or read in place (see below)
 *       for each NR panel, for each MR panel: one micro-kernel call over the kc slice.
 * Every element of C is therefore the same chain of multiply-adds (fused where the
 * instruction set has FMA), k ascending within a slice, slices ascending; nothing here
 * depends on how a caller cuts C into regions. */

#define GK_VL ((size_t)(GK_VBYTES / sizeof(REAL)))
#define GK_NR (GK_NV * GK_VL)

typedef REAL GK(vec) __attribute__((vector_size(GK_VBYTES)));

/* The packing buffer (gemm.c) must hold a KC x NC block of B and an MC x KC block of A. */
typedef char GK(work_fits)[GK_KC * (GK_NC + GK_MC) * sizeof(REAL) <= HM_GEMM_WORK_BYTES ? 1 : -1];

/* The register tile of this variant, for callers that round their rectangles to it. */
static const size_t GK(tile_rows) = GK_MR;
static const size_t GK(tile_cols) = GK_NR;

/* The register tile. Element (i, p) of the A micro-panel is a[i * a_rs + p * a_ks]; row p of
 * the B micro-panel is the GK_NR contiguous values at b + p * b_ks. The GK_MR x GK_NR sums are
 * then merged into C, of which only mr x nr are real:
 *   mode 0: C = sum (first slice, beta == 0: C is never read, so NaN in C is harmless)
 *   mode 1: C = beta * C + sum (first slice)
 *   mode 2: C = C + sum (later slices). */
GK_TARGET HM_INLINE static inline void GK(micro_body)(
    size_t kc, const REAL* restrict a, size_t a_rs, size_t a_ks, const REAL* restrict b,
    size_t b_ks, REAL* restrict c, size_t ldc, size_t mr, size_t nr, REAL beta, int mode,
    int nv)
{
    /* nv (a constant at each call site) is GK_NV, or fewer vectors for a narrow last panel:
     * the same per-element arithmetic on fewer columns. */
    GK(vec) acc[GK_MR][GK_NV];
    for (int i = 0; i < GK_MR; i++) {
        for (int v = 0; v < nv; v++) {
            acc[i][v] = (GK(vec)){0};
        }
    }
    for (size_t p = 0; p < kc; p++) {
        GK(vec) bv[GK_NV];
        for (int v = 0; v < nv; v++) {
            memcpy(&bv[v], b + p * b_ks + v * GK_VL, sizeof(GK(vec)));
        }
        for (int i = 0; i < GK_MR; i++) {
            const REAL x = a[i * a_rs + p * a_ks];
            for (int v = 0; v < nv; v++) {
                acc[i][v] += x * bv[v];
            }
        }
    }
    if (mr == GK_MR && nr == nv * GK_VL) {
        for (int i = 0; i < GK_MR; i++) {
            for (int v = 0; v < nv; v++) {
                REAL* dst = c + i * ldc + v * GK_VL;
                GK(vec) out = acc[i][v];
                if (mode != 0) {
                    GK(vec) old;
                    memcpy(&old, dst, sizeof(GK(vec)));
                    out = mode == 1 ? beta * old + out : old + out;
                }
                memcpy(dst, &out, sizeof(GK(vec)));
            }
        }
        return;
    }
    /* Partial tile at the bottom or right edge of C: spill, then merge element by element. */
    REAL tile[GK_MR * GK_NR] __attribute__((aligned(64))) = {0};
    for (int i = 0; i < GK_MR; i++) {
        for (int v = 0; v < nv; v++) {
            memcpy(tile + i * GK_NR + v * GK_VL, &acc[i][v], sizeof(GK(vec)));
        }
    }
    for (size_t i = 0; i < mr; i++) {
        REAL* dst = c + i * ldc;
        const REAL* src = tile + i * GK_NR;
        for (size_t j = 0; j < nr; j++) {
            dst[j] = mode == 0 ? src[j] : mode == 1 ? beta * dst[j] + src[j] : dst[j] + src[j];
        }
    }
}

/* Specialisations, so the compiler sees constant strides and widths: A micro-panels whose MR
 * values for one p are contiguous (packed panels, and op(A) = A^T read in place), A rows read
 * in place (op(A) = A); and each of these at full width or, for a last panel with at most
 * NR / 2 real columns (N = 80 with NR = 32, say), at half width. */
GK_TARGET static void GK(micro_cols)(size_t kc, const REAL* restrict a, size_t a_ks,
                                     const REAL* restrict b, REAL* restrict c, size_t ldc,
                                     size_t mr, size_t nr, REAL beta, int mode)
{
    if (GK_NV % 2 == 0 && 2 * nr <= GK_NR) {
        GK(micro_body)(kc, a, 1, a_ks, b, GK_NR, c, ldc, mr, nr, beta, mode, GK_NV / 2);
    } else {
        GK(micro_body)(kc, a, 1, a_ks, b, GK_NR, c, ldc, mr, nr, beta, mode, GK_NV);
    }
}

GK_TARGET static void GK(micro_rows)(size_t kc, const REAL* restrict a, size_t a_rs,
                                     const REAL* restrict b, REAL* restrict c, size_t ldc,
                                     size_t mr, size_t nr, REAL beta, int mode)
{
    if (GK_NV % 2 == 0 && 2 * nr <= GK_NR) {
        GK(micro_body)(kc, a, a_rs, 1, b, GK_NR, c, ldc, mr, nr, beta, mode, GK_NV / 2);
    } else {
        GK(micro_body)(kc, a, a_rs, 1, b, GK_NR, c, ldc, mr, nr, beta, mode, GK_NV);
    }
}

/* Ask for the cache lines of src[0 .. count) ahead of use. The operands' rows are often far
 * apart (a wide B, a tall A^T), so each block reads many short row segments: too short for
 * the hardware prefetchers to ramp up, and each miss would otherwise wait on memory. */
#define GK_PF_AHEAD 4
GK_TARGET static inline void GK(prefetch_row)(const REAL* src, size_t count)
{
    for (size_t i = 0; i < count; i += 64 / sizeof(REAL)) {
        __builtin_prefetch(src + i, 0, 3);
    }
    __builtin_prefetch(src + count - 1, 0, 3);
}

/* Pack the kc x nc block of op(B) whose top-left element is at b (op(B)[p, j] is b[p * ldb + j],
 * or b[j * ldb + p] when trans_b) into ceil(nc / NR) panels of kc x NR, zero-padded. Both
 * layouts are read one contiguous source row at a time. */
GK_TARGET static void GK(pack_b)(int trans_b, size_t kc, size_t nc, const REAL* b, size_t ldb,
                                 REAL* restrict out)
{
    if (!trans_b) {
        for (size_t p = 0; p < kc; p++) {
            const REAL* src = b + p * ldb;
            if (p + GK_PF_AHEAD < kc) {
                GK(prefetch_row)(src + GK_PF_AHEAD * ldb, nc);
            }
            for (size_t j0 = 0; j0 < nc; j0 += GK_NR) {
                const size_t nr = nc - j0 < GK_NR ? nc - j0 : GK_NR;
                REAL* dst = out + j0 * kc + p * GK_NR;
                for (size_t j = 0; j < nr; j++) {
                    dst[j] = src[j0 + j];
                }
                for (size_t j = nr; j < GK_NR; j++) {
                    dst[j] = 0;
                }
            }
        }
        return;
    }
    for (size_t j0 = 0; j0 < nc; j0 += GK_NR) {
        const size_t nr = nc - j0 < GK_NR ? nc - j0 : GK_NR;
        REAL* panel = out + j0 * kc;
        if (nr < GK_NR) {
            memset(panel, 0, kc * GK_NR * sizeof(REAL));
        }
        for (size_t j = 0; j < nr; j++) {
            const REAL* src = b + (j0 + j) * ldb;
            if (j0 + j + GK_PF_AHEAD < nc) {
                GK(prefetch_row)(src + GK_PF_AHEAD * ldb, kc);
            }
            for (size_t p = 0; p < kc; p++) {
                panel[p * GK_NR + j] = src[p];
            }
        }
    }
}

/* Pack the mc x kc block of op(A) whose top-left element is at a into ceil(mc / MR) panels of
 * kc x MR (for each p, MR consecutive rows), zero-padded. */
GK_TARGET static void GK(pack_a)(int trans_a, size_t mc, size_t kc, const REAL* a, size_t lda,
                                 REAL* restrict out)
{
    for (size_t i0 = 0; i0 < mc; i0 += GK_MR) {
        const size_t mr = mc - i0 < GK_MR ? mc - i0 : GK_MR;
        REAL* panel = out + i0 * kc;
        if (trans_a) {
            for (size_t p = 0; p < kc; p++) {
                const REAL* src = a + p * lda + i0;
                if (p + GK_PF_AHEAD < kc) {
                    GK(prefetch_row)(src + GK_PF_AHEAD * lda, mr);
                }
                REAL* dst = panel + p * GK_MR;
                for (size_t i = 0; i < mr; i++) {
                    dst[i] = src[i];
                }
                for (size_t i = mr; i < GK_MR; i++) {
                    dst[i] = 0;
                }
            }
        } else {
            if (mr < GK_MR) {
                memset(panel, 0, kc * GK_MR * sizeof(REAL));
            }
            for (size_t i = 0; i < mr; i++) {
                const REAL* src = a + (i0 + i) * lda;
                if (i0 + i + GK_PF_AHEAD < mc) {
                    GK(prefetch_row)(src + GK_PF_AHEAD * lda, kc);
                }
                for (size_t p = 0; p < kc; p++) {
                    panel[p * GK_MR + i] = src[p];
                }
            }
        }
    }
}

/* One row of C, op(B) = B: C[i, j0:j1] = beta * C[i, j0:j1] + op(A)[i, :] @ B[:, j0:j1],
 * K >= 1 (a generated token's feed-forward and output layer). Each element gets the chain of
 * micro_body with mr = 1 below the register tile: products added in k order from 0 within a
 * KC slice, the slices merged into C in order by the same scalar expressions; so the bits are
 * those of the blocked path. It reads B in place: packing a KC x NC block of B for one row,
 * and a tile of MR rows of which MR - 1 are zeros, cost about ten times the product
 * (1 x 128 @ 128 x 256: 11 us). */
GK_TARGET static void GK(row)(int trans_a, size_t i, size_t j0, size_t j1, size_t K,
                              const REAL* A, size_t lda, const REAL* B, size_t ldb, REAL beta,
                              REAL* C, size_t ldc)
{
    enum { NV = 8 };   /* vectors of C at once: independent chains, one row segment of B */
    const REAL* a = trans_a ? A + i : A + i * lda;
    const size_t a_ks = trans_a ? lda : 1;
    REAL* c = C + i * ldc;
    for (size_t pc = 0; pc < K; pc += GK_KC) {
        const size_t kc = K - pc < GK_KC ? K - pc : GK_KC;
        const int mode = pc > 0 ? 2 : beta == 0 ? 0 : 1;
        for (size_t j = j0; j < j1; j += NV * GK_VL) {
            const size_t width = j1 - j < NV * GK_VL ? j1 - j : NV * GK_VL;
            GK(vec) acc[NV];
            for (int v = 0; v < NV; v++) {
                acc[v] = (GK(vec)){0};
            }
            if (width == NV * GK_VL) {
                for (size_t p = pc; p < pc + kc; p++) {
                    const REAL x = a[p * a_ks];
                    const REAL* src = B + p * ldb + j;
                    for (int v = 0; v < NV; v++) {
                        GK(vec) bv;
                        memcpy(&bv, src + v * GK_VL, sizeof(GK(vec)));
                        acc[v] += x * bv;
                    }
                }
            } else {   /* the last columns: whole vectors, then one zero-padded */
                for (size_t p = pc; p < pc + kc; p++) {
                    const REAL x = a[p * a_ks];
                    const REAL* src = B + p * ldb + j;
                    for (size_t v = 0; v * GK_VL < width; v++) {
                        GK(vec) bv = {0};
                        const size_t n = width - v * GK_VL < GK_VL ? width - v * GK_VL : GK_VL;
                        for (size_t q = 0; q < n; q++) {
                            bv[q] = src[v * GK_VL + q];
                        }
                        acc[v] += x * bv;
                    }
                }
            }
            REAL sum[NV * GK_VL] __attribute__((aligned(64)));
            memcpy(sum, acc, sizeof sum);
            REAL* dst = c + j;
            for (size_t q = 0; q < width; q++) {
                dst[q] = mode == 0 ? sum[q] : mode == 1 ? beta * dst[q] + sum[q] : dst[q] + sum[q];
            }
        }
    }
}

/* C[i0:i1, j0:j1] = beta * C[i0:i1, j0:j1] + op(A)[i0:i1, :] @ op(B)[:, j0:j1], K >= 1.
 * work holds GK_KC * (GK_NC + GK_MC) REAL values, 64-byte aligned, private to the thread. */
GK_TARGET static void GK(region)(int trans_a, int trans_b, size_t i0, size_t i1, size_t j0,
                                 size_t j1, size_t K, const REAL* A, size_t lda, const REAL* B,
                                 size_t ldb, REAL beta, REAL* C, size_t ldc, REAL* work)
{
    if (i1 - i0 == 1 && !trans_b) {
        GK(row)(trans_a, i0, j0, j1, K, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    REAL* restrict bpack = work;
    REAL* restrict apack = work + GK_KC * GK_NC;
    for (size_t jc = j0; jc < j1; jc += GK_NC) {
        const size_t nc = j1 - jc < GK_NC ? j1 - jc : GK_NC;
        /* Reading A in place saves its packing, which matters for the small products the
         * layers make; packing pays off once each A panel is reused across many B panels. */
        const int pack_all_a = nc > 4 * GK_NR;
        for (size_t pc = 0; pc < K; pc += GK_KC) {
            const size_t kc = K - pc < GK_KC ? K - pc : GK_KC;
            const int mode = pc > 0 ? 2 : beta == 0 ? 0 : 1;
            GK(pack_b)(trans_b, kc, nc, trans_b ? B + jc * ldb + pc : B + pc * ldb + jc, ldb,
                       bpack);
            for (size_t ic = i0; ic < i1; ic += GK_MC) {
                const size_t mc = i1 - ic < GK_MC ? i1 - ic : GK_MC;
                const REAL* a_block = trans_a ? A + pc * lda + ic : A + ic * lda + pc;
                const size_t full = pack_all_a ? 0 : mc / GK_MR * GK_MR;
                /* Rows [full, mc) go through packed panels (all rows when pack_all_a; else only
                 * the ragged last panel, whose in-place reads would run past op(A)). */
                if (full < mc) {
                    GK(pack_a)(trans_a, mc - full, kc,
                               trans_a ? a_block + full : a_block + full * lda, lda, apack);
                }
                for (size_t jr = 0; jr < nc; jr += GK_NR) {
                    const size_t nr = nc - jr < GK_NR ? nc - jr : GK_NR;
                    const REAL* bp = bpack + jr * kc;
                    REAL* c_col = C + jc + jr;
                    for (size_t ir = 0; ir < mc; ir += GK_MR) {
                        const size_t mr = mc - ir < GK_MR ? mc - ir : GK_MR;
                        REAL* c_tile = c_col + (ic + ir) * ldc;
                        if (ir >= full) {
                            GK(micro_cols)(kc, apack + (ir - full) * kc, GK_MR, bp, c_tile, ldc,
                                           mr, nr, beta, mode);
                        } else if (trans_a) {
                            GK(micro_cols)(kc, a_block + ir, lda, bp, c_tile, ldc, mr, nr, beta,
                                           mode);
                        } else {
                            GK(micro_rows)(kc, a_block + ir * lda, lda, bp, c_tile, ldc, mr, nr,
                                           beta, mode);
                        }
                    }
                }
            }
        }
    }
}

#undef GK_PF_AHEAD
#undef GK_VL
#undef GK_NR
/* The parameters were set by the includer for this one instantiation. */
#undef GK
#undef GK_TARGET
#undef GK_VBYTES
#undef GK_MR
#undef GK_NV
#undef GK_KC
#undef GK_MC
#undef GK_NC
