"""The Layer protocol (SPEC section 4) on every core layer, compiled and reference."""

import math

import numpy as np
import pytest

import hypermixer
from hypermixer import reference
from hypermixer._blueprints import token_mixing_output_dim

E, H, S, HH, HT = 6, 10, 5, 3, 4
O = token_mixing_output_dim(S, HT)

# name -> (constructor taking (module, dtype), input width)
FACTORIES = {
    "LayerNorm": (lambda m, d: m.LayerNorm(E, dtype=d), E),
    "Hypernetwork": (lambda m, d: m.Hypernetwork(E, HH, O, seed=1, dtype=d), E),
    "TokenMixingMLP": (lambda m, d: m.TokenMixingMLP(
        E, S, token_mixing_hidden_dim=HT, hypernetwork_hidden_dim=HH, seed=2, dtype=d), E),
    "TokenMixingMLP-causal": (lambda m, d: m.TokenMixingMLP(
        E, S, token_mixing_hidden_dim=HT, hypernetwork_hidden_dim=HH, causal=True, seed=2,
        dtype=d), E),
    "ChannelMixingMLP": (lambda m, d: m.ChannelMixingMLP(E, H, seed=3, dtype=d), E),
    "HyperMixerBlock": (lambda m, d: m.HyperMixerBlock(
        E, H, S, hypernetwork_hidden_dim=HH, token_mixing_hidden_dim=HT, seed=4, dtype=d), E),
    "HyperMixerBlock-causal": (lambda m, d: m.HyperMixerBlock(
        E, H, S, hypernetwork_hidden_dim=HH, token_mixing_hidden_dim=HT, causal=True, seed=4,
        dtype=d), E),
}
MODULES = {"compiled": hypermixer, "reference": reference}
CASES = [(impl, name) for name in FACTORIES for impl in MODULES]


def make(impl, name, dtype=np.float64):
    factory, _ = FACTORIES[name]
    return factory(MODULES[impl], dtype)


def output_width(layer):
    return getattr(layer, "output_dim", layer.in_features)


def data(layer, batch=2, seq_len=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, seq_len, layer.in_features))
    g = rng.normal(size=(batch, seq_len, output_width(layer)))
    return x, g


def snapshot(layer):
    return [(name, arr.copy()) for name, arr in layer.named_parameters()]


def assert_unchanged(layer, saved):
    for (name, arr), (_, old) in zip(layer.named_parameters(), saved):
        assert np.array_equal(arr, old), f"{name} changed"


@pytest.fixture(params=CASES, ids=[f"{i}-{n}" for i, n in CASES])
def case(request):
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_equals_compute_then_apply(case, dtype):
    first, second = make(*case, dtype=dtype), make(*case, dtype=dtype)
    lengths = np.array([4, 2])
    for step in range(2):
        x, g = data(first, seed=step)
        first.forward(x, lengths)
        gi_a = first.backward(g, 1e-2)
        gi_b, grads = second.compute_gradients(x, g, lengths)
        second.apply_gradients(grads, 1e-2)
        assert np.array_equal(gi_a, gi_b)
        for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
            assert np.array_equal(a, b), f"{name} differs after step {step + 1}"
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in
               zip(first.named_parameters(), make(*case, dtype=dtype).named_parameters()))


def test_parameter_views_and_count(case):
    layer = make(*case)
    named = layer.named_parameters()
    assert layer.parameters() == sum(a.size for _, a in named)
    assert len({n for n, _ in named}) == len(named)
    # Live storage: writing through named_parameters() changes what forward computes.
    x, _ = data(layer)
    y = layer.forward(x)
    for _, arr in named:
        arr += 0.5
    assert not np.allclose(layer.forward(x), y)


def test_input_dtype_and_unbatched_round_trip(case):
    layer = make(*case, dtype=np.float32)
    x, g = data(layer, batch=1)
    y = layer.forward(x[0].astype(np.float64))
    assert y.dtype == np.float32 and y.shape == (4, output_width(layer))
    gi, grads = layer.compute_gradients(x[0], g[0])
    assert gi.shape == x[0].shape and gi.dtype == np.float32
    assert [a.shape for a in grads] == [a.shape for _, a in layer.named_parameters()]


