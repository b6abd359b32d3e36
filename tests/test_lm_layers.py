"""Language-model layers: Embeddings, SelfAttention, FeedForward, TransformerBlock,
OutputProjection and softmax_cross_entropy, compiled (``hypermixer``) against the NumPy
reference (``hypermixer.reference``), plus finite-difference checks of the reference."""

import numpy as np
import pytest

import hypermixer as hm
from hypermixer import reference as ref

from helpers import assert_close, check_parity, finite_difference_check, relative_error

E, H, S, V = 16, 24, 12, 37
DTYPES = [np.float32, np.float64]

# (padded length, lengths or None): single sequences of length 1, 2, odd and full, and a
# mixed batch with every kind of length at once.
SHAPES = [(1, None), (2, None), (7, None), (S, None), (S, [1, 2, 7, S])]
SHAPE_IDS = ["L1", "L2", "odd", "full", "mixed"]


def make_pair(name, dtype, seed=3):
    """The compiled layer and its reference twin built with the same arguments."""
    args = {
        "SelfAttention": (E,),
        "FeedForward": (E, H),
        "TransformerBlock": (E, H, S),
        "OutputProjection": (E, V),
        "Embeddings": (V, S, E),
    }[name]
    return (getattr(hm, name)(*args, seed=seed, dtype=dtype),
            getattr(ref, name)(*args, seed=seed, dtype=dtype))


def batch_for(rng, seq_len, lengths, width):
    batch = 1 if lengths is None else len(lengths)
    x = rng.normal(size=(batch, seq_len, E))
    g = rng.normal(size=(batch, seq_len, width))
    if lengths is None:
        return x[0], g[0]
    return x, g


def token_ids(rng, seq_len, lengths):
    batch = 1 if lengths is None else len(lengths)
    ids = rng.integers(0, V, size=(batch, seq_len))
    if lengths is None:
        return ids[0]
    for b, n in enumerate(lengths):
        ids[b, n:] = -1                     # padding ids are never read
    return ids


# ------------------------------------------------------------------ compiled vs reference

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_len,lengths", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", ["SelfAttention", "FeedForward", "TransformerBlock",
                                  "OutputProjection"])
def test_parity_float_layers(name, seq_len, lengths, dtype):
    rng = np.random.default_rng(seq_len)
    compiled, reference = make_pair(name, dtype)
    width = V if name == "OutputProjection" else E
    x, g = batch_for(rng, seq_len, lengths, width)
    y, gi, _ = check_parity(compiled, reference, x, g, lengths)
    if lengths is not None:
        for b, n in enumerate(lengths):
            assert not y[b, n:].any(), "padding rows of the output must be 0"
            assert not gi[b, n:].any(), "padding rows of the input gradient must be 0"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_len,lengths", SHAPES, ids=SHAPE_IDS)
def test_parity_embeddings(seq_len, lengths, dtype):
    rng = np.random.default_rng(seq_len)
    compiled, reference = make_pair("Embeddings", dtype)
    for (name, a), (_, b) in zip(compiled.named_parameters(), reference.named_parameters()):
        assert np.array_equal(a, b), f"initial {name} differs"
    ids = token_ids(rng, seq_len, lengths)
    y_c, y_r = compiled.forward(ids, lengths), reference.forward(ids, lengths)
    assert y_c.dtype == np.dtype(dtype) and y_c.shape == ids.shape + (E,)
    # a gather and one addition: exact in both implementations
    assert np.array_equal(y_c, y_r)
    g = rng.normal(size=y_c.shape)
    gi_c, grads_c = compiled.compute_gradients(ids, g, lengths)
    gi_r, grads_r = reference.compute_gradients(ids, g, lengths)
    assert gi_c is None and gi_r is None
    for gc, gr in zip(grads_c, grads_r):
        assert gc.dtype == np.dtype(dtype)
        assert_close(gc, gr, dtype, "embedding gradient")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_len,lengths", SHAPES, ids=SHAPE_IDS)
