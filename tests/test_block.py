"""HyperMixerBlock beyond the conformance suite (hypermixer/tests/test_conformance.py:
parity, padding, batch vs one by one, finite differences, threads, both modes): sizes,
names, defaults, sharing, causality."""

import numpy as np
import pytest

import hypermixer
from hypermixer import reference
from hypermixer._blueprints import token_mixing_output_dim
from hypermixer._layer import Layer
from helpers import assert_close

DTYPES = [np.float32, np.float64]
# A small configuration used by most tests: E, H, S, Hh, Ht.
SMALL = dict(embedding_dim=8, hidden_dim=12, max_seq_len=7, hypernetwork_hidden_dim=4,
             token_mixing_hidden_dim=5)
# float32 rounding passes through two LayerNorms (which divide by the standard deviation)
# and the generated token-mixing weights; over many seeds the worst relative error seen was
# ~4e-6, so a factor of 2 on the float32 tolerance (2e-5) leaves a 10x margin.
F32_FACTOR = 2.0


def inputs(seed, batch, seq_len, width=SMALL["embedding_dim"]):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, seq_len, width)), rng.normal(size=(batch, seq_len, width))


def seeds_parameter_count(E, H, S, Hh, Ht):
    """SPEC sections 2 and 6: two norms, the hypernetwork E -> Hh -> O, the channel MLP."""
    O = token_mixing_output_dim(S, Ht)
    assert O == 2 * S * Ht + Ht + S
    norms = 2 * (E + E)
    hypernetwork = E * Hh + Hh + Hh * O + O
    channel = E * H + H + H * E + E
    return norms + hypernetwork + channel, hypernetwork, channel, norms


@pytest.mark.parametrize("module", [hypermixer, reference])
def test_seed_configuration_size_and_names(module):
    total, hyper, channel, norms = seeds_parameter_count(128, 256, 80, 32, 64)
    assert (total, hyper, channel, norms) == (413_232, 346_800, 65_920, 512)
    block = module.HyperMixerBlock(embedding_dim=128, hidden_dim=256, max_seq_len=80,
                                   hypernetwork_hidden_dim=32, token_mixing_hidden_dim=64,
                                   causal=False, seed=0, dtype=np.float32)
    assert block.parameters() == total
    names = [n for n, _ in block.named_parameters()]
    assert names == [
        "norm1.gamma", "norm1.beta",
        "token_mixing.hypernetwork.w1", "token_mixing.hypernetwork.b1",
        "token_mixing.hypernetwork.w2", "token_mixing.hypernetwork.b2",
        "norm2.gamma", "norm2.beta",
        "channel_mixing.w1", "channel_mixing.b1", "channel_mixing.w2", "channel_mixing.b2",
    ]
    assert block.hypernetwork.parameters() == hyper
    assert block.channel_mixing.parameters() == channel


def test_constructor_example_runs():
    block = hypermixer.HyperMixerBlock(embedding_dim=128, hidden_dim=256, max_seq_len=80,
                                       hypernetwork_hidden_dim=32, token_mixing_hidden_dim=64,
                                       causal=False, seed=0, dtype=np.float32)
    x = np.random.default_rng(0).normal(size=(80, 128))
    y = block.forward(x)
    assert y.shape == (80, 128) and y.dtype == np.float32 and np.all(np.isfinite(y))
    ref = reference.HyperMixerBlock(embedding_dim=128, hidden_dim=256, max_seq_len=80,
                                    hypernetwork_hidden_dim=32, token_mixing_hidden_dim=64,
                                    causal=False, seed=0, dtype=np.float32)
    assert_close(y, ref.forward(x), np.float32, "seeds' block output", F32_FACTOR)


@pytest.mark.parametrize("module", [hypermixer, reference])
def test_default_hidden_sizes(module):
    E, H, S = 12, 20, 6
    block = module.HyperMixerBlock(E, H, S, seed=0, dtype=np.float64)
    Ht, Hh = E // 2, E // 4
    assert block.token_mixing.token_mixing_hidden_dim == Ht
    assert block.hypernetwork.hidden_dim == Hh
    assert block.hypernetwork.w1.shape == (E, Hh)
    assert block.hypernetwork.w2.shape == (Hh, 2 * S * Ht + Ht + S)
    assert block.parameters() == seeds_parameter_count(E, H, S, Hh, Ht)[0]


