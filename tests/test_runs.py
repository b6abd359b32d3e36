"""Runs a researcher can trust: run-folder files (best/last checkpoints, metrics, config),
early stopping, learning-rate schedules, gradient accumulation, interruption (Ctrl-C and
SIGTERM) with an exact resume, and the user-facing defects of issue 11 (no validation data,
overwriting a finished run, compare --architecture, generate with nothing to say)."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import hypermixer.train as train_module
from hypermixer.checkpoint import load_checkpoint, save_checkpoint
from hypermixer.cli import main
from hypermixer.model import ModelConfig, backend_available, build_network
from hypermixer.tokenizer import Tokenizer
from hypermixer.train import (Stage, Terminated, TrainingInterrupted, TrainSettings, train)

BACKEND = "compiled" if backend_available("compiled") else "reference"
TINY = ModelConfig(embedding_dim=8, hidden_dim=12, num_layers=1, max_seq_len=16)
TINY_CLI = ["--embedding-dim", "8", "--hidden-dim", "12", "--num-layers", "1",
            "--max-seq-len", "16", "--backend", BACKEND]
TEXTS = ["the sun is a star.", "the moon goes around the earth.", "rain falls from clouds.",
         "plants need water and light.", "the sea is salty.", "birds can fly.",
         "fish swim in water.", "snow is cold.", "the wind moves the clouds.",
         "trees grow slowly.", "we read books.", "ice melts in the sun."]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "facts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def quiet(out, data, settings, config=TINY, dtype=np.float32, **options):
    with open(os.devnull, "w") as log:
        return train(config, out, stages=[Stage("facts", str(data))], settings=settings,
                     backend=BACKEND, log=log, plot=False, dtype=dtype, **options)


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def params(network):
    return {name: a.copy() for name, a in network.named_parameters()}


# ------------------------------------------------------------------ the run folder
def test_run_folder_has_last_and_best_checkpoints_metrics_and_config(tmp_path, data):
    settings = TrainSettings(epochs=3, batch_size=4, lr=0.05, validation_fraction=0.25)
    result = quiet(tmp_path / "run", data, settings)
    run = tmp_path / "run"
    assert (run / "checkpoint.npz").is_file() and (run / "best.npz").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == json.loads(json.dumps(result.history))   # one line per recorded point
    assert [p["epoch"] for p in lines] == [0, 1, 2, 3]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == TINY.to_dict()
    assert config["settings"]["epochs"] == 3 and config["vocab_size"] == len(result.tokenizer)
    # best.npz is the epoch of the lowest validation loss, and loads like any checkpoint
    trained = [p for p in result.history if p["train_loss"] is not None]
    best = min(trained, key=lambda p: p["val_loss"])
    saved = load_checkpoint(run / "best.npz", backend=BACKEND)
    assert saved.training_state["best"]["epoch"] == best["epoch"]
    assert saved.training_state["best"]["val_loss"] == best["val_loss"]


def test_best_checkpoint_is_the_one_with_the_lowest_validation_loss(tmp_path, data,
                                                                     monkeypatch):
    """Validation losses forced to 3, 1, 2: best.npz must hold epoch 2's parameters."""
    forced = iter([5.0, 5.0, 3.0, 1.0, 2.0])   # untrained, before the stage, 3 epochs
    monkeypatch.setattr(train_module.Trainer, "_evaluate",
                        lambda self, pairs: next(forced))
    snapshots = []
    real_save = train_module.save_checkpoint

    def save(path, network, tokenizer, state):
        if os.path.basename(path) == "checkpoint.npz":
            snapshots.append(params(network))
        return real_save(path, network, tokenizer, state)

    monkeypatch.setattr(train_module, "save_checkpoint", save)
    quiet(tmp_path / "run", data, TrainSettings(epochs=3, batch_size=4, lr=0.05))
    best = load_checkpoint(tmp_path / "run" / "best.npz", backend=BACKEND)
    assert best.training_state["best"]["epoch"] == 2
    for name, value in params(best.network).items():
        np.testing.assert_array_equal(value, snapshots[1][name], err_msg=name)
    assert not np.array_equal(snapshots[1][name], snapshots[2][name])