def test_parity_loss(seq_len, lengths, dtype):
    rng = np.random.default_rng(seq_len)
    batch = 1 if lengths is None else len(lengths)
    logits = (3 * rng.normal(size=(batch, seq_len, V))).astype(dtype)
    targets = rng.integers(0, V, size=(batch, seq_len))
    if lengths is None:
        logits, targets = logits[0], targets[0]
    loss_c, grad_c = hm.softmax_cross_entropy(logits, targets, lengths)
    loss_r, grad_r = ref.softmax_cross_entropy(logits, targets, lengths)
    assert isinstance(loss_c, float) and isinstance(loss_r, float)
    assert grad_c.dtype == np.dtype(dtype) and grad_c.shape == logits.shape
    assert abs(loss_c - loss_r) <= 10 * np.finfo(dtype).eps * abs(loss_r)
    assert_close(grad_c, grad_r, dtype, "loss gradient")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["SelfAttention", "TransformerBlock", "OutputProjection"])
def test_parity_sequences_longer_than_one_tile(name, dtype):
    # the kernels work in tiles of 32 query rows: cross tile edges with ragged lengths
    rng = np.random.default_rng(7)
    seq_len, lengths = 70, [70, 33, 32, 31, 65, 1]
    args = {"SelfAttention": (E,), "TransformerBlock": (E, H, seq_len),
            "OutputProjection": (E, V)}[name]
    compiled = getattr(hm, name)(*args, seed=2, dtype=dtype)
    reference = getattr(ref, name)(*args, seed=2, dtype=dtype)
    width = V if name == "OutputProjection" else E
    x = rng.normal(size=(len(lengths), seq_len, E))
    g = rng.normal(size=(len(lengths), seq_len, width))
    y, gi, _ = check_parity(compiled, reference, x, g, lengths)
    for b, n in enumerate(lengths):
        assert not y[b, n:].any() and not gi[b, n:].any()


# ------------------------------------------------------------------ batches and padding

@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize("name", ["SelfAttention", "TransformerBlock", "OutputProjection"])
def test_mixed_batch_equals_one_by_one(impl, name):
    rng = np.random.default_rng(11)
    lengths = [3, 1, S, 6]
    args = {"SelfAttention": (E,), "TransformerBlock": (E, H, S),
            "OutputProjection": (E, V)}[name]
    layer = getattr(impl, name)(*args, seed=1, dtype=np.float64)
    width = V if name == "OutputProjection" else E
    x = rng.normal(size=(len(lengths), S, E))
    x[0, 3:] = 1e3            # garbage in padding rows must not leak anywhere
    g = rng.normal(size=(len(lengths), S, width))
    y = layer.forward(x, lengths)
    gi, grads = layer.compute_gradients(x, g, lengths)
    summed = [np.zeros_like(p) for _, p in layer.named_parameters()]
    for b, n in enumerate(lengths):
        y_one = layer.forward(x[b, :n])
        assert relative_error(y[b, :n], y_one) < 1e-12
        assert not y[b, n:].any() and not gi[b, n:].any()
        gi_one, grads_one = layer.compute_gradients(x[b, :n], g[b, :n])
        assert relative_error(gi[b, :n], gi_one) < 1e-12
        for acc, part in zip(summed, grads_one):
            acc += part
    for (pname, _), got, want in zip(layer.named_parameters(), grads, summed):
        assert relative_error(got, want) < 1e-12, pname


@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize("name", ["SelfAttention", "FeedForward", "TransformerBlock",
                                  "OutputProjection"])
def test_nan_in_padding_does_not_leak(impl, name):
    rng = np.random.default_rng(14)
    lengths = [5, 2, 7]
    args = {"SelfAttention": (E,), "FeedForward": (E, H), "TransformerBlock": (E, H, S),
            "OutputProjection": (E, V)}[name]
    layer = getattr(impl, name)(*args, seed=1, dtype=np.float64)
    width = V if name == "OutputProjection" else E
    x = rng.normal(size=(3, 7, E))
    g = rng.normal(size=(3, 7, width))
    clean = layer.compute_gradients(x, g, lengths)
    for b, n in enumerate(lengths):
        x[b, n:] = np.nan
        g[b, n:] = np.inf
    dirty = layer.compute_gradients(x, g, lengths)
    assert np.array_equal(dirty[0], clean[0])
    for got, want in zip(dirty[1], clean[1]):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
def test_loss_ignores_nan_padding(impl):
    rng = np.random.default_rng(15)
    lengths = [4, 1]
    logits = rng.normal(size=(2, 4, V))
    targets = rng.integers(0, V, size=(2, 4))
    loss, grad = impl.softmax_cross_entropy(logits, targets, lengths)
    logits[1, 1:] = np.nan
    targets[1, 1:] = V + 100
    loss2, grad2 = impl.softmax_cross_entropy(logits, targets, lengths)
    assert loss2 == loss and np.array_equal(grad2, grad)


