cdef extern from "gemm.h" nogil:
    void gemm_f32(int trans_a, int trans_b, size_t M, size_t N, size_t K, const float* A,
                  size_t lda, const float* B, size_t ldb, float beta, float* C, size_t ldc)
    void gemm_f64(int trans_a, int trans_b, size_t M, size_t N, size_t K, const double* A,
                  size_t lda, const double* B, size_t ldb, double beta, double* C, size_t ldc)
    void gemm_serial_f32(int trans_a, int trans_b, size_t M, size_t N, size_t K,
                         const float* A, size_t lda, const float* B, size_t ldb, float beta,
                         float* C, size_t ldc)
    void gemm_serial_f64(int trans_a, int trans_b, size_t M, size_t N, size_t K,
                         const double* A, size_t lda, const double* B, size_t ldb,
                         double beta, double* C, size_t ldc)
    void gemm_bias_act_f32(int trans_a, int trans_b, size_t M, size_t N, size_t K,
                           const float* A, size_t lda, const float* B, size_t ldb, float beta,
                           float* C, size_t ldc, const float* bias, int relu)
    void gemm_bias_act_f64(int trans_a, int trans_b, size_t M, size_t N, size_t K,
                           const double* A, size_t lda, const double* B, size_t ldb,
                           double beta, double* C, size_t ldc, const double* bias, int relu)
    int gemm_set_variant(int cap)
    int gemm_active_variant()
    void gemm_naive_f32(int trans_a, int trans_b, size_t M, size_t N, size_t K,
                        const float* A, size_t lda, const float* B, size_t ldb, float beta,
                        float* C, size_t ldc)
    void gemm_naive_f64(int trans_a, int trans_b, size_t M, size_t N, size_t K,
                        const double* A, size_t lda, const double* B, size_t ldb,
                        double beta, double* C, size_t ldc)


cdef inline Py_ssize_t _leading_dim(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t stride,
                                    size_t itemsize) noexcept:
    return cols if rows <= 1 else stride // <Py_ssize_t>itemsize


cdef int _gemm_call(int which, const floating[:, ::1] a, const floating[:, ::1] b,
                    floating[:, ::1] c, bint trans_a, bint trans_b, double beta) except -1:
    """Shared shape check and dispatch; which: 0 parallel, 1 serial, 2 naive."""
    cdef size_t m = a.shape[1] if trans_a else a.shape[0]
    cdef size_t k = a.shape[0] if trans_a else a.shape[1]
    cdef size_t kb = b.shape[1] if trans_b else b.shape[0]
    cdef size_t n = b.shape[0] if trans_b else b.shape[1]
    if k != kb or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("gemm: shapes do not match")
    if m == 0 or n == 0:
        return 0
    if k == 0:
        raise ValueError("gemm: inner dimension is 0")
    # Leading dimensions come from the row strides, so row-sliced views work too. The stride
    # of a single-row array is arbitrary in NumPy (x[None, :] has 0) and never used.
    cdef Py_ssize_t lda = _leading_dim(a.shape[0], a.shape[1], a.strides[0], sizeof(floating))
    cdef Py_ssize_t ldb = _leading_dim(b.shape[0], b.shape[1], b.strides[0], sizeof(floating))
    cdef Py_ssize_t ldc = _leading_dim(c.shape[0], c.shape[1], c.strides[0], sizeof(floating))
    if lda < a.shape[1] or ldb < b.shape[1] or ldc < c.shape[1]:
        raise ValueError("gemm: rows overlap (row stride smaller than a row)")
    with nogil:
        if floating is float:
            if which == 0:
                gemm_f32(trans_a, trans_b, m, n, k, &a[0, 0], lda, &b[0, 0],
                         ldb, <float>beta, &c[0, 0], ldc)
            elif which == 1:
                gemm_serial_f32(trans_a, trans_b, m, n, k, &a[0, 0], lda, &b[0, 0],
                                ldb, <float>beta, &c[0, 0], ldc)
            else:
                gemm_naive_f32(trans_a, trans_b, m, n, k, &a[0, 0], lda, &b[0, 0],
                               ldb, <float>beta, &c[0, 0], ldc)
        else:
            if which == 0:
                gemm_f64(trans_a, trans_b, m, n, k, &a[0, 0], lda, &b[0, 0],
                         ldb, beta, &c[0, 0], ldc)
            elif which == 1:
                gemm_serial_f64(trans_a, trans_b, m, n, k, &a[0, 0], lda, &b[0, 0],
                                ldb, beta, &c[0, 0], ldc)
            else:
                gemm_naive_f64(trans_a, trans_b, m, n, k, &a[0, 0], lda, &b[0, 0],
                               ldb, beta, &c[0, 0], ldc)
    return 0


def gemm(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
         bint trans_a=False, bint trans_b=False, double beta=0.0):
    """c = beta * c + op(a) @ op(b) with the parallel blocked kernel; exposed so the tests
    and benchmarks can check the kernel on its own."""
    _gemm_call(0, a, b, c, trans_a, trans_b, beta)


def gemm_serial(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
                bint trans_a=False, bint trans_b=False, double beta=0.0):
    """As gemm, on the calling thread only (the variant the layers call per sequence)."""
    _gemm_call(1, a, b, c, trans_a, trans_b, beta)


def gemm_naive(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
               bint trans_a=False, bint trans_b=False, double beta=0.0):
    """As gemm, with the plain reference loops (single-threaded)."""
    _gemm_call(2, a, b, c, trans_a, trans_b, beta)


def gemm_variant(int cap):
    """Testing aid: cap the instruction set of gemm/gemm_serial (0 widest supported,
    1 baseline, 2 AVX2, 3 AVX-512); returns the previous cap."""
    return gemm_set_variant(cap)


def gemm_instruction_set():
    """The instruction set the matrix kernels dispatched to on this CPU (for 'hypermixer
    check'): "AVX-512", "AVX2+FMA", "SSE2" (baseline x86-64) or "plain C"."""
    return ("plain C", "SSE2", "AVX2+FMA", "AVX-512")[gemm_active_variant()]


def gemm_bias_act(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
                  const floating[::1] bias, bint relu):
    """c = relu?(a @ b + bias): the parallel kernel with its bias/ReLU epilogue (for tests)."""
    if a.shape[1] != b.shape[0] or c.shape[0] != a.shape[0] or c.shape[1] != b.shape[1]:
        raise ValueError("gemm_bias_act: shapes do not match")
    if bias.shape[0] != c.shape[1]:
        raise ValueError("gemm_bias_act: bias must have one entry per column")
    if a.shape[0] == 0 or b.shape[1] == 0 or a.shape[1] == 0:
        raise ValueError("gemm_bias_act: empty product")
    with nogil:
        if floating is float:
            gemm_bias_act_f32(0, 0, a.shape[0], b.shape[1], a.shape[1], &a[0, 0], a.shape[1],
                              &b[0, 0], b.shape[1], 0, &c[0, 0], c.shape[1], &bias[0], relu)
        else:
            gemm_bias_act_f64(0, 0, a.shape[0], b.shape[1], a.shape[1], &a[0, 0], a.shape[1],
                              &b[0, 0], b.shape[1], 0, &c[0, 0], c.shape[1], &bias[0], relu)
