"""The causal HyperMixingBlock's one-call kernels (csrc/hypermixing_block.c) against the same
block run sublayer by sublayer (HyperMixingBlockBase's Python chain): the same bits for the
output, the input gradient and every parameter gradient, in float32 and float64, with and
without padding (garbage in it), tied and untied, with and without biases and the
HyperMixing LayerNorm, heads of width 4 (the width-4 path in float32) and others."""

import numpy as np
import pytest

import hypermixer
from hypermixer._hypermixing_blueprint import HyperMixingBlockBase

from helpers import assert_thread_counts_agree


def run_both(block, x, g, lengths):
    """(one call, sublayer chain): [output, input gradient, parameter gradients...]"""
    chain_y = HyperMixingBlockBase._forward(block, x, lengths)
    chain_gi, chain_grads = HyperMixingBlockBase._backward(block, g)
    y = block._forward(x, lengths)
    gi, grads = block._backward(g)
    return [y, gi] + list(grads), [chain_y, chain_gi] + list(chain_grads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d, k, heads", [(32, 32, 8), (16, 24, 2), (16, 16, 2)])
@pytest.mark.parametrize("tied, bias, layer_norm, normalize", [
    (True, False, True, "mean"), (False, True, True, "sum"), (False, False, False, "mean"),
    (True, True, True, "sum")])
@pytest.mark.parametrize("padded", [False, True])
def test_one_call_equals_the_sublayer_chain(dtype, d, k, heads, tied, bias, layer_norm,
                                            normalize, padded):
    block = hypermixer.HyperMixingBlock(d, 20, k, heads=heads, tied=tied, causal=True,
                                        normalize=normalize, layer_norm=layer_norm,
                                        hypernetwork_bias=bias, seed=4, dtype=dtype)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 9, d)).astype(dtype)
    g = rng.normal(size=(3, 9, d)).astype(dtype)
    lengths = np.array([9, 4, 1] if padded else [9, 9, 9])
    if padded:
        pad = np.arange(9)[None, :] >= lengths[:, None]
        x[pad] = np.nan
        g[pad] = np.nan
    fused, chain = run_both(block, x, g, lengths)
    names = ["output", "input gradient"] + [n for n, _ in block.named_parameters()]
    assert len(fused) == len(chain) == len(names)
    for name, a, b in zip(names, fused, chain):
        assert a.shape == b.shape, name
        assert np.array_equal(a, b), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d, k, heads", [(32, 32, 8), (16, 24, 2), (128, 128, 32)])
@pytest.mark.parametrize("tied, bias, layer_norm, normalize", [
    (True, False, True, "mean"), (False, True, True, "sum"), (False, False, False, "mean")])
def test_one_call_step_equals_the_sublayer_chain(dtype, d, k, heads, tied, bias, layer_norm,
                                                 normalize):
    """Generation's step (hypermixing_block_step) against the sublayers stepped one by one:
    the same output rows and running sums, bit for bit, for one stream and for three at
    different positions (their position rows and mean counts differ), at 1 and 2 threads."""
    block = hypermixer.HyperMixingBlock(d, 20, k, heads=heads, tied=tied, causal=True,
                                        normalize=normalize, layer_norm=layer_norm,
                                        hypernetwork_bias=bias, seed=4, dtype=dtype)
    rng = np.random.default_rng(3)
    shape = (heads, k // heads, d // heads)
    for positions in ([5], [0, 7, 130]):
        n = len(positions)
        x = rng.normal(size=(n, d)).astype(dtype)
        state = rng.normal(size=(n,) + shape).astype(dtype)   # the sums of earlier tokens
        chain_state = state.copy()
        chain = HyperMixingBlockBase._step(block, x, chain_state, np.array(positions))
        for threads in (1, 2):
            hypermixer.set_num_threads(threads)
            try:
                fused_state = state.copy()
                fused = block._step(x, fused_state, np.array(positions))
            finally:
                hypermixer.set_num_threads(None)
            assert np.array_equal(fused, chain), (positions, threads)
            assert np.array_equal(fused_state, chain_state), (positions, threads)


def test_a_step_between_forward_and_backward_leaves_the_pending_forward_alone():
    """The step keeps workspaces of its own: a token generated between a forward and its
    backward does not change that backward."""
    block = hypermixer.HyperMixingBlock(128, 64, 128, heads=32, tied=True, causal=True,
                                        normalize="mean", seed=2)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 12, 128)).astype(np.float32)
    g = rng.normal(size=(2, 12, 128)).astype(np.float32)
    lengths = np.array([12, 5])
    block._forward(x, lengths)
    expected = block._backward(g)
    block._forward(x, lengths)
    block._step(x[0, :1], np.zeros((1, 32, 4, 4), np.float32), np.array([40]))
    got = block._backward(g)
    for a, b in zip([expected[0]] + list(expected[1]), [got[0]] + list(got[1])):
        assert np.array_equal(a, b)


def test_one_call_threads_bit_identical():
    block = hypermixer.HyperMixingBlock(128, 64, 128, heads=32, tied=True, causal=True,
                                        normalize="mean", seed=2)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 70, 128)).astype(np.float32)
    g = rng.normal(size=(3, 70, 128)).astype(np.float32)
    lengths = np.array([70, 33, 1])
    assert_thread_counts_agree(block, x, g, lengths)