@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
def test_embeddings_batch_equals_one_by_one(impl):
    rng = np.random.default_rng(12)
    lengths = [4, 1, S]
    emb = impl.Embeddings(V, S, E, seed=2, dtype=np.float64)
    ids = token_ids(rng, S, lengths)
    ids[1, 1:] = V + 5        # out of range, but padding: never read
    y = emb.forward(ids, lengths)
    for b, n in enumerate(lengths):
        assert np.array_equal(y[b, :n], emb.forward(ids[b, :n]))
        assert not y[b, n:].any()
        # X[t] = token[id_t] + position[t], straight from SPEC section 2
        assert np.array_equal(y[b, :n], emb.token[ids[b, :n]] + emb.position[:n])


@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
def test_loss_batch_is_mean_of_sequences(impl):
    rng = np.random.default_rng(13)
    lengths = [5, 1, 8]
    logits = rng.normal(size=(3, 8, V))
    targets = rng.integers(0, V, size=(3, 8))
    targets[0, 5:] = -1       # padding targets are ignored
    loss, grad = impl.softmax_cross_entropy(logits, targets, lengths)
    singles = [impl.softmax_cross_entropy(logits[b, :n], targets[b, :n])
               for b, n in enumerate(lengths)]
    assert abs(loss - np.mean([s[0] for s in singles])) < 1e-12
    for b, n in enumerate(lengths):
        assert relative_error(grad[b, :n], singles[b][1] / len(lengths)) < 1e-12
        assert not grad[b, n:].any()


# ------------------------------------------------------------------ finite differences

@pytest.mark.parametrize("impl", [ref, hm], ids=["reference", "compiled"])
@pytest.mark.parametrize("name", ["SelfAttention", "FeedForward", "TransformerBlock",
                                  "OutputProjection"])
def test_finite_differences(impl, name):
    rng = np.random.default_rng(21)
    args = {"SelfAttention": (E,), "FeedForward": (E, H), "TransformerBlock": (E, H, S),
            "OutputProjection": (E, V)}[name]
    layer = getattr(impl, name)(*args, seed=5, dtype=np.float64)
    width = V if name == "OutputProjection" else E
    lengths = [7, 4]
    x = rng.normal(size=(2, 7, E))
    g = rng.normal(size=(2, 7, width))
    finite_difference_check(layer, x, g, lengths, samples=5)


@pytest.mark.parametrize("impl", [ref, hm], ids=["reference", "compiled"])
def test_finite_differences_embeddings(impl):
    rng = np.random.default_rng(22)
    emb = impl.Embeddings(V, S, E, seed=5, dtype=np.float64)
    lengths = [6, 3]
    ids = token_ids(rng, 6, lengths)
    ids[0, :3] = 4            # a repeated id must accumulate its gradients
    g = rng.normal(size=(2, 6, E))
    _, (dtoken, dposition) = emb.compute_gradients(ids, g, lengths)

    def objective():
        return float((emb.forward(ids, lengths) * g).sum())

    unused = int(np.setdiff1d(np.arange(V), ids)[0])       # its gradient must be 0
    checks = [(emb.token, dtoken, (4, 3)), (emb.token, dtoken, (int(ids[1, 2]), 0)),
              (emb.token, dtoken, (unused, 2)), (emb.position, dposition, (2, 5)),
              (emb.position, dposition, (5, 1))]
    eps = 1e-6
    for param, grad, idx in checks:
        old = param[idx]
        param[idx] = old + eps
        plus = objective()
        param[idx] = old - eps
        minus = objective()
        param[idx] = old
        numeric = (plus - minus) / (2 * eps)
        assert abs(numeric - grad[idx]) <= 1e-6 * max(1.0, abs(numeric)), idx
    # token 4 appears 3 times in sequence 0: its gradient is the sum of those rows
    expected = g[0, :3].sum(axis=0) + g[1, :3][ids[1, :3] == 4].sum(axis=0)
    assert relative_error(dtoken[4], expected) < 1e-12
    assert not dtoken[unused].any()


