"""The whole-block kernels (csrc/block.c, csrc/transformer_block.c) against the sublayer
kernels run one at a time.

HyperMixerBlock's and TransformerBlock's forward and backward enter C once; the
sublayers' own _forward/_backward remain for standalone use. Both chains call the same
kernels in the same order, so they must agree bit for bit; the conformance suite
(hypermixer.tests) separately holds the block to the NumPy reference.
"""

import numpy as np
import pytest

import hypermixer
from hypermixer import _kernels
from hypermixer._layer import Sequential


def _block(dtype, causal, seed=0, hypernetwork=None):
    return hypermixer.HyperMixerBlock(12, 20, 9, hypernetwork_hidden_dim=6,
                                      token_mixing_hidden_dim=5, causal=causal,
                                      hypernetwork=hypernetwork, seed=seed, dtype=dtype)


def _chained(block, x, lengths, g):
    """The same math through the sublayers' own kernels (the pre-fusion path)."""
    y = Sequential._forward(block, x, lengths)
    grad_input, grads = Sequential._backward(block, g)
    return y, grad_input, grads


def _assert_fused_equals_chain(block, x, lens, g):
    """Output, input gradient and every parameter gradient of the one-call block equal,
    bit for bit, those of the sublayer chain on the same input."""
    y_fused = block._forward(x.copy(), lens)
    gi_fused, grads_fused = block._backward(g.copy())
    y_ref, gi_ref, grads_ref = _chained(block, x.copy(), lens, g.copy())
    np.testing.assert_array_equal(y_fused, y_ref)
    np.testing.assert_array_equal(gi_fused, gi_ref)
    assert len(grads_fused) == len(grads_ref) == len(block.named_parameters())
    for (name, _), a, b in zip(block.named_parameters(), grads_fused, grads_ref):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [None, [9, 1, 4]])
@pytest.mark.parametrize("seq_len", [9, 6])
def test_fused_block_equals_sublayer_chain_bitwise(dtype, causal, lengths, seq_len):
    rng = np.random.default_rng(1)
    block = _block(dtype, causal)
    batch = 3
    x = rng.standard_normal((batch, seq_len, 12)).astype(dtype)
    g = rng.standard_normal((batch, seq_len, 12)).astype(dtype)
    lens = np.full(batch, seq_len, np.int64) if lengths is None else \
        np.minimum(np.array(lengths, np.int64), seq_len)
    _assert_fused_equals_chain(block, x, lens, g)


def test_fused_block_shared_hypernetwork_in_a_pair():
    """Two blocks sharing one hypernetwork: each forward keeps its own cache, so the first
    block's backward after the second block's forward is unaffected."""
    rng = np.random.default_rng(2)
    first = _block(np.float64, False, seed=0)
    second = _block(np.float64, False, seed=1, hypernetwork=first.hypernetwork)
    x = rng.standard_normal((2, 9, 12))
    g = rng.standard_normal((2, 9, 12))
    lens = np.array([9, 5], np.int64)
    first._forward(x, lens)
    second._forward(x * 2, lens)
    gi_a, grads_a = first._backward(g)
    _, gi_b, grads_b = _chained(first, x, lens, g)
    np.testing.assert_array_equal(gi_a, gi_b)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_array_equal(a, b)


def test_block_kernel_refuses_bad_arguments_without_crashing():
    block = _block(np.float32, False)
    params = block._block_parameters()
    x = np.zeros((1, 9, 12), np.float32)
    lens = np.array([9], np.int64)
    sizes = block._block_sizes()
    cache, scratch, index = block._block_workspaces(1, 9, sizes)
    y = np.empty_like(x)
    _kernels.block_forward(y, cache, index, scratch, x, lens, params, 9, *sizes)  # valid
    bad = [
        dict(x=x.astype(np.float64)),                       # dtype differs from params
        dict(lengths=np.array([10], np.int64)),             # length past L
        dict(lengths=np.array([0], np.int64)),
        dict(params=params[:11]),                           # one parameter missing
        dict(params=params[:2] + [params[2][:, :3]] + params[3:]),  # wrong size
        dict(cache=cache[:5]),                              # workspace too small
        dict(scratch=scratch[:5]),
        dict(y=np.empty((1, 9, 12), np.float32)[:, ::-1]),  # not contiguous
    ]
    for change in bad:
        args = dict(y=y, cache=cache, index=index, scratch=scratch, x=x, lengths=lens,
                    params=params)
        args.update(change)
        with pytest.raises(ValueError):
            _kernels.block_forward(args["y"], args["cache"], args["index"], args["scratch"],
                                   args["x"], args["lengths"], args["params"], 9, *sizes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", [None, [7, 1, 4]])
def test_fused_transformer_block_equals_sublayer_chain_bitwise(dtype, lengths):
    rng = np.random.default_rng(3)
    block = hypermixer.TransformerBlock(12, 20, 9, seed=0, dtype=dtype)
    x = rng.standard_normal((3, 7, 12)).astype(dtype)
    g = rng.standard_normal((3, 7, 12)).astype(dtype)
    lens = np.full(3, 7, np.int64) if lengths is None else np.array(lengths, np.int64)
    _assert_fused_equals_chain(block, x, lens, g)


def test_transformer_block_kernel_refuses_bad_arguments():
    block = hypermixer.TransformerBlock(12, 20, 9, seed=0)
    params = block._block_parameters()
    x = np.zeros((2, 9, 12), np.float32)
    lens = np.array([9, 3], np.int64)
    cache, scratch, index = block._block_workspaces(2, 9)
    y = np.empty_like(x)
    _kernels.transformer_block_forward(y, cache, index, scratch, x, lens, params, 20)
    for args in ([y, cache, index, scratch, x, np.array([9, 10], np.int64), params, 20],
                 [y, cache, index, scratch, x, lens, params[:10], 20],
                 [y, cache, index, scratch, x, lens, params, 21],
                 [y, cache[:3], index, scratch, x, lens, params, 20],
                 [y, cache, index, scratch, x[0], lens, params, 20]):
        with pytest.raises(ValueError):
            _kernels.transformer_block_forward(*args)
