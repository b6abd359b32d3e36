"""Data-parallel training over MPI (hypermixer.distributed), run for real: 2 ranks under the
mpiexec of the MPI that mpi4py uses (the ``mpich`` wheel of the test extra), one thread each.

The 2-rank runs are compared with one process training on the same global batches: batches of
3 sequences (shards of 1 and 2), ragged lengths, and a last batch of 1 sequence, so one rank
has an empty shard. "Equal within r relative" means max |a - b| <= r * max |b| with the
maxima over every entry of every parameter (a per-array scale would be unfair to biases, which
start at 0 and have moved only a few lr steps): the gradient sums are added in another order, so the last bits
differ; float64 must agree to 1e-12 after 10 Adam steps (lr 1e-2), float32 to 1e-5 after 3
(lr 1e-3). Rounding differences grow step by step (Adam divides by sqrt(v), so entries with
small gradients amplify them): measured, 10 float32 steps at lr 1e-2 reach a third of the
tolerance, too close for a test that kernel changes elsewhere (other rounding) must not
break; the 3 steps stay below 1/50 of it, float64 below 1/100.

Left out of the parameter comparison: the last S outputs of every hypernetwork (columns of
w2 and b2), which generate c2. SPEC section 2: c2_t[t] is added to every feature of token t,
and norm2 right after subtracts each token's mean over features, so the loss does not depend
on them at all; their gradient is rounding noise, which Adam, dividing by sqrt(v), turns into
steps of up to lr, different for any other summation order. The loss of the final models is
compared instead, which covers them.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hypermixer.checkpoint import load_checkpoint
from hypermixer.distributed import shard_bounds
from hypermixer.model import ModelConfig, backend_available
from hypermixer.train import Stage, TrainSettings, pad_batch, train

BACKEND = "compiled" if backend_available("compiled") else "reference"
WORKER = Path(__file__).with_name("mpi_worker.py")
TIMEOUT_S = 120
CONFIGS = {"hypermixer": ModelConfig.hypermixer(embedding_dim=8, hidden_dim=12, num_layers=2,
                                                 max_seq_len=24),
           "transformer": ModelConfig.transformer(embedding_dim=8, hidden_dim=12,
                                                   num_layers=2, max_seq_len=24),
           "hypermixing": ModelConfig(architecture="hypermixing", embedding_dim=8,
                                      hidden_dim=12, num_layers=2, max_seq_len=24)}
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
# 14 examples of different lengths: 13 to train on in batches of 3 (the last batch has one
# sequence), 1 held out; test_two_ranks... checks these shards really occurred.
TEXTS = ["the sun is a star.", "the moon goes around the earth at night.", "rain falls.",
         "plants need water and light to grow.", "the sea is salty.", "birds fly.",
         "fish swim in the cold water of the river.", "snow is cold.", "a cat sleeps.",
         "the wind moves the clouds over the hills.", "trees grow slowly.", "we read books.",
         "the fire is hot and bright.", "ice melts in the sun."]
SETTINGS = {"float64": dict(batch_size=3, lr=0.01, clip_norm=0.5, validation_fraction=0.1,
                            seed=3),
            "float32": dict(batch_size=3, lr=1e-3, clip_norm=0.5, validation_fraction=0.1,
                            seed=3)}
EPOCHS = {"float64": 2, "float32": 1}
SHORT = 8   # float32 runs on the first 8 examples: 7 to train on, batches of 3, 3 and 1


def mpiexec():
    """The launcher of the MPI mpi4py is linked to: pip installs it beside python."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.fail("mpi4py is not installed: pip install '.[test]' installs it with the "
                    "mpich wheel, and these tests must run, not be skipped")
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("no mpiexec beside python or on PATH: pip install '.[test]' installs the "
                    "mpich wheel, which provides it")
    return found


def run_ranks(jobs, tmp_path, ranks=2, timeout=TIMEOUT_S):
    """Run the jobs under mpiexec; also returns the wall-clock time at which it ended."""
    spec = tmp_path / f"jobs{time.monotonic_ns()}.json"
    spec.write_text(json.dumps(jobs))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, str(WORKER),
                           str(spec)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.time()


def seconds_to_stop(ended, stamp):
    """From the failure (the worker writes the time just before it fails) to the job's end;
    measured from there, not from the start, so a loaded machine's slow start does not count."""
    return ended - float(Path(stamp).read_text())


def stage(tmp_path, count=len(TEXTS)):
    path = tmp_path / f"data{count}.json"
    if not path.exists():
        path.write_text(json.dumps(TEXTS[:count]))
    return Stage("data", str(path))


def job(out, architecture, dtype, epochs, resume=False, stages=None):
    spec = {"out": str(out), "backend": BACKEND, "dtype": dtype, "resume": resume,
            "settings": dict(SETTINGS[dtype], epochs=epochs)}
    if not resume:
        spec["config"] = CONFIGS[architecture].to_dict()
        spec["stages"] = [{"name": s.name, "data_path": s.data_path} for s in stages]
    return spec