@pytest.mark.parametrize("impl", [ref, hm], ids=["reference", "compiled"])
def test_finite_differences_loss(impl):
    rng = np.random.default_rng(23)
    lengths = [5, 2]
    logits = 2 * rng.normal(size=(2, 5, V))
    targets = rng.integers(0, V, size=(2, 5))
    _, grad = impl.softmax_cross_entropy(logits, targets, lengths)
    eps = 1e-6
    for _ in range(8):
        idx = (int(rng.integers(2)), int(rng.integers(5)), int(rng.integers(V)))
        if rng.random() < 0.5 and idx[1] < lengths[idx[0]]:
            idx = idx[:2] + (int(targets[idx[:2]]),)   # hit the target column too
        old = logits[idx]
        logits[idx] = old + eps
        plus, _ = impl.softmax_cross_entropy(logits, targets, lengths)
        logits[idx] = old - eps
        minus, _ = impl.softmax_cross_entropy(logits, targets, lengths)
        logits[idx] = old
        numeric = (plus - minus) / (2 * eps)
        assert abs(numeric - grad[idx]) <= 1e-7 * max(1.0, abs(numeric)) + 1e-10, idx


# ------------------------------------------------------------------ math properties

@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize("name", ["SelfAttention", "TransformerBlock"])
def test_attention_is_causal(impl, name):
    rng = np.random.default_rng(31)
    args = (E,) if name == "SelfAttention" else (E, H, S)
    layer = getattr(impl, name)(*args, seed=4, dtype=np.float64)
    x = rng.normal(size=(S, E))
    y = layer.forward(x)
    for t in (0, 3, S - 2):
        changed = x.copy()
        changed[t + 1:] = rng.normal(size=(S - t - 1, E)) * 5
        y2 = layer.forward(changed)
        assert np.array_equal(y2[:t + 1], y[:t + 1]), f"row <= {t} saw a later row"
        assert not np.allclose(y2[t + 1:], y[t + 1:])


@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
def test_attention_first_row_and_uniform_keys(impl):
    # Row 0 attends only to itself: y0 = x0 @ wv + x0. With all rows equal every attention
    # row is a convex combination of one value vector: y = x @ wv + x on every row.
    rng = np.random.default_rng(32)
    att = impl.SelfAttention(E, seed=6, dtype=np.float64)
    x = rng.normal(size=(5, E))
    y = att.forward(x)
    assert relative_error(y[0], x[0] @ att.wv + x[0]) < 1e-12
    same = np.repeat(x[:1], 5, axis=0)
    assert relative_error(att.forward(same), same @ att.wv + same) < 1e-12


