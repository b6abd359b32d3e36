"""Silently wrong gradients (issue 10 class 7): the caller cannot change a pending backward,
a backward consumes its forward, refused calls change nothing, clip_norm is checked."""

import numpy as np
import pytest

import hypermixer
from hypermixer import reference
from hypermixer._blueprints import token_mixing_output_dim
from hypermixer.model import ModelConfig, build_network

E, H, S, HH, HT, V = 6, 10, 5, 3, 4, 9
O = token_mixing_output_dim(S, HT)

FACTORIES = {
    "LayerNorm": lambda m: m.LayerNorm(E, dtype=np.float64),
    "Hypernetwork": lambda m: m.Hypernetwork(E, HH, O, seed=1, dtype=np.float64),
    "TokenMixingMLP": lambda m: m.TokenMixingMLP(
        E, S, token_mixing_hidden_dim=HT, hypernetwork_hidden_dim=HH, seed=2,
        dtype=np.float64),
    "TokenMixingMLP-causal": lambda m: m.TokenMixingMLP(
        E, S, token_mixing_hidden_dim=HT, hypernetwork_hidden_dim=HH, causal=True, seed=2,
        dtype=np.float64),
    "ChannelMixingMLP": lambda m: m.ChannelMixingMLP(E, H, seed=3, dtype=np.float64),
    "HyperMixerBlock": lambda m: m.HyperMixerBlock(
        E, H, S, hypernetwork_hidden_dim=HH, token_mixing_hidden_dim=HT, causal=True, seed=4,
        dtype=np.float64),
    "SelfAttention": lambda m: m.SelfAttention(E, seed=5, dtype=np.float64),
    "TransformerBlock": lambda m: m.TransformerBlock(E, H, S, seed=6, dtype=np.float64),
    "OutputProjection": lambda m: m.OutputProjection(E, V, seed=7, dtype=np.float64),
    "Embeddings": lambda m: m.Embeddings(V, S, E, seed=8, dtype=np.float64),
}
MODULES = {"compiled": hypermixer, "reference": reference}
CASES = [(impl, name) for name in FACTORIES for impl in MODULES]


def make(impl, name):
    return FACTORIES[name](MODULES[impl])


def data(layer, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(layer, (hypermixer.Embeddings, reference.Embeddings)):
        x = rng.integers(0, V, size=(2, 4))
    else:
        x = rng.normal(size=(2, 4, E))
    out_shape = layer._output_shape(x.shape)
    return x, rng.normal(size=out_shape)


def other_input(x, seed=9):
    rng = np.random.default_rng(seed)
    if x.dtype.kind == "i":
        return (x + 1 + rng.integers(0, V - 1, size=x.shape)) % V   # every id changes
    return rng.normal(size=x.shape)


def params(layer):
    return [arr.copy() for _, arr in layer.named_parameters()]


def assert_same(a, b):
    assert len(a) == len(b)
    for u, w in zip(a, b):
        assert np.array_equal(u, w)


@pytest.fixture(params=CASES, ids=[f"{i}-{n}" for i, n in CASES])
def case(request):
    return request.param


def test_reusing_the_input_buffer_before_backward_changes_nothing(case):
    layer, twin = make(*case), make(*case)
    x, g = data(layer)
    lengths = np.array([4, 3])
    want_input, want = twin.compute_gradients(x.copy(), g, lengths.copy())
    twin.apply_gradients(want, 1e-2)
    layer.forward(x, lengths)
    x[...] = other_input(x)   # the caller reuses both buffers before the backward
    lengths[...] = [1, 1]
    got_input = layer.backward(g, 1e-2)
    if want_input is None:
        assert got_input is None
    else:
        assert np.array_equal(got_input, want_input)
    assert_same(params(layer), params(twin))


def test_second_backward_after_one_forward_is_refused(case):
    layer = make(*case)
    x, g = data(layer)
    layer.forward(x)
    layer.backward(g, 1e-2)
    after_first = params(layer)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(g, 1e-2)
    assert_same(params(layer), after_first)
    assert layer._adam_step == 1


def test_refused_calls_keep_the_pending_forward(case):
    layer, twin = make(*case), make(*case)
    x, g = data(layer)
    x2, _ = data(layer, seed=1)
    twin.forward(x)
    want_input = twin.backward(g, 1e-2)
    layer.forward(x)
    before = params(layer)
    bad_g = np.zeros(g.shape[:-1] + (g.shape[-1] + 1,))
    with pytest.raises(ValueError, match="grad_output"):
        layer.compute_gradients(x2, bad_g)          # refused before its forward runs
    with pytest.raises(ValueError):
        layer.forward(x2[:, :, :1] if x2.ndim == 3 else x2[np.newaxis])   # bad shape
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(bad_g, 1e-2)
    with pytest.raises(ValueError, match="learning rate"):
        layer.backward(g, float("nan"))
    with pytest.raises(ValueError, match="learning rate"):
        layer.apply_gradients([np.zeros_like(p) for p in before], -1.0)
    assert_same(params(layer), before)
    assert layer._adam_step == 0
    got_input = layer.backward(g, 1e-2)   # the first forward is still the pending one
    if want_input is None:
        assert got_input is None
    else:
        assert np.array_equal(got_input, want_input)
    assert_same(params(layer), params(twin))


def test_compute_gradients_returns_arrays_the_caller_owns(case):
    layer = make(*case)
    x, g = data(layer)
    _, first = layer.compute_gradients(x, g)
    kept = [a.copy() for a in first]
    x2, g2 = data(layer, seed=3)
    layer.compute_gradients(x2, g2)
    layer.forward(x2)
    layer.backward(g2, 1e-2)
    assert_same(first, kept)
    for grad in first:
        assert not np.shares_memory(grad, layer.gradient_buffer())


def lm(backend="compiled"):
    config = ModelConfig(embedding_dim=8, hidden_dim=12, num_layers=2, max_seq_len=6)
    return build_network(config, 11, seed=1, dtype=np.float64, backend=backend)


@pytest.mark.parametrize("clip", [-1, 0, -0.5, float("nan"), float("-inf")])
def test_train_step_refuses_a_bad_clip_norm(clip):
    net = lm()
    ids = np.arange(12).reshape(2, 6) % 11
    before = params(net)
    with pytest.raises(ValueError, match="clip_norm"):
        net.train_step(ids, ids, lr=1e-2, clip_norm=clip)
    assert_same(params(net), before)
    assert net._adam_step == 0


@pytest.mark.parametrize("clip", ["1", True, [1.0]])
def test_train_step_refuses_a_clip_norm_that_is_not_a_number(clip):
    with pytest.raises(TypeError, match="clip_norm"):
        lm().train_step(np.zeros((1, 3), int), np.zeros((1, 3), int), clip_norm=clip)


def test_train_step_without_clipping_and_with_infinite_threshold_agree():
    a, b = lm(), lm()
    ids = np.arange(12).reshape(2, 6) % 11
    ra = a.train_step(ids, ids, lr=1e-2, clip_norm=None)
    rb = b.train_step(ids, ids, lr=1e-2, clip_norm=float("inf"))
    assert ra.applied and rb.applied and ra.grad_norm == rb.grad_norm > 0
    assert_same(params(a), params(b))


@pytest.mark.parametrize("clip", ["nan", "-1"])
def test_cli_refuses_a_bad_clip_norm(clip, tmp_path, capsys):
    from hypermixer.cli import main
    code = main(["train", f"--clip-norm={clip}", "--epochs", "1", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code != 0 and "clip norm" in err
    assert not (tmp_path / "m").exists()
