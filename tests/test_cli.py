"""The ``hypermixer`` command line, run in-process (and once as ``python -m``)."""

import io
import json
import subprocess
import sys

import pytest

from hypermixer.cli import main
from hypermixer.model import ModelConfig, backend_available, expected_parameter_count

BACKEND = "compiled" if backend_available("compiled") else "reference"
TINY_MODEL = ["--embedding-dim", "8", "--hidden-dim", "12", "--num-layers", "1",
              "--max-seq-len", "24", "--backend", BACKEND]
EXAMPLES = ["User: what causes rain? Assistant: rain falls from heavy clouds.",
            "User: what is snow? Assistant: snow is frozen rain.",
            "rain falls from heavy clouds.", "snow is frozen rain.",
            "the sun warms the ground.", "User: what warms the ground? Assistant: the sun."]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(EXAMPLES))
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_generate_and_chat(tmp_path, data_file, capsys, monkeypatch):
    out_dir = tmp_path / "model"
    code, _, err = run(["train", "--data", data_file, "--epochs", "2", "--out", out_dir,
                        "--lr", "0.02", "--batch-size", "2", *TINY_MODEL], capsys)
    assert code == 0, err
    assert "[tiny] epoch 2/2" in err and "tokens/s" in err
    assert "validation loss" in err and (out_dir / "checkpoint.npz").is_file()
    assert list(out_dir.glob("loss.*"))

    code, out, err = run(["generate", "--model", out_dir, "--max-new-tokens", "5",
                          "--backend", BACKEND, "User: what causes rain?"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 1
    assert len(out.split()) <= 5 + 5   # at most 5 tokens (punctuation attaches to words)

    monkeypatch.setattr(sys, "stdin", io.StringIO("what is snow?\n\nwhat is rain?\nquit\n"
                                                  "never read\n"))
    code, out, err = run(["chat", "--model", out_dir, "--max-new-tokens", "3",
                          "--backend", BACKEND], capsys)
    assert code == 0, err
    assert [line.startswith("Assistant:") for line in out.splitlines()] == [True, True]


def test_resume_continues_a_finished_stage_list(tmp_path, data_file, capsys):
    out_dir = tmp_path / "model"
    args = ["train", "--data", data_file, "--out", out_dir, "--batch-size", "3", *TINY_MODEL]
    assert run([*args, "--epochs", "1"], capsys)[0] == 0
    code, _, err = run(["train", "--resume", "--out", out_dir, "--epochs", "2",
                        "--backend", BACKEND], capsys)
    assert code == 0, err
    assert "[tiny] epoch 2/2" in err and "epoch 1/2" not in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "{tmp}/missing.json"], "missing.json: no such data file"),
    (["train", "--data", "{tmp}/bad.json"], "bad.json: line 2, column"),
    (["train", "--epochs", "0", "--data", "{data}"], "epochs must be an integer >= 1"),
    (["train", "--embedding-dim", "0", "--data", "{data}"], "embedding_dim must be >= 1"),
    (["train", "--non-causal", "--data", "{data}"], "--allow-noncausal"),
    (["train", "--resume", "--out", "{tmp}/nothing"], "no such checkpoint"),
    (["train", "--resume", "--lr", "0.1", "--data", "{data}"], "drop --data, --lr"),
    (["generate", "--model", "{tmp}", "hello"], "no such checkpoint"),
    (["generate", "--model", "{data}", "hello"], "not a hypermixer checkpoint"),
    (["info", "--vocab-size", "1"], "--vocab-size must be >= 2"),
])
def test_user_mistakes_exit_2_with_one_clear_line(argv, message, tmp_path, data_file, capsys):
    (tmp_path / "bad.json").write_text('["one",\n  oops]')
    argv = [a.format(tmp=tmp_path, data=data_file) for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "out")] if "--out" not in argv else []
        if "--resume" not in argv:
            argv = argv[:1] + TINY_MODEL + argv[1:]   # the test's own options come last
    code, out, err = run(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_bad_option_values_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "many"])
    assert info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_info_prints_the_spec_table(capsys):
    code, out, _ = run(["info"], capsys)
    assert code == 0
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    expected = {
        "HyperMixer LM": expected_parameter_count(ModelConfig.hypermixer(), 533),
        "Transformer LM": expected_parameter_count(ModelConfig.transformer(), 533),
        "HyperMixer LM, shared hypernetwork": expected_parameter_count(
            ModelConfig.hypermixer(share_hypernetwork=True), 533),
        "hypermixing LM (32 heads, tied)": expected_parameter_count(
            ModelConfig(architecture="hypermixing"), 533),
    }
    for name, count in expected.items():
        assert rows[name] == f"{count:,}"
    assert rows["HyperMixerBlock"].startswith("413,232 (hypernetwork 346,800")
    assert rows["TransformerBlock"] == "115,584"


def test_compare_prints_both_models(tmp_path, data_file, capsys):
    code, out, err = run(["compare", "--data", data_file, "--epochs", "1", "--out",
                          tmp_path / "cmp", "--batch-size", "3", *TINY_MODEL], capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "model"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["hypermixer", "transformer",
                                                                  "hypermixing"]
    assert list((tmp_path / "cmp").glob("compare.*"))
    assert (tmp_path / "cmp" / "transformer" / "checkpoint.npz").is_file()
    assert (tmp_path / "cmp" / "hypermixing" / "checkpoint.npz").is_file()


def test_bench_is_delegated_or_explained(capsys, monkeypatch):
    try:
        import hypermixer.bench  # noqa: F401
    except ModuleNotFoundError:
        code, _, err = run(["bench", "--anything"], capsys)
        assert code == 2 and "hypermixer.bench" in err
        return
    received = []
    monkeypatch.setattr("hypermixer.bench.main", lambda argv: received.append(argv))
    assert run(["bench", "--quick", "x"], capsys)[0] == 0
    assert received == [["--quick", "x"]]


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "hypermixer", "info", "--vocab-size", "10"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Transformer LM" in result.stdout