@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
def test_loss_math(impl):
    # uniform logits: loss = log V and grad = (1/V - onehot) / L
    targets = np.array([0, 5, V - 1])
    loss, grad = impl.softmax_cross_entropy(np.zeros((3, V)), targets)
    assert abs(loss - np.log(V)) < 1e-12
    expected = np.full((3, V), 1.0 / V)
    expected[np.arange(3), targets] -= 1
    assert relative_error(grad, expected / 3) < 1e-12
    # stable for huge logits; the gradient rows sum to zero
    big = np.array([[1e4, -1e4, 0.0] + [0.0] * (V - 3)], dtype=np.float32)
    loss, grad = impl.softmax_cross_entropy(big, np.array([1]))
    assert np.isfinite(loss) and abs(loss - 2e4) < 1.0
    assert np.isfinite(grad).all() and abs(grad.sum()) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_softmax_accurate_over_the_whole_range(dtype):
    # The compiled loss has its own vectorised exp: check the softmax it implies against
    # float64 math for shifted logits from 0 down to far below the underflow limit.
    x = np.linspace(-800, 0, 20001).astype(dtype)
    logits = np.concatenate([[0], x]).astype(dtype)[np.newaxis]
    _, grad = hm.softmax_cross_entropy(logits, np.array([0]))
    probs = grad[0, 1:].astype(np.float64)
    exact = np.exp(x.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum()
    normal = exact > 10 * np.finfo(dtype).tiny
    rel = np.abs(probs[normal] - exact[normal]) / exact[normal]
    assert rel.max() < 4 * np.finfo(dtype).eps
    assert np.abs(probs[~normal]).max() < 20 * np.finfo(dtype).tiny


def test_transformer_block_parameter_count():
    e, h = 128, 256
    attention = 3 * e * e                  # wq, wk, wv
    norms = 2 * (2 * e)                    # two LayerNorms: gamma and beta
    feed_forward = e * h + h + h * e + e   # w1, b1, w2, b2
    expected = attention + norms + feed_forward
    assert expected == 115_584             # SPEC section 6
    for impl in (hm, ref):
        block = impl.TransformerBlock(e, h, 80)
        assert block.parameters() == expected
        assert [n for n, _ in block.named_parameters()] == [
            "self_attention.wq", "self_attention.wk", "self_attention.wv",
            "norm1.gamma", "norm1.beta",
            "feed_forward.w1", "feed_forward.b1", "feed_forward.w2", "feed_forward.b2",
            "norm2.gamma", "norm2.beta"]


def test_init_follows_spec_and_seed():
    emb = ref.Embeddings(V, S, E, seed=7, dtype=np.float64)
    rng = np.random.default_rng(7)
    assert np.array_equal(emb.token, rng.normal(0, 0.02, size=(V, E)))
    assert np.array_equal(emb.position, rng.normal(0, 0.02, size=(S, E)))
    out = hm.OutputProjection(E, V, seed=np.random.default_rng(8))
    assert np.array_equal(out.w, ref.OutputProjection(E, V, seed=8).w)
    assert not out.b.any()
    assert issubclass(hm.FeedForward, hm.ChannelMixingMLP)
    assert issubclass(ref.FeedForward, ref.ChannelMixingMLP)


# ------------------------------------------------------------------ determinism, protocol

def test_one_and_two_threads_are_bit_identical():
    rng = np.random.default_rng(41)
    lengths = [40, 17, 33, 1]
    x = rng.normal(size=(4, 40, 32)).astype(np.float32)
    g = rng.normal(size=(4, 40, 32)).astype(np.float32)
    ids = rng.integers(0, 300, size=(4, 40))
    logits = rng.normal(size=(4, 40, 300)).astype(np.float32)
    glog = rng.normal(size=(4, 40, 300)).astype(np.float32)
    gemb = rng.normal(size=(4, 40, 512)).astype(np.float32)
    before = hm.get_num_threads()

    def run():
        att = hm.SelfAttention(32, seed=1)
        block = hm.TransformerBlock(32, 64, 40, seed=1)
        out = hm.OutputProjection(32, 300, seed=1)
        emb = hm.Embeddings(300, 40, 512, seed=1)   # wide enough to run in parallel
        results = []
        for layer, inp, grad in [(att, x, g), (block, x, g), (out, x, glog), (emb, ids, gemb)]:
            results.append(layer.forward(inp, lengths))
            gi, grads = layer.compute_gradients(inp, grad, lengths)
            results.extend([gi] if gi is not None else [])
            results.extend(grads)
        loss, grad = hm.softmax_cross_entropy(logits, ids, lengths)
        return results + [np.array(loss), grad]

    try:
        hm.set_num_threads(1)
        one = run()
        hm.set_num_threads(2)
        two = run()
    finally:
        hm.set_num_threads(before)
    assert len(one) == len(two)
    for i, (a, b) in enumerate(zip(one, two)):
        assert np.array_equal(a, b), f"result {i} differs between 1 and 2 threads"



@pytest.mark.parametrize("n_tiles, length", [(1, 20), (4, 128), (5, 150), (5, 131)])
def test_attention_of_one_long_sequence_on_1_2_3_threads(n_tiles, length):
    # one sequence: its tiles are what the threads share, in the order 0, T-1, 1, T-2, ...
    # (odd and even tile counts, a ragged last tile, padding past the length)
    rng = np.random.default_rng(n_tiles)
    seq_len = n_tiles * 32
    x = rng.normal(size=(1, seq_len, 24))
    g = rng.normal(size=(1, seq_len, 24))
    lengths = [length]
    before = hm.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            hm.set_num_threads(threads)
            layer = hm.SelfAttention(24, seed=3, dtype=np.float64)
            y = layer.forward(x, lengths)
            gi, grads = layer.compute_gradients(x, g, lengths)
            results.append([y, gi, *grads])
    finally:
        hm.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)
    reference = ref.SelfAttention(24, seed=3, dtype=np.float64)
    y_ref = reference.forward(x, lengths)
    gi_ref, grads_ref = reference.compute_gradients(x, g, lengths)
    for got, want in zip(results[0], [y_ref, gi_ref, *grads_ref]):
        assert_close(got, want, np.float64, "attention")

