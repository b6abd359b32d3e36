"""HyperMixing and HyperMixingBlock (SPEC section 8): compiled against the NumPy reference,
finite differences, padding, batches, threads, causality, state_dict exchange, bad input."""

import numpy as np
import pytest

import hypermixer
import hypermixer.reference as ref
from hypermixer._hypermixing_blueprint import position_table

from helpers import (assert_close, assert_thread_counts_agree, check_parity,
                     finite_difference_check)

DTYPES = [np.float32, np.float64]


def make_pair(dtype, d=8, k=12, **kw):
    kw.setdefault("seed", 3)
    return (hypermixer.HyperMixing(d, k, dtype=dtype, **kw),
            ref.HyperMixing(d, k, dtype=dtype, **kw))


def batch(seed, shape, lengths=None, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * scale
    g = rng.normal(size=shape)
    return x, g


def check_padding_isolated(layer, x, grad_output, lengths, garbage):
    """Padding rows give 0 output and 0 input gradient, and garbage written into them (in the
    input and in grad_output) changes no bit of anything valid."""
    x = np.array(x, dtype=layer.dtype)
    grad_output = np.array(grad_output, dtype=layer.dtype)
    y0 = layer.forward(x, lengths)
    gi0, grads0 = layer.compute_gradients(x, grad_output, lengths)
    pad = np.arange(x.shape[1])[None, :] >= np.asarray(lengths)[:, None]
    x[pad] = garbage
    grad_output[pad] = garbage
    y = layer.forward(x, lengths)
    gi, grads = layer.compute_gradients(x, grad_output, lengths)
    assert np.all(y[pad] == 0) and np.all(gi[pad] == 0)
    assert np.array_equal(y, y0) and np.array_equal(gi, gi0)
    for (name, _), a, b in zip(layer.named_parameters(), grads, grads0):
        assert np.all(np.isfinite(a)) and np.array_equal(a, b), name


# ---------------------------------------------------------------- construction and names
def test_issue_example_builds_and_runs():
    layer = hypermixer.HyperMixing(embedding_dim=256, token_mixing_hidden_dim=512, heads=4,
                                   tied=False, causal=False, normalize="sum", layer_norm=True,
                                   hypernetwork_bias=False, seed=0, dtype=np.float32)
    names = [(n, a.shape) for n, a in layer.named_parameters()]
    assert names == [("hyper.w1_gen.fc1_weights", (4, 64, 64)),
                     ("hyper.w1_gen.fc2_weights", (4, 128, 64)),
                     ("hyper.w2_gen.fc1_weights", (4, 64, 64)),
                     ("hyper.w2_gen.fc2_weights", (4, 128, 64)),
                     ("layer_norm.weight", (256,)), ("layer_norm.bias", (256,))]
    assert layer.parameters() == 2 * (4 * 64 * 64 + 4 * 128 * 64) + 2 * 256
    y = layer.forward(np.random.default_rng(0).normal(size=(2, 5, 256)))
    assert y.shape == (2, 5, 256) and y.dtype == np.float32 and np.isfinite(y).all()


def test_names_with_biases_and_tied():
    layer = hypermixer.HyperMixing(8, 12, heads=2, tied=True, hypernetwork_bias=True,
                                   layer_norm=False)
    assert [(n, a.shape) for n, a in layer.named_parameters()] == [
        ("hyper.w1_gen.fc1_weights", (2, 4, 4)), ("hyper.w1_gen.fc1_biases", (2, 4)),
        ("hyper.w1_gen.fc2_weights", (2, 6, 4)), ("hyper.w1_gen.fc2_biases", (2, 6))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_seed_same_parameters(dtype):
    a, b = make_pair(dtype, heads=2, hypernetwork_bias=True)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and np.array_equal(pa, pb)


def test_official_position_table_quirk():
    """Column i uses the exponent 2i/d (the column index itself), even columns sin, odd cos;
    SpeechBrain's uses 2*floor(i/2)/d."""
    t = position_table(5, 6, "official")
    p, i = 3, 4
    assert t[p, i] == np.float32(np.sin(p / 10000 ** (2 * i / 6)))
    assert t[p, i + 1] == np.float32(np.cos(p / 10000 ** (2 * (i + 1) / 6)))
    s = position_table(5, 6, "speechbrain")
    assert s[p, i + 1] == np.float32(np.cos(p / 10000 ** (i / 6)))   # 2 * floor(5/2) = 4


# ---------------------------------------------------------------- parity with the reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads,tied,bias,normalize,layer_norm,info", [
    (1, False, False, "sum", True, "official"),
    (2, True, False, "mean", True, "official"),
    (4, False, True, "mean", False, "speechbrain"),
    (2, True, True, "sum", True, "speechbrain"),
    (4, True, False, "sum", False, "official"),
])
def test_parity(dtype, causal, heads, tied, bias, normalize, layer_norm, info):
    c, r = make_pair(dtype, heads=heads, tied=tied, hypernetwork_bias=bias, causal=causal,
                     normalize=normalize, layer_norm=layer_norm, token_information=info)
    x, g = batch(1, (3, 9, 8))
    check_parity(c, r, x, g, lengths=np.array([9, 1, 6]), factor=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_len", [1, 2, 7, 61])
def test_parity_lengths(dtype, seq_len):
    for causal in (False, True):
        c, r = make_pair(dtype, heads=2, causal=causal, normalize="mean")
        x, g = batch(seq_len, (2, seq_len, 8))
        check_parity(c, r, x, g, lengths=np.array([seq_len, max(1, seq_len // 2)]),
                     factor=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_parity(dtype):
    for causal in (False, True):
        kw = dict(heads=2, causal=causal, seed=5, dtype=dtype)
        c = hypermixer.HyperMixingBlock(8, 16, 12, **kw)
        r = ref.HyperMixingBlock(8, 16, 12, **kw)
        x, g = batch(2, (3, 6, 8))
        check_parity(c, r, x, g, lengths=np.array([6, 3, 1]), factor=10)


def test_block_names():
    block = hypermixer.HyperMixingBlock(8, 16, 12, heads=2)
    names = [n for n, _ in block.named_parameters()]
    assert names == ["norm1.gamma", "norm1.beta", "hypermixing.hyper.w1_gen.fc1_weights",
                     "hypermixing.hyper.w1_gen.fc2_weights",
                     "hypermixing.hyper.w2_gen.fc1_weights",
                     "hypermixing.hyper.w2_gen.fc2_weights", "hypermixing.layer_norm.weight",
                     "hypermixing.layer_norm.bias", "norm2.gamma", "norm2.beta",
                     "feed_forward.w1", "feed_forward.b1", "feed_forward.w2", "feed_forward.b2"]


# ---------------------------------------------------------------- finite differences
# Heads of width 8 with k_h of 8 or 16 take csrc/hypermixing.c's small-head generator path
# (row products without gemm); the shapes above use wider or narrower heads. Heads of width 4
# with d = k (a multiple of 16) take, in float32 on AVX-512 CPUs, the width-4 path of both the
# generators and the causal scan (the hypermixing LM's default 32 heads at E = 128).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d,k,heads,tied,bias", [
    (16, 16, 2, False, True), (16, 32, 2, True, False), (32, 64, 4, False, False),
    (16, 16, 4, False, True), (64, 64, 16, True, False), (128, 128, 32, False, False)])
def test_parity_small_heads(dtype, causal, d, k, heads, tied, bias):
    c, r = make_pair(dtype, d=d, k=k, heads=heads, tied=tied, hypernetwork_bias=bias,
                     causal=causal, normalize="mean")
    x, g = batch(6, (3, 11, d))
    check_parity(c, r, x, g, lengths=np.array([11, 4, 1]), factor=10)


def test_finite_differences_small_heads():
    layer = hypermixer.HyperMixing(16, 16, heads=2, causal=True, hypernetwork_bias=True,
                                   normalize="mean", seed=4, dtype=np.float64)
    for _, p in layer.named_parameters():
        p *= 0.4
    x, g = batch(3, (2, 5, 16), scale=0.3)
    finite_difference_check(layer, x, g, lengths=np.array([5, 3]), rtol=1e-5)


@pytest.mark.parametrize("impl", [hypermixer, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tied,bias,normalize,info", [
    (False, True, "sum", "official"), (True, False, "mean", "speechbrain")])
def test_finite_differences(impl, causal, tied, bias, normalize, info):
    layer = impl.HyperMixing(8, 12, heads=2, causal=causal, tied=tied, hypernetwork_bias=bias,
                             normalize=normalize, token_information=info, seed=4,
                             dtype=np.float64)
    for _, p in layer.named_parameters():
        p *= 0.4   # keep the GELUs away from their flat tails so differences are informative
    x, g = batch(3, (2, 5, 8), scale=0.3)
    finite_difference_check(layer, x, g, lengths=np.array([5, 3]), rtol=1e-5)


@pytest.mark.parametrize("impl", [hypermixer, ref], ids=["compiled", "reference"])
def test_block_finite_differences(impl):
    block = impl.HyperMixingBlock(8, 16, 12, heads=2, causal=True, normalize="mean", seed=1,
                                  dtype=np.float64)
    x, g = batch(4, (2, 5, 8))
    finite_difference_check(block, x, g, lengths=np.array([5, 2]), rtol=1e-5, eps=1e-5)


# ---------------------------------------------------------------- batches, padding, threads
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d, k, heads, dtype", [
    (8, 12, 2, np.float64), (16, 16, 2, np.float64),    # (16, 16, 2): heads of width 8
    (32, 32, 8, np.float32)])                           # heads of width 4, float32
def test_mixed_batch_equals_one_by_one(causal, d, k, heads, dtype):
    layer = hypermixer.HyperMixing(d, k, heads=heads, causal=causal, seed=2, dtype=dtype)
    lengths = np.array([7, 3, 1, 5])
    x, g = batch(5, (4, 7, d))
    y = layer.forward(x, lengths)
    gi, grads = layer.compute_gradients(x, g, lengths)
    total = [np.zeros_like(p) for _, p in layer.named_parameters()]
    for b, n in enumerate(lengths):
        yb = layer.forward(x[b, :n])
        gib, gb = layer.compute_gradients(x[b, :n], g[b, :n])
        assert_close(y[b, :n], yb, dtype, "output")
        assert_close(gi[b, :n], gib, dtype, "input gradient")
        total = [t + a for t, a in zip(total, gb)]
    for (name, _), a, b in zip(layer.named_parameters(), grads, total):
        assert_close(a, b, dtype, f"gradient of {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("garbage", [np.nan, np.inf])
def test_padding_isolated(dtype, causal, garbage):
    for layer in (hypermixer.HyperMixing(8, 12, heads=2, causal=causal, hypernetwork_bias=True,
                                         dtype=dtype),
                  hypermixer.HyperMixing(8, 12, heads=2, causal=causal, layer_norm=False,
                                         tied=True, dtype=dtype),
                  ref.HyperMixing(8, 12, heads=2, causal=causal, dtype=dtype),
                  hypermixer.HyperMixingBlock(8, 16, 12, heads=2, causal=causal, dtype=dtype)):
        x, g = batch(6, (3, 6, 8))
        check_padding_isolated(layer, x, g, np.array([6, 2, 4]), garbage)
    # heads of width 8 (the small-head generator path), with biases and tied
    for layer in (hypermixer.HyperMixing(16, 32, heads=2, causal=causal, hypernetwork_bias=True,
                                         dtype=dtype),
                  hypermixer.HyperMixing(16, 16, heads=2, causal=causal, tied=True, dtype=dtype)):
        x, g = batch(7, (3, 6, 16))
        check_padding_isolated(layer, x, g, np.array([6, 2, 4]), garbage)
    # heads of width 4 (the width-4 path in float32), with biases and tied
    for layer in (hypermixer.HyperMixing(32, 32, heads=8, causal=causal, hypernetwork_bias=True,
                                         dtype=dtype),
                  hypermixer.HyperMixing(32, 32, heads=8, causal=causal, tied=True, dtype=dtype)):
        x, g = batch(8, (3, 6, 32))
        check_padding_isolated(layer, x, g, np.array([6, 2, 4]), garbage)


@pytest.mark.parametrize("causal", [False, True])
def test_one_and_two_threads_bit_identical(causal):
    layer = hypermixer.HyperMixing(16, 32, heads=4, causal=causal, normalize="mean", seed=7)
    block = hypermixer.HyperMixingBlock(16, 32, 32, heads=2, causal=causal, seed=7)
    x, g = batch(7, (5, 70, 16))
    lengths = np.array([70, 33, 1, 64, 50])
    for net in (layer, block):
        results = []
        for threads in (1, 2):
            hypermixer.set_num_threads(threads)
            y = net.forward(x, lengths)
            gi, grads = net.compute_gradients(x, g, lengths)
            results.append([y, gi] + grads)
        for a, b in zip(*results):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tied, bias", [(False, True), (True, False)])
def test_threads_bit_identical_above_parallel_threshold(causal, tied, bias):
    """Shapes large enough that every kernel runs its parallel paths (the generators' whole-
    head tasks need M*N*K*h above HM_PARALLEL_MIN); 1, 2 and 3 threads give the same bits."""
    x, g = batch(11, (3, 160, 64))
    lengths = np.array([160, 97, 1])
    # 8 heads: width 8, the small-head generator path; 16 heads with k = d: width 4
    for k, heads in ((128, 4), (128, 8), (64, 16)):
        layer = hypermixer.HyperMixing(64, k, heads=heads, causal=causal, tied=tied,
                                       hypernetwork_bias=bias, normalize="mean", seed=3)
        assert_thread_counts_agree(layer, x, g, lengths)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("heads, lengths", [(1, [90]), (1, [61]), (2, [90]), (1, [1])])
def test_causal_scan_with_fewer_units_than_threads(dtype, heads, lengths):
    """One sequence and one or two heads: on 2 and 3 threads the forward shares the chunks of
    one scan between threads (checkpoints first); the same bits as 1 thread, and the
    reference's values."""
    x, g = batch(12, (1, 90, 16))
    x, g = x.astype(dtype), g.astype(dtype)
    lengths = np.array(lengths)
    layer = hypermixer.HyperMixing(16, 24, heads=heads, causal=True, normalize="mean", seed=5,
                                   dtype=dtype)
    assert_thread_counts_agree(layer, x, g, lengths)
    twin = ref.HyperMixing(16, 24, heads=heads, causal=True, normalize="mean", seed=5,
                           dtype=dtype)
    hypermixer.set_num_threads(3)
    assert_close(layer.forward(x, lengths), twin.forward(x, lengths), dtype, "output")


# ---------------------------------------------------------------- causality
@pytest.mark.parametrize("impl", [hypermixer, ref], ids=["compiled", "reference"])
def test_causal_rows_ignore_the_future(impl):
    layer = impl.HyperMixing(8, 12, heads=2, causal=True, normalize="mean", seed=1,
                             dtype=np.float64)
    x, _ = batch(8, (11, 8))
    y = layer.forward(x)
    for t in (0, 4, 9):
        x2 = x.copy()
        x2[t + 1:] = np.random.default_rng(t).normal(size=x2[t + 1:].shape) * 5
        y2 = layer.forward(x2)
        assert np.array_equal(y2[:t + 1], y[:t + 1])
        assert not np.allclose(y2[t + 1:], y[t + 1:])


@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_causal_last_row_equals_bidirectional(normalize):
    for impl in (hypermixer, ref):
        kw = dict(heads=2, normalize=normalize, seed=1, dtype=np.float64)
        causal = impl.HyperMixing(8, 12, causal=True, **kw)
        bidi = impl.HyperMixing(8, 12, causal=False, **kw)
        x, _ = batch(9, (2, 13, 8))
        lengths = np.array([13, 8])
        yc, yb = causal.forward(x, lengths), bidi.forward(x, lengths)
        for b, n in enumerate(lengths):
            assert_close(yc[b, n - 1], yb[b, n - 1], np.float64, "last row")


def test_causal_long_sequence_checkpointed():
    """Many checkpoint chunks (L = 300): gradients still match the reference's explicit
    prefix sums."""
    c, r = make_pair(np.float64, d=4, k=4, heads=2, causal=True, normalize="mean")
    x, g = batch(10, (1, 300, 4))
    check_parity(c, r, x, g, factor=10)


# ---------------------------------------------------------------- protocol
def test_backward_equals_compute_then_apply():
    a = hypermixer.HyperMixing(8, 12, heads=2, causal=True, seed=1)
    b = hypermixer.HyperMixing(8, 12, heads=2, causal=True, seed=1)
    x, g = batch(11, (2, 5, 8))
    a.forward(x)
    a.backward(g, 0.01)
    _, grads = b.compute_gradients(x, g)
    b.apply_gradients(grads, 0.01)
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(p, q)


# ---------------------------------------------------------------- state_dict
@pytest.mark.parametrize("impl", [hypermixer, ref], ids=["compiled", "reference"])
def test_state_dict_round_trip(impl):
    src = impl.HyperMixing(8, 12, heads=2, hypernetwork_bias=True, seed=1, dtype=np.float64)
    dst = impl.HyperMixing(8, 12, heads=2, hypernetwork_bias=True, seed=2, dtype=np.float64)
    sd = src.state_dict()
    sd["token_information.pe"] = np.zeros((1, 10, 8))   # buffers are accepted and ignored
    dst.load_state_dict(sd)
    x, _ = batch(12, (2, 5, 8))
    assert np.array_equal(src.forward(x), dst.forward(x))
    sd = src.state_dict()
    next(iter(sd.values()))[...] = 7   # copies: editing them changes nothing
    assert not np.any(src.named_parameters()[0][1] == 7)


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_loading_a_mixer_inside_a_model_restarts_only_its_own_adam_state(backend):
    """The step counter is the model's: reloading one block's mixer zeroes that mixer's
    moments and leaves every other layer's moments and the step as they were (resetting the
    step restarted every layer's bias correction, and a checkpoint then dropped them all)."""
    config = hypermixer.ModelConfig(architecture="hypermixing", embedding_dim=16,
                                    hidden_dim=24, num_layers=2, max_seq_len=8, heads=4)
    net = hypermixer.build_network(config, 20, seed=0, dtype=np.float64, backend=backend)
    ids = np.random.default_rng(0).integers(0, 20, size=(2, 8))
    for _ in range(3):
        net.train_step(ids, ids, None, lr=1e-2, clip_norm=1.0)
    mixer = net.blocks[0].hypermixing
    others = [leaf for leaf in net._leaves() if leaf is not mixer]
    before = [[m.copy() for pair in leaf._adam_moments for m in pair] for leaf in others]
    mixer.load_state_dict(mixer.state_dict())
    assert [leaf._adam_step for leaf in net._leaves()] == [3] * len(net._leaves())
    assert all(not m.any() for pair in mixer._adam_moments for m in pair)
    for leaf, moments in zip(others, before):
        assert all(np.array_equal(a, b) for a, b in
                   zip([m for pair in leaf._adam_moments for m in pair], moments))
    # a mixer that is its own model restarts its step too
    alone = hypermixer.HyperMixing(8, 8, heads=2, causal=True, seed=1)
    x, g = batch(3, (2, 5, 8))
    alone.forward(x)
    alone.backward(g, 0.01)
    alone.load_state_dict(alone.state_dict())
    assert alone._adam_step == 0


def test_load_state_dict_is_refused_while_the_layer_runs_elsewhere():
    layer = hypermixer.HyperMixing(8, 12, heads=2, seed=1, dtype=np.float64)
    sd = {name: np.zeros_like(arr) for name, arr in layer.state_dict().items()}
    before = [arr.copy() for _, arr in layer.named_parameters()]
    layer._busy.acquire()   # as while another thread runs its forward
    try:
        with pytest.raises(RuntimeError, match="another thread"):
            layer.load_state_dict(sd)
    finally:
        layer._busy.release()
    assert all(np.array_equal(a, b) for a, (_, b) in zip(before, layer.named_parameters()))


def test_tied_state_dict_accepts_official_duplicates():
    layer = hypermixer.HyperMixing(8, 12, heads=2, tied=True, seed=1)
    sd = layer.state_dict()
    for name in list(sd):
        if name.startswith("hyper.w1_gen."):
            sd["hyper.w2_gen." + name[len("hyper.w1_gen."):]] = sd[name].copy()
    layer.load_state_dict(sd)
    sd["hyper.w2_gen.fc1_weights"] = sd["hyper.w2_gen.fc1_weights"] + 1
    with pytest.raises(ValueError, match="tied"):
        layer.load_state_dict(sd)


@pytest.mark.parametrize("change,match", [
    (lambda sd: sd.pop("layer_norm.bias"), "lacks"),
    (lambda sd: sd.__setitem__("hyper.w3_gen.fc1_weights", np.zeros(3)), "unexpected"),
    (lambda sd: sd.__setitem__("hyper.w1_gen.fc1_weights", np.zeros((2, 4, 5))), "shape"),
    (lambda sd: sd.__setitem__("hyper.w1_gen.fc1_biases", np.zeros((2, 4))), "unexpected"),
    (lambda sd: sd.__setitem__("layer_norm.weight", np.full(8, np.nan)), "non-finite"),
])
def test_bad_state_dict_refused_nothing_changed(change, match):
    layer = hypermixer.HyperMixing(8, 12, heads=2, seed=1)
    before = [p.copy() for _, p in layer.named_parameters()]
    sd = hypermixer.HyperMixing(8, 12, heads=2, seed=9).state_dict()
    change(sd)
    with pytest.raises(ValueError, match=match):
        layer.load_state_dict(sd)
    for (_, p), q in zip(layer.named_parameters(), before):
        assert np.array_equal(p, q)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(heads=3), ValueError, "divide embedding_dim"),
    (dict(heads=4, token_mixing_hidden_dim=10), ValueError, "divide token_mixing"),
    (dict(normalize="max"), ValueError, "normalize"),
    (dict(token_information="rotary"), ValueError, "token_information"),
    (dict(heads=0), ValueError, "heads"),
    (dict(heads=2.0), TypeError, "heads"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    kwargs.setdefault("token_mixing_hidden_dim", 12)
    with pytest.raises(error, match=match):
        hypermixer.HyperMixing(8, **kwargs)


def test_bad_input_refused():
    layer = hypermixer.HyperMixing(8, 12, heads=2)
    with pytest.raises(ValueError, match="features"):
        layer.forward(np.zeros((2, 5, 7)))
    with pytest.raises(ValueError, match="lengths"):
        layer.forward(np.zeros((2, 5, 8)), np.array([0, 5]))
    with pytest.raises(TypeError):
        layer.forward(np.zeros((2, 5, 8), dtype=bool))


def test_width4_stream_step_equals_forward_bit_for_bit():
    """float32, 32 heads of width 4 (the LM default at E = 128): the streaming step, the
    forward and the backward's rebuild share one token step, so a token fed to the step gives
    exactly the forward's row, at any position (150 tokens: several checkpoint chunks)."""
    layer = hypermixer.HyperMixing(128, 128, heads=32, causal=True, normalize="mean", seed=5,
                                   dtype=np.float32)
    x, _ = batch(12, (2, 150, 128))
    x = x.astype(np.float32)
    y = layer.forward(x, np.array([150, 150]))
    state = np.zeros((2, 32, 4, 4), np.float32)
    for t in range(150):
        row = layer._step(np.ascontiguousarray(x[:, t]), state, np.array([t, t]))
        assert np.array_equal(row, y[:, t]), t


@pytest.mark.parametrize("isa", ["avx2", "none"])
def test_width4_paths_of_other_cpus(isa):
    """The width-4 tests above once more in a process that takes the AVX2 path
    (HYPERMIXER_WIDTH4_ISA=avx2; on a CPU without AVX-512 that is its default) or the general
    loops (=none), as a CPU without AVX-512, or without AVX2, would: the same parity, padding,
    batch, thread and streaming checks must hold there."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    here = Path(__file__).resolve().parent
    env = dict(os.environ, HYPERMIXER_WIDTH4_ISA=isa)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         str(here / "test_hypermixing.py"), str(here / "test_hypermixing_block_fused.py"),
         "-k", "small_heads or one_by_one or padding_isolated or threshold or width4_stream "
               "or one_call"],
        env=env, cwd=here, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
