"""NaN and overflow propagate exactly as in the NumPy reference (issue 10, class 3).

The reference's ReLU is np.maximum(z, 0), which keeps NaN; its backward multiplies by the
mask (pre > 0), so a NaN upstream gradient stays NaN even where the mask is 0. A compiled
ReLU written as ``z > 0 ? z : 0`` turned NaN into 0, so a NaN parameter gave finite outputs,
a finite loss, and training went on. Here one NaN is planted in an input row or in one entry
of each parameter, and the NaN positions of the output, the input gradient and every
parameter gradient must be those of the reference; the other entries must still agree.
"""

import numpy as np
import pytest

import hypermixer as hm
from hypermixer import reference as ref
from hypermixer.model import ModelConfig, build_network
from helpers import RTOL, assert_same_non_finite

DTYPES = [np.float32, np.float64]
# NumPy warns about the invalid operations the reference performs on purpose here.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
E, S = 8, 7
LENGTHS = np.array([6, 3])   # padded length 6 < S: the compact-theta path of token mixing


def _factories():
    hyper = dict(hypernetwork_hidden_dim=4, token_mixing_hidden_dim=5)
    return {
        "layernorm": lambda m, d: m.LayerNorm(E, dtype=d),
        "hypernetwork": lambda m, d: m.Hypernetwork(E, 4, 9, seed=1, dtype=d),
        "channel_mixing": lambda m, d: m.ChannelMixingMLP(E, 12, seed=1, dtype=d),
        "token_mixing": lambda m, d: m.TokenMixingMLP(E, S, seed=1, dtype=d, **hyper),
        "token_mixing_causal": lambda m, d: m.TokenMixingMLP(E, S, causal=True, seed=1,
                                                             dtype=d, **hyper),
        "block": lambda m, d: m.HyperMixerBlock(E, 12, S, seed=1, dtype=d, **hyper),
        "block_causal": lambda m, d: m.HyperMixerBlock(E, 12, S, causal=True, seed=1,
                                                       dtype=d, **hyper),
        "feed_forward": lambda m, d: m.FeedForward(E, 12, seed=1, dtype=d),
        "attention": lambda m, d: m.SelfAttention(E, seed=1, dtype=d),
        "transformer_block": lambda m, d: m.TransformerBlock(E, 12, S, seed=1, dtype=d),
        "output": lambda m, d: m.OutputProjection(E, 11, seed=1, dtype=d),
    }


FACTORIES = _factories()


def _assert_same_pattern(actual, expected, dtype, what):
    """Same NaN positions, same infinities, finite entries within the parity tolerance."""
    assert_same_non_finite(actual, expected, what)
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    fin = np.isfinite(expected)
    if fin.any():
        scale = max(np.abs(expected[fin]).max(), 1e-30)
        err = np.abs(actual[fin] - expected[fin]).max() / scale
        assert err <= 20 * RTOL[np.dtype(dtype)], f"{what}: finite part differs by {err:.2e}"


def _run_pair(name, dtype, plant):
    """Both implementations, NaN planted by plant(layer, x) in both; compare everything."""
    compiled, reference = FACTORIES[name](hm, dtype), FACTORIES[name](ref, dtype)
    width = compiled.in_features
    rng = np.random.default_rng(5)
    x = rng.normal(size=(len(LENGTHS), LENGTHS.max(), width)).astype(dtype)
    out_width = compiled.forward(x, LENGTHS).shape[-1]
    g = rng.normal(size=(len(LENGTHS), LENGTHS.max(), out_width)).astype(dtype)
    results = []
    for layer in (compiled, reference):
        xl = x.copy()
        plant(layer, xl)
        y = layer.forward(xl, LENGTHS)
        gi, grads = layer.compute_gradients(xl, g, LENGTHS)
        results.append((y, gi, grads))
    (y_c, gi_c, grads_c), (y_r, gi_r, grads_r) = results
    _assert_same_pattern(y_c, y_r, dtype, f"{name} output")
    _assert_same_pattern(gi_c, gi_r, dtype, f"{name} input gradient")
    for (pname, _), gc, gr in zip(compiled.named_parameters(), grads_c, grads_r):
        _assert_same_pattern(gc, gr, dtype, f"{name} gradient of {pname}")
    return y_r, gi_r, grads_r