def one_process(out, architecture, dtype, epochs, stages, resume=False):
    with open(os.devnull, "w") as log:
        return train(CONFIGS[architecture], out, stages=stages,
                     settings=TrainSettings(**dict(SETTINGS[dtype], epochs=epochs)),
                     backend=BACKEND,
                     dtype=np.dtype(dtype), resume=resume, log=log, plot=False)


def live(name, array, network):
    """The array without the entries that generate c2 (see the module docstring)."""
    if name.split(".")[-2:] in (["hypernetwork", "w2"], ["hypernetwork", "b2"]):
        return array[:, :-network.config.max_seq_len]
    return array


def assert_close(params, reference, dtype):
    tolerance = TOLERANCE[dtype]
    assert list(params) == [name for name, _ in reference.named_parameters()]
    scale = max(np.abs(arr).max() for _, arr in reference.named_parameters())
    for name, expected in reference.named_parameters():
        got = live(name, params[name], reference)
        expected = live(name, expected, reference)
        assert got.dtype == expected.dtype
        error = np.abs(got - expected).max()
        assert error <= tolerance * scale, f"{name}: max error {error:.3g}, scale {scale:.3g}"


def rank_params(out, rank):
    with np.load(Path(out) / f"rank{rank}.npz") as data:
        return {name: data[name] for name in data.files}


def rank_report(out, rank):
    return json.loads((Path(out) / f"rank{rank}.json").read_text())


def drop_seconds(history):
    return [{key: value for key, value in point.items() if key != "seconds"}
            for point in history]


def saved_tokenizer(out):
    return load_checkpoint(out, backend=BACKEND).tokenizer


def rank_history(out, rank):
    return rank_report(out, rank)["history"]