def test_one_call_bindings_refuse_bad_arguments():
    """The binding's own checks: a wrong internal call raises ValueError, never reaches C."""
    from hypermixer import _kernels
    block = hypermixer.HyperMixingBlock(16, 20, 16, heads=4, tied=True, causal=True,
                                        normalize="mean", seed=1)
    x = np.zeros((2, 5, 16), np.float32)
    lengths = np.array([5, 3])
    block._forward(x, lengths)          # builds the workspaces and the slots
    sizes = block._sizes(5)
    cache, scratch, index = block._one_call_workspaces(
        _kernels.hypermixing_block_workspace_sizes(x.shape, sizes))
    params = block._slots(block._hypermixing_names())
    pos = block.hypermixing.positions(5)
    y = np.empty_like(x)
    good = dict(y=y, cache=cache, index=index, scratch=scratch, x=x, lengths=lengths, pos=pos,
                params=params, sizes=sizes)

    def call(**change):
        args = dict(good, **change)
        _kernels.hypermixing_block_forward(args["y"], args["cache"], args["index"],
                                           args["scratch"], args["x"], args["lengths"],
                                           args["pos"], args["params"], args["sizes"])

    call()   # the good call works
    for name in ("y", "cache", "scratch", "index"):   # written by the kernel: never read-only
        ro = good[name].copy()
        ro.setflags(write=False)
        with pytest.raises(ValueError, match="read-only"):
            call(**{name: ro})
    bad_params = list(params)
    bad_params[0] = np.ones(3, np.float32)
    tied_filled = list(params)
    tied_filled[6] = params[2]
    for change in (dict(params=params[:-1]), dict(params=bad_params),
                   dict(params=tied_filled), dict(lengths=np.array([6, 3])),
                   dict(cache=cache[:10]), dict(scratch=scratch[:10]),
                   dict(x=x.astype(np.float64)), dict(pos=pos[:2]),
                   dict(sizes=(20, 16, 3) + sizes[3:]), dict(y=y[:1])):
        with pytest.raises(ValueError):
            call(**change)


def test_step_bindings_refuse_bad_arguments():
    """The generation steps' bindings (hypermixing_block_step, transformer_block_step): a
    wrong internal call raises ValueError and leaves the state and caches as they were."""
    from hypermixer import _kernels
    block = hypermixer.HyperMixingBlock(16, 20, 16, heads=4, tied=True, causal=True,
                                        normalize="mean", seed=1)
    x = np.ones((2, 16), np.float32)
    positions = np.array([3, 9])
    sizes = block._sizes(2)
    cache, scratch, index = block._one_call_workspaces(
        _kernels.hypermixing_block_workspace_sizes((1, 2, 16), sizes), prefix="_ws_step")
    state = np.zeros((2, 4, 4, 4), np.float32)
    good = dict(y=np.empty_like(x), state=state, cache=cache, index=index, scratch=scratch,
                x=x, positions=positions, pos=block.hypermixing.position_rows(positions),
                params=block._slots(block._hypermixing_names()), sizes=sizes)

    def call(**change):
        a = dict(good, **change)
        _kernels.hypermixing_block_step(a["y"], a["state"], a["cache"], a["index"],
                                        a["scratch"], a["x"], a["positions"], a["pos"],
                                        a["params"], a["sizes"])

    call()
    before = state.copy()

    def read_only(a):
        a = a.copy()
        a.setflags(write=False)
        return a
    for name in ("y", "state", "cache", "scratch", "index"):   # the arrays the kernel writes
        with pytest.raises(ValueError, match="read-only"):
            call(**{name: read_only(good[name])})
    for change in (dict(x=x[None]), dict(x=x.astype(np.float64)), dict(state=state[:1]),
                   dict(state=state.astype(np.float64)), dict(positions=np.array([3])),
                   dict(positions=np.array([3, -1])), dict(pos=good["pos"][:1]),
                   dict(params=good["params"][:-1]), dict(scratch=scratch[:5]),
                   dict(cache=cache[:5]), dict(y=np.empty(3, np.float32))):
        with pytest.raises(ValueError):
            call(**change)
    assert np.array_equal(state, before)

    tblock = hypermixer.TransformerBlock(16, 20, 8, seed=1)
    keys, values = np.zeros((8, 16), np.float32), np.zeros((8, 16), np.float32)
    scratch = np.empty(_kernels.transformer_block_step_scratch(8, 16, 20), np.float32)
    tgood = dict(y=np.empty(16, np.float32), keys=keys, values=values, scratch=scratch,
                 x=np.ones(16, np.float32), position=2, params=tblock._block_parameters(),
                 H=20)

    def tcall(**change):
        a = dict(tgood, **change)
        _kernels.transformer_block_step(a["y"], a["keys"], a["values"], a["scratch"], a["x"],
                                        a["position"], a["params"], a["H"])

    tcall()
    keys_before, values_before = keys.copy(), values.copy()
    for name in ("y", "keys", "values", "scratch"):
        with pytest.raises(ValueError, match="read-only"):
            tcall(**{name: read_only(tgood[name])})
    for change in (dict(position=8), dict(position=-1), dict(x=np.ones((1, 16), np.float32)),
                   dict(x=np.ones(16)), dict(values=values[:4]), dict(keys=keys[:, :8]),
                   dict(scratch=scratch[:3]), dict(params=tgood["params"][:-1]), dict(H=21),
                   dict(y=np.empty(3, np.float32))):
        with pytest.raises(ValueError):
            tcall(**change)
    assert np.array_equal(keys, keys_before) and np.array_equal(values, values_before)
