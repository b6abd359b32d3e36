"""TokenMixingMLP beyond the conformance suite (hypermixer/tests/test_conformance.py:
parity, padding, batch vs one by one, finite differences, threads, both modes): causality,
the two modes' relation, a shared hypernetwork, the binding."""

import numpy as np
import pytest

import hypermixer
from hypermixer import _kernels, reference
from hypermixer._layer import Layer
from helpers import assert_close, check_parity, finite_difference_check

DTYPES = [np.float32, np.float64]
MODES = [False, True]
E, S, HT, HH = 7, 9, 5, 4


def randomize_biases(layers, seed):
    """Nonzero hypernetwork biases (the defaults are 0), identical in every layer given."""
    hyper = layers[0].hypernetwork
    rng = np.random.default_rng(seed + 100)
    b1 = rng.normal(0.0, 0.3, size=hyper.b1.shape)
    b2 = rng.normal(0.0, 0.3, size=hyper.b2.shape)
    for layer in layers:
        layer.hypernetwork.b1[...] = b1
        layer.hypernetwork.b2[...] = b2


def make_pair(dtype, causal, width=E, max_len=S, ht=HT, hh=HH, seed=0):
    kw = dict(token_mixing_hidden_dim=ht, hypernetwork_hidden_dim=hh, causal=causal,
              seed=seed, dtype=dtype)
    compiled = hypermixer.TokenMixingMLP(width, max_len, **kw)
    ref = reference.TokenMixingMLP(width, max_len, **kw)
    randomize_biases([compiled, ref], seed)
    return compiled, ref


class Stack(Layer):
    """Test composite: its children applied in order (used to share a hypernetwork)."""

    def __init__(self, layers, dtype):
        super().__init__(dtype)
        for i, layer in enumerate(layers):
            self._add_child(f"layer{i}", layer)

    def _forward(self, x, lengths):
        for _, layer in self._children:
            x = layer._forward(x, lengths)
        return x

    def _backward(self, grad_output):
        grad, child_grads = grad_output, []
        for _, layer in reversed(self._children):
            grad, grads = layer._backward(grad)
            child_grads.append((layer, grads))
        return grad, self._merge_gradients(child_grads[::-1])


