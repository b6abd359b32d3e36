"""Every layer of the registry (``hypermixer.check.CASES``) x implementation x dtype:
same initial parameters, compiled vs reference, padding, unbatched input, batch vs one by
one, finite differences, 1 vs all threads.

Tolerances come from ``hypermixer.check.tolerance``: eps(dtype) * sqrt(K) * one factor, K
the length of the chain of sums behind a result. A new layer is tested by adding its
``Case`` to ``CASES``; nothing here names a layer.
"""

import numpy as np
import pytest

import hypermixer
from hypermixer.check import (CASES, DTYPES, IMPLEMENTATIONS, SHAPES, bit_identical,
                              build_one, check_case, check_stream, compare, fill_padding,
                              finite_difference_errors, make_inputs, one_by_one, padding_mask,
                              reduction_length, relative_error, run, stream_forward,
                              tolerance)

CASE_IDS = [c.label for c in CASES]
DTYPE_IDS = [d.name for d in DTYPES]
IMPLS = list(IMPLEMENTATIONS)

cases = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
STREAMED = [c for c in CASES if c.stream]
streamed_cases = pytest.mark.parametrize("case", STREAMED, ids=[c.label for c in STREAMED])
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
impls = pytest.mark.parametrize("impl", IMPLS)


def small_batch(case, seed=0):
    dims, seq_len, lengths = SHAPES["small"]
    x, g, lengths = make_inputs(case, dims, seq_len, lengths, seed=seed)
    return dims, seq_len, x, g, lengths


def assert_within(errors, tol, what):
    names = ("output", "input gradient", "parameter gradients")
    for name, err in zip(names, errors):
        if err is not None:
            assert err <= tol, f"{what}: {name} relative error {err:.3e} > {tol:.1e}"


@dtypes
@cases
def test_same_seed_same_parameters(case, dtype):
    dims = SHAPES["small"][0]
    a, b = (case.build(IMPLEMENTATIONS[name], dims, dtype, 7) for name in IMPLS)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert p.dtype == dtype and p.shape == q.shape, name
        assert np.array_equal(p, q), f"initial {name} differs between the implementations"


@pytest.mark.parametrize("size", list(SHAPES))
@dtypes
@cases
def test_compiled_matches_reference(case, dtype, size):
    """Output, input gradient and every parameter gradient on a mixed-length batch (the
    medium one past the parallel thresholds, then the default model's shapes); NaN in its
    padding changes no bit."""
    rows = check_case(case, dtype, size, [1])
    problems = [r.problem for r in rows if not r.passed]
    assert not problems, f"{case.label}: {problems}"


@dtypes
@cases
def test_result_types(case, dtype):
    dims, _, x, g, lengths = small_batch(case)
    y, gi, grads = run(build_one(case, "compiled", dims, dtype), x, g, lengths)
    if case.kind != "loss":   # the loss is a Python float
        assert y.dtype == dtype and y.shape == x.shape[:2] + (case.out_width(dims),)
    assert gi is None if case.kind == "ids" else (gi.dtype == dtype and gi.shape == x.shape)
    assert all(a.dtype == dtype for a in grads)


@pytest.mark.parametrize("garbage", [np.nan, np.inf], ids=["nan", "inf"])
@dtypes
@impls
@cases
def test_garbage_in_padding_leaks_nowhere(case, impl, dtype, garbage):
    """Padding rows give 0 output and 0 input gradient, and NaN or Inf (-1 for ids and
    targets) in the padding of the input and of grad_output changes no bit of anything."""
    dims, seq_len, x, g, lengths = small_batch(case, seed=2)
    layer = build_one(case, impl, dims, dtype)
    clean = run(layer, x, g, lengths)
    xn, gn = fill_padding(case, x, g, lengths, garbage)
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


@dtypes
@impls
@cases
def test_unbatched_input_equals_batch_of_one(case, impl, dtype):
    dims, _, x, g, lengths = small_batch(case, seed=3)
    layer = build_one(case, impl, dims, dtype)
    n = int(lengths[0])
    single = run(layer, x[0, :n], g[0, :n], None)
    batch = run(layer, x[:1, :n], g[:1, :n], None)
    assert single[0].shape == batch[0].shape[1:] or case.kind == "loss"
    batch = (batch[0] if case.kind == "loss" else batch[0][0],
             None if batch[1] is None else batch[1][0], batch[2])
    assert bit_identical(single, batch)


@dtypes
@impls
@cases
def test_mixed_batch_equals_one_by_one(case, impl, dtype):
    dims, seq_len, x, g, lengths = small_batch(case, seed=3)
    layer = build_one(case, impl, dims, dtype)
    batched = run(layer, x, g, lengths)
    expected = one_by_one(case, layer, x, g, lengths)
    assert_within(compare(batched, expected),
                  tolerance(dtype, reduction_length(case, dims, seq_len, lengths)),
                  f"{case.label} ({impl}) batch vs one by one")
    if case.rows_exact:
        assert np.array_equal(batched[0], expected[0]) and \
            np.array_equal(batched[1], expected[1]), "rows are computed on their own"


@impls
@cases
def test_gradients_match_finite_differences(case, impl):
    dims, _, x, g, lengths = small_batch(case, seed=4)
    layer = build_one(case, impl, dims, np.float64)
    worst = finite_difference_errors(case, layer, x, g, lengths, samples=3, seed=5)
    assert worst <= 1.0, f"{case.label} ({impl}): a gradient misses its finite difference " \
                         f"by {worst:.2f}x the allowed error"


@pytest.mark.parametrize("batch", ["mixed", "one"])
@dtypes
@cases
def test_one_and_all_threads_bit_identical(case, dtype, batch):
    """At the medium size (past the parallel thresholds): 1 thread and at least 2 give the
    same bits, for the results and for the parameters after one Adam step. A batch of one
    sequence too: with fewer sequences than threads, kernels split each sequence instead."""
    dims, seq_len, lengths = SHAPES["medium"]
    x, g, lengths = make_inputs(case, dims, seq_len, lengths, seed=6)
    if batch == "one":
        x, g, lengths = x[:1], g[:1], lengths[:1]
    results = []
    for threads in (1, max(2, hypermixer.get_num_threads())):
        hypermixer.set_num_threads(threads)
        layer = build_one(case, "compiled", dims, dtype)
        y, gi, grads = run(layer, x, g, lengths)
        if grads:
            layer.apply_gradients(grads, 1e-3)
        results.append((y, gi, grads + [p for _, p in layer.named_parameters()]))
    hypermixer.set_num_threads(None)
    assert bit_identical(*results), "the thread count changed the result"


@pytest.mark.parametrize("size", list(SHAPES))
@dtypes
@streamed_cases
def test_streamed_matches_forward(case, dtype, size):
    """Generation's path, one token at a time through ``_step`` with a key/value cache or
    running sums, gives the forward's rows (against the reference's forward and the compiled
    one), with the same bits at 1 and at all threads."""
    rows = check_stream(case, dtype, size, [1, max(2, hypermixer.get_num_threads())])
    problems = [r.problem for r in rows if not r.passed]
    assert not problems, f"{case.label}: {problems}"


@dtypes
@streamed_cases
def test_reference_streamed_matches_its_forward(case, dtype):
    dims, seq_len, x, _, lengths = small_batch(case, seed=8)
    layer = build_one(case, "reference", dims, dtype)
    err = relative_error(stream_forward(case, layer, x, lengths), layer.forward(x, lengths))
    assert err <= tolerance(dtype, case.chain(dims, seq_len)), f"{case.label}: {err:.1e}"
