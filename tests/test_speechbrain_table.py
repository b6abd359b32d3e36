"""SpeechBrain's position table (``positional_encoding.pe``) in a ``token_information=
"speechbrain"`` HyperMixing layer, compiled and reference (SPEC section 8): loaded rows used
bit for bit, our formula past their end, the state_dict round trip, bad buffers refused with
nothing changed, and layers without the buffer as before. NumPy only: the buffer is built
here the way SpeechBrain builds it (float32 arithmetic); tests/test_official_speechbrain.py
holds the same against SpeechBrain's own module where torch is installed.
"""

import math

import numpy as np
import pytest

import hypermixer
import hypermixer.reference as ref
from hypermixer._hypermixing_blueprint import PLAUSIBLE_SLOPE, position_table, sinusoid

IMPLS = {"compiled": hypermixer, "reference": ref}
DTYPES = [np.float32, np.float64]
PE = "positional_encoding.pe"
D, K, HEADS = 8, 12, 2


def speechbrain_buffer(rows, d, dtype=np.float32):
    """(1, rows, d): float32 positions times float32 frequencies exp(-2i ln(1e4) / d),
    float32 sin (even columns) and cos (odd columns), as SpeechBrain's PositionalEncoding."""
    pos = np.arange(rows, dtype=np.float32)[:, None]
    freq = np.exp(np.arange(0, d, 2, dtype=np.float32)
                  * np.float32(-(math.log(10000.0) / d)))
    angle = pos * freq
    table = np.empty((rows, d), np.float32)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle)
    return table[None].astype(dtype)


def layer(impl, dtype=np.float64, flavour="speechbrain", seed=1, **kw):
    kw.setdefault("hypernetwork_bias", True)
    return IMPLS[impl].HyperMixing(D, K, heads=HEADS, token_information=flavour, seed=seed,
                                   dtype=dtype, **kw)


def with_table(impl, buffer, dtype=np.float64, **kw):
    out = layer(impl, dtype, **kw)
    sd = out.state_dict()
    sd[PE] = buffer
    out.load_state_dict(sd)
    return out


def data(seed, shape):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape), rng.normal(size=shape)


def snapshot(lay):
    return ([p.copy() for _, p in lay.named_parameters()], lay.positions(300).copy(),
            lay.state_dict())


def unchanged(lay, before):
    params, positions, sd = before
    assert all(np.array_equal(p, q) for (_, p), q in zip(lay.named_parameters(), params))
    assert np.array_equal(lay.positions(300), positions)
    after = lay.state_dict()
    assert after.keys() == sd.keys()
    assert all(after[n].dtype == sd[n].dtype and np.array_equal(after[n], sd[n]) for n in sd)


def test_the_buffer_built_here_is_not_our_formula():
    """Otherwise nothing below could tell the two tables apart."""
    buf = speechbrain_buffer(200, D)[0].astype(np.float64)
    ours = position_table(200, D, "speechbrain")
    assert np.any(buf != ours)
    assert np.all(np.abs(buf - ours) <= PLAUSIBLE_SLOPE * (np.arange(200)[:, None] + 1))


# ---------------------------------------------------------------- the loaded rows are used
@pytest.mark.parametrize("dtype", DTYPES)
def test_loaded_rows_used_bit_for_bit_and_formula_past_their_end(dtype):
    rows = 100
    buf = speechbrain_buffer(rows, D)
    tables = {}
    for impl in IMPLS:
        lay = with_table(impl, buf, dtype)
        got = lay.positions(rows + 60)
        assert got.dtype == dtype
        assert np.array_equal(got[:rows], buf[0].astype(dtype))
        assert np.array_equal(got[rows:],
                              position_table(rows + 60, D, "speechbrain")[rows:].astype(dtype))
        tables[impl] = got
    # compiled and reference use the same table, bit for bit
    assert np.array_equal(tables["compiled"], tables["reference"])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_and_gradients_use_the_loaded_rows(dtype, impl, causal):
    """The layer with the buffer equals, bit for bit, a layer without it whose positions()
    answers the buffer's rows; and differs from that layer left alone (our formula)."""
    buf = speechbrain_buffer(40, D)
    loaded = with_table(impl, buf, dtype, causal=causal)
    stand_in = layer(impl, dtype, causal=causal)
    plain = layer(impl, dtype, causal=causal)
    rows = buf[0].astype(dtype)
    stand_in.positions = lambda n: rows[:n]
    x, g = data(5, (3, 33, D))
    lengths = np.array([33, 20, 7])
    y = loaded.forward(x, lengths)
    gx, grads = loaded.compute_gradients(x, g, lengths)
    y2 = stand_in.forward(x, lengths)
    gx2, grads2 = stand_in.compute_gradients(x, g, lengths)
    assert np.array_equal(y, y2) and np.array_equal(gx, gx2)
    assert all(np.array_equal(a, b) for a, b in zip(grads, grads2))
    assert not np.array_equal(y, plain.forward(x, lengths))


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_and_reference_agree_with_the_table(dtype):
    buf = speechbrain_buffer(64, D)
    comp, refl = (with_table(impl, buf, dtype) for impl in IMPLS)
    x, g = data(6, (2, 50, D))
    lengths = np.array([50, 31])
    tol = 1e-10 if dtype == np.float64 else 2e-5
    y, yr = comp.forward(x, lengths), refl.forward(x, lengths)
    assert np.abs(y - yr).max() <= tol * np.abs(yr).max()
    gx, grads = comp.compute_gradients(x, g, lengths)
    gxr, gradsr = refl.compute_gradients(x, g, lengths)
    for a, b in [(gx, gxr)] + list(zip(grads, gradsr)):
        assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1.0)


