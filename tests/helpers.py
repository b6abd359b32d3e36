"""Shared test utilities: tolerances and the compiled-vs-reference parity check."""

import numpy as np

# Relative tolerances, measured as max|actual - expected| / max|expected| over a whole array.
# The external acceptance check is 1e-9 (float64) and 2e-4 (float32); ours are stricter.
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}


def relative_error(actual, expected):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    scale = np.abs(expected).max() if expected.size else 0.0
    diff = np.abs(actual - expected).max() if expected.size else 0.0
    return diff / scale if scale > 0 else diff


def assert_close(actual, expected, dtype, what, factor=1.0):
    err = relative_error(actual, expected)
    tol = RTOL[np.dtype(dtype)] * factor
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def check_parity(compiled, reference, x, grad_output, lengths=None, factor=1.0):
    """Forward output, input gradient and every parameter gradient must agree."""
    dtype = compiled.dtype
    names = [n for n, _ in compiled.named_parameters()]
    assert names == [n for n, _ in reference.named_parameters()]
    for (name, a), (_, b) in zip(compiled.named_parameters(), reference.named_parameters()):
        assert np.array_equal(a, b), f"initial {name} differs"
    y_c = compiled.forward(x, lengths)
    y_r = reference.forward(x, lengths)
    assert y_c.dtype == dtype and y_c.shape == y_r.shape
    assert_close(y_c, y_r, dtype, "forward output", factor)
    gi_c, grads_c = compiled.compute_gradients(x, grad_output, lengths)
    gi_r, grads_r = reference.compute_gradients(x, grad_output, lengths)
    assert_close(gi_c, gi_r, dtype, "input gradient", factor)
    assert len(grads_c) == len(grads_r) == len(names)
    for name, gc, gr in zip(names, grads_c, grads_r):
        assert gc.dtype == dtype
        assert_close(gc, gr, dtype, f"gradient of {name}", factor)
    return y_c, gi_c, grads_c


def finite_difference_check(layer, x, grad_output, lengths=None, samples=6, eps=1e-6,
                            rtol=1e-6, seed=0):
    """Compare analytic gradients of sum(forward(x) * grad_output) with central differences
    at a few random entries of the input and of every parameter (float64 layers)."""
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype=np.float64)
    grad_input, grads = layer.compute_gradients(x, grad_output, lengths)

    def objective():
        return float((layer.forward(x, lengths) * grad_output).sum())

    def check(array, analytic, what):
        for _ in range(samples):
            idx = tuple(int(rng.integers(0, s)) for s in array.shape)
            old = array[idx]
            array[idx] = old + eps
            plus = objective()
            array[idx] = old - eps
            minus = objective()
            array[idx] = old
            numeric = (plus - minus) / (2 * eps)
            scale = max(abs(numeric), abs(analytic[idx]), 1e-3)
            assert abs(numeric - analytic[idx]) <= rtol * scale, (
                f"{what}{list(idx)}: analytic {analytic[idx]:.10g} vs numeric {numeric:.10g}")

    check(x, grad_input, "input")
    for (name, param), g in zip(layer.named_parameters(), grads):
        check(param, g, name)


def assert_same_non_finite(actual, expected, what):
    """NaN in the same places, and the same infinities (with their signs)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), (
        f"{what}: NaN only in compiled at {np.argwhere(nan_a & ~nan_e)[:3].tolist()}, only "
        f"in the reference at {np.argwhere(nan_e & ~nan_a)[:3].tolist()}")
    inf_e = np.isinf(expected)
    assert np.array_equal(np.isinf(actual), inf_e), f"{what}: infinities differ"
    assert np.array_equal(actual[inf_e], expected[inf_e]), f"{what}: signs of inf differ"


def assert_thread_counts_agree(layer, x, grad_output, lengths, thread_counts=(1, 2, 3)):
    """Output, input gradient and every parameter gradient bit for bit the same at each
    thread count."""
    import hypermixer
    results = []
    for threads in thread_counts:
        hypermixer.set_num_threads(threads)
        y = layer.forward(x, lengths)
        gi, grads = layer.compute_gradients(x, grad_output, lengths)
        results.append([y, gi] + list(grads))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)
