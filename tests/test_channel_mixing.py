"""Compiled ChannelMixingMLP against the NumPy reference, padding, gradients and threading."""

import numpy as np
import pytest

import hypermixer
from hypermixer import reference
from helpers import assert_close, check_parity, finite_difference_check, check_padding_isolated

DTYPES = [np.float32, np.float64]
E, H = 10, 14


def make_pair(dtype, width=E, hidden=H, seed=0):
    """Compiled and reference layers; random biases so the bias paths are exercised."""
    compiled = hypermixer.ChannelMixingMLP(width, hidden, seed=seed, dtype=dtype)
    ref = reference.ChannelMixingMLP(width, hidden, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    b1 = rng.normal(0.0, 0.3, size=(1, hidden))
    b2 = rng.normal(0.0, 0.3, size=(1, width))
    for layer in (compiled, ref):
        layer.b1[...] = b1
        layer.b2[...] = b2
    return compiled, ref



def test_same_seed_same_parameters():
    a = hypermixer.ChannelMixingMLP(E, H, seed=3, dtype=np.float32)
    b = reference.ChannelMixingMLP(E, H, seed=3, dtype=np.float32)
    assert [n for n, _ in a.named_parameters()] == ["w1", "b1", "w2", "b2"]
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert p.dtype == np.float32 and np.array_equal(p, q)
    assert a.parameters() == E * H + H + H * E + E


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_len, lengths", [
    (1, None), (2, None), (7, None), (2, [1, 2, 1]), (9, [9, 1, 2, 5]), (16, [16, 16]),
])
def test_parity_with_reference(dtype, seq_len, lengths):
    rng = np.random.default_rng(seq_len)
    batch = 1 if lengths is None else len(lengths)
    x = rng.normal(size=(batch, seq_len, E))
    g = rng.normal(size=(batch, seq_len, E))
    compiled, ref = make_pair(dtype)
    check_parity(compiled, ref, x, g, None if lengths is None else np.array(lengths))


