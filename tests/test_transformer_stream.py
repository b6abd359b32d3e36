"""Transformer generation with a key/value cache (hypermixer._stream.TransformerStream): the
attention step against the reference and against the forward's rows, a stream's logits against
full forwards, generate() with and without the stream, and the stream's refusals."""

import numpy as np
import pytest

import hypermixer as hm
from hypermixer import ModelConfig, build_network
from hypermixer import reference as ref
from hypermixer.generate import generate_ids

from helpers import assert_close

SMALL = dict(architecture="transformer", embedding_dim=24, hidden_dim=40, num_layers=2,
             max_seq_len=40)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
def test_attention_step_gives_the_forward_rows(impl, dtype):
    rng = np.random.default_rng(5)
    e, n = 24, 37                               # n crosses the forward's 32-row tiles
    layer = impl.SelfAttention(e, seed=4, dtype=dtype)
    x = rng.normal(size=(1, n, e)).astype(dtype)
    full = layer.forward(x)[0]
    keys, values = np.zeros((n, e), dtype), np.zeros((n, e), dtype)
    rows = np.array([layer._step(x[0, t], keys, values, t) for t in range(n)])
    assert_close(rows, full, dtype, "attention step")
    # the cache holds each token's k and v
    assert_close(keys, x[0] @ layer.wk, dtype, "cached keys")
    assert_close(values, x[0] @ layer.wv, dtype, "cached values")


def test_attention_step_compiled_equals_reference():
    rng = np.random.default_rng(6)
    for dtype in (np.float32, np.float64):
        compiled = hm.SelfAttention(16, seed=2, dtype=dtype)
        twin = ref.SelfAttention(16, seed=2, dtype=dtype)
        caches = [(np.zeros((9, 16), dtype), np.zeros((9, 16), dtype)) for _ in range(2)]
        for t in range(9):
            x = rng.normal(size=16).astype(dtype)
            a = compiled._step(x, *caches[0], t)
            b = twin._step(x, *caches[1], t)
            assert a.dtype == np.dtype(dtype)
            assert_close(a, b, dtype, f"step {t}")


def test_attention_step_refuses_a_position_outside_the_cache():
    layer = hm.SelfAttention(8, seed=0)
    keys, values = np.zeros((4, 8), np.float32), np.zeros((4, 8), np.float32)
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="outside the cache"):
        layer._step(x, keys, values, 4)
    with pytest.raises(ValueError, match="outside the cache"):
        layer._step(x, keys, values, -1)
    with pytest.raises(ValueError, match="kcache"):
        layer._step(x, keys[:, :6].copy(), values, 0)
    assert not keys.any() and not values.any()


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_stream_equals_full_forward(backend):
    config = ModelConfig(**dict(SMALL, max_seq_len=130))
    net = build_network(config, 30, seed=3, dtype=np.float64, backend=backend)
    ids = np.random.default_rng(2).integers(0, 30, size=130)
    full = net.forward(ids)
    stream = net.stream()
    assert stream.capacity == 130
    for t, token in enumerate(ids):
        logits = stream.feed(token)
        assert np.abs(logits - full[t]).max() <= 1e-12 * np.abs(full[t]).max(), t
    assert stream.full


def test_stream_in_float32():
    net = build_network(ModelConfig(**SMALL), 30, seed=7, dtype=np.float32)
    ids = np.random.default_rng(3).integers(0, 30, size=40)
    full = net.forward(ids)
    stream = net.stream()
    got = np.array([stream.feed(token) for token in ids])
    assert got.dtype == np.float32
    assert_close(got, full, np.float32, "float32 stream")


