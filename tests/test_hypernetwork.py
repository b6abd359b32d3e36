"""Compiled Hypernetwork against the NumPy reference: parity, padding, gradients, threads."""

import numpy as np
import pytest

import hypermixer
from hypermixer import _kernels, reference
from helpers import assert_close, check_parity, finite_difference_check, check_padding_isolated

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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, lengths", [
    (1, None), (1, [1, 1, 1, 1]), (2, [1, 2]), (5, [5, 1, 3]), (7, [7, 7]), (6, None),
])
def test_parity_with_reference(dtype, rows, lengths):
    rng = np.random.default_rng(rows)
    batch = 2 if lengths is None else len(lengths)
    x = rng.normal(size=(batch, rows, E))
    g = rng.normal(size=(batch, rows, O))
    compiled, ref = make_pair(dtype)
    check_parity(compiled, ref, x, g, None if lengths is None else np.array(lengths))


@pytest.mark.parametrize("dtype", DTYPES)
def test_parity_on_larger_shapes(dtype):
    # Large enough for the parallel gemm tiles, column-sum blocks and long dot products.
    rng = np.random.default_rng(5)
    compiled, ref = make_pair(dtype, width=40, hidden=24, out=700, seed=2)
    x = rng.normal(size=(6, 9, 40))
    g = rng.normal(size=(6, 9, 700))
    check_parity(compiled, ref, x, g, np.array([9, 4, 1, 9, 8, 2]), factor=2.0)
    check_parity(compiled, ref, x, g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("garbage", [np.nan, np.inf])
def test_padding_rows_are_zero_and_garbage_does_not_leak(dtype, garbage):
    rng = np.random.default_rng(8)
    compiled, _ = make_pair(dtype)
    check_padding_isolated(compiled, rng.normal(size=(3, 4, E)), rng.normal(size=(3, 4, O)),
                           np.array([4, 1, 3]), garbage)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_equals_one_by_one(dtype):
    rng = np.random.default_rng(9)
    lengths = np.array([5, 2, 1, 4])
    x = rng.normal(size=(4, 5, E))
    g = rng.normal(size=(4, 5, O))
    compiled, _ = make_pair(dtype)
    y = compiled.forward(x, lengths)
    gi, grads = compiled.compute_gradients(x, g, lengths)
    summed = [np.zeros_like(p) for _, p in compiled.named_parameters()]
    for b, n in enumerate(lengths):
        gi_b, grads_b = compiled.compute_gradients(x[b, :n], g[b, :n])
        assert_close(y[b, :n], compiled.forward(x[b, :n]), dtype, "output")
        assert_close(gi[b, :n], gi_b, dtype, "input gradient")
        for s, gb in zip(summed, grads_b):
            s += gb
    for name_grad, s in zip(grads, summed):
        assert_close(name_grad, s, dtype, "summed parameter gradient")


def test_finite_differences_reference():
    rng = np.random.default_rng(10)
    _, ref = make_pair(np.float64)
    x = rng.normal(size=(3, 4, E))
    g = rng.normal(size=(3, 4, O))
    finite_difference_check(ref, x, g, np.array([4, 2, 3]), samples=5)


def test_finite_differences_compiled():
    rng = np.random.default_rng(11)
    compiled, _ = make_pair(np.float64)
    x = rng.normal(size=(2, 3, E))
    g = rng.normal(size=(2, 3, O))
    finite_difference_check(compiled, x, g, np.array([3, 2]), samples=5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", [None, [20, 7, 1, 13]])
def test_one_and_two_threads_bit_identical(dtype, lengths, restore_threads):
    rng = np.random.default_rng(12)
    compiled, _ = make_pair(dtype, width=32, hidden=16, out=600, seed=1)
    x = rng.normal(size=(4, 20, 32))
    g = rng.normal(size=(4, 20, 600))
    lengths = None if lengths is None else np.array(lengths)
    results = []
    for threads in (1, 2):
        hypermixer.set_num_threads(threads)
        y = compiled.forward(x, lengths)
        gi, grads = compiled.compute_gradients(x, g, lengths)
        results.append([y, gi] + grads)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


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