def test_patience_stops_the_stage_after_n_epochs_without_improvement(tmp_path, data,
                                                                     monkeypatch):
    forced = iter([5.0, 5.0, 2.0, 3.0, 3.0, 1.0, 1.0])
    monkeypatch.setattr(train_module.Trainer, "_evaluate", lambda self, pairs: next(forced))
    result = quiet(tmp_path / "run", data,
                   TrainSettings(epochs=6, batch_size=4, lr=0.05, patience=2))
    # epoch 1 best (2.0), epochs 2 and 3 not better: stop after epoch 3
    assert [p["epoch"] for p in result.history] == [0, 1, 2, 3]
    state = load_checkpoint(tmp_path / "run", backend=BACKEND).training_state
    assert state["early_stopped"] == ["facts"]


def test_patience_without_validation_data_is_refused():
    with pytest.raises(ValueError, match="patience needs validation data"):
        TrainSettings(patience=2, validation_fraction=0)


# ------------------------------------------------------------------ schedules, accumulation
def test_warmup_and_cosine_schedule():
    s = TrainSettings(lr=0.1, warmup_steps=4, lr_schedule="cosine")
    assert [s.lr_at(k, 14) for k in (1, 2, 4)] == [0.1 * 1 / 4, 0.1 * 2 / 4, 0.1]
    assert s.lr_at(9, 14) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert s.lr_at(14, 14) == pytest.approx(0.0, abs=1e-15)
    constant = TrainSettings(lr=0.1, warmup_steps=2)
    assert [constant.lr_at(k, 10) for k in (1, 2, 3, 10)] == [0.05, 0.1, 0.1, 0.1]
    with pytest.raises(ValueError, match="schedule"):
        TrainSettings(lr_schedule="linear")


