"""LayerNorm numerics (issue 10, class 4), compiled and reference, against an oracle.

The oracle is the exact answer for the very same float32/float64 inputs, in rational arithmetic
(fractions.Fraction), rounded once at the end. A sound
LayerNorm must give a constant row exactly 0 (then beta), keep large common offsets as
accurate as the dtype of its output allows, and return the true O(1) result at 1e30 (float32)
and 1e100..1e300 (float64) instead of zeros, NaN or inf.
"""

import math
from fractions import Fraction

import numpy as np
import pytest

import hypermixer as hm
from hypermixer import reference as ref

IMPLS = [hm, ref]
EPS = 1e-5


def oracle(x):
    """xhat of every row of x (B, L, E), as float64, from exact rational arithmetic.

    Mean, deviations and variance are exact Fractions of the float inputs; each entry is
    sign(d) * sqrt(d^2 / (var + eps)), whose only rounding is the final float64 sqrt, so the
    oracle is within an ulp of float64 at any magnitude."""
    eps = Fraction(EPS)
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty(rows.shape, np.float64)
    for i, row in enumerate(rows):
        vals = [Fraction(float(v)) for v in row]
        mean = sum(vals) / len(vals)
        devs = [v - mean for v in vals]
        denom = sum(d * d for d in devs) / len(vals) + eps
        out[i] = [math.copysign(math.sqrt(d * d / denom), d) for d in devs]
    return out.reshape(x.shape)


def run(impl, x, seed=0):
    """Forward with random gamma/beta; returns (y, xhat derived from y, layer)."""
    layer = impl.LayerNorm(x.shape[-1], dtype=x.dtype)
    rng = np.random.default_rng(seed)
    layer.gamma[...] = rng.uniform(0.5, 2.0, layer.gamma.shape)
    layer.beta[...] = rng.normal(size=layer.beta.shape)
    y = layer.forward(x)
    return y, layer


def ulp_error(y, layer, x):
    """max |y - exact| in units of the output dtype's epsilon times the output scale."""
    exact = oracle(x) * layer.gamma.astype(np.float64) + layer.beta.astype(np.float64)
    scale = max(1.0, np.abs(exact).max())
    return np.abs(y.astype(np.float64) - exact).max() / (np.finfo(x.dtype).eps * scale)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, values", [
    (np.float32, [0.0, 1.0, -3.3, 1e10, -7.1e20, 1e30, 3.3e38, 1e-30]),
    (np.float64, [0.0, 1.0, -3.3, 1e10, 1e100, -1.7e150, 1e300, 1.7e308, 1e-300]),
])
@pytest.mark.parametrize("width", [1, 7, 64, 333])
def test_constant_rows_give_exactly_beta(impl, dtype, values, width):
    x = np.repeat(np.array(values, dtype)[:, None, None], width, axis=2)   # (B, 1, E)
    x = np.ascontiguousarray(np.broadcast_to(x, (len(values), 2, width)))
    y, layer = run(impl, x)
    expected = np.broadcast_to(layer.beta.reshape(-1), y.shape)
    assert np.array_equal(y, expected), f"constant rows: max |y - beta| {np.abs(y - expected).max()}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, offsets", [
    (np.float32, [1e2, 1e4, 3e5, -1e6]),
    (np.float64, [1e4, 1e8, -1e11, 1e13]),
])
def test_large_common_offset(impl, dtype, offsets):
    # Rows offset + N(0, 1): the offset cancels exactly, so the output is as accurate as the
    # output dtype allows (a few eps), however large the offset is relative to the spread.
    rng = np.random.default_rng(3)
    for offset in offsets:
        x = (offset + rng.normal(size=(3, 5, 96))).astype(dtype)
        y, layer = run(impl, x)
        err = ulp_error(y, layer, x)
        assert err <= 8, f"offset {offset:g}: error {err:.1f} eps"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, magnitudes", [
    (np.float32, [1e-20, 1e19, 1e25, 1e30, 1e36]),
    (np.float64, [1e-150, 1e100, 1e160, 1e200, 1e300, 1e307]),
])
def test_huge_and_tiny_magnitudes(impl, dtype, magnitudes):
    rng = np.random.default_rng(4)
    for m in magnitudes:
        x = (m * rng.normal(size=(2, 3, 40))).astype(dtype)
        y, layer = run(impl, x)
        assert np.isfinite(y).all(), f"magnitude {m:g}: non-finite output"
        err = ulp_error(y, layer, x)
        # Tiny rows: var << eps, so xhat ~ x / sqrt(eps) is tiny too and y ~ beta.
        assert err <= 8, f"magnitude {m:g}: error {err:.1f} eps"


@pytest.mark.parametrize("impl", IMPLS)
def test_deviations_that_overflow_float64(impl):
    # x - x[0] itself overflows (+-1.7e308): still the true O(1) result.
    x = np.array([[[1.7e308, -1.7e308, 0.0, 1e307, -5e307]]])
    y, layer = run(impl, x)
    assert np.isfinite(y).all()
    assert ulp_error(y, layer, x) <= 8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [1.0, 1e20, 1e30])
def test_gradients_agree_at_large_magnitude(dtype, m):
    # Same sound forward on both sides, so the backward (which uses xhat and rstd) must agree
    # at any scale; the input gradient scales as 1/m.
    rng = np.random.default_rng(5)
    x = (m * rng.normal(size=(2, 4, 24)) + 3 * m).astype(dtype)
    g = rng.normal(size=x.shape).astype(dtype)
    lengths = np.array([4, 2])
    out = []
    for impl in IMPLS:
        _, layer = run(impl, x)
        out.append(layer.compute_gradients(x, g, lengths))
    (gi_c, (dg_c, db_c)), (gi_r, (dg_r, db_r)) = out
    tol = 50 * np.finfo(dtype).eps
    for a, b, what in [(gi_c, gi_r, "input"), (dg_c, dg_r, "gamma"), (db_c, db_r, "beta")]:
        assert np.isfinite(a).all()
        err = np.abs(a.astype(np.float64) - b).max() / np.abs(b.astype(np.float64)).max()
        assert err <= tol, f"{what} gradient: relative error {err:.2e}"
