"""Sizes: requests too large for the kernels' index range or for this machine's memory are
refused with a clear ValueError / MemoryError before anything is allocated.

The kernels take each dimension as a C int and compute flat offsets in size_t (audited:
every ``b * L * E``-style product in csrc/ is done in size_t), so a (B, L, E) batch of more
than 2**31 elements is fine as long as each dimension fits in an int and memory holds it.
What cannot work is refused up front by ``hypermixer._layer.check_allocation``: in the
constructors (parameter tables) and before each forward (the input's conversion copy, and
the buffers a layer allocates beyond its input, e.g. the causal hypernetwork's per-position
weights or the attention matrix).
"""

import time
import tracemalloc

import numpy as np
import pytest

import hypermixer
from hypermixer import ModelConfig, build_network, reference
from hypermixer._layer import INDEX_LIMIT, check_allocation

IMPLS = [hypermixer, reference]
IDS = ["compiled", "reference"]


def refused_quickly(call, exc_type, match):
    """``call()`` raises ``exc_type`` within a second, having allocated almost nothing."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(exc_type, match=match) as info:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5.0
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the refusal"
    return str(info.value)


# ---------------------------------------------------------------------------- constructors

@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_huge_max_seq_len_is_refused_at_construction(impl):
    msg = refused_quickly(lambda: impl.HyperMixerBlock(512, 1024, 10**6), MemoryError,
                          "GiB")
    assert "hypernetwork" in msg
    refused_quickly(lambda: impl.TokenMixingMLP(128, 10**6, causal=True), MemoryError, "GiB")


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_dimension_beyond_int_range_is_refused(impl):
    # O = 2*S*Ht + Ht + S > 2**31 with tiny other dimensions: an index-range problem,
    # whatever the memory
    msg = refused_quickly(
        lambda: impl.TokenMixingMLP(4, 2**16, token_mixing_hidden_dim=2**15,
                                    hypernetwork_hidden_dim=1), ValueError, "index")
    assert str(2 * 2**16 * 2**15 + 2**15 + 2**16) in msg
    refused_quickly(lambda: impl.Hypernetwork(4, 1, 2**31), ValueError, "index")
    refused_quickly(lambda: impl.ChannelMixingMLP(2**31, 1), ValueError, "index")


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_huge_embedding_tables_are_refused(impl):
    refused_quickly(lambda: impl.Embeddings(10**9, 16, 1024), MemoryError, "embedding")
    refused_quickly(lambda: impl.OutputProjection(1024, 10**9), MemoryError, "GiB")
    refused_quickly(lambda: impl.SelfAttention(10**6), MemoryError, "GiB")


def test_huge_language_model_is_refused():
    # the position table alone, (10**6, 2**17), is far beyond any machine's memory. (A model
    # whose arrays each fit but whose sum does not is refused by numpy part way through the
    # construction instead, also with a MemoryError.)
    config = ModelConfig.hypermixer(embedding_dim=2**17, hidden_dim=4, num_layers=1,
                                    max_seq_len=10**6)
    refused_quickly(lambda: build_network(config, 100), MemoryError, "GiB")


# ---------------------------------------------------------------------------- forward

def broadcast(shape, dtype=np.float32):
    """A read-only view of the given shape that takes no memory."""
    return np.broadcast_to(np.zeros((), dtype), shape)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_input_beyond_index_range_is_refused_before_copying(impl):
    layer = impl.LayerNorm(1)
    msg = refused_quickly(lambda: layer.forward(broadcast((1, INDEX_LIMIT + 1, 1))),
                          ValueError, "index")
    assert str(INDEX_LIMIT + 1) in msg
    block = impl.HyperMixerBlock(4, 4, 8)
    refused_quickly(lambda: block.forward(broadcast((INDEX_LIMIT + 1, 8, 4))), ValueError,
                    "index")


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_input_beyond_memory_is_refused_before_copying(impl):
    # 2**22 * 2**20 * 4 float32 = 64 TiB once made contiguous
    layer = impl.ChannelMixingMLP(4, 4)
    refused_quickly(lambda: layer.forward(broadcast((2**22, 2**20, 4))), MemoryError, "GiB")
    refused_quickly(lambda: layer.compute_gradients(broadcast((2**22, 2**20, 4)),
                                                    broadcast((2**22, 2**20, 4))),
                    MemoryError, "GiB")


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_forward_buffers_beyond_memory_are_refused(impl):
    # the input is small (8 MiB) but the causal layer's per-position generated weights
    # (B, L, O) with O = 2*4096*256 + 256 + 4096 would be about 2 TiB
    layer = impl.TokenMixingMLP(8, 4096, token_mixing_hidden_dim=256,
                                hypernetwork_hidden_dim=1, causal=True)
    x = np.zeros((64, 4096, 8), np.float32)
    msg = refused_quickly(lambda: layer.forward(x), MemoryError, "GiB")
    assert "TokenMixingMLP" in msg
    # the layer is untouched and still works on a sensible input
    y = layer.forward(x[:1, :5])
    assert y.shape == (1, 5, 8)
    attention = impl.SelfAttention(2)
    refused_quickly(lambda: attention.forward(np.zeros((4, 400000, 2), np.float32)),
                    MemoryError, "GiB")
    projection = impl.OutputProjection(2, 500000)
    refused_quickly(lambda: projection.forward(np.zeros((64, 4096, 2), np.float32)),
                    MemoryError, "GiB")


def test_check_allocation_itself():
    check_allocation("small", (3, 4), np.float32)
    check_allocation("list", [(3, 4), (5,)], np.float64)
    with pytest.raises(ValueError, match="index"):
        check_allocation("wide", (1, INDEX_LIMIT + 1), np.float32)
    with pytest.raises(MemoryError, match="GiB"):
        check_allocation("huge", [(2**20, 2**20)] * 2, np.float64)


def test_more_than_int32_elements_is_not_refused_by_the_index_check():
    """B*L*E beyond 2**31 with every dimension in range is legal for the kernels (size_t
    offsets); only memory can refuse it. Checked on the rule, without allocating 8 GiB."""
    shape = (2**11, 2**11, 2**10)   # 2**32 elements
    check_allocation("index only", [], np.float32)
    try:
        check_allocation("big batch", shape, np.float32)   # 16 GiB
    except MemoryError as exc:
        assert "GiB" in str(exc)       # a smaller machine: refused for memory, not index
    with pytest.raises(MemoryError):
        check_allocation("bigger batch", (2**14, 2**14, 2**10), np.float32)   # 1 TiB


def test_model_whose_layers_fit_one_by_one_but_not_together_is_refused():
    # each block's hypernetwork (64 x ~1M) is a few hundred MiB, which the per-array checks
    # accept; 2,000 of them are terabytes, refused before the first one is drawn
    config = ModelConfig.hypermixer(embedding_dim=256, hidden_dim=256, num_layers=2000,
                                    max_seq_len=4096)
    msg = refused_quickly(lambda: build_network(config, 1000), MemoryError, "GiB")
    assert "language model" in msg


def test_training_step_whose_logits_cannot_fit_is_refused():
    config = ModelConfig.hypermixer(embedding_dim=8, hidden_dim=8, num_layers=1,
                                    max_seq_len=4096)
    network = build_network(config, 2_000_000)   # 2M-word vocabulary: logits (B, L, 2M)
    ids = np.zeros((512, 4096), np.int64)
    refused_quickly(lambda: network.loss(ids, ids), MemoryError, "GiB")
    refused_quickly(lambda: network.train_step(ids, ids), MemoryError, "GiB")
    refused_quickly(lambda: network.forward(ids), MemoryError, "GiB")


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_hypermixing_sizes_refused_before_allocating(impl):
    """Generator weights beyond memory or the kernels' index range, and an input beyond
    memory, for the HyperMixing layers of both implementations."""
    # sizes beyond any machine's memory (49,152 GiB, 64 PiB), so the test holds anywhere
    refused_quickly(lambda: impl.HyperMixing(2**20, 2**20, heads=1), MemoryError,
                    "HyperMixing weights: needs")
    refused_quickly(lambda: impl.HyperMixing(8, 2**40, heads=8), ValueError,
                    "beyond 2147483647")
    refused_quickly(lambda: impl.HyperMixingBlock(2**20, 8, 2**20, heads=1), MemoryError,
                    "needs")
    # widths past the index range are named as such (they gave NumPy's "Maximum allowed
    # dimension exceeded", or a TypeError from the sqrt of a huge int)
    refused_quickly(lambda: impl.HyperMixing(2**70), ValueError,
                    "HyperMixing weights: shape .* beyond 2147483647")
    refused_quickly(lambda: impl.HyperMixingBlock(2**70, 4), ValueError,
                    "HyperMixingBlock weights: shape .* beyond 2147483647")
    refused_quickly(lambda: impl.HyperMixingBlock(16, 2**40), ValueError,
                    "HyperMixingBlock weights: shape .* beyond 2147483647")
    layer = impl.HyperMixing(8, 8, heads=2, causal=True)
    huge = np.broadcast_to(np.zeros((1, 1, 8), np.float32), (2**20, 2**31 - 1, 8))
    refused_quickly(lambda: layer.forward(huge), MemoryError, "needs")
