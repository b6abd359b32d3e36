"""``hypermixer check`` / ``hypermixer.check()``: passes on a correct build, prints what the
kernels run on, and fails naming the layer when a compiled layer's result is made wrong
(its kernel's output nudged by 1e-3 after the real kernels ran)."""

import io

import numpy as np
import pytest

import hypermixer
from hypermixer import _kernels
from hypermixer import layers as compiled
from hypermixer.check import CASES, main


def run_check(**kwargs):
    out = io.StringIO()
    ok = hypermixer.check(out=out, **kwargs)
    return ok, out.getvalue()


def test_quick_check_passes_and_reports_the_machine():
    ok, text = run_check(quick=True)
    assert ok, text
    assert "matrix kernels dispatched to: " in text
    assert _kernels.gemm_instruction_set() in ("AVX-512", "AVX2+FMA", "SSE2", "plain C")
    assert f"threads: {hypermixer.get_num_threads()}" in text
    for case in CASES:
        assert f"\n{case.label} " in text, f"{case.label} missing from the table"
        if case.stream:
            assert f"\n{case.label} streamed " in text, f"{case.label} streamed is missing"
    assert "FAIL" not in text and text.rstrip().splitlines()[-1].startswith("all ")


def nudge(array, relative=1e-3):
    """Move one entry of ``array`` in place by ``relative``: a subtle, plausible kernel bug."""
    flat = array.reshape(-1)
    flat[0] += relative * (1.0 + abs(flat[0]))


def wrong_forward(cls):
    """``cls._forward`` whose output is nudged after the real kernels ran."""
    original = cls._forward

    def forward(self, *args, **kwargs):
        y = original(self, *args, **kwargs)
        nudge(y)
        return y
    return forward


def wrong_backward(cls):
    """``cls._backward`` whose first parameter gradient is nudged."""
    original = cls._backward

    def backward(self, grad_output):
        grad_input, grads = original(self, grad_output)
        nudge(grads[0])
        return grad_input, grads
    return backward


def failing_layers(text):
    return {line.split()[1] for line in text.splitlines() if line.startswith("FAIL: ")}


def test_wrong_forward_fails_and_names_the_layer(monkeypatch):
    monkeypatch.setattr(compiled.ChannelMixingMLP, "_forward",
                        wrong_forward(compiled.ChannelMixingMLP))
    names = ("ChannelMixingMLP", "FeedForward", "LayerNorm", "SelfAttention")
    ok, text = run_check(quick=True, cases=[c for c in CASES if c.name in names])
    assert not ok
    # FeedForward is a ChannelMixingMLP; the other two are untouched
    assert failing_layers(text) == {"ChannelMixingMLP", "FeedForward"}, text
    assert "FAIL: ChannelMixingMLP float32 small threads=1: output beyond" in text
    assert "failing layers: ChannelMixingMLP, FeedForward" in text.splitlines()[-1]


def test_wrong_backward_fails_naming_the_gradient(monkeypatch):
    monkeypatch.setattr(compiled.LayerNorm, "_backward", wrong_backward(compiled.LayerNorm))
    ok, text = run_check(quick=True, cases=[c for c in CASES if c.name == "LayerNorm"])
    assert not ok
    assert "FAIL: LayerNorm float64 small threads=1: parameter gradients beyond" in text


def wrong_step(cls):
    """``cls._step`` whose output row is nudged after the real kernels ran."""
    original = cls._step

    def step(self, *args):
        y = original(self, *args)
        nudge(y)
        return y
    return step


@pytest.mark.parametrize("name", ["SelfAttention", "HyperMixing"])
def test_wrong_step_fails_only_the_streamed_rows(monkeypatch, name):
    cls = getattr(hypermixer, name)
    monkeypatch.setattr(cls, "_step", wrong_step(cls))
    ok, text = run_check(quick=True, cases=[c for c in CASES if c.name == name])
    assert not ok
    failed = {line.split(" float")[0] for line in text.splitlines() if line.startswith("FAIL: ")}
    assert failed and all(label.endswith(" streamed") for label in failed), text
    assert f"FAIL: {name}" in text and "streamed float32 small threads=1: output beyond" in text


def test_command_exit_status(monkeypatch, capsys):
    assert main(["--quick", "--layer", "LayerNorm"]) == 0
    assert "all " in capsys.readouterr().out
    monkeypatch.setattr(compiled.LayerNorm, "_forward", wrong_forward(compiled.LayerNorm))
    assert main(["--quick", "--layer", "LayerNorm"]) == 1
    assert "FAIL: LayerNorm" in capsys.readouterr().out


def test_unknown_layer_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--layer", "NoSuchLayer"])
    assert exc.value.code == 2
    assert "unknown layer NoSuchLayer" in capsys.readouterr().err


def test_check_is_a_callable_module():
    import hypermixer.check as module
    assert module is hypermixer.check and module.CASES is CASES
    ok, text = run_check(quick=True, cases=CASES[:1])
    assert ok and text.rstrip().endswith("s)")


def _rows(check, dtype, problems):
    return [check.Row("Fake", np.dtype(dtype).name, "small", t, (1.0, None, None), 0.5, None,
                      p) for t, p in zip((1, 2), problems)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_second_input_only_for_float32_tolerance_misses(monkeypatch, dtype):
    """A float32 miss on the first input that passes on the second is "pass*"; float64 misses
    and any miss on both inputs stay failures."""
    from hypermixer import check
    miss = f"output {check.TOLERANCE_MISS}"
    seen = []

    def once(case, dt, size, threads, seed):
        seen.append(seed)
        return _rows(check, dt, [miss, ""] if seed == 0 else ["", ""])

    monkeypatch.setattr(check, "_check_case_once", once)
    rows = check.check_case(CASES[0], np.dtype(dtype), "small", [1, 2])
    if dtype == np.float32:
        assert seen == [0, 1] and all(r.passed and r.retried for r in rows)
        assert "pass*" in check.format_table(rows)
    else:
        assert seen == [0] and not rows[0].passed

    seen.clear()
    monkeypatch.setattr(check, "_check_case_once",
                        lambda case, dt, size, threads, seed: seen.append(seed) or
                        _rows(check, dt, [miss, miss]))
    rows = check.check_case(CASES[0], np.dtype(np.float32), "small", [1, 2])
    assert seen == [0, 1] and not any(r.passed for r in rows)


def test_check_leaves_the_callers_thread_setting():
    hypermixer.set_num_threads(1)
    ok, text = run_check(quick=True, cases=CASES[:1])
    assert ok and hypermixer.get_num_threads() == 1


def test_a_step_that_raises_is_a_failed_streamed_row(monkeypatch):
    def broken(self, *args):
        raise RuntimeError("no step")
    monkeypatch.setattr(hypermixer.SelfAttention, "_step", broken)
    ok, text = run_check(quick=True, cases=[c for c in CASES if c.name == "SelfAttention"])
    assert not ok
    assert "FAIL: SelfAttention streamed float32 small threads=0: raised RuntimeError: no step" \
        in text
    assert "FAIL: SelfAttention float32" not in text
