"""Compiled LayerNorm against the NumPy reference, padding, gradients and threading."""

import numpy as np
import pytest

import hypermixer
from hypermixer import reference
from helpers import assert_close, check_parity, finite_difference_check, check_padding_isolated

DTYPES = [np.float32, np.float64]
E = 12


def make_pair(dtype, width=E, seed=0):
    """Compiled and reference layers with the same random (non-trivial) gain and shift."""
    compiled = hypermixer.LayerNorm(width, dtype=dtype)
    ref = reference.LayerNorm(width, dtype=dtype)
    rng = np.random.default_rng(seed)
    gamma = rng.normal(1.0, 0.5, size=(1, width))
    beta = rng.normal(0.0, 0.5, size=(1, width))
    for layer in (compiled, ref):
        layer.gamma[...] = gamma
        layer.beta[...] = beta
    return compiled, ref



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_len, lengths", [
    (1, None), (2, None), (7, None), (2, [1, 2, 1]), (9, [9, 1, 2, 5]), (16, [16, 16]),
])
def test_parity_with_reference(dtype, seq_len, lengths):
    rng = np.random.default_rng(seq_len)
    batch = 1 if lengths is None else len(lengths)
    x = rng.normal(2.0, 3.0, size=(batch, seq_len, E))
    g = rng.normal(size=(batch, seq_len, E))
    compiled, ref = make_pair(dtype)
    check_parity(compiled, ref, x, g, None if lengths is None else np.array(lengths))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_input_matches_batch_of_one(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, E))
    g = rng.normal(size=(5, E))
    compiled, ref = make_pair(dtype)
    y2 = compiled.forward(x)
    assert y2.shape == (5, E)
    assert np.array_equal(y2, compiled.forward(x[None])[0])
    gi, grads = compiled.compute_gradients(x, g)
    gi3, grads3 = compiled.compute_gradients(x[None], g[None])
    assert np.array_equal(gi, gi3[0])
    for a, b in zip(grads, grads3):
        assert np.array_equal(a, b)
    check_parity(compiled, ref, x, g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalised_rows_have_zero_mean_unit_variance(dtype):
    # With gain 1 and shift 0 every valid row is (x - mean) / sqrt(var + eps): its mean is 0
    # and its population variance is var / (var + eps).
    rng = np.random.default_rng(4)
    x = rng.normal(5.0, 2.0, size=(2, 6, 32))
    layer = hypermixer.LayerNorm(32, dtype=dtype)
    y = layer.forward(x, np.array([6, 3])).astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for b, n in enumerate([6, 3]):
        var = x[b, :n].var(axis=1)
        assert np.allclose(y[b, :n].mean(axis=1), 0.0, atol=tol * 10)
        assert np.allclose(y[b, :n].var(axis=1), var / (var + 1e-5), rtol=tol * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_lengths_equal_one_by_one(dtype):
    rng = np.random.default_rng(5)
    lengths = np.array([4, 1, 7, 2, 7])
    x = rng.normal(size=(5, 7, E))
    g = rng.normal(size=(5, 7, E))
    compiled, _ = make_pair(dtype)
    y = compiled.forward(x, lengths)
    gi, grads = compiled.compute_gradients(x, g, lengths)
    sum_grads = [np.zeros_like(p) for p in grads]
    for b, n in enumerate(lengths):
        y_b = compiled.forward(x[b, :n])
        # Each row is normalised on its own, so the batch result is the same to the bit.
        assert np.array_equal(y[b, :n], y_b)
        gi_b, grads_b = compiled.compute_gradients(x[b, :n], g[b, :n])
        assert np.array_equal(gi[b, :n], gi_b)
        for acc, gb in zip(sum_grads, grads_b):
            acc += gb
    for got, want in zip(grads, sum_grads):
        assert_close(got, want, dtype, "batched parameter gradient")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("garbage", [np.nan, np.inf])
def test_padding_rows_are_zero_and_do_not_leak(dtype, garbage):
    rng = np.random.default_rng(6)
    compiled, _ = make_pair(dtype)
    check_padding_isolated(compiled, rng.normal(size=(3, 5, E)), rng.normal(size=(3, 5, E)),
                           np.array([3, 5, 1]), garbage)


def test_finite_differences_of_reference():
    rng = np.random.default_rng(7)
    layer = reference.LayerNorm(6, dtype=np.float64)
    layer.gamma[...] = rng.normal(1.0, 0.5, size=(1, 6))
    layer.beta[...] = rng.normal(size=(1, 6))
    x = rng.normal(1.0, 0.7, size=(2, 4, 6))
    g = rng.normal(size=(2, 4, 6))
    finite_difference_check(layer, x, g, np.array([4, 2]), samples=8)


def test_finite_differences_of_compiled():
    rng = np.random.default_rng(8)
    layer, _ = make_pair(np.float64, width=6)
    x = rng.normal(size=(2, 3, 6))
    g = rng.normal(size=(2, 3, 6))
    finite_difference_check(layer, x, g, np.array([3, 2]), samples=6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_bit_identical(dtype, restore_threads):
    # 390 padded rows of 64 features: above the kernels' parallel threshold, and spanning
    # many reduction tiles, some of them straddling two sequences and padding.
    assert hypermixer.openmp_enabled()
    rng = np.random.default_rng(9)
    lengths = np.array([130, 77, 101])
    x = rng.normal(size=(3, 130, 64))
    g = rng.normal(size=(3, 130, 64))
    results = []
    for threads in (1, 2):
        hypermixer.set_num_threads(threads)
        layer, _ = make_pair(dtype, width=64)
        y = layer.forward(x, lengths)
        gi, grads = layer.compute_gradients(x, g, lengths)
        results.append([y, gi] + grads)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_binding_refuses_inconsistent_arrays():
    # The layer never calls the kernel like this; the binding must still refuse, not crash.
    from hypermixer import _kernels
    B, L, W = 2, 3, 4
    x = np.zeros((B, L, W))
    y, xhat = np.zeros_like(x), np.zeros_like(x)
    mean, rstd = np.zeros((B, L)), np.zeros((B, L))
    gamma, beta = np.ones(W), np.zeros(W)
    lengths = np.array([3, 2], np.int64)
    _kernels.layernorm_forward(y, xhat, mean, rstd, x, lengths, gamma, beta)
    with pytest.raises(ValueError, match="lengths"):
        _kernels.layernorm_forward(y, xhat, mean, rstd, x, np.array([3, 4], np.int64), gamma,
                                   beta)
    with pytest.raises(ValueError, match="entries"):
        _kernels.layernorm_forward(y, xhat, mean, rstd, x, lengths[:1], gamma, beta)
    with pytest.raises(ValueError):
        _kernels.layernorm_forward(y[:, :2].copy(), xhat, mean, rstd, x, lengths, gamma, beta)
    with pytest.raises(ValueError):
        _kernels.layernorm_forward(y, xhat, mean, rstd, x, lengths, gamma[:3].copy(), beta)
    with pytest.raises(ValueError):  # mixed precision: Cython's buffer dtype mismatch
        _kernels.layernorm_forward(y.astype(np.float32), xhat, mean, rstd, x, lengths, gamma,
                                   beta)
    partial = np.zeros((1, 2 * W))
    gi, dg, db = np.zeros_like(x), np.zeros(W), np.zeros(W)
    _kernels.layernorm_backward(gi, dg, db, partial, x, xhat, rstd, lengths, gamma)
    with pytest.raises(ValueError, match="partial"):
        _kernels.layernorm_backward(gi, dg, db, partial[:, :W].copy(), x, xhat, rstd, lengths,
                                    gamma)
    with pytest.raises(ValueError, match="rstd"):
        _kernels.layernorm_backward(gi, dg, db, partial, x, xhat, rstd[:1].copy(), lengths,
                                    gamma)
