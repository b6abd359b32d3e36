"""Every layer of the registry (``hypermixer.check.CASES``) x implementation x dtype:
compiled vs reference, padding, batch vs one by one, finite differences, threads.

Tolerances come from ``hypermixer.check.tolerance``: eps(dtype) * sqrt(K) * one factor, K
the length of the chain of sums behind a result.
"""

import numpy as np
import pytest

import hypermixer
from hypermixer.check import (CASES, DTYPES, IMPLEMENTATIONS, SHAPES, bit_identical,
                              build_one, build_pair, compare, fill_padding,
                              finite_difference_errors, make_inputs, one_by_one, padding_mask,
                              reduction_length, run, tolerance)

CASE_IDS = [c.label for c in CASES]
DTYPE_IDS = [d.name for d in DTYPES]
IMPLS = list(IMPLEMENTATIONS)


def small_batch(case, seed=0):
    dims, seq_len, lengths = SHAPES["small"]
    x, g, lengths = make_inputs(case, dims, seq_len, lengths, seed=seed)
    return dims, seq_len, x, g, lengths


def assert_within(errors, tol, what):
    names = ("output", "input gradient", "parameter gradients")
    for name, err in zip(names, errors):
        if err is not None:
            assert err <= tol, f"{what}: {name} relative error {err:.3e} > {tol:.1e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_compiled_matches_reference(case, dtype):
    dims, seq_len, x, g, lengths = small_batch(case, seed=1)
    comp, ref = build_pair(case, dims, dtype)
    for (name, a), (_, b) in zip(comp.named_parameters(), ref.named_parameters()):
        assert a.dtype == dtype and np.array_equal(a, b), f"initial {name} differs"
    result, expected = run(comp, x, g, lengths), run(ref, x, g, lengths)
    assert result[0].shape == expected[0].shape
    if case.kind != "loss":   # the loss is a Python float
        assert result[0].dtype == dtype
    assert [a.dtype for a in result[2]] == [dtype] * len(expected[2])
    assert_within(compare(result, expected),
                  tolerance(dtype, reduction_length(case, dims, seq_len, lengths)),
                  f"{case.label} compiled vs reference")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_nan_in_padding_leaks_nowhere(case, impl, dtype):
    """Padding rows give 0 output and 0 input gradient, and NaN (or -1 ids) written into
    the padding of the input and of grad_output changes no bit of anything valid."""
    dims, seq_len, x, g, lengths = small_batch(case, seed=2)
    layer = build_one(case, impl, dims, dtype)
    clean = run(layer, x, g, lengths)
    xn, gn = fill_padding(case, x, g, lengths)
    dirty = run(layer, xn, gn, lengths)
    mask = padding_mask(lengths, seq_len)
    y, gi, grads = dirty
    if case.kind != "loss":
        assert np.all(y[mask] == 0), "padding rows of the output are not 0"
    if gi is not None:
        assert np.all(gi[mask] == 0), "padding rows of the input gradient are not 0"
    for a in grads:
        assert np.all(np.isfinite(a)), "a parameter gradient is not finite"
    assert bit_identical(clean, dirty), "padding content changed a valid result"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_mixed_batch_equals_one_by_one(case, impl, dtype):
    dims, seq_len, x, g, lengths = small_batch(case, seed=3)
    layer = build_one(case, impl, dims, dtype)
    batched = run(layer, x, g, lengths)
    expected = one_by_one(case, layer, x, g, lengths)
    assert_within(compare(batched, expected),
                  tolerance(dtype, reduction_length(case, dims, seq_len, lengths)),
                  f"{case.label} ({impl}) batch vs one by one")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_finite_differences(case, impl):
    dims, _, x, g, lengths = small_batch(case, seed=4)
    layer = build_one(case, impl, dims, np.float64)
    worst = finite_difference_errors(case, layer, x, g, lengths, samples=3, seed=5)
    assert worst <= 1.0, f"{case.label} ({impl}): a gradient misses its finite difference " \
                         f"by {worst:.2f}x the allowed error"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_one_and_all_threads_bit_identical(case, dtype):
    """At the medium size (past the parallel thresholds): 1 thread and at least 2 give the
    same bits, and the result agrees with the reference."""
    dims, seq_len, lengths = SHAPES["medium"]
    x, g, lengths = make_inputs(case, dims, seq_len, lengths, seed=6)
    comp = build_one(case, "compiled", dims, dtype)
    results = []
    for threads in (1, max(2, hypermixer.get_num_threads())):
        hypermixer.set_num_threads(threads)
        results.append(run(comp, x, g, lengths))
    hypermixer.set_num_threads(None)
    assert bit_identical(*results), "the thread count changed the result"