def bad_inputs(layer):
    """(description, x, lengths, exception, message pattern) that forward must refuse."""
    W = layer.in_features
    x, _ = data(layer)
    out = [
        ("1-d input", np.zeros(W), None, ValueError, "dimensions"),
        ("4-d input", np.zeros((1, 2, 3, W)), None, ValueError, "dimensions"),
        ("wrong width", np.zeros((3, W + 1)), None, ValueError, "features"),
        ("L = 0", np.zeros((0, W)), None, ValueError, "empty"),
        ("B = 0", np.zeros((0, 3, W)), None, ValueError, "empty"),
        ("length 0", x, np.array([0, 4]), ValueError, "lengths"),
        ("length > L", x, np.array([4, 5]), ValueError, "lengths"),
        ("too many lengths", x, np.array([4, 4, 4]), ValueError, "lengths"),
        ("float lengths", x, np.array([4.0, 2.0]), TypeError, "lengths"),
        ("lengths with 2-d input", x[0], np.array([4]), ValueError, "lengths"),
        ("complex input", x.astype(complex), None, TypeError, "input"),
        ("string input", np.full((2, W), "a"), None, TypeError, "input"),
    ]
    if layer.max_seq_len is not None:
        out.append(("L > max_seq_len", np.zeros((layer.max_seq_len + 1, W)), None, ValueError,
                    "max_seq_len"))
    return out


def test_bad_forward_input_raises_and_changes_nothing(case):
    layer = make(*case)
    x, g = data(layer)
    for what, bad_x, lengths, exc, pattern in bad_inputs(layer):
        saved = snapshot(layer)
        with pytest.raises(exc, match=pattern):
            layer.forward(bad_x, lengths)
        with pytest.raises(exc, match=pattern):
            layer.compute_gradients(bad_x, g, lengths)
        assert_unchanged(layer, saved)
    # The layer still works after all that.
    assert np.all(np.isfinite(layer.forward(x)))


def test_backward_before_forward(case):
    layer = make(*case)
    _, g = data(layer)
    saved = snapshot(layer)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(g, 1e-3)
    assert_unchanged(layer, saved)


def test_rejected_forward_keeps_the_previous_cache(case):
    # Input is checked before anything is touched, so a refused call leaves the last
    # successful forward in place: backward still differentiates that one.
    layer = make(*case)
    x, g = data(layer)
    want, _ = layer.compute_gradients(x, g)
    layer.forward(x)
    with pytest.raises(ValueError):
        layer.forward(x[:, :, :-1])
    with pytest.raises(ValueError):
        layer.forward(x, np.array([0, 1]))
    assert np.array_equal(layer.backward(g, 1e-3), want)


def test_wrong_grad_output_shape(case):
    layer = make(*case)
    x, g = data(layer)
    layer.forward(x)
    saved = snapshot(layer)
    for bad in (g[:, :-1], g[..., :-1], g[0], g[None]):
        with pytest.raises(ValueError, match="grad_output"):
            layer.backward(bad, 1e-3)
    with pytest.raises(ValueError, match="grad_output"):
        layer.compute_gradients(x, g[:1])
    assert_unchanged(layer, saved)


@pytest.mark.parametrize("lr", [math.nan, math.inf, -1e-3])
def test_bad_learning_rate(case, lr):
    layer = make(*case)
    x, g = data(layer)
    layer.forward(x)
    saved = snapshot(layer)
    with pytest.raises(ValueError, match="learning rate"):
        layer.backward(g, lr)
    _, grads = layer.compute_gradients(x, g)
    with pytest.raises(ValueError, match="learning rate"):
        layer.apply_gradients(grads, lr)
    assert_unchanged(layer, saved)


def test_bad_gradient_lists(case):
    layer = make(*case)
    x, g = data(layer)
    _, grads = layer.compute_gradients(x, g)
    saved = snapshot(layer)
    with pytest.raises(ValueError, match="expected"):
        layer.apply_gradients(grads[:-1], 1e-3)
    with pytest.raises(ValueError, match="expected"):
        layer.apply_gradients(grads + [grads[0]], 1e-3)
    with pytest.raises(TypeError, match="list"):
        layer.apply_gradients(grads[0], 1e-3)
    # A wrong shape in the LAST array: nothing before it may have been applied either.
    wrong = list(grads[:-1]) + [np.zeros(grads[-1].shape + (1,))]
    with pytest.raises(ValueError, match="shape"):
        layer.apply_gradients(wrong, 1e-3)
    wrong = [np.zeros((grads[0].size + 1,))] + list(grads[1:])
    with pytest.raises(ValueError, match="shape"):
        layer.apply_gradients(wrong, 1e-3)
    with pytest.raises(TypeError):
        layer.apply_gradients([np.full(a.shape, "x") for a in grads], 1e-3)
    assert_unchanged(layer, saved)
    # A correct list still works and takes one Adam step.
    layer.apply_gradients(grads, 1e-3)
    assert all(leaf._adam_step == 1 for leaf in layer._leaves())