def test_generate_with_the_cache_equals_recomputed_windows(monkeypatch):
    # a prompt of 10 and 40 new tokens with max_seq_len 24: the stream serves the first 14,
    # then the sliding window takes over; greedy decoding must give the same tokens as
    # recomputing the window for every token
    net = build_network(ModelConfig(**dict(SMALL, max_seq_len=24)), 30, seed=4,
                        dtype=np.float64)
    prompt = list(range(1, 11))
    cached = generate_ids(net, prompt, end_id=-1, max_new_tokens=40)
    monkeypatch.setattr(type(net), "stream", lambda self: None)
    windows = generate_ids(net, prompt, end_id=-1, max_new_tokens=40)
    assert len(cached) == 40 and cached == windows


def test_prompt_longer_than_the_cache_recomputes_windows():
    net = build_network(ModelConfig(**dict(SMALL, max_seq_len=8)), 30, seed=4,
                        dtype=np.float64)
    prompt = list(range(1, 13))
    new = generate_ids(net, prompt, end_id=-1, max_new_tokens=5)
    context = list(prompt)
    for token in new:
        assert int(np.argmax(net.forward(np.array(context[-8:]))[-1])) == token
        context.append(token)


def test_stream_refusals_change_nothing():
    net = build_network(ModelConfig(**dict(SMALL, max_seq_len=3)), 30, seed=1,
                        dtype=np.float64)
    stream = net.stream()
    first = stream.feed(5)
    keys = [k.copy() for k in stream.keys]
    for bad, error in [(30, ValueError), (-1, ValueError), (True, TypeError),
                       (2.0, TypeError), (np.array([1, 2]), TypeError)]:
        with pytest.raises(error):
            stream.feed(bad)
        assert stream.position == 1
        assert all(np.array_equal(a, b) for a, b in zip(keys, stream.keys))
    stream.feed(6)
    stream.feed(7)
    with pytest.raises(ValueError, match="full"):
        stream.feed(8)
    assert stream.position == 3
    # a new stream starts over and gives the same first logits
    assert np.array_equal(net.stream().feed(5), first)


def test_hypermixer_has_no_stream():
    net = build_network(ModelConfig(architecture="hypermixer", embedding_dim=16,
                                    hidden_dim=16, num_layers=1, max_seq_len=8), 20, seed=0)
    assert net.stream() is None


