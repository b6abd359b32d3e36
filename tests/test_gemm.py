"""The blocked gemm kernels (gemm, gemm_serial) against NumPy and against the plain loops
(gemm_naive), on shapes chosen to land on both sides of every block size of the kernel."""

import numpy as np
import pytest

import hypermixer
from hypermixer import _kernels

DTYPES = [np.float32, np.float64]
TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]
FAST = [_kernels.gemm, _kernels.gemm_serial]

# Register tiles are 8 or 6 (or 4) rows by 16 to 32 columns, K is cut every 256, rows every
# 60 to 128 and columns every 128 or 256; A is read in place or packed depending on the
# width of the column block. These shapes sit on, just below and just above those edges.
SHAPES = [
    (1, 1, 1), (2, 3, 5), (7, 11, 13), (8, 16, 1), (9, 17, 31), (6, 33, 2), (13, 1, 97),
    (1, 200, 7), (128, 64, 80), (127, 65, 79), (61, 129, 255), (121, 257, 256),
    (129, 31, 257), (257, 513, 37), (65, 100, 513), (3, 1031, 9), (300, 7, 600),
]


VARIANTS = {"widest": 0, "avx2": 2, "baseline": 1}


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    """Run the test under each instruction-set variant this CPU can execute (a cap above what
    it supports falls back to the widest it has)."""
    previous = _kernels.gemm_variant(VARIANTS[request.param])
    yield request.param
    _kernels.gemm_variant(previous)


# Every shape under the widest variant; the narrower ones (other register tiles) get every
# other shape, which still crosses each of their block edges, to keep the file quick.
VARIANT_SHAPES = [("widest", s) for s in SHAPES] + [
    (v, s) for v in ("avx2", "baseline") for s in SHAPES[::2]]


