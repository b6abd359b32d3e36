"""ChannelMixingMLP beyond the conformance suite (hypermixer/tests/test_conformance.py:
parity, padding, batch vs one by one, finite differences, threads): names, its own input
copy, its binding."""

import numpy as np
import pytest

import hypermixer
from hypermixer import reference

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