def _parameter_cases():
    cases = []
    for name, make in FACTORIES.items():
        for pname, arr in make(ref, np.float64).named_parameters():
            cases.append((name, pname, arr.shape))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, pname, shape", _parameter_cases())
def test_nan_parameter_entry(dtype, name, pname, shape):
    # One entry away from the corner, so that a row/column of a weight matrix is hit.
    idx = tuple(min(1, n - 1) for n in shape)

    def plant(layer, _x):
        dict(layer.named_parameters())[pname][idx] = np.nan

    y, _, _ = _run_pair(name, dtype, plant)
    assert np.isnan(y).any(), "the NaN parameter must reach the output (test premise)"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("row", [0, 2])
def test_nan_input_row(dtype, name, row):
    def plant(_layer, x):
        x[0, row, 3] = np.nan

    y, _, _ = _run_pair(name, dtype, plant)
    assert np.isnan(y[0, row]).any()
    assert not np.isnan(y[1]).any(), "a NaN in sequence 0 must not reach sequence 1"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["channel_mixing", "hypernetwork", "feed_forward"])
def test_nan_gradient_through_closed_relu(dtype, name):
    # A NaN in grad_output reaches hidden units whose ReLU is closed: the reference's
    # (g @ w2.T) * (pre > 0) keeps it (NaN * 0), so must the compiled backward.
    compiled, reference = FACTORIES[name](hm, dtype), FACTORIES[name](ref, dtype)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, E)).astype(dtype)
    out = []
    for layer in (compiled, reference):
        y = layer.forward(x, LENGTHS)
        g = rng.normal(size=y.shape).astype(dtype) * 0 + 1
        g[0, 1, 2] = np.nan
        out.append(layer.compute_gradients(x, g, LENGTHS))
    (gi_c, grads_c), (gi_r, grads_r) = out
    _assert_same_pattern(gi_c, gi_r, dtype, "input gradient")
    for gc, gr in zip(grads_c, grads_r):
        _assert_same_pattern(gc, gr, dtype, "parameter gradient")
    assert np.isnan(grads_r[0]).all(), "premise: dw1 is NaN in every entry"


@pytest.mark.parametrize("name", ["channel_mixing", "hypernetwork", "feed_forward",
                                  "token_mixing", "token_mixing_causal"])
def test_overflow_near_float32_limit(name):
    # One feature near the float32 maximum times first-layer weights of 1e10: the exact
    # pre-activations overflow by far, so they are +-inf in any summation order, and inf - inf
    # gives NaN in the next product. The compiled result must overflow where the reference
    # does, never come back as y == x as if the MLP contributed nothing.
    def plant(layer, x):
        x[0, 1, 0] = np.float32(3e38)
        w1 = [a for n, a in layer.named_parameters() if n.endswith("w1")][0]
        w1[0, :] = 1e10

    y, _, _ = _run_pair(name, np.float32, plant)
    assert not np.isfinite(y[0, 1]).all()


@pytest.mark.parametrize("architecture", ["hypermixer", "transformer", "hypermixing"])
def test_nan_parameter_makes_language_model_loss_nan(architecture):
    config = ModelConfig(architecture=architecture, embedding_dim=8, hidden_dim=12,
                         num_layers=2, max_seq_len=6)
    ids = np.array([[1, 2, 3, 4, 5, 6], [3, 1, 4, 1, 5, 9]])
    targets = np.roll(ids, -1, axis=1)
    lengths = np.array([6, 4])
    results = []
    for backend in ("compiled", "reference"):
        model = build_network(config, vocab_size=11, seed=0, dtype=np.float64, backend=backend)
        name, arr = [p for p in model.named_parameters() if ".b1" in p[0] or "bias" in p[0]
                     or p[0].endswith(".beta")][0]
        arr.flat[2] = np.nan
        loss, grads = model.loss_and_gradients(ids, targets, lengths)
        before = [a.copy() for _, a in model.named_parameters()]
        step = model.train_step(ids, targets, lengths)
        assert not step.applied, f"{backend}: a NaN loss must not update the model"
        for (_, a), b in zip(model.named_parameters(), before):
            assert np.array_equal(a, b, equal_nan=True)
        results.append((loss, grads))
    (loss_c, grads_c), (loss_r, grads_r) = results
    assert np.isnan(loss_r) and np.isnan(loss_c)
    for gc, gr in zip(grads_c, grads_r):
        assert np.array_equal(np.isnan(gc), np.isnan(gr))