def test_shards_cover_the_batch_in_order_and_differ_by_at_most_one():
    for count in range(0, 12):
        for size in range(1, 6):
            bounds = shard_bounds(count, size)
            assert bounds[0] == 0 and bounds[-1] == count
            sizes = np.diff(bounds)
            assert sizes.min() >= 0 and sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_ranks_train_to_the_parameters_of_one_process(tmp_path, dtype):
    stages = [stage(tmp_path, len(TEXTS) if dtype == "float64" else SHORT)]
    epochs = EPOCHS[dtype]
    jobs = [job(tmp_path / f"mpi-{arch}", arch, dtype, epochs, stages=stages)
            for arch in CONFIGS]
    proc, _ = run_ranks(jobs, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for arch in CONFIGS:
        out = tmp_path / f"mpi-{arch}"
        reference = one_process(tmp_path / f"one-{arch}", arch, dtype, epochs, stages)
        # the premise: shards of different sizes, padded to different lengths, and steps
        # where rank 0 had no sequence at all (the last batch of each epoch)
        steps = reference.history[-1]["step"]
        shards = [rank_report(out, r)["shards"] for r in (0, 1)]
        assert len(shards[0]) < steps == len(shards[1])
        assert {b for b, _ in shards[0]} != {b for b, _ in shards[1]}
        assert len({width for _, width in shards[0] + shards[1]}) > 1
        rank0, rank1 = rank_params(out, 0), rank_params(out, 1)
        for name in rank0:   # every rank applied the same steps: identical, not just close
            np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
        assert_close(rank0, reference.network, dtype)
        # the checkpoint (written by rank 0 alone) holds the same parameters
        saved = load_checkpoint(out, backend=BACKEND).network
        assert_close(dict(saved.named_parameters()), reference.network, dtype)
        # the whole function, c2 generators included: the same loss on every example
        ids, targets, lengths = pad_batch(
            [(ids[:-1], ids[1:]) for ids in map(saved_tokenizer(out).encode, TEXTS)])
        assert saved.loss(ids, targets, lengths) == pytest.approx(
            reference.network.loss(ids, targets, lengths), rel=TOLERANCE[dtype])
        # validation losses are reduced in batch order: the very numbers of one process
        history, expected = rank_history(out, 0), reference.history
        assert drop_seconds(rank_history(out, 1)) == drop_seconds(history)
        # before any step the models are equal, and so, bit for bit, is the validation loss
        assert history[0]["val_loss"] == expected[0]["val_loss"]
        assert [p["val_loss"] for p in history] == pytest.approx([p["val_loss"] for p in expected], rel=TOLERANCE[dtype])
        assert [p["step"] for p in history] == [p["step"] for p in expected]
        for got, want in zip(history, expected):
            if want["train_loss"] is not None:
                assert got["train_loss"] == pytest.approx(want["train_loss"],
                                                          rel=TOLERANCE[dtype])
                assert got["tokens"] == want["tokens"]


def test_a_two_rank_checkpoint_resumes_in_one_process_and_in_two(tmp_path):
    dtype, arch = "float64", "hypermixer"
    stages = [stage(tmp_path)]
    uninterrupted = one_process(tmp_path / "uninterrupted", arch, dtype, 3, stages)
    first = tmp_path / "first"
    proc, _ = run_ranks([job(first, arch, dtype, 1, stages=stages)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    in_two, in_one = tmp_path / "in-two", tmp_path / "in-one"
    for target in (in_two, in_one):
        shutil.copytree(first, target)
    proc, _ = run_ranks([job(in_two, arch, dtype, 3, resume=True)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_close(rank_params(in_two, 0), uninterrupted.network, dtype)
    with open(os.devnull, "w") as log:
        resumed = train(None, in_one, settings=TrainSettings(epochs=3), backend=BACKEND,
                        resume=True, log=log, plot=False)
    assert_close(dict(resumed.network.named_parameters()), uninterrupted.network, dtype)
    for history in (rank_history(in_two, 0), resumed.history):
        assert [p["val_loss"] for p in history] == pytest.approx(
            [p["val_loss"] for p in uninterrupted.history], rel=1e-12)


def test_a_rank_that_raises_ends_the_job_within_seconds_naming_rank_and_cause(tmp_path):
    stages = [stage(tmp_path)]
    out = tmp_path / "failing"
    # 5 steps per epoch; rank 1 fails on its 7th gradient, in epoch 2
    spec = job(out, "hypermixer", "float32", 3, stages=stages)
    stamp = tmp_path / "failed-at"
    spec["fail"] = {"rank": 1, "after_calls": 6, "message": "injected failure on purpose",
                    "stamp": str(stamp)}
    proc, ended = run_ranks([spec], tmp_path)
    assert proc.returncode != 0
    assert "rank 1 of 2 failed (RuntimeError: injected failure on purpose)" in proc.stderr
    seconds = seconds_to_stop(ended, stamp)
    assert seconds < 10, f"the job took {seconds:.1f} s to stop after the failure"
    # the checkpoint of epoch 1 is intact and says so
    state = load_checkpoint(out, backend=BACKEND).training_state
    assert state["position"]["epoch"] == 1


def test_a_rank_killed_by_a_signal_ends_the_job(tmp_path):
    stages = [stage(tmp_path)]
    out = tmp_path / "killed"
    spec = job(out, "hypermixer", "float32", 3, stages=stages)
    stamp = tmp_path / "killed-at"
    spec["fail"] = {"rank": 1, "after_calls": 6, "stamp": str(stamp)}   # no message: SIGKILL
    proc, ended = run_ranks([spec], tmp_path)
    assert proc.returncode != 0
    # no Python runs to say which rank: MPICH's mpiexec reports the process and the signal
    output = proc.stdout + proc.stderr
    assert "BAD TERMINATION" in output and "Killed (signal 9)" in output, output
    seconds = seconds_to_stop(ended, stamp)
    assert seconds < 10, f"the job took {seconds:.1f} s to stop after the kill"
    assert load_checkpoint(out, backend=BACKEND).training_state["position"]["epoch"] == 1


def test_a_launcher_without_mpi4py_is_refused_not_run_as_independent_trainings(monkeypatch):
    from hypermixer import distributed
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
    monkeypatch.delenv("PMI_SIZE", raising=False)
    assert distributed.launched_size() == 1
    assert distributed.world_from_environment() is None
    monkeypatch.setenv("PMI_SIZE", "3")
    assert distributed.launched_size() == 3
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import mpi4py now fails
    with pytest.raises(RuntimeError, match=r"one of 3 ranks, but mpi4py is not installed"):
        distributed.world_from_environment()


def test_the_command_line_under_mpiexec_prints_once_and_saves(tmp_path):
    hypermixer_cmd = Path(sys.executable).with_name("hypermixer")
    out = tmp_path / "cli"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [mpiexec(), "-n", "2", str(hypermixer_cmd), "train", "--data",
         stage(tmp_path).data_path, "--epochs", "1", "--embedding-dim", "8",
         "--hidden-dim", "12", "--num-layers", "1", "--max-seq-len", "24", "--batch-size",
         "3", "--out", str(out)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("now; model saved to") == 1, proc.stderr
    assert proc.stderr.count("model: hypermixer") == 1, proc.stderr
    assert load_checkpoint(out, backend=BACKEND).training_state["position"]["epoch"] == 1
    # compare trains both architectures data-parallel and prints its table once
    proc = subprocess.run(
        [mpiexec(), "-n", "2", str(hypermixer_cmd), "compare", "--data",
         stage(tmp_path).data_path, "--epochs", "1", "--embedding-dim", "8",
         "--hidden-dim", "12", "--num-layers", "1", "--max-seq-len", "24", "--batch-size",
         "3", "--out", str(tmp_path / "compare")], env=env, capture_output=True, text=True,
        timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("| hypermixer ") == 1 and proc.stdout.count("| transformer") == 1
    assert proc.stderr.count("== training the transformer ==") == 1, proc.stderr
