"""copy.deepcopy and pickle of layers and language models (README, "Copies and pickling").

A copy must be a working, independent twin: the same outputs, the same parameters, Adam
moments and step (so both go on training to the same bits), its parameters views of a flat
buffer of its own, and nothing it does reaches the original. NumPy pickles a view as an array
of its own, so a copy that kept the flat store would train a buffer its layers no longer
read; these tests would catch that (the twins would drift apart)."""

import copy
import pickle

import numpy as np
import pytest

from hypermixer.check import CASES, CASES_BY_LABEL, SHAPES, build_one, make_inputs
from hypermixer.checkpoint import load_checkpoint, save_checkpoint
from hypermixer.model import ModelConfig, build_network
from hypermixer.tokenizer import SPECIAL_TOKENS, Tokenizer

COPIERS = {"deepcopy": copy.deepcopy, "pickle": lambda obj: pickle.loads(pickle.dumps(obj))}
LAYER_CASES = [case for case in CASES if case.kind != "loss"]
DIMS, SEQ_LEN, LENGTHS = SHAPES["small"]


def params_of(layer):
    return [arr.copy() for _, arr in layer.named_parameters()]


def assert_same_arrays(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def assert_own_flat_buffer(twin, original):
    flat = twin.parameter_buffer()
    for name, arr in twin.named_parameters():
        assert np.shares_memory(arr, flat), name
        assert not np.shares_memory(arr, original.parameter_buffer()), name


@pytest.mark.parametrize("how", COPIERS)
@pytest.mark.parametrize("impl", ["compiled", "reference"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.label)
def test_layer_copy_trains_like_the_original(case, impl, how):
    layer = build_one(case, impl, DIMS, np.float64)
    x, g, lengths = make_inputs(case, DIMS, SEQ_LEN, LENGTHS)
    layer.forward(x, lengths)
    layer.backward(g, lr=1e-2)          # Adam moments and a step count to carry
    layer.forward(x, lengths)           # and a pending forward
    twin = COPIERS[how](layer)
    assert type(twin) is type(layer)
    assert twin._adam_step == layer._adam_step == 1
    before = params_of(layer)
    assert_same_arrays(params_of(twin), before)

    # the pending forward came along: the twin's backward equals the original's
    grad_twin = twin.backward(g, lr=1e-2)
    assert_same_arrays(params_of(layer), before)     # the original did not move
    assert_own_flat_buffer(twin, layer)
    grad_layer = layer.backward(g, lr=1e-2)
    if grad_layer is not None:
        np.testing.assert_array_equal(grad_twin, grad_layer)
    assert_same_arrays(params_of(twin), params_of(layer))

    # and one more step from a fresh forward: same outputs, same moments
    np.testing.assert_array_equal(twin.forward(x, lengths), layer.forward(x, lengths))
    twin.backward(g, lr=1e-2)
    layer.backward(g, lr=1e-2)
    assert_same_arrays(params_of(twin), params_of(layer))
    assert twin._adam_step == layer._adam_step == 3


ARCHITECTURES = [("hypermixer", {}), ("hypermixer", {"share_hypernetwork": True}),
                 ("transformer", {}), ("hypermixing", {})]


def tiny_lm(arch, extra, backend):
    config = ModelConfig(architecture=arch, embedding_dim=8, hidden_dim=12, num_layers=2,
                         max_seq_len=6, **extra)
    return build_network(config, 11, seed=3, dtype=np.float64, backend=backend)


def batch(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, size=(3, 6)), rng.integers(0, 11, size=(3, 6)), [6, 4, 2]


@pytest.mark.parametrize("how", COPIERS)
@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("arch,extra", ARCHITECTURES,
                         ids=["hypermixer", "hypermixer-shared", "transformer", "hypermixing"])
def test_language_model_copy_trains_like_the_original(arch, extra, backend, how):
    net = tiny_lm(arch, extra, backend)
    for seed in range(2):
        net.train_step(*batch(seed), lr=1e-2, clip_norm=1.0)
    twin = COPIERS[how](net)
    if extra.get("share_hypernetwork"):   # still one hypernetwork for every block
        assert twin.blocks[0].hypernetwork is twin.blocks[1].hypernetwork
        assert twin.parameters() == net.parameters()
    ids = batch(9)[0]
    np.testing.assert_array_equal(twin.forward(ids), net.forward(ids))

    before = params_of(net)
    for seed in range(2, 4):
        twin.train_step(*batch(seed), lr=1e-2, clip_norm=1.0)
    assert_same_arrays(params_of(net), before)
    assert_own_flat_buffer(twin, net)
    for seed in range(2, 4):
        net.train_step(*batch(seed), lr=1e-2, clip_norm=1.0)
    assert_same_arrays(params_of(twin), params_of(net))
    assert [leaf._adam_step for leaf in twin._leaves()] == [4] * len(twin._leaves())


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_checkpoint_of_an_unused_copy_keeps_the_adam_state(tmp_path, backend):
    # the copy has not gathered its flat buffer yet: the save reads the carried state
    net = tiny_lm("hypermixing", {}, backend)
    for seed in range(3):
        net.train_step(*batch(seed), lr=1e-2, clip_norm=1.0)
    twin = pickle.loads(pickle.dumps(net))
    tokenizer = Tokenizer(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(11 - len(SPECIAL_TOKENS))])
    save_checkpoint(tmp_path / "twin.npz", twin, tokenizer)
    loaded = load_checkpoint(tmp_path / "twin.npz", backend=backend).network
    assert_same_arrays(params_of(loaded), params_of(net))
    for a, b in zip(loaded._leaves(), net._leaves()):
        assert a._adam_step == b._adam_step == 3
        assert_same_arrays([m for pair in a._adam_moments for m in pair],
                           [m for pair in b._adam_moments for m in pair])


def test_a_running_layer_is_not_copied():
    layer = build_one(CASES_BY_LABEL["HyperMixing[causal]"], "compiled", DIMS,
                            np.float32)
    layer._busy.acquire()   # as while another thread runs its forward
    try:
        with pytest.raises(RuntimeError, match="while it runs in another thread"):
            pickle.dumps(layer)
        with pytest.raises(RuntimeError, match="while it runs in another thread"):
            copy.deepcopy(layer)
    finally:
        layer._busy.release()
    assert pickle.loads(pickle.dumps(layer)) is not layer


def test_a_shallow_copy_is_refused():
    net = tiny_lm("hypermixing", {}, "compiled")
    with pytest.raises(TypeError, match="use copy.deepcopy"):
        copy.copy(net)
    with pytest.raises(TypeError, match="use copy.deepcopy"):
        copy.copy(net.blocks[0].hypermixing)


@pytest.mark.parametrize("how", COPIERS)
@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("arch,extra", ARCHITECTURES,
                         ids=["hypermixer", "hypermixer-shared", "transformer", "hypermixing"])
def test_a_copy_between_filling_the_gradient_buffer_and_stepping_keeps_the_gradients(
        arch, extra, backend, how):
    """The data-parallel order: fill the gradient buffer, (all-reduce it,) then step from it.
    A copy made in between steps with the same gradients, to the same bits."""
    net = tiny_lm(arch, extra, backend)
    net.train_step(*batch(0), lr=1e-2, clip_norm=1.0)
    ids, targets, lengths = batch(1)
    net.loss_and_gradient_buffer(ids, targets, np.array(lengths))
    twin = COPIERS[how](net)
    assert_same_arrays([twin.gradient_buffer()], [net.gradient_buffer()])
    assert twin.step_from_gradient_buffer(1e-2, clip_norm=1.0) == \
        net.step_from_gradient_buffer(1e-2, clip_norm=1.0)
    assert_same_arrays(params_of(twin), params_of(net))
