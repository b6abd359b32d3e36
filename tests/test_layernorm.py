"""LayerNorm beyond the conformance suite (hypermixer/tests/test_conformance.py: parity,
padding, batch vs one by one, finite differences, threads): its math and its binding."""

import numpy as np
import pytest

import hypermixer

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalised_rows_have_zero_mean_unit_variance(dtype):
    # With gain 1 and shift 0 every valid row is (x - mean) / sqrt(var + eps): its mean is 0
    # and its population variance is var / (var + eps).
    rng = np.random.default_rng(4)
    x = rng.normal(5.0, 2.0, size=(2, 6, 32))
    layer = hypermixer.LayerNorm(32, dtype=dtype)
    y = layer.forward(x, np.array([6, 3])).astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for b, n in enumerate([6, 3]):
        var = x[b, :n].var(axis=1)
        assert np.allclose(y[b, :n].mean(axis=1), 0.0, atol=tol * 10)
        assert np.allclose(y[b, :n].var(axis=1), var / (var + 1e-5), rtol=tol * 10)


def test_binding_refuses_inconsistent_arrays():
    # The layer never calls the kernel like this; the binding must still refuse, not crash.
    from hypermixer import _kernels
    B, L, W = 2, 3, 4
    x = np.zeros((B, L, W))
    y, xhat = np.zeros_like(x), np.zeros_like(x)
    mean, rstd = np.zeros((B, L)), np.zeros((B, L))
    gamma, beta = np.ones(W), np.zeros(W)
    lengths = np.array([3, 2], np.int64)
    _kernels.layernorm_forward(y, xhat, mean, rstd, x, lengths, gamma, beta)
    with pytest.raises(ValueError, match="lengths"):
        _kernels.layernorm_forward(y, xhat, mean, rstd, x, np.array([3, 4], np.int64), gamma,
                                   beta)
    with pytest.raises(ValueError, match="entries"):
        _kernels.layernorm_forward(y, xhat, mean, rstd, x, lengths[:1], gamma, beta)
    with pytest.raises(ValueError):
        _kernels.layernorm_forward(y[:, :2].copy(), xhat, mean, rstd, x, lengths, gamma, beta)
    with pytest.raises(ValueError):
        _kernels.layernorm_forward(y, xhat, mean, rstd, x, lengths, gamma[:3].copy(), beta)
    with pytest.raises(ValueError):  # mixed precision: Cython's buffer dtype mismatch
        _kernels.layernorm_forward(y.astype(np.float32), xhat, mean, rstd, x, lengths, gamma,
                                   beta)
    partial = np.zeros((1, 2 * W))
    gi, dg, db = np.zeros_like(x), np.zeros(W), np.zeros(W)
    _kernels.layernorm_backward(gi, dg, db, partial, x, xhat, rstd, lengths, gamma)
    with pytest.raises(ValueError, match="partial"):
        _kernels.layernorm_backward(gi, dg, db, partial[:, :W].copy(), x, xhat, rstd, lengths,
                                    gamma)
    with pytest.raises(ValueError, match="rstd"):
        _kernels.layernorm_backward(gi, dg, db, partial, x, xhat, rstd[:1].copy(), lengths,
                                    gamma)