class _TwoBlocks(Layer):
    """Two blocks in sequence, enough to see how a shared hypernetwork is counted."""

    def __init__(self, first, second):
        super().__init__(first.dtype)
        self._add_child("first", first)
        self._add_child("second", second)


@pytest.mark.parametrize("module", [hypermixer, reference])
def test_shared_hypernetwork_counted_once(module):
    E, H, S, Hh, Ht = 8, 12, 7, 4, 5
    shared = module.Hypernetwork(E, Hh, token_mixing_output_dim(S, Ht), seed=9,
                                 dtype=np.float64)
    a = module.HyperMixerBlock(E, H, S, token_mixing_hidden_dim=Ht, hypernetwork=shared,
                               seed=1, dtype=np.float64)
    b = module.HyperMixerBlock(E, H, S, token_mixing_hidden_dim=Ht, hypernetwork=shared,
                               seed=2, dtype=np.float64)
    assert a.hypernetwork is shared and b.hypernetwork is shared
    per_block = seeds_parameter_count(E, H, S, Hh, Ht)[0]
    assert a.parameters() == b.parameters() == per_block
    both = _TwoBlocks(a, b)
    assert both.parameters() == 2 * per_block - shared.parameters()
    ids = [id(arr) for _, arr in both.named_parameters()]
    assert len(ids) == len(set(ids)) == 12 + 8
    # One update steps the shared hypernetwork exactly once.
    grads = [np.ones_like(arr) for _, arr in both.named_parameters()]
    before = shared.w1.copy()
    both.apply_gradients(grads, 1e-3)
    assert shared._adam_step == 1
    # Adam's first step moves every entry by lr * g / (|g| + eps) = lr (to rounding).
    assert np.allclose(before - shared.w1, 1e-3, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("module", [hypermixer, reference])
def test_causal_rows_ignore_the_future(module, dtype):
    S = SMALL["max_seq_len"]
    x, _ = inputs(7, 1, S)
    block = module.HyperMixerBlock(causal=True, seed=4, dtype=dtype, **SMALL)
    y = block.forward(x)
    rng = np.random.default_rng(8)
    for t in range(S - 1):
        changed = x.copy()
        changed[:, t + 1:] = rng.normal(size=changed[:, t + 1:].shape)
        y2 = block.forward(changed)
        assert np.array_equal(y2[:, :t + 1], y[:, :t + 1]), f"row <= {t} saw the future"
        assert not np.allclose(y2[:, t + 1:], y[:, t + 1:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("module", [hypermixer, reference])
def test_causal_last_row_equals_bidirectional_last_row(module, dtype):
    x, _ = inputs(9, 3, 6)
    lengths = np.array([6, 4, 1])
    causal = module.HyperMixerBlock(causal=True, seed=6, dtype=dtype, **SMALL)
    bidir = module.HyperMixerBlock(causal=False, seed=6, dtype=dtype, **SMALL)
    y_c = causal.forward(x, lengths)
    y_b = bidir.forward(x, lengths)
    last = lengths - 1
    rows = np.arange(3)
    factor = F32_FACTOR if dtype == np.float32 else 1.0
    assert_close(y_c[rows, last], y_b[rows, last], dtype, "last rows", factor)
    # ... while the earlier rows of a sequence longer than 1 do differ.
    assert not np.allclose(y_c[0, :5], y_b[0, :5])


@pytest.mark.parametrize("module", [hypermixer, reference])
def test_bidirectional_rows_see_the_future(module):
    S = SMALL["max_seq_len"]
    x, _ = inputs(10, 1, S)
    block = module.HyperMixerBlock(causal=False, seed=4, dtype=np.float64, **SMALL)
    y = block.forward(x)
    changed = x.copy()
    # A random change: adding a constant to a row would vanish in the first LayerNorm.
    changed[:, -1] = np.random.default_rng(11).normal(size=changed[:, -1].shape)
    y2 = block.forward(changed)
    for t in range(S - 1):
        assert not np.allclose(y2[:, t], y[:, t]), f"row {t} did not react to the last row"