def operands(rng, m, n, k, trans_a, trans_b, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    return a, b, c


class Exact:
    """op(A) op(B) in float64 (exact for float32 inputs, one rounding per term for float64)
    and |op(A)| |op(B)|, computed once per operand pair."""

    def __init__(self, a, b, trans_a, trans_b):
        op_a = (a.T if trans_a else a).astype(np.float64)
        op_b = (b.T if trans_b else b).astype(np.float64)
        self.k = op_a.shape[1]
        self.product = op_a @ op_b
        self.magnitude = np.abs(op_a) @ np.abs(op_b)

    def result_and_bound(self, c, beta, dtype):
        """beta C + op(A) op(B), and an elementwise bound on the forward error of a length-k
        dot product plus the beta term for two computations (the kernel and the one it is
        compared with, which in float64 is itself rounded): 2 (k + 2) u (|beta C| + |A||B|)."""
        c64 = c.astype(np.float64)
        eps = np.finfo(dtype).eps
        bound = 2 * (self.k + 2) * eps * (abs(beta) * np.abs(c64) + self.magnitude)
        return beta * c64 + self.product, bound + np.finfo(dtype).tiny


def run(fn, a, b, c, trans_a, trans_b, beta):
    out = c.copy()
    fn(a, b, out, trans_a, trans_b, beta)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("variant_name,shape", VARIANT_SHAPES)
def test_matches_numpy_and_naive(variant_name, shape, trans_a, trans_b, dtype):
    m, n, k = shape
    previous = _kernels.gemm_variant(VARIANTS[variant_name])
    try:
        check_against_numpy_and_naive(m, n, k, trans_a, trans_b, dtype)
    finally:
        _kernels.gemm_variant(previous)


def check_against_numpy_and_naive(m, n, k, trans_a, trans_b, dtype):
    rng = np.random.default_rng(m * 10007 + n * 101 + k)
    a, b, c = operands(rng, m, n, k, trans_a, trans_b, dtype)
    exact = Exact(a, b, trans_a, trans_b)
    for beta in (0.0, 1.0, 0.5):
        expected, bound = exact.result_and_bound(c, beta, dtype)
        naive = run(_kernels.gemm_naive, a, b, c, trans_a, trans_b, beta)
        assert naive.dtype == dtype
        assert np.all(np.abs(naive - expected) <= bound), "gemm_naive"
        for fn in FAST:
            got = run(fn, a, b, c, trans_a, trans_b, beta)
            assert got.dtype == dtype
            assert np.all(np.abs(got - expected) <= bound), f"{fn.__name__} vs numpy"
            assert np.all(np.abs(got - naive) <= bound), f"{fn.__name__} vs gemm_naive"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_beta_zero_ignores_nan_in_c(trans_a, trans_b, dtype, variant):
    rng = np.random.default_rng(3)
    for m, n, k in [(1, 1, 1), (9, 33, 17), (130, 300, 260)]:
        a, b, _ = operands(rng, m, n, k, trans_a, trans_b, dtype)
        c = np.full((m, n), np.nan, dtype=dtype)
        expected, bound = Exact(a, b, trans_a, trans_b).result_and_bound(np.zeros_like(c), 0.0, dtype)
        for fn in FAST + [_kernels.gemm_naive]:
            got = run(fn, a, b, c, trans_a, trans_b, 0.0)
            assert np.all(np.isfinite(got)), fn.__name__
            assert np.all(np.abs(got - expected) <= bound), fn.__name__


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_inputs_propagates(dtype):
    # The kernel must not skip work on zeros or treat NaN specially: NaN in A spreads to its row.
    a = np.ones((20, 40), dtype=dtype)
    b = np.ones((40, 50), dtype=dtype)
    a[3, 7] = np.nan
    for fn in FAST:
        c = np.zeros((20, 50), dtype=dtype)
        fn(a, b, c)
        assert np.all(np.isnan(c[3])) and not np.any(np.isnan(np.delete(c, 3, axis=0)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_bit_identical_for_any_thread_count(trans_a, trans_b, dtype, variant):
    rng = np.random.default_rng(11)
    before = hypermixer.get_num_threads()
    try:
        for m, n, k in [(128, 64, 80), (257, 300, 600), (40, 1000, 33)]:
            a, b, c = operands(rng, m, n, k, trans_a, trans_b, dtype)
            results = []
            for threads in (1, 2, 3):
                hypermixer.set_num_threads(threads)
                results.append(run(_kernels.gemm, a, b, c, trans_a, trans_b, 0.5))
            # gemm_serial computes each element with the same chain of operations too.
            results.append(run(_kernels.gemm_serial, a, b, c, trans_a, trans_b, 0.5))
            for other in results[1:]:
                assert np.array_equal(results[0], other)
    finally:
        hypermixer.set_num_threads(before)


def test_rejects_mismatched_shapes():
    a = np.zeros((3, 4))
    b = np.zeros((5, 6))
    c = np.zeros((3, 6))
    for fn in FAST + [_kernels.gemm_naive]:
        with pytest.raises(ValueError):
            fn(a, b, c)
        with pytest.raises(ValueError):
            fn(a, np.zeros((4, 6)), np.zeros((3, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 4), (300, 260, 70), (129, 517, 33)])
@pytest.mark.parametrize("relu", [False, True])
def test_gemm_bias_act_epilogue_equals_gemm_then_the_pass_bitwise(dtype, shape, relu):
    """The epilogue runs tile by tile inside the gemm; its bits must be those of the product
    followed by a separate bias (+ ReLU) pass, NaN kept (as numpy.maximum keeps it)."""
    m, n, k = shape
    rng = np.random.default_rng(7)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    bias[n // 2] = np.nan
    want = np.empty((m, n), dtype)
    _kernels.gemm(a, b, want)
    want += bias
    if relu:
        want = np.maximum(want, 0)
    for threads in (1, 2):
        hypermixer.set_num_threads(threads)
        try:
            got = np.full((m, n), 7.0, dtype)
            _kernels.gemm_bias_act(a, b, got, bias, relu)
        finally:
            hypermixer.set_num_threads(None)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("k", [1, 7, 256, 257, 600])
def test_one_row_gives_the_bits_of_the_blocked_path(k, beta, trans_a, dtype, variant):
    """M = 1 takes a path of its own (B read in place, no register tile of zero rows); each
    element must still be the blocked path's chain, bit for bit: compared with rows of a
    13-row product, inside a full register tile (row 3) and in the ragged last one (row 12),
    over widths with and without a partial last vector, K across the 256-deep slices."""
    rng = np.random.default_rng(k)
    for n in (1, 5, 16, 127, 128, 129, 300, 533):
        a, b, c = operands(rng, 13, n, k, trans_a, False, dtype)
        for fn in FAST:
            whole = run(fn, a, b, c, trans_a, False, beta)
            for i in (3, 12):
                row = (a[:, i:i + 1] if trans_a else a[i:i + 1]).copy()
                one = run(fn, row, b, c[i:i + 1], trans_a, False, beta)
                assert np.array_equal(one[0], whole[i]), (fn.__name__, n, i)
