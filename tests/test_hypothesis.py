"""Property-based tests: random shapes, lengths, dtypes, thread counts and modes.

For every core layer (and the language-model layers) the compiled implementation must agree
with the NumPy reference on the forward output, the input gradient and every parameter
gradient, for whatever shapes hypothesis draws; nothing may crash. The second half checks the
input-conversion decision of ``hypermixer._layer.as_float_array``: awkward arrays (strided,
Fortran-ordered, read-only, integer) are copied and give the same answer as a clean copy,
the caller's array is never touched, and bool/complex/object/str arrays raise TypeError.

Hypothesis profiles: ``ci`` (default; few examples, derandomized so every run is the same),
``dev`` (more examples) and ``long`` (for a soak run). Pick one with HYPOTHESIS_PROFILE.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import hypermixer
from hypermixer import reference
from helpers import RTOL

settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", max_examples=1000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = st.sampled_from([np.float32, np.float64])
THREADS = st.sampled_from([1, 2])
# float32 parity over random shapes: reductions are at most a few dozen terms long here, so
# 8x the helpers' float32 tolerance (1.6e-4) still catches any wrong element, which would be
# off by O(1). float64: 1e-9 (the project's acceptance level, 100x helpers' 1e-11), because
# random shapes reach cancellation that amplifies rounding by ~1e6 (1.7e-10 seen once in
# the sanitizer build).
FACTOR = {np.dtype(np.float32): 8.0, np.dtype(np.float64): 100.0}
FLOAT32_NOISE_FLOOR = 1e-3   # see assert_close



@st.composite
def batches(draw, max_len=9, max_batch=4, max_width=12, width=None):
    """(batch, seq_len, width, lengths or None, unbatched, seed)."""
    unbatched = draw(st.booleans())
    batch = 1 if unbatched else draw(st.integers(1, max_batch))
    seq_len = draw(st.integers(1, max_len))
    if width is None:
        width = draw(st.integers(1, max_width))
    lengths = None
    if not unbatched and draw(st.booleans()):
        lengths = np.array(draw(st.lists(st.integers(1, seq_len), min_size=batch,
                                         max_size=batch)), dtype=np.int64)
    return batch, seq_len, width, lengths, unbatched, draw(st.integers(0, 2**31 - 1))


def make_data(shape, seed, dtype, unbatched, lengths=None, poison=False):
    """Input and output gradient; ``poison`` fills padding rows with NaN (must never leak)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    if poison and lengths is not None:
        for b, n in enumerate(lengths):
            x[b, n:] = np.nan
    if unbatched:
        return x[0], g[0]
    return x, g