def test_parameters_are_the_hypernetworks():
    compiled, ref = make_pair(np.float32, False)
    names = [n for n, _ in compiled.named_parameters()]
    assert names == ["hypernetwork.w1", "hypernetwork.b1", "hypernetwork.w2", "hypernetwork.b2"]
    out = 2 * S * HT + HT + S
    assert compiled.hypernetwork.w2.shape == (HH, out)
    assert compiled.parameters() == ref.parameters() == E * HH + HH + HH * out + out


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_rows_do_not_see_the_future(dtype):
    rng = np.random.default_rng(27)
    compiled, ref = make_pair(dtype, True)
    x = rng.normal(size=(S, E))
    y = compiled.forward(x)
    for t in (0, 3, S - 2):
        changed = x.copy()
        changed[t + 1:] = rng.normal(size=(S - t - 1, E)) * 5
        y2 = compiled.forward(changed)
        assert np.array_equal(y[:t + 1], y2[:t + 1])
        assert not np.allclose(y[t + 1:], y2[t + 1:])
        assert np.allclose(ref.forward(changed)[:t + 1], y[:t + 1], atol=1e-4)
    # An input row after t gets no gradient from the output rows 0..t.
    g = np.zeros((S, E))
    g[:4] = rng.normal(size=(4, E))
    gi, _ = compiled.compute_gradients(x, g)
    assert np.all(gi[4:] == 0) and np.any(gi[:4] != 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_len", [1, 2, 5, S])
def test_causal_last_row_equals_bidirectional_last_row(dtype, seq_len):
    rng = np.random.default_rng(28)
    causal, _ = make_pair(dtype, True)
    bidirectional, _ = make_pair(dtype, False)
    x = rng.normal(size=(seq_len, E))
    y_c = causal.forward(x)
    y_b = bidirectional.forward(x)
    assert_close(y_c[-1], y_b[-1], dtype, "last row")
    if seq_len > 1:
        assert not np.allclose(y_c[0], y_b[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("modes", [(False, False), (True, True), (False, True)])
def test_shared_hypernetwork_in_a_composite(dtype, modes):
    rng = np.random.default_rng(29)
    stacks = []
    for impl in (hypermixer, reference):
        first = impl.TokenMixingMLP(E, S, token_mixing_hidden_dim=HT, hypernetwork_hidden_dim=HH,
                                    causal=modes[0], seed=7, dtype=dtype)
        second = impl.TokenMixingMLP(E, S, token_mixing_hidden_dim=HT, causal=modes[1],
                                     hypernetwork=first.hypernetwork, dtype=dtype)
        assert second.hypernetwork is first.hypernetwork
        stacks.append(Stack([first, second], dtype))
    randomize_biases([stacks[0]._children[0][1], stacks[1]._children[0][1]], 7)
    compiled, ref = stacks
    assert compiled.parameters() == compiled._children[0][1].parameters()
    assert len(compiled.named_parameters()) == 4
    x = rng.normal(size=(3, 6, E))
    g = rng.normal(size=(3, 6, E))
    lengths = np.array([6, 2, 5])
    check_parity(compiled, ref, x, g, lengths, factor=4.0)
    if dtype == np.float64:
        finite_difference_check(ref, x, g, lengths, samples=4)
        finite_difference_check(compiled, x, g, lengths, samples=4)


def test_shared_hypernetwork_gradient_is_the_sum_of_both_uses():
    rng = np.random.default_rng(30)
    kw = dict(token_mixing_hidden_dim=HT, hypernetwork_hidden_dim=HH, dtype=np.float64)
    first = hypermixer.TokenMixingMLP(E, S, seed=2, **kw)
    second = hypermixer.TokenMixingMLP(E, S, hypernetwork=first.hypernetwork, causal=True, **kw)
    x = rng.normal(size=(2, 5, E))
    g = rng.normal(size=(2, 5, E))
    _, grads = Stack([first, second], np.float64).compute_gradients(x, g)
    # The same two uses one at a time: second's input is first's output.
    mid = first.forward(x)
    gmid, grads_second = second.compute_gradients(mid, g)
    _, grads_first = first.compute_gradients(x, gmid)
    for total, a, b in zip(grads, grads_first, grads_second):
        assert_close(total, a + b, np.float64, "shared gradient")


def test_binding_refuses_mismatched_shapes():
    x = np.zeros((2, 4, E))
    ok = np.array([4, 2], np.int64)
    out = 2 * S * HT + HT + S
    y = np.zeros_like(x)
    act = np.zeros((2, HT, E))
    theta = np.zeros((2, out))
    _kernels.token_mixing_forward(y, act, x, theta, ok, S, HT)
    with pytest.raises(ValueError):
        _kernels.token_mixing_forward(y, act, x, theta[:, 1:], ok, S, HT)
    with pytest.raises(ValueError):   # S smaller than the sequence
        _kernels.token_mixing_forward(y, act, x, theta, ok, 3, HT)
    with pytest.raises(ValueError):
        _kernels.token_mixing_forward(y, act, x, theta, np.array([5, 1], np.int64), S, HT)
    work = np.zeros((1, HT * E))
    with pytest.raises(ValueError):
        _kernels.token_mixing_causal_forward(y, work[:, 1:], x, np.zeros((2, 4, out)), ok, S,
                                             HT)
    per_seq = _kernels.token_mixing_causal_partial_size(4, E, 2)
    with pytest.raises(ValueError):
        _kernels.token_mixing_causal_backward(np.zeros_like(x), np.zeros((2, 4, out)),
                                              np.zeros((2, per_seq - 1)),
                                              np.zeros((1, HT * E)), x, x,
                                              np.zeros((2, 4, out)), ok, S, HT, 2)
    with pytest.raises(ValueError):
        _kernels.token_mixing_pool_forward(np.zeros((3, E)), x, ok)