@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
def test_backward_equals_compute_then_apply(impl):
    rng = np.random.default_rng(42)
    x = rng.normal(size=(2, 6, E)).astype(np.float32)
    g = rng.normal(size=(2, 6, E)).astype(np.float32)
    a = impl.TransformerBlock(E, H, S, seed=9)
    b = impl.TransformerBlock(E, H, S, seed=9)
    a.forward(x, [6, 4])
    gi_a = a.backward(g, 0.01)
    gi_b, grads = b.compute_gradients(x, g, [6, 4])
    b.apply_gradients(grads, 0.01)
    assert np.array_equal(gi_a, gi_b)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(pa, pb), name
    emb = impl.Embeddings(V, S, E, seed=9)
    before = emb.token.copy()
    emb.forward(np.array([1, 2, 1]))
    assert emb.backward(np.ones((3, E)), 0.01) is None
    changed = np.flatnonzero((emb.token != before).any(axis=1))
    assert list(changed) == [1, 2]          # only the rows of the ids that were used


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
def test_bad_ids_and_targets_raise(impl):
    emb = impl.Embeddings(V, S, E)
    with pytest.raises(ValueError, match=f"got {V} at position 2"):
        emb.forward(np.array([1, 2, V]))
    with pytest.raises(ValueError, match="got -3 at sequence 1, position 0"):
        emb.forward(np.array([[1, 2], [-3, 0]]))
    with pytest.raises(TypeError, match="integer"):
        emb.forward(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="max_seq_len"):
        emb.forward(np.zeros(S + 1, np.int64))
    with pytest.raises(ValueError):
        emb.forward(np.zeros((2, 3, 4), np.int64))
    with pytest.raises(ValueError, match="lengths"):
        emb.forward(np.zeros((2, 3), np.int64), [4, 1])
    logits = np.zeros((2, 4, V))
    with pytest.raises(ValueError, match=f"got {V + 1} at sequence 0, position 3"):
        impl.softmax_cross_entropy(logits, np.array([[0, 1, 2, V + 1], [0] * 4]))
    with pytest.raises(ValueError, match="targets must have shape"):
        impl.softmax_cross_entropy(logits, np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="integer"):
        impl.softmax_cross_entropy(logits, np.zeros((2, 4)))
    # nothing was cached by the failed calls' layers: a valid call still works
    assert emb.forward(np.array([0, V - 1])).shape == (2, E)


def test_bindings_reject_mismatched_buffers():
    x = np.zeros((1, 3, E), np.float32)
    w = np.zeros((E, E), np.float32)
    lengths = np.array([3], np.int64)

    def attention_buffers(seq_len=3):
        return (np.zeros((1, seq_len, E), np.float32), np.zeros((1, 3, E), np.float32),
                np.zeros((1, 3, 3 * E), np.float32), np.zeros((1, 3, 3), np.float32),
                np.zeros((1, E, 3), np.float32), np.zeros((E, 3 * E), np.float32))

    hm._kernels.attention_forward(*attention_buffers(), x, w, w, w, lengths)   # valid
    with pytest.raises(ValueError, match="out has shape"):
        hm._kernels.attention_forward(*attention_buffers(2), x, w, w, w, lengths)
    with pytest.raises(ValueError, match="lengths"):
        hm._kernels.attention_forward(*attention_buffers(), x, w, w, w,
                                      np.array([4], np.int64))
    with pytest.raises(ValueError, match="wk has shape"):
        hm._kernels.attention_forward(*attention_buffers(), x, w, w[:2], w, lengths)
    with pytest.raises(ValueError, match="outside"):
        hm._kernels.embeddings_forward(np.zeros((1, 2, E), np.float32),
                                       np.array([[0, V]], np.int64), np.array([2], np.int64),
                                       np.zeros((V, E), np.float32),
                                       np.zeros((S, E), np.float32))
    with pytest.raises(ValueError, match="outside"):
        hm._kernels.cross_entropy(np.zeros((1, 2, V), np.float32), np.zeros((1, 2)),
                                  np.zeros((1, 2, V), np.float32),
                                  np.array([[0, -1]], np.int64), np.array([2], np.int64))
    with pytest.raises(ValueError, match="workspaces"):
        hm._kernels.output_backward(np.zeros((1, 3, E), np.float32),
                                    np.zeros((E, V), np.float32), np.zeros((1, V), np.float32),
                                    np.zeros((1, E), np.float32), np.zeros((1, V), np.float32),
                                    np.zeros((1, 3, V), np.float32), x,
                                    np.zeros((E, V), np.float32), np.array([2], np.int64))