# ---------------------------------------------------------------- state_dict round trip
@pytest.mark.parametrize("buffer_dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_state_dict_gives_the_buffer_back_and_round_trips(impl, buffer_dtype):
    buf = speechbrain_buffer(80, D, buffer_dtype)
    src = with_table(impl, buf)
    sd = src.state_dict()
    assert sd[PE].shape == buf.shape and sd[PE].dtype == buffer_dtype
    assert np.array_equal(sd[PE], buf)
    sd[PE][...] = 0   # a copy: editing it changes nothing
    assert np.array_equal(src.state_dict()[PE], buf)
    other = "reference" if impl == "compiled" else "compiled"
    for dst_impl in (impl, other):
        dst = layer(dst_impl, seed=7)
        dst.load_state_dict(src.state_dict())
        assert np.array_equal(dst.positions(200), src.positions(200))
        back = dst.state_dict()
        assert back.keys() == src.state_dict().keys()
        assert all(np.array_equal(back[n], a) and back[n].dtype == a.dtype
                   for n, a in src.state_dict().items())
    x, _ = data(7, (2, 90, D))
    dst = layer(impl, seed=7)
    dst.load_state_dict(src.state_dict())
    assert np.array_equal(dst.forward(x), src.forward(x))


def test_the_buffer_is_kept_when_a_later_mapping_has_none():
    lay = with_table("compiled", speechbrain_buffer(50, D))
    before = lay.positions(50).copy()
    sd = layer("compiled", seed=4).state_dict()
    assert PE not in sd
    lay.load_state_dict(sd)
    assert np.array_equal(lay.positions(50), before)
    assert PE in lay.state_dict()
    assert all(np.array_equal(lay.state_dict()[n], a) for n, a in sd.items())


def test_a_shorter_buffer_replaces_a_longer_one():
    lay = with_table("reference", speechbrain_buffer(90, D))
    lay.positions(200)
    short = speechbrain_buffer(10, D)
    sd = lay.state_dict()
    sd[PE] = short
    lay.load_state_dict(sd)
    assert np.array_equal(lay.state_dict()[PE], short)
    got = lay.positions(200)
    assert np.array_equal(got[:10], short[0].astype(np.float64))
    assert np.array_equal(got[10:], position_table(200, D, "speechbrain")[10:])


# ---------------------------------------------------------------- without the buffer
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_without_the_buffer_are_as_before(dtype, impl):
    lay = layer(impl, dtype)
    assert PE not in lay.state_dict()
    assert np.array_equal(lay.positions(150),
                          position_table(150, D, "speechbrain").astype(dtype))
    # a state_dict without the buffer keeps the formula
    lay.load_state_dict(layer(impl, dtype, seed=2).state_dict())
    assert PE not in lay.state_dict()
    assert np.array_equal(lay.positions(150),
                          position_table(150, D, "speechbrain").astype(dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_official_layers_skip_the_buffer(impl):
    lay = layer(impl, flavour="official")
    x, _ = data(8, (2, 20, D))
    y = lay.forward(x)
    sd = lay.state_dict()
    sd[PE] = np.full((1, 5, 3), np.nan)   # not even looked at
    sd["token_information.pe"] = np.zeros((1, 10, D))
    lay.load_state_dict(sd)
    assert PE not in lay.state_dict()
    assert np.array_equal(lay.forward(x), y)
    assert np.array_equal(lay.positions(20), position_table(21, D, "official")[1:])


# ---------------------------------------------------------------- bad buffers
def _shifted(rows, d):
    return speechbrain_buffer(rows + 1, d)[:, 1:]


def _nan(rows, d):
    buf = speechbrain_buffer(rows, d)
    buf[0, rows // 2, 3] = np.nan
    return buf


def _inf(rows, d):
    buf = speechbrain_buffer(rows, d)
    buf[0, 0, 0] = np.inf
    return buf


def _off(rows, d):
    buf = speechbrain_buffer(rows, d)
    buf[0, 5, 2] += 1e-3   # past the allowance of row 5 (6e-6)
    return buf


BAD = {
    "two-dimensional": (lambda r, d: speechbrain_buffer(r, d)[0], ValueError, "shape"),
    "wrong width": (lambda r, d: speechbrain_buffer(r, d + 2), ValueError, "shape"),
    "batch of two": (lambda r, d: np.concatenate([speechbrain_buffer(r, d)] * 2), ValueError,
                     "shape"),
    "no rows": (lambda r, d: np.zeros((1, 0, d), np.float32), ValueError, "shape"),
    "NaN": (_nan, ValueError, "non-finite"),
    "inf": (_inf, ValueError, "non-finite"),
    "integers": (lambda r, d: np.zeros((1, r, d), np.int64), TypeError, "dtype"),
    "booleans": (lambda r, d: np.ones((1, r, d), bool), TypeError, "dtype"),
    "float16": (lambda r, d: speechbrain_buffer(r, d, np.float16), TypeError, "dtype"),
    "strings": (lambda r, d: "sinusoid", TypeError, "dtype"),
    "official flavour": (lambda r, d: position_table(r, d, "official")[None], ValueError,
                         "not SpeechBrain's sinusoid"),
    "positions from 1": (_shifted, ValueError, "not SpeechBrain's sinusoid"),
    "one entry off": (_off, ValueError, r"row 5, column 2"),
    "random": (lambda r, d: np.random.default_rng(0).uniform(-1, 1, (1, r, d)), ValueError,
               "not SpeechBrain's sinusoid"),
}


@pytest.mark.parametrize("had_table", [False, True], ids=["formula", "loaded"])
@pytest.mark.parametrize("bad", BAD, ids=list(BAD))
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_buffer_refused_nothing_changed(impl, bad, had_table):
    make, error, match = BAD[bad]
    lay = with_table(impl, speechbrain_buffer(120, D)) if had_table else layer(impl)
    before = snapshot(lay)
    sd = layer(impl, seed=9).state_dict()   # good weights, different from lay's
    sd[PE] = make(40, D)
    with pytest.raises(error, match=match) as info:
        lay.load_state_dict(sd)
    assert PE in str(info.value)
    unchanged(lay, before)


@pytest.mark.parametrize("impl", IMPLS)
def test_good_buffer_with_a_bad_weight_changes_nothing(impl):
    lay = layer(impl)
    before = snapshot(lay)
    sd = layer(impl, seed=9).state_dict()
    sd[PE] = speechbrain_buffer(40, D)
    sd["layer_norm.weight"] = np.full(D, np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        lay.load_state_dict(sd)
    unchanged(lay, before)


# ---------------------------------------------------------------- rows without the table
@pytest.mark.parametrize("flavour", ["official", "speechbrain"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_position_rows_are_the_table_rows_without_growing_it(dtype, impl, flavour):
    """What a stream adds at a position, computed for that position alone: the table's row
    bit for bit (loaded SpeechBrain rows inside their range, the formula past it), and the
    cached table stays as it was however far the position."""
    def build():
        if flavour == "speechbrain":
            return with_table(impl, speechbrain_buffer(100, D), dtype)
        return layer(impl, dtype, flavour)
    lay = build()
    before = lay._positions.shape[0]
    positions = np.array([0, 1, 99, 100, 101, 2047, 5000])
    rows = lay.position_rows(positions)
    assert lay._positions.shape[0] == before
    assert rows.dtype == dtype
    assert np.array_equal(rows, build().positions(5001)[positions])
    far = lay.position_rows(np.array([10**9]))   # computed alone: no 10**9-row table
    offset = 1 if flavour == "official" else 0
    assert np.array_equal(far, sinusoid([10**9 + offset], D, flavour).astype(dtype))
    assert lay._positions.shape[0] == before


def test_a_long_stream_keeps_no_position_table():
    """The hypermixing LM's stream holds its running sums only: no table grows with the
    position (it used to double at 64, 128, ..., 2,048, each time recomputed)."""
    from hypermixer import ModelConfig, build_network
    net = build_network(ModelConfig(architecture="hypermixing", embedding_dim=16, hidden_dim=16,
                                    num_layers=2, max_seq_len=8), 30, seed=0)
    stream = net.stream()
    for t in range(300):
        stream.feed(t % 30)
    assert all(block.hypermixing._positions.shape[0] == 0 for block in net.blocks)


def test_streams_fed_in_turn_give_what_each_gives_alone():
    """Two streams on one network, one far ahead of the other, fed in turn: each gives the
    logits it gives alone, and the layers keep a few blocks of rows, not a table."""
    from hypermixer import ModelConfig, build_network
    from hypermixer._hypermixing_blueprint import POSITION_BLOCKS_KEPT
    net = build_network(ModelConfig(architecture="hypermixing", embedding_dim=16, hidden_dim=16,
                                    num_layers=2, max_seq_len=8), 30, seed=1,
                        dtype=np.float64)
    ahead, behind = net.stream(), net.stream()
    alone_ahead, alone_behind = net.stream(), net.stream()
    for t in range(200):
        ahead.feed(t % 30)
        alone_ahead.feed(t % 30)
    for t in range(150):
        assert np.array_equal(behind.feed(t % 29), alone_behind.feed(t % 29))
        assert np.array_equal(ahead.feed(t % 23), alone_ahead.feed(t % 23))
    for block in net.blocks:
        assert block.hypermixing._positions.shape[0] == 0
        assert len(block.hypermixing._position_blocks) <= POSITION_BLOCKS_KEPT
