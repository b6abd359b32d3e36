"""Hypernetwork beyond the conformance suite (hypermixer/tests/test_conformance.py: parity,
padding, batch vs one by one, finite differences, threads): names, Adam, its binding."""

import numpy as np
import pytest

import hypermixer
from hypermixer import _kernels, reference

DTYPES = [np.float32, np.float64]
E, H, O = 9, 6, 13


def make_pair(dtype, width=E, hidden=H, out=O, seed=0):
    """Compiled and reference hypernetworks with the same, nonzero, biases."""
    compiled = hypermixer.Hypernetwork(width, hidden, out, seed=seed, dtype=dtype)
    ref = reference.Hypernetwork(width, hidden, out, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    b1 = rng.normal(0.0, 0.3, size=(1, hidden))
    b2 = rng.normal(0.0, 0.3, size=(1, out))
    for layer in (compiled, ref):
        layer.b1[...] = b1
        layer.b2[...] = b2
    return compiled, ref


def test_same_seed_same_parameters():
    a, b = make_pair(np.float32, seed=4)
    assert [n for n, _ in a.named_parameters()] == ["w1", "b1", "w2", "b2"]
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert p.dtype == np.float32 and np.array_equal(p, q)
    assert a.parameters() == E * H + H + H * O + O


def test_backward_then_adam_equals_compute_then_apply():
    rng = np.random.default_rng(13)
    a, _ = make_pair(np.float64, seed=6)
    b, _ = make_pair(np.float64, seed=6)
    x = rng.normal(size=(2, 3, E))
    g = rng.normal(size=(2, 3, O))
    a.forward(x)
    a.backward(g, 0.01)
    _, grads = b.compute_gradients(x, g)
    b.apply_gradients(grads, 0.01)
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(p, q)
    assert not np.array_equal(a.w2, make_pair(np.float64, seed=6)[0].w2)


def test_binding_refuses_mismatched_shapes():
    layer, _ = make_pair(np.float64)
    x = np.zeros((2, 3, E))
    out = np.zeros((2, 3, O))
    pre = np.zeros((2, 3, H))
    hidden = np.zeros((2, 3, H))
    ok = np.array([3, 1], np.int64)
    args = (layer.w1, layer.b1.reshape(-1), layer.w2, layer.b2.reshape(-1))
    _kernels.hypernetwork_forward(out, pre, hidden, x, ok, *args)
    with pytest.raises(ValueError):
        _kernels.hypernetwork_forward(out[:, :2], pre, hidden, x, ok, *args)
    with pytest.raises(ValueError):
        _kernels.hypernetwork_forward(out, pre, hidden, x, np.array([4, 1], np.int64), *args)
    with pytest.raises(ValueError):
        _kernels.hypernetwork_forward(out, pre, hidden, x, np.array([0, 1], np.int64), *args)
    with pytest.raises(ValueError):
        _kernels.hypernetwork_forward(out, pre, hidden, x, ok, layer.w1[:, :2],
                                      *args[1:])
    with pytest.raises(ValueError):
        _kernels.hypernetwork_backward(np.zeros((2, 3, E)), np.zeros((E, H)), np.zeros(H),
                                       np.zeros((H, O)), np.zeros(O), np.zeros((2, 3, H)),
                                       np.zeros((2, 3, O + 1)), x, pre, hidden, ok,
                                       layer.w1, layer.w2)