@pytest.mark.parametrize("dtype", DTYPES)
def test_parity_on_larger_shapes(dtype):
    # Big enough that gemm and the column sums take their tiled / parallel paths.
    rng = np.random.default_rng(11)
    lengths = np.array([80, 33, 1, 79])
    x = rng.normal(size=(4, 80, 64))
    g = rng.normal(size=(4, 80, 64))
    compiled, ref = make_pair(dtype, width=64, hidden=300)
    check_parity(compiled, ref, x, g, lengths, factor=4.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_input_matches_batch_of_one(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, E))
    g = rng.normal(size=(5, E))
    compiled, ref = make_pair(dtype)
    y = compiled.forward(x)
    assert y.shape == (5, E)
    assert np.array_equal(y, compiled.forward(x[None])[0])
    check_parity(compiled, ref, x, g)


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
        assert_close(y[b, :n], y_b, dtype, f"output of sequence {b}")
        gi_b, grads_b = compiled.compute_gradients(x[b, :n], g[b, :n])
        assert_close(gi[b, :n], gi_b, dtype, f"input gradient of sequence {b}")
        for acc, gb in zip(sum_grads, grads_b):
            acc += gb
    for got, want in zip(grads, sum_grads):
        assert_close(got, want, dtype, "batched parameter gradient")


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_rows_are_zero_and_do_not_leak(dtype):
    rng = np.random.default_rng(6)
    compiled, _ = make_pair(dtype)
    check_padding_isolated(compiled, rng.normal(size=(3, 5, E)), rng.normal(size=(3, 5, E)),
                           np.array([3, 5, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_caller_may_change_input_between_forward_and_backward(dtype):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 4, E)).astype(dtype)
    g = rng.normal(size=(2, 4, E))
    layer, _ = make_pair(dtype)
    gi_want, grads_want = layer.compute_gradients(x, g)
    layer.forward(x)
    x[...] = 0  # the layer keeps its own packed copy of the input
    gi, grads = layer._gradients_from_cache(g)
    assert np.array_equal(gi, gi_want)
    for a, b in zip(grads, grads_want):
        assert np.array_equal(a, b)


def test_finite_differences_of_reference():
    rng = np.random.default_rng(7)
    layer = reference.ChannelMixingMLP(5, 7, seed=1, dtype=np.float64)
    layer.b1[...] = rng.normal(0, 0.3, size=(1, 7))
    x = rng.normal(size=(2, 4, 5))
    g = rng.normal(size=(2, 4, 5))
    finite_difference_check(layer, x, g, np.array([4, 3]), samples=8)


def test_finite_differences_of_compiled():
    rng = np.random.default_rng(8)
    layer, _ = make_pair(np.float64, width=5, hidden=7)
    x = rng.normal(size=(2, 3, 5))
    g = rng.normal(size=(2, 3, 5))
    finite_difference_check(layer, x, g, np.array([3, 2]), samples=6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_bit_identical(dtype, restore_threads):
    # Large enough that every gemm and column sum of the layer runs its parallel branch.
    rng = np.random.default_rng(9)
    lengths = np.array([60, 17, 43])
    x = rng.normal(size=(3, 60, 48))
    g = rng.normal(size=(3, 60, 48))
    results = []
    for threads in (1, 2):
        hypermixer.set_num_threads(threads)
        layer, _ = make_pair(dtype, width=48, hidden=700)
        y = layer.forward(x, lengths)
        gi, grads = layer.compute_gradients(x, g, lengths)
        results.append([y, gi] + grads)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_binding_refuses_inconsistent_arrays():
    # The layer never calls the kernel like this; the binding must still refuse, not crash.
    from hypermixer import _kernels
    B, L, W, Hd = 2, 3, 4, 5
    x = np.zeros((B, L, W))
    y = np.zeros_like(x)
    offsets = np.array([0, 3, 5], np.int64)
    xp, mixed, hidden = np.zeros((5, W)), np.zeros((5, W)), np.zeros((5, Hd))
    w1, b1, w2, b2 = np.zeros((W, Hd)), np.zeros(Hd), np.zeros((Hd, W)), np.zeros(W)
    _kernels.channel_mixing_forward(y, xp, hidden, mixed, x, offsets, w1, b1, w2, b2)
    for bad in ([0, 3, 7], [1, 3, 5], [0, 0, 2], [0, 3]):
        with pytest.raises(ValueError, match="offsets|length"):
            _kernels.channel_mixing_forward(y, xp, hidden, mixed, x, np.array(bad, np.int64),
                                            w1, b1, w2, b2)
    with pytest.raises(ValueError, match="xp"):
        _kernels.channel_mixing_forward(y, xp[:4].copy(), hidden, mixed, x, offsets, w1, b1,
                                        w2, b2)
    with pytest.raises(ValueError, match="w2"):
        _kernels.channel_mixing_forward(y, xp, hidden, mixed, x, offsets, w1, b1, w2.T.copy(),
                                        b2)
    gi, gp, dh = np.zeros_like(x), np.zeros((5, W)), np.zeros((5, Hd))
    dw1, db1, dw2, db2 = np.zeros_like(w1), np.zeros_like(b1), np.zeros_like(w2), np.zeros_like(b2)
    _kernels.channel_mixing_backward(gi, dw1, db1, dw2, db2, gp, dh, x, xp, hidden, offsets,
                                     w1, w2)
    with pytest.raises(ValueError, match="dhidden"):
        _kernels.channel_mixing_backward(gi, dw1, db1, dw2, db2, gp, dh[:, :2].copy(), x, xp,
                                         hidden, offsets, w1, w2)
    with pytest.raises(ValueError, match="db1"):
        _kernels.channel_mixing_backward(gi, dw1, db1[:2].copy(), dw2, db2, gp, dh, x, xp,
                                         hidden, offsets, w1, w2)