@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_loss_gradient_into_out(impl, unbatched):
    """softmax_cross_entropy(..., out=buf) writes the gradient into buf (the language model
    reuses one between steps) and gives the same loss and gradient as without it."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(3, 5))
    lengths = np.array([5, 2, 4])
    if unbatched:
        logits, targets, lengths = logits[0], targets[0], None
    loss, grad = impl.softmax_cross_entropy(logits, targets, lengths)
    out = np.full_like(logits, np.nan)
    loss2, grad2 = impl.softmax_cross_entropy(logits, targets, lengths, out=out)
    assert loss2 == loss and np.array_equal(grad2, grad) and np.array_equal(out, grad)
    assert np.shares_memory(grad2, out)


@pytest.mark.parametrize("impl", [hm, ref], ids=["compiled", "reference"])
def test_loss_out_refused_unless_it_fits(impl):
    logits = np.random.default_rng(5).normal(size=(2, 4, 6)).astype(np.float32)
    targets = np.zeros((2, 4), np.int64)
    bad = [(np.zeros((2, 4, 5), np.float32), ValueError),          # shape
           (np.zeros((2, 4, 6), np.float64), ValueError),          # dtype
           (np.zeros((2, 4, 12), np.float32)[:, :, ::2], ValueError),   # not contiguous
           (logits, ValueError),                                   # the logits themselves
           ([[0.0] * 6] * 4, TypeError)]                           # not an array
    readonly = np.zeros_like(logits)
    readonly.flags.writeable = False
    bad.append((readonly, ValueError))
    for out, error in bad:
        before = np.array(out, copy=True)
        with pytest.raises(error, match="out"):
            impl.softmax_cross_entropy(logits, targets, out=out)
        assert np.array_equal(np.asarray(out), before, equal_nan=True)


def test_language_model_reuses_its_loss_buffers_but_never_returns_them():
    from hypermixer.model import ModelConfig, build_network
    net = build_network(ModelConfig(embedding_dim=8, hidden_dim=12, num_layers=1,
                                    max_seq_len=6, architecture="transformer"), 11, seed=0)
    ids = np.random.default_rng(6).integers(0, 11, size=(2, 6))
    first = net.loss_and_gradients(ids, ids)
    logits_attr = f"_forward_buf{len(net._children) - 1}"   # the output layer's
    buffers = (getattr(net, logits_attr), net._grad_logits_buf)
    second = net.loss_and_gradients(ids, ids)
    assert first[0] == second[0]
    assert getattr(net, logits_attr) is buffers[0] and net._grad_logits_buf is buffers[1]
    logits = net.forward(ids)
    assert not any(np.shares_memory(logits, b) for b in buffers)


@pytest.mark.parametrize("architecture", ["transformer", "hypermixer", "hypermixing"])
def test_language_model_layer_buffers_change_no_bit(architecture, monkeypatch):
    """The language model's steps write layer outputs and input gradients into buffers it
    keeps (``_out_buffers``); the loss and every gradient are the bits of fresh arrays."""
    from hypermixer import layers
    from hypermixer.model import ModelConfig, build_network
    config = ModelConfig(architecture=architecture, embedding_dim=16, hidden_dim=24,
                         num_layers=2, max_seq_len=8)
    ids = np.random.default_rng(7).integers(0, 13, size=(3, 8))
    lengths = np.array([8, 5, 1])

    def run():
        net = build_network(config, 13, seed=2)
        first = net.loss_and_gradients(ids, ids, lengths)
        second = net.loss_and_gradients(ids, ids, lengths)   # through the kept buffers
        return first, second
    (loss1, g1), (loss2, g2) = run()
    for cls in (layers.HyperMixerBlock, layers.TransformerBlock, layers.Embeddings,
                layers.OutputProjection):
        monkeypatch.setattr(cls, "_out_buffers", frozenset())
    (loss3, g3), _ = run()
    assert loss1 == loss2 == loss3
    for a, b, c in zip(g1, g2, g3):
        assert np.array_equal(a, b) and np.array_equal(a, c)
