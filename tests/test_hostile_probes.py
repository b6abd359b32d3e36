"""Defects found by a second round of hostile probing (issue 10, "Done when": an independent
set of probes finds nothing). Each test failed before its fix; docs/HARDENING.md lists them.
"""

import math

import numpy as np
import pytest

import hypermixer as hm
from hypermixer import reference as ref
from hypermixer import _hypermixing_reference as hmx_ref

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
LENGTHS = np.array([6, 3])


def _same_non_finite(actual, expected, what):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), (
        f"{what}: NaN only in compiled at {np.argwhere(nan_a & ~nan_e)[:3].tolist()}, only "
        f"in the reference at {np.argwhere(nan_e & ~nan_a)[:3].tolist()}")
    inf_e = np.isinf(expected)
    assert np.array_equal(np.isinf(actual), inf_e), f"{what}: infinities differ"
    assert np.array_equal(actual[inf_e], expected[inf_e]), f"{what}: signs of inf differ"


# ---------------------------------------------------------------------------------------------
# An infinite generated weight times a GELU of the lower tail. The compiled GELU was
# z * (1 + erf(z / sqrt 2)) / 2 in the layer's precision: below z = -4 in float32 the bracket
# cancels to exactly 0, so inf * gelu(z) gave NaN where the reference (float64, tiny nonzero
# gelu) gave +-inf. Now Phi = erfc(-z / sqrt 2) / 2 in double in both implementations.

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("param, idx", [("hyper.w2_gen.fc2_weights", (0, 0, 3)),
                                        ("hyper.w1_gen.fc2_weights", (1, 0, 2))])
def test_infinite_generated_weight_matches_reference(dtype, causal, param, idx):
    results = []
    for module in (hm, ref):
        layer = module.HyperMixing(8, 8, heads=2, causal=causal, layer_norm=False, seed=1,
                                   dtype=dtype)
        dict(layer.named_parameters())[param][idx] = np.inf
        x = np.random.default_rng(5).normal(size=(2, 6, 8)).astype(dtype)
        results.append(layer.forward(x, LENGTHS))
    compiled, expected = results
    assert np.isinf(expected).any(), "premise: the infinity reaches the output"
    _same_non_finite(compiled, expected, "HyperMixing output")


@pytest.mark.parametrize("z", [-5.9, -8.5, -12.0, -30.0, 0.3, 7.0])
def test_reference_gelu_keeps_the_lower_tail(z):
    # z * Phi(z) from the complementary error function: nonzero wherever it is representable
    expected = z * 0.5 * math.erfc(-z / math.sqrt(2.0))
    got = hmx_ref.gelu(np.array([z]))[0]
    assert got == pytest.approx(expected, rel=1e-14)
    if z < 0:
        assert got < 0
    slope = 0.5 * math.erfc(-z / math.sqrt(2.0)) + z * math.exp(-0.5 * z * z) / math.sqrt(
        2.0 * math.pi)
    assert hmx_ref.gelu_grad(np.array([z]))[0] == pytest.approx(slope, rel=1e-12, abs=1e-300)


# ---------------------------------------------------------------------------------------------
# LayerNorm float32 backward: g * gamma was formed in float32 before being summed in double, so
# rows with a large spread (small rstd) and large gradients gave inf/NaN input gradients where
# the exact result is an ordinary float32 number.

def test_layernorm_float32_backward_no_intermediate_overflow():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 8)) * 1e10
    g = rng.normal(size=(2, 5, 8)) * 1e30
    lengths = np.array([5, 3])
    exact = ref.LayerNorm(8, dtype=np.float64)
    exact.gamma[...] = 1e10
    exact.forward(x, lengths)
    want, _ = exact.compute_gradients(x, g, lengths)
    want32 = want.astype(np.float32)
    assert np.isfinite(want32).all(), "premise: the exact gradient fits in float32"
    for module in (hm, ref):
        layer = module.LayerNorm(8, dtype=np.float32)
        dict(layer.named_parameters())["gamma"][...] = 1e10
        x32, g32 = x.astype(np.float32), g.astype(np.float32)
        layer.forward(x32, lengths)
        got, _ = layer.compute_gradients(x32, g32, lengths)
        assert np.isfinite(got).all(), module.__name__
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 1e-6 * scale, module.__name__
