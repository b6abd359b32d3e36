"""The hypernetwork generates only the token-mixing weights an input uses (issue 9 item 4,
issue 10 item 8): compact layouts built by index arithmetic in C.

Bidirectional: W1[:L], c1, W2[:, :L], c2[:L] for an input of L < S rows. Causal: per position t
only W1 rows 0..t, c1, column t of W2 and c2[t], generated HM_PREFIX_TILE (8) positions at a
time. Shapes below cross several tiles, leave S > L, and mix ragged lengths."""

import numpy as np
import pytest

import hypermixer as hm
from hypermixer import _kernels
from hypermixer import reference as ref
from helpers import check_parity, finite_difference_check

DTYPES = [np.float32, np.float64]
E, S, HT, HH = 12, 23, 5, 6


def pair(causal, dtype):
    kw = dict(token_mixing_hidden_dim=HT, hypernetwork_hidden_dim=HH, causal=causal, seed=3,
              dtype=dtype)
    return hm.TokenMixingMLP(E, S, **kw), ref.TokenMixingMLP(E, S, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seq_len, lengths", [
    (23, None), (20, [20, 9, 16, 1]), (8, [8, 7]), (17, [17, 17, 3]), (1, None)])
def test_parity_compact_layouts(dtype, causal, seq_len, lengths):
    rng = np.random.default_rng(seq_len)
    batch = 2 if lengths is None else len(lengths)
    x = rng.normal(size=(batch, seq_len, E))
    g = rng.normal(size=(batch, seq_len, E))
    compiled, reference = pair(causal, dtype)
    # non-zero biases, so that every generated part carries its own bias
    for (_, a), (_, b) in zip(compiled.named_parameters(), reference.named_parameters()):
        a[...] = b[...] = a + rng.normal(0, 0.1, a.shape).astype(dtype)
    check_parity(compiled, reference, x, g, None if lengths is None else np.array(lengths),
                 factor=2.0)


@pytest.mark.parametrize("causal", [False, True])
def test_finite_differences_across_tiles(causal):
    rng = np.random.default_rng(1)
    compiled, _ = pair(causal, np.float64)
    x = rng.normal(size=(2, 19, E))
    g = rng.normal(size=(2, 19, E))
    finite_difference_check(compiled, x, g, np.array([19, 11]), samples=8, eps=1e-5,
                            rtol=2e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_one_and_two_threads_bit_identical(causal):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 21, E)).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    lengths = np.array([21, 4, 13, 21, 9])
    results = []
    for threads in (1, 2):
        hm.set_num_threads(threads)
        compiled, _ = pair(causal, np.float32)
        y = compiled.forward(x, lengths)
        gi, grads = compiled.compute_gradients(x, g, lengths)
        results.append([y, gi] + grads)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("column", ["w1_row_late", "w2_col_early", "c2_early", "beyond_L"])
def test_nan_in_a_column_some_positions_skip(causal, column):
    # A NaN in a w2 column that some rows do not generate: the reference's full products give
    # NaN through the zeros of the rows that skip it, and so must the compact kernels.
    seq_len, lengths = 12, np.array([12, 5])
    o_w2 = S * HT + HT
    col = {"w1_row_late": 10 * HT + 2, "w2_col_early": o_w2 + 3 * S + 1,
           "c2_early": 2 * S * HT + HT + 2, "beyond_L": o_w2 + 1 * S + 20}[column]
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, seq_len, E))
    g = rng.normal(size=x.shape)
    out = []
    for layer in pair(causal, np.float64):
        layer.hypernetwork.w2[1, col] = np.nan
        y = layer.forward(x, lengths)
        out.append((y, *layer.compute_gradients(x, g, lengths)))
    (y_c, gi_c, gr_c), (y_r, gi_r, gr_r) = out
    for a, b in [(y_c, y_r), (gi_c, gi_r)] + list(zip(gr_c, gr_r)):
        assert np.array_equal(np.isnan(a), np.isnan(b))
        fin = ~np.isnan(b)
        np.testing.assert_allclose(a[fin], b[fin], rtol=1e-9, atol=1e-12)


def _held_bytes(obj, seen=None):
    """Bytes of the NumPy arrays an object keeps in its attributes (recursively)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes if obj.base is None else _held_bytes(obj.base, seen)
    if isinstance(obj, dict):
        return sum(_held_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_held_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and isinstance(obj, (hm.TokenMixingMLP, hm.Hypernetwork)):
        return _held_bytes(vars(obj), seen)
    return 0


@pytest.mark.parametrize("causal", [False, True])
def test_memory_does_not_grow_with_new_lengths(causal):
    # Generation grows its window a token at a time: every length is new. Nothing may be
    # kept per length (the old per-length index arrays grew without bound).
    layer, _ = pair(causal, np.float32)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, S, E)).astype(np.float32)
    layer.forward(x)
    one = _held_bytes(layer)
    for n in range(1, S + 1):
        layer.forward(x[:, :n])
    layer.forward(x)
    held = _held_bytes(layer)
    assert held <= one, f"{held - one} more bytes held after {S} new lengths"


def test_causal_record_is_about_a_quarter_of_full_theta():
    # What prefix t uses: W1 rows 0..t + c1 + one column of W2 + one c2 entry, on average
    # (L/2 + 2) * Ht + 1 values per position instead of 2*L*Ht + Ht + L.
    L, ht = 512, 256
    record = _kernels.hypernetwork_theta_size(L, ht, True)
    full = _kernels.hypernetwork_theta_size(L, ht, False)
    assert record == L * ht + 2 * ht + 1 and full == 2 * L * ht + ht + L
    generated = sum((t + 1) * ht + 2 * ht + 1 for t in range(L)) / L   # what the tiles skip
    assert generated / full < 0.27