def _error(actual, expected):
    """Max error relative to max(|expected|, 1): the data here are O(1), and some exact
    results are 0 (the input gradient of a LayerNorm over 1 or 2 features), where a purely
    relative error would compare rounding noise with rounding noise."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max()), 1.0)
    return float(np.abs(actual - expected).max()) / scale


def assert_close(actual, expected, dtype, what, factor=None, truth=None, jittered=None):
    """``actual`` (compiled) agrees with ``expected`` (reference, same dtype).

    Random shapes include ill-conditioned float32 cases (a LayerNorm after a layer whose
    output is nearly constant amplifies rounding) where both float32 implementations drift
    from the exact result by more than a fixed tolerance. With ``truth`` (the reference in
    float64 on the same parameters) such a case passes when the compiled result is at most
    4x as far from the truth as the float32 reference itself is, or within 1e-3 of it
    (relative to max(|truth|, 1)): with cancellation (a token-mixing output of ~20 whose
    spread is ~0.3, normalised by norm2) both float32 results are mostly noise, and which
    one lands closer is luck. A real float32 bug is off by O(1).

    float64 has no higher precision to compare with; with ``jittered`` (the reference on
    the input scaled by 1 + 1e-15 noise) a miss passes when it is at most 4x the reference's
    own change under that jitter: cancellation amplifying rounding by 1e6 or more shows up
    there (2e-9 was measured on one such case, with the compiled result 1.6e-9 away).
    """
    if factor is None:
        factor = FACTOR[np.dtype(dtype)]
    tol = RTOL[np.dtype(dtype)] * factor
    err = _error(actual, expected)
    if err <= tol:
        return
    if jittered is not None:
        noise = _error(jittered, expected)
        assert err <= 4 * noise, (
            f"{what}: error {err:.3e} > {tol:.1e}, and the reference itself moves only "
            f"{noise:.3e} under a 1e-15 input jitter")
        return
    assert truth is not None, f"{what}: error {err:.3e} > {tol:.1e}"
    own, ref = _error(actual, truth), _error(expected, truth)
    assert own <= max(tol, 4 * ref, FLOAT32_NOISE_FLOOR), (
        f"{what}: error {err:.3e} > {tol:.1e}, and {own:.3e} from the float64 result where "
        f"the float32 reference is {ref:.3e} from it")


def float64_twin(make, reference_layer):
    """For a float32 reference layer, the same layer in float64 with the same (float32)
    parameter values; None for a float64 layer."""
    if reference_layer.dtype == np.float64:
        return None
    twin = make(np.float64)
    for (_, a), (_, b) in zip(twin.named_parameters(), reference_layer.named_parameters()):
        a[...] = b
    return twin


def check_parity(compiled, reference_layer, x, g, lengths, twin=None):
    """Forward, input gradient and every parameter gradient agree (as helpers.check_parity,
    with the comparison above). The float64 twin (float32) or the jittered reference
    (float64) is only run when a direct comparison misses."""
    dtype = compiled.dtype
    tol = RTOL[np.dtype(dtype)] * FACTOR[np.dtype(dtype)]
    names = [n for n, _ in compiled.named_parameters()]
    assert names == [n for n, _ in reference_layer.named_parameters()]
    for (name, a), (_, b) in zip(compiled.named_parameters(),
                                 reference_layer.named_parameters()):
        assert np.array_equal(a, b), f"initial {name} differs"
    y_c = compiled.forward(x, lengths)
    y_r = reference_layer.forward(x, lengths)
    assert y_c.dtype == dtype
    gi_c, grads_c = compiled.compute_gradients(x, g, lengths)
    gi_r, grads_r = reference_layer.compute_gradients(x, g, lengths)
    assert len(grads_c) == len(grads_r) == len(names)
    assert all(a.dtype == dtype for a in grads_c)
    actual = [y_c, gi_c] + list(grads_c)
    expected = [y_r, gi_r] + list(grads_r)
    whats = ["forward output", "input gradient"] + [f"gradient of {n}" for n in names]
    truth = jittered = [None] * len(actual)
    if any(_error(a, b) > tol for a, b in zip(actual, expected)):
        if twin is not None:
            gi_t, grads_t = twin.compute_gradients(x, g, lengths)
            truth = [twin.forward(x, lengths), gi_t] + list(grads_t)
        elif dtype == np.float64:
            rng = np.random.default_rng(0)
            xj = np.asarray(x) * (1 + 1e-15 * rng.standard_normal(np.shape(x)))
            gi_j, grads_j = reference_layer.compute_gradients(xj, g, lengths)
            jittered = [reference_layer.forward(xj, lengths), gi_j] + list(grads_j)
    for a, b, what, t, j in zip(actual, expected, whats, truth, jittered):
        assert_close(a, b, dtype, what, truth=t, jittered=j)
    return y_c, gi_c, grads_c


def parity(compiled, ref, x, g, lengths, threads, twin=None):
    hypermixer.set_num_threads(threads)
    y, gi, grads = check_parity(compiled, ref, x, g, lengths, twin)
    assert np.isfinite(y).all() and np.isfinite(gi).all()
    if lengths is not None:
        for b, n in enumerate(lengths):
            assert not y[b, n:].any(), "padding rows of the output must be 0"
            assert not gi[b, n:].any(), "padding rows of the input gradient must be 0"
    return y, gi, grads


def randomize(layers, seed):
    """Same nonzero values in every (zero-initialised) bias/shift of each layer given, so
    that the parity check also covers those terms."""
    rng = np.random.default_rng(seed + 7)
    values = None
    for layer in layers:
        params = layer.named_parameters()
        if values is None:
            values = [rng.normal(0.0, 0.3, size=a.shape) if not a.any() else None
                      for _, a in params]
        for (_, a), v in zip(params, values):
            if v is not None:
                a[...] = v


# ---------------------------------------------------------------------------- core layers

@given(data=batches(), dtype=DTYPES, threads=THREADS)
def test_layernorm_matches_reference(data, dtype, threads):
    batch, seq_len, width, lengths, unbatched, seed = data
    compiled, ref = hypermixer.LayerNorm(width, dtype=dtype), reference.LayerNorm(width,
                                                                                  dtype=dtype)
    randomize([compiled, ref], seed)
    twin = float64_twin(lambda d: reference.LayerNorm(width, dtype=d), ref)
    x, g = make_data((batch, seq_len, width), seed, dtype, unbatched, lengths, poison=True)
    parity(compiled, ref, x, g, lengths, threads, twin)


@given(data=batches(), hidden=st.integers(1, 8), out=st.integers(1, 20), dtype=DTYPES,
       threads=THREADS)
def test_hypernetwork_matches_reference(data, hidden, out, dtype, threads):
    batch, rows, width, lengths, unbatched, seed = data
    kw = dict(seed=seed, dtype=dtype)
    compiled = hypermixer.Hypernetwork(width, hidden, out, **kw)
    ref = reference.Hypernetwork(width, hidden, out, **kw)
    randomize([compiled, ref], seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(batch, rows, width)).astype(dtype)
    g = rng.normal(size=(batch, rows, out)).astype(dtype)
    if lengths is not None:
        for b, n in enumerate(lengths):
            x[b, n:] = np.nan
    if unbatched:
        x, g = x[0], g[0]
    hypermixer.set_num_threads(threads)
    twin = float64_twin(lambda d: reference.Hypernetwork(width, hidden, out, dtype=d), ref)
    y, gi, _ = check_parity(compiled, ref, x, g, lengths, twin)
    assert np.isfinite(y).all() and np.isfinite(gi).all()


@given(data=batches(), max_extra=st.integers(0, 4), ht=st.integers(1, 6), hh=st.integers(1, 5),
       causal=st.booleans(), dtype=DTYPES, threads=THREADS)
def test_token_mixing_matches_reference(data, max_extra, ht, hh, causal, dtype, threads):
    batch, seq_len, width, lengths, unbatched, seed = data
    kw = dict(token_mixing_hidden_dim=ht, hypernetwork_hidden_dim=hh, causal=causal,
              seed=seed, dtype=dtype)
    max_len = seq_len + max_extra
    compiled = hypermixer.TokenMixingMLP(width, max_len, **kw)
    ref = reference.TokenMixingMLP(width, max_len, **kw)
    randomize([compiled, ref], seed)
    twin = float64_twin(lambda d: reference.TokenMixingMLP(width, max_len, **{**kw, "dtype": d}),
                        ref)
    x, g = make_data((batch, seq_len, width), seed, dtype, unbatched, lengths, poison=True)
    parity(compiled, ref, x, g, lengths, threads, twin)


@given(data=batches(), hidden=st.integers(1, 16), dtype=DTYPES, threads=THREADS)
def test_channel_mixing_matches_reference(data, hidden, dtype, threads):
    batch, seq_len, width, lengths, unbatched, seed = data
    compiled = hypermixer.ChannelMixingMLP(width, hidden, seed=seed, dtype=dtype)
    ref = reference.ChannelMixingMLP(width, hidden, seed=seed, dtype=dtype)
    randomize([compiled, ref], seed)
    twin = float64_twin(lambda d: reference.ChannelMixingMLP(width, hidden, dtype=d), ref)
    x, g = make_data((batch, seq_len, width), seed, dtype, unbatched, lengths, poison=True)
    parity(compiled, ref, x, g, lengths, threads, twin)


@given(data=batches(max_len=8), max_extra=st.integers(0, 3), hidden=st.integers(1, 12),
       ht=st.integers(1, 5), hh=st.integers(1, 4), causal=st.booleans(), dtype=DTYPES,
       threads=THREADS)
def test_block_matches_reference(data, max_extra, hidden, ht, hh, causal, dtype, threads):
    batch, seq_len, width, lengths, unbatched, seed = data
    # a LayerNorm over 2 features has an input gradient of exactly 0 in theory, so the
    # block's input gradient would be pure float32 noise, amplified by norm2
    width = max(width, 3)
    kw = dict(hypernetwork_hidden_dim=hh, token_mixing_hidden_dim=ht, causal=causal,
              seed=seed, dtype=dtype)
    compiled = hypermixer.HyperMixerBlock(width, hidden, seq_len + max_extra, **kw)
    ref = reference.HyperMixerBlock(width, hidden, seq_len + max_extra, **kw)
    randomize([compiled, ref], seed)
    twin = float64_twin(lambda d: reference.HyperMixerBlock(
        width, hidden, seq_len + max_extra, **{**kw, "dtype": d}), ref)
    x, g = make_data((batch, seq_len, width), seed, dtype, unbatched, lengths, poison=True)
    parity(compiled, ref, x, g, lengths, threads, twin)
    # one Adam step from the same gradients (the reference's) keeps the two in step; the
    # same gradients, because Adam turns rounding noise in a gradient that is exactly 0 in
    # theory (LayerNorm over 2 features) into a full-size step of either sign
    lr = 1e-2
    _, grads = ref.compute_gradients(x, g, lengths)
    compiled.apply_gradients(grads, lr)
    ref.apply_gradients(grads, lr)
    for (name, a), (_, b) in zip(compiled.named_parameters(), ref.named_parameters()):
        assert_close(a, b, dtype, f"{name} after one step")


# ---------------------------------------------------------------------------- HyperMixing

@st.composite
def hypermixing_options(draw):
    """Keyword arguments of a HyperMixing layer and its width: heads of width 1-8 (4, with
    k_h = 4, is the float32 width-4 path), every mode and option."""
    heads = draw(st.sampled_from([1, 2, 4, 8]))
    width = heads * draw(st.sampled_from([1, 2, 3, 4, 8]))
    kw = dict(token_mixing_hidden_dim=heads * draw(st.sampled_from([1, 2, 4, 5])),
              heads=heads, tied=draw(st.booleans()), causal=draw(st.booleans()),
              normalize=draw(st.sampled_from(["sum", "mean"])),
              # a LayerNorm over 1 or 2 features has an input gradient of 0 in theory: the
              # comparison would be of rounding noise (as in test_block_matches_reference)
              layer_norm=width >= 3 and draw(st.booleans()),
              hypernetwork_bias=draw(st.booleans()),
              token_information=draw(st.sampled_from(["official", "speechbrain"])))
    return width, kw


@given(data=batches(max_len=12), options=hypermixing_options(), dtype=DTYPES,
       threads=THREADS)
def test_hypermixing_matches_reference(data, options, dtype, threads):
    batch, seq_len, _, lengths, unbatched, seed = data
    width, kw = options
    compiled = hypermixer.HyperMixing(width, seed=seed, dtype=dtype, **kw)
    ref = reference.HyperMixing(width, seed=seed, dtype=dtype, **kw)
    randomize([compiled, ref], seed)
    twin = float64_twin(lambda d: reference.HyperMixing(width, dtype=d, **kw), ref)
    x, g = make_data((batch, seq_len, width), seed, dtype, unbatched, lengths, poison=True)
    parity(compiled, ref, x, g, lengths, threads, twin)


@given(data=batches(max_len=10), options=hypermixing_options(), hidden=st.integers(1, 12),
       dtype=DTYPES, threads=THREADS)
def test_hypermixing_block_matches_reference(data, options, hidden, dtype, threads):
    batch, seq_len, _, lengths, unbatched, seed = data
    width, kw = options
    assume(width >= 3)   # norm1 and norm2 over 1 or 2 features: see hypermixing_options
    compiled = hypermixer.HyperMixingBlock(width, hidden, seed=seed, dtype=dtype, **kw)
    ref = reference.HyperMixingBlock(width, hidden, seed=seed, dtype=dtype, **kw)
    randomize([compiled, ref], seed)
    twin = float64_twin(lambda d: reference.HyperMixingBlock(width, hidden, dtype=d, **kw),
                        ref)
    x, g = make_data((batch, seq_len, width), seed, dtype, unbatched, lengths, poison=True)
    parity(compiled, ref, x, g, lengths, threads, twin)


# ---------------------------------------------------------------------------- LM layers

@given(data=batches(max_len=10), dtype=DTYPES, threads=THREADS)
def test_self_attention_matches_reference(data, dtype, threads):
    batch, seq_len, width, lengths, unbatched, seed = data
    compiled = hypermixer.SelfAttention(width, seed=seed, dtype=dtype)
    ref = reference.SelfAttention(width, seed=seed, dtype=dtype)
    twin = float64_twin(lambda d: reference.SelfAttention(width, dtype=d), ref)
    x, g = make_data((batch, seq_len, width), seed, dtype, unbatched, lengths, poison=True)
    parity(compiled, ref, x, g, lengths, threads, twin)


@given(data=batches(max_len=8), hidden=st.integers(1, 12), dtype=DTYPES, threads=THREADS)
def test_transformer_block_matches_reference(data, hidden, dtype, threads):
    batch, seq_len, width, lengths, unbatched, seed = data
    width = max(width, 3)   # LayerNorm over 1 or 2 features has a zero input gradient
    compiled = hypermixer.TransformerBlock(width, hidden, seq_len, seed=seed, dtype=dtype)
    ref = reference.TransformerBlock(width, hidden, seq_len, seed=seed, dtype=dtype)
    randomize([compiled, ref], seed)
    twin = float64_twin(lambda d: reference.TransformerBlock(width, hidden, seq_len, dtype=d),
                        ref)
    x, g = make_data((batch, seq_len, width), seed, dtype, unbatched, lengths, poison=True)
    parity(compiled, ref, x, g, lengths, threads, twin)


@given(data=batches(max_len=8), vocab=st.integers(1, 40), dtype=DTYPES, threads=THREADS)
def test_output_projection_and_loss_match_reference(data, vocab, dtype, threads):
    batch, seq_len, width, lengths, unbatched, seed = data
    compiled = hypermixer.OutputProjection(width, vocab, seed=seed, dtype=dtype)
    ref = reference.OutputProjection(width, vocab, seed=seed, dtype=dtype)
    randomize([compiled, ref], seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, seq_len, width)).astype(dtype)
    g = rng.normal(size=(batch, seq_len, vocab)).astype(dtype)
    targets = rng.integers(0, vocab, size=(batch, seq_len))
    if lengths is not None:
        for b, n in enumerate(lengths):
            x[b, n:] = np.nan
            targets[b, n:] = -1   # padding targets are never read
    if unbatched:
        x, g, targets = x[0], g[0], targets[0]
    hypermixer.set_num_threads(threads)
    factor = FACTOR[np.dtype(dtype)]
    twin = float64_twin(lambda d: reference.OutputProjection(width, vocab, dtype=d), ref)
    logits, _, _ = check_parity(compiled, ref, x, g, lengths, twin)
    loss_c, grad_c = hypermixer.softmax_cross_entropy(logits, targets, lengths)
    loss_r, grad_r = reference.softmax_cross_entropy(logits, targets, lengths)
    assert np.isfinite(loss_c)
    assert abs(loss_c - loss_r) <= 1e-5 * factor * max(1.0, abs(loss_r))
    assert_close(grad_c, grad_r, dtype, "loss gradient", factor)


@given(data=batches(max_len=8), vocab=st.integers(1, 30), extra=st.integers(0, 3),
       dtype=DTYPES, threads=THREADS)
def test_embeddings_match_reference(data, vocab, extra, dtype, threads):
    batch, seq_len, width, lengths, unbatched, seed = data
    kw = dict(seed=seed, dtype=dtype)
    compiled = hypermixer.Embeddings(vocab, seq_len + extra, width, **kw)
    ref = reference.Embeddings(vocab, seq_len + extra, width, **kw)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, seq_len))
    g = rng.normal(size=(batch, seq_len, width)).astype(dtype)
    if unbatched:
        ids, g = ids[0], g[0]
    hypermixer.set_num_threads(threads)
    y_c = compiled.forward(ids, lengths)
    y_r = ref.forward(ids, lengths)
    assert_close(y_c, y_r, dtype, "embeddings output")
    gi_c, grads_c = compiled.compute_gradients(ids, g, lengths)
    gi_r, grads_r = ref.compute_gradients(ids, g, lengths)
    assert gi_c is None and gi_r is None
    for (name, _), a, b in zip(compiled.named_parameters(), grads_c, grads_r):
        assert_close(a, b, dtype, f"gradient of {name}")


# ---------------------------------------------------------------------------- input conversion

LAYOUTS = ["c", "fortran", "strided", "readonly", "int32", "int64", "uint8", "float16",
           "list", "other_float"]


def awkward(clean, layout):
    """A version of ``clean`` (float64, values exactly representable in every layout) in the
    given layout."""
    if layout == "c":
        return clean.copy()
    if layout == "fortran":
        return np.asfortranarray(clean)
    if layout == "strided":
        wide = np.zeros(clean.shape[:-1] + (2 * clean.shape[-1],))
        wide[..., ::2] = clean
        return wide[..., ::2]
    if layout == "readonly":
        ro = clean.copy()
        ro.flags.writeable = False
        return ro
    if layout in ("int32", "int64", "uint8"):
        return clean.astype(layout)
    if layout == "float16":
        return clean.astype(np.float16)
    if layout == "list":
        return clean.tolist()
    if layout == "other_float":
        return clean.astype(np.float32)
    raise AssertionError(layout)


def conversion_layers(dtype, width):
    return [
        hypermixer.LayerNorm(width, dtype=dtype),
        hypermixer.Hypernetwork(width, 3, 5, dtype=dtype),
        hypermixer.TokenMixingMLP(width, 6, dtype=dtype),
        hypermixer.TokenMixingMLP(width, 6, causal=True, dtype=dtype),
        hypermixer.ChannelMixingMLP(width, 5, dtype=dtype),
        hypermixer.HyperMixerBlock(width, 5, 6, dtype=dtype),
        hypermixer.SelfAttention(width, dtype=dtype),
        hypermixer.TransformerBlock(width, 5, 6, dtype=dtype),
        hypermixer.HyperMixing(width, 8, heads=2, dtype=dtype),
        hypermixer.HyperMixing(width, 8, heads=2, causal=True, dtype=dtype),
        hypermixer.HyperMixingBlock(width, 5, 8, heads=2, causal=True, dtype=dtype),
        # one head of width 4 with k_h = 4: the width-4 scan in float32
        hypermixer.HyperMixing(width, 4, causal=True, tied=True, normalize="mean",
                               dtype=dtype),
    ]


@given(layout=st.sampled_from(LAYOUTS), grad_layout=st.sampled_from(LAYOUTS), dtype=DTYPES,
       batched=st.booleans(), seed=st.integers(0, 1000))
def test_awkward_inputs_are_copied_and_give_the_clean_answer(layout, grad_layout, dtype,
                                                             batched, seed):
    width = 4
    rng = np.random.default_rng(seed)
    shape = (2, 5, width) if batched else (5, width)
    # small integers: exact in every layout, including uint8 and float16
    clean_x = rng.integers(0, 5, size=shape).astype(np.float64)
    clean_g = rng.integers(0, 5, size=shape).astype(np.float64)
    for layer in conversion_layers(dtype, width):
        x = awkward(clean_x, layout)
        g = awkward(clean_g, grad_layout)
        x_before = np.array(x, copy=True)
        g_before = np.array(g, copy=True)
        x_flags = x.flags.writeable if isinstance(x, np.ndarray) else None
        out_width = layer.output_dim if isinstance(layer, hypermixer.Hypernetwork) else width
        if out_width != width:
            clean_g2 = rng.integers(0, 5, size=shape[:-1] + (out_width,)).astype(np.float64)
            g = awkward(clean_g2, grad_layout)
            g_before = np.array(g, copy=True)
        y = layer.forward(x)
        y_clean = layer.forward(clean_x.astype(dtype))
        assert y.dtype == dtype and y.flags.c_contiguous
        assert np.array_equal(y, y_clean), f"{type(layer).__name__}: {layout} input differs"
        gi, grads = layer.compute_gradients(x, g)
        gi_clean, grads_clean = layer.compute_gradients(clean_x.astype(dtype),
                                                        np.array(g_before, dtype=dtype))
        assert np.array_equal(gi, gi_clean)
        for a, b in zip(grads, grads_clean):
            assert np.array_equal(a, b)
        # the caller's arrays are untouched (values and flags)
        assert np.array_equal(np.asarray(x), x_before)
        assert np.array_equal(np.asarray(g), g_before)
        if x_flags is not None:
            assert x.flags.writeable == x_flags
        # a layer never hands back a view of the caller's array
        if isinstance(x, np.ndarray):
            assert not np.shares_memory(y, x) and not np.shares_memory(gi, x)


REFUSED = {
    "bool": lambda shape: np.ones(shape, dtype=bool),
    "complex": lambda shape: np.ones(shape, dtype=np.complex128),
    "object": lambda shape: np.ones(shape, dtype=object),
    "str": lambda shape: np.full(shape, "1.0"),
    "bytes": lambda shape: np.full(shape, b"1"),
    "datetime": lambda shape: np.zeros(shape, dtype="datetime64[s]"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("impl", [hypermixer, reference], ids=["compiled", "reference"])
def test_refused_dtypes_raise_type_error(kind, impl):
    width = 4
    block = impl.HyperMixerBlock(width, 5, 6, dtype=np.float32)
    bad = REFUSED[kind]((2, 3, width))
    before = [a.copy() for _, a in block.named_parameters()]
    with pytest.raises(TypeError, match="input"):
        block.forward(bad)
    with pytest.raises(TypeError):
        block.compute_gradients(bad, np.zeros((2, 3, width)))
    good = np.ones((2, 3, width))
    block.forward(good)
    with pytest.raises(TypeError, match="grad_output"):
        block.backward(bad, 0.1)
    with pytest.raises(TypeError, match="gradient of"):
        block.apply_gradients([REFUSED[kind](a.shape) for _, a in block.named_parameters()],
                               0.1)
    with pytest.raises(TypeError, match="lengths"):
        block.forward(good.reshape(2, 3, width), lengths=np.array([1.0, 2.0]))
    # nothing was changed by the refused calls
    for (name, a), b in zip(block.named_parameters(), before):
        assert np.array_equal(a, b), f"{name} changed by a refused call"


@pytest.mark.parametrize("impl", [hypermixer, reference], ids=["compiled", "reference"])
def test_awkward_lengths_and_ids_are_not_modified(impl):
    rng = np.random.default_rng(3)
    lengths = np.array([3, 1], dtype=np.int32)[::-1]   # negative stride, int32
    lengths.flags.writeable = False
    ids = np.asfortranarray(rng.integers(0, 7, size=(2, 3)).astype(np.uint16))
    ids_before = ids.copy()
    emb = impl.Embeddings(7, 4, 5)
    y = emb.forward(ids, lengths)
    assert not y[0, 1:].any()
    assert np.array_equal(y, emb.forward(np.ascontiguousarray(ids, np.int64),
                                         np.array([1, 3])))
    assert np.array_equal(ids, ids_before) and np.array_equal(lengths, [1, 3])
    with pytest.raises(TypeError):
        emb.forward(ids.astype(np.float64))
    block = impl.HyperMixerBlock(5, 4, 4)
    x = rng.normal(size=(2, 3, 5))
    assert np.array_equal(block.forward(x, lengths), block.forward(x, np.array([1, 3])))


# ---------------------------------------------------------------------------- non-finite values

# Layers whose rows before t provably ignore a NaN/Inf at row t. Attention is causal for
# finite inputs only: the masked weights A[i, j > i] are exactly 0, and 0 * NaN = NaN in
# A @ v, so a non-finite value reaches earlier rows of its own sequence (in the compiled
# kernel, those of the same 32-row tile; in the reference, all). See docs/HARDENING.md.
CAUSAL_KINDS = {"causal_token_mixing", "causal_block", "causal_hypermixing",
                "causal_hypermixing_block"}


def nonfinite_layer(kind, width, max_len):
    if kind == "layernorm":
        return hypermixer.LayerNorm(width, dtype=np.float64)
    if kind == "channel_mixing":
        return hypermixer.ChannelMixingMLP(width, 6, dtype=np.float64)
    if kind in ("token_mixing", "causal_token_mixing"):
        return hypermixer.TokenMixingMLP(width, max_len, causal=kind.startswith("causal"),
                                         dtype=np.float64)
    if kind in ("block", "causal_block"):
        return hypermixer.HyperMixerBlock(width, 6, max_len, causal=kind.startswith("causal"),
                                          dtype=np.float64)
    if kind == "attention":
        return hypermixer.SelfAttention(width, dtype=np.float64)
    if kind.endswith("hypermixing"):
        return hypermixer.HyperMixing(width, 2 * width, causal=kind.startswith("causal"),
                                      hypernetwork_bias=True, dtype=np.float64)
    if kind.endswith("hypermixing_block"):
        return hypermixer.HyperMixingBlock(width, 6, 2 * width, causal=kind.startswith("causal"),
                                           dtype=np.float64)
    return hypermixer.TransformerBlock(width, 6, max_len, dtype=np.float64)


@given(kind=st.sampled_from(["layernorm", "channel_mixing", "token_mixing",
                             "causal_token_mixing", "block", "causal_block", "attention",
                             "transformer", "hypermixing", "causal_hypermixing",
                             "hypermixing_block", "causal_hypermixing_block"]),
       value=st.sampled_from([np.nan, np.inf, -np.inf]), where=st.integers(0, 10**6),
       threads=THREADS)
def test_non_finite_inputs_stay_in_their_sequence(kind, value, where, threads):
    """A NaN/Inf in a real row of sequence b makes that row's output (and, through token
    mixing or attention, other rows of b) non-finite; the causal HyperMixer keeps rows
    before t finite; other sequences are bit-for-bit unaffected; NaN/Inf in padding rows
    never reaches any output or gradient."""
    hypermixer.set_num_threads(threads)
    width, max_len = 5, 7
    lengths = np.array([7, 4, 2])
    rng = np.random.default_rng(where)
    x = rng.normal(size=(3, max_len, width))
    g = rng.normal(size=x.shape)
    for b, n in enumerate(lengths):
        x[b, n:] = np.nan            # padding: must never leak
    b = where % 3
    t = (where // 3) % lengths[b]
    e = (where // 21) % width
    layer = nonfinite_layer(kind, width, max_len)
    y_clean = layer.forward(x, lengths)
    gi_clean, _ = layer.compute_gradients(x, g, lengths)
    assert np.isfinite(y_clean).all() and np.isfinite(gi_clean).all()
    poisoned = x.copy()
    poisoned[b, t, e] = value
    y = layer.forward(poisoned, lengths)
    gi, _ = layer.compute_gradients(poisoned, g, lengths)
    assert not np.isfinite(y[b, t]).all(), "the poisoned row's output is finite"
    if kind in CAUSAL_KINDS:
        # rows before t cannot see it
        assert np.array_equal(y[b, :t], y_clean[b, :t])
    for other in range(3):
        if other != b:
            assert np.array_equal(y[other], y_clean[other]), f"sequence {other} changed"
            assert np.array_equal(gi[other], gi_clean[other]), f"sequence {other} changed"
    for s, n in enumerate(lengths):
        assert not y[s, n:].any() and not gi[s, n:].any(), "padding output must stay 0"


@given(value=st.sampled_from([np.nan, np.inf, -np.inf]), target_hit=st.booleans(),
       dtype=DTYPES, where=st.integers(0, 10**6))
def test_non_finite_logits_give_a_non_finite_loss(value, target_hit, dtype, where):
    """NaN/Inf logits must come out as a non-finite loss (the trainer stops on it), not be
    hidden, and must not crash (the exp kernel's exponent arithmetic once overflowed a signed
    shift on NaN, undefined behaviour caught by UBSan). Padding logits never count."""
    rng = np.random.default_rng(where)
    logits = rng.normal(size=(3, 4, 6)).astype(dtype)
    targets = rng.integers(0, 6, size=(3, 4))
    lengths = np.array([4, 2, 3])
    b, t = where % 3, (where // 3) % int(lengths[where % 3])
    v = int(targets[b, t]) if target_hit else (int(targets[b, t]) + 1) % 6
    clean_loss, clean_grad = hypermixer.softmax_cross_entropy(logits, targets, lengths)
    logits[1, 2:] = np.nan        # padding: ignored
    padded_loss, _ = hypermixer.softmax_cross_entropy(logits, targets, lengths)
    assert padded_loss == clean_loss
    logits[b, t, v] = value
    loss, grad = hypermixer.softmax_cross_entropy(logits, targets, lengths)
    with np.errstate(invalid="ignore"):   # NumPy warns about inf - inf; that is the point
        ref_loss, _ = reference.softmax_cross_entropy(logits, targets, lengths)
    if value == -np.inf and not target_hit:
        # exp(-inf) = 0: a logit of -inf for a class that is not the target is legitimate
        assert np.isfinite(loss) and np.isfinite(ref_loss)
    elif value == -np.inf or np.isnan(value):
        assert not np.isfinite(loss) and not np.isfinite(ref_loss)
    else:
        # +inf: inf - inf = NaN in the softmax, so the loss is non-finite, like the reference
        assert np.isfinite(loss) == np.isfinite(ref_loss) == False  # noqa: E712
    # other sequences' gradients are untouched
    for other in range(3):
        if other != b:
            assert np.array_equal(grad[other], clean_grad[other] * 1)


# ---------------------------------------------------------------------------- larger shapes

@pytest.mark.parametrize("kind,batch,seq_len,width,dtype,threads", [
    ("causal_block", 8, 80, 112, np.float32, 2),
    ("block", 8, 70, 112, np.float64, 2),
    ("transformer", 6, 75, 96, np.float32, 2),
    ("causal_block", 3, 40, 64, np.float64, 1),
])
def test_larger_shapes_cross_tiles_and_parallel_thresholds(kind, batch, seq_len, width, dtype,
                                                           threads):
    """Fixed shapes past the 32-row attention tiles and the element counts at which the
    kernels go parallel (16k-64k elements), which the small random shapes above never reach
    (hypothesis would shrink towards the smallest); ragged lengths with NaN padding. Run
    under the sanitizers too (scripts/sanitize.sh)."""
    seed = batch * 1000 + seq_len
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, seq_len + 1, size=batch)
    lengths[0] = seq_len
    if kind == "transformer":
        def make(impl, d):
            return impl.TransformerBlock(width, 2 * width, seq_len, seed=seed, dtype=d)
    else:
        def make(impl, d):
            return impl.HyperMixerBlock(width, 2 * width, seq_len + 5,
                                        causal=kind == "causal_block", seed=seed, dtype=d)
    compiled, ref = make(hypermixer, dtype), make(reference, dtype)
    randomize([compiled, ref], seed)
    twin = float64_twin(lambda d: make(reference, d), ref)
    x, g = make_data((batch, seq_len, width), seed, dtype, False, lengths, poison=True)
    parity(compiled, ref, x, g, lengths, threads, twin)