def test_the_schedule_reaches_the_optimizer(tmp_path, data, monkeypatch):
    seen = []
    real = train_module.distributed.train_step

    def spy(comm, network, *batch, lr, clip_norm):
        seen.append(lr)
        return real(comm, network, *batch, lr=lr, clip_norm=clip_norm)

    monkeypatch.setattr(train_module.distributed, "train_step", spy)
    settings = TrainSettings(epochs=2, batch_size=4, lr=0.01, warmup_steps=2,
                             lr_schedule="cosine", validation_fraction=0.25)
    quiet(tmp_path / "run", data, settings)
    # 9 training examples, batches of 4: 3 steps per epoch, 6 in all
    assert seen == [settings.lr_at(k, 6) for k in range(1, 7)]
    history = json.loads("[" + ",".join(
        (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) + "]")
    assert history[-1]["lr"] == seen[-1]


def test_gradient_accumulation_equals_the_large_batch(tmp_path, data):
    """Batches of 2 summed 2 at a time take the steps of batches of 4 (float64)."""
    common = dict(epochs=2, lr=0.01, validation_fraction=0.25, seed=4)
    large = quiet(tmp_path / "large", data, TrainSettings(batch_size=4, **common),
                  dtype=np.float64)
    small = quiet(tmp_path / "acc", data,
                  TrainSettings(batch_size=2, grad_accumulation=2, **common), dtype=np.float64)
    assert large.history[-1]["step"] == small.history[-1]["step"] == 6
    for (name, a), (_, b) in zip(large.network.named_parameters(),
                                 small.network.named_parameters()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=name)


# ------------------------------------------------------------------ interruption
@pytest.mark.parametrize("signal_kind", [KeyboardInterrupt, Terminated])
def test_interrupt_mid_epoch_saves_and_resumes_exactly(tmp_path, data, monkeypatch,
                                                       signal_kind):
    settings = TrainSettings(epochs=2, batch_size=2, lr=0.02, validation_fraction=0.25,
                             warmup_steps=2, lr_schedule="cosine")
    whole = quiet(tmp_path / "whole", data, settings)
    calls = []
    real = train_module.distributed.train_step

    def stop_at_step_7(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:   # epoch 2 (5 steps per epoch), its second batch
            raise signal_kind()
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module.distributed, "train_step", stop_at_step_7)
    with pytest.raises(TrainingInterrupted) as info:
        quiet(tmp_path / "split", data, settings)
    assert info.value.status == (143 if signal_kind is Terminated else 130)
    assert "epoch 2, after step 6 (batch 1/5)" in str(info.value)
    assert "--resume" in str(info.value)
    monkeypatch.setattr(train_module.distributed, "train_step", real)
    state = load_checkpoint(tmp_path / "split", backend=BACKEND).training_state
    assert state["position"] == {"stage": 0, "epoch": 1, "step": 6, "batch": 1}

    log_path = tmp_path / "resume.log"
    with open(log_path, "w") as log:
        resumed = train(None, tmp_path / "split", backend=BACKEND, resume=True, log=log,
                        plot=False)
    assert "resuming from stage 'facts' (1/1), epoch 2, batch 1, step 6" in \
        log_path.read_text()
    for (name, a), (_, b) in zip(whole.network.named_parameters(),
                                 resumed.network.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    strip = ("seconds",)
    assert [{k: v for k, v in p.items() if k not in strip} for p in resumed.history] == \
        [{k: v for k, v in p.items() if k not in strip} for p in whole.history]


def test_sigterm_to_the_command_saves_and_exits_143(tmp_path, data):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hypermixer", "train", "--data", str(data), "--out",
               str(out), "--epochs", "100000", "--batch-size", "2", *TINY_CLI]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             text=True)
    try:
        lines = []
        while True:   # wait until the first epoch ended (a checkpoint exists)
            line = child.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "epoch 1/100000 step" in line:
                break
        child.send_signal(signal.SIGTERM)
        rest = child.stderr.read()
        child.wait(timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 143, rest
    assert "SIGTERM" in rest
    assert load_checkpoint(out, backend=BACKEND).training_state["position"]["epoch"] >= 1


def test_progress_lines_have_an_eta(tmp_path, data, monkeypatch):
    monkeypatch.setattr(train_module, "PROGRESS_INTERVAL_S", 0.0)
    log_path = tmp_path / "log"
    with open(log_path, "w") as log:   # a file, not a terminal: plain lines
        train(TINY, tmp_path / "run", stages=[Stage("facts", str(data))],
              settings=TrainSettings(epochs=1, batch_size=2), backend=BACKEND, log=log,
              plot=False)
    progress = [line for line in log_path.read_text().splitlines() if "ETA" in line]
    assert progress and progress[0].startswith("[facts] epoch 1/1 batch ")


# ------------------------------------------------------------------ defects of issue 11
@pytest.mark.parametrize("kind", ["fraction-0", "one-line"])
def test_no_validation_data_reports_no_nan(tmp_path, data, capsys, kind):
    if kind == "one-line":
        data = tmp_path / "one.txt"
        data.write_text("the sun is a star and the moon goes around the earth.\n")
        extra = []
    else:
        extra = ["--validation-fraction", "0"]
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", "--data", data, "--out", out, "--epochs", "2",
                                 "--batch-size", "4", *extra, *TINY_CLI], capsys)
    assert code == 0, err
    assert "nan" not in (err + stdout).lower()
    assert "no validation data" in err
    metrics = (out / "metrics.jsonl").read_text()
    assert "NaN" not in metrics and all(json.loads(line)["val_loss"] is None
                                        for line in metrics.splitlines())
    assert not (out / "best.npz").exists()
    state = load_checkpoint(out, backend=BACKEND).training_state
    assert "NaN" not in json.dumps(state)


def test_train_refuses_to_replace_a_finished_run(tmp_path, data, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "4",
            *TINY_CLI]
    assert run_cli(args, capsys)[0] == 0
    before = (out / "checkpoint.npz").read_bytes()
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (out / "checkpoint.npz").read_bytes() == before
    code, _, err = run_cli(args + ["--overwrite", "--seed", "5"], capsys)
    assert code == 0, err
    assert (out / "checkpoint.npz").read_bytes() != before


def test_compare_refuses_architecture(tmp_path, data, capsys):
    code, _, err = run_cli(["compare", "--architecture", "transformer", "--data", data,
                            "--out", tmp_path / "cmp", *TINY_CLI], capsys)
    assert code == 2 and "compare always trains every architecture" in err
    assert not (tmp_path / "cmp").exists()


def test_generate_says_when_nothing_was_generated(tmp_path, capsys):
    tokenizer = Tokenizer.from_texts(TEXTS)
    network = build_network(TINY, len(tokenizer), seed=0, backend=BACKEND)
    network.output.b[...] = 0
    network.output.b[..., tokenizer.end_id] = 100.0   # </s> always wins
    save_checkpoint(tmp_path / "model" / "checkpoint.npz", network, tokenizer)
    code, out, err = run_cli(["generate", "--model", tmp_path / "model", "--backend", BACKEND,
                              "the sun"], capsys)
    assert code == 1
    assert out == ""
    assert "nothing was generated" in err