@pytest.mark.parametrize("architecture", ["transformer", "hypermixing"])
def test_a_feed_interrupted_between_layers_leaves_the_stream_as_it_was(architecture,
                                                                         monkeypatch):
    """Ctrl-C (or MemoryError) after the first layer has updated its state: the stream is
    restored, and feeding the token again gives what an uninterrupted stream gives."""
    config = dict(SMALL, architecture=architecture)
    if architecture == "hypermixing":
        config.update(heads=4)
    net = build_network(ModelConfig(**config), 30, seed=2, dtype=np.float64)
    tokens = [3, 7, 1, 4, 9, 2]
    clean = net.stream()
    expected = [clean.feed(t) for t in tokens]
    stream = net.stream()
    for t in tokens[:4]:
        stream.feed(t)
    last = net.blocks[-1]   # the first block steps, the last one is interrupted

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(last, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stream.feed(tokens[4])
    monkeypatch.delattr(last, "_step")
    assert stream.position == 4
    assert np.array_equal(stream.feed(tokens[4]), expected[4])
    assert np.array_equal(stream.feed(tokens[5]), expected[5])


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("architecture", ["transformer", "hypermixing"])
def test_a_forked_stream_goes_on_independently(architecture, backend):
    """fork(): two continuations of one prompt, each equal to a stream fed its whole text,
    and neither disturbing the other."""
    config = dict(SMALL, architecture=architecture)
    if architecture == "hypermixing":
        config.update(heads=4)
    net = build_network(ModelConfig(**config), 30, seed=5, dtype=np.float64, backend=backend)
    prompt, left, right = [3, 7, 1, 4], [9, 2, 5], [0, 8, 8]
    expected = {}
    for name, tail in (("left", left), ("right", right)):
        clean = net.stream()
        expected[name] = [clean.feed(t) for t in prompt + tail][len(prompt):]
    stream = net.stream()
    for t in prompt:
        stream.feed(t)
    twin = stream.fork()
    assert twin.position == stream.position == len(prompt) and twin.network is net
    got_left, got_right = [], []
    for a, b in zip(left, right):   # interleaved, so a shared array would show
        got_left.append(stream.feed(a))
        got_right.append(twin.feed(b))
    for name, got in (("left", got_left), ("right", got_right)):
        for g, e in zip(got, expected[name]):
            assert np.array_equal(g, e), name
    assert stream.position == twin.position == len(prompt) + 3


def test_a_stream_is_not_forked_while_its_network_runs():
    net = build_network(ModelConfig(**dict(SMALL, architecture="hypermixing", heads=4)), 30,
                        seed=5, dtype=np.float64)
    stream = net.stream()
    stream.feed(3)
    net._busy.acquire()   # as while another thread feeds a stream of this network
    try:
        with pytest.raises(RuntimeError, match="already running in another thread"):
            stream.fork()
    finally:
        net._busy.release()
    assert stream.fork().position == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_block_step_in_one_call_equals_the_sublayer_steps(dtype):
    """TransformerBlock._step (csrc/transformer_block.c: one C call) against the sublayers'
    steps one by one: the same output and the same cache rows, bit for bit."""
    from hypermixer._blueprints import TransformerBlockBase
    block = hm.TransformerBlock(24, 40, 16, seed=3, dtype=dtype)
    rng = np.random.default_rng(5)
    keys = rng.normal(size=(16, 24)).astype(dtype)     # earlier tokens' rows
    values = rng.normal(size=(16, 24)).astype(dtype)
    for position in (0, 5, 15):
        x = rng.normal(size=24).astype(dtype)
        k1, v1, k2, v2 = keys.copy(), values.copy(), keys.copy(), values.copy()
        fused = block._step(x, k1, v1, position)
        chain = TransformerBlockBase._step(block, x, k2, v2, position)
        assert np.array_equal(fused, chain), position
        assert np.array_equal(k1, k2) and np.array_equal(v1, v2), position
    with pytest.raises(ValueError, match="outside the cache"):
        block._step(x, k1, v1, 16)
    assert np.array_equal(k1, k2) and np.array_equal(v1, v2)


@pytest.mark.parametrize("architecture", ["transformer", "hypermixing"])
def test_an_id_outside_the_vocabulary_is_named_with_the_stream_position(architecture):
    config = dict(SMALL, architecture=architecture)
    if architecture == "hypermixing":
        config.update(heads=4)
    net = build_network(ModelConfig(**config), 30, seed=1, dtype=np.float64)
    stream = net.stream()
    stream.feed(3)
    stream.feed(4)
    for bad in (30, -1, 2**70):
        with pytest.raises(ValueError, match=rf"\[0, 30\): got {bad} at stream position 2"):
            stream.feed(bad)
    assert stream.position == 2


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("architecture", ["transformer", "hypermixing"])
def test_a_token_streamed_between_forward_and_backward_changes_no_gradient(architecture,
                                                                          backend):
    """The stream runs the embeddings' and the output layer's _forward (and, in the
    reference, every sublayer's) on its token; the network's pending forward keeps its
    caches, so its backward gives the same update as without the streamed token."""
    config = dict(SMALL, architecture=architecture)
    if architecture == "hypermixing":
        config.update(heads=4)
    nets = [build_network(ModelConfig(**config), 30, seed=2, dtype=np.float64,
                          backend=backend) for _ in range(2)]
    ids = np.random.default_rng(4).integers(0, 30, size=(3, 12))
    g = np.random.default_rng(5).normal(size=(3, 12, 30))
    for i, net in enumerate(nets):
        net.forward(ids)
        if i == 1:
            stream = net.stream()
            stream.feed(7)
            stream.feed(8)
        net.backward(g, 1e-2)
    for (name, a), (_, b) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
        assert np.array_equal(a, b), name
