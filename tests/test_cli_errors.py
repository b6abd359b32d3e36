"""The command line and generation API facing hostile or careless input (issue 10, classes 6
and 10; issue 11's broken pipe and ``--out`` naming a file).

Each case failed before its fix: a traceback for MemoryError, "Broken pipe" with status 2,
a transformer silently dropping --share-hypernetwork, two runs into one folder both
"succeeding", NaN-and-warnings at temperature 1e-320, a ufunc error for a string
temperature, NumPy integers refused, and a 0-d array reported as "shape (1,)".
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from hypermixer import ModelConfig, Tokenizer, build_network
from hypermixer.cli import main
from hypermixer.generate import generate_ids
from hypermixer.runlock import LOCK_NAME, RunFolderBusy, run_folder_lock


def run_cli(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, err, *fragments):
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("argv, fragment", [
    (["train", "--embedding-dim", "1000000"], "memory"),
    (["train", "--num-layers", "100000000"], "memory"),
    (["train", "--num-layers", str(10**30)], "memory"),
    (["info", "--vocab-size", "10000000000"], "memory"),
    (["train", "--hidden-dim", str(2**40)], "memory"),
])
def test_sizes_beyond_the_machine_give_one_line(capsys, tmp_path, argv, fragment):
    out = tmp_path / "run"
    if argv[0] == "train":
        argv = argv + ["--out", str(out), "--epochs", "1"]
    status, _, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, fragment)
    assert not out.exists(), "a refused run left its folder behind"


@pytest.mark.parametrize("command", [["info"], ["check", "--quick"]])
def test_closed_stdout_is_not_an_error(command):
    """``hypermixer info | head -1``: the reader goes away; no message, SIGPIPE's status."""
    child = subprocess.Popen([sys.executable, "-m", "hypermixer", *command],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()   # before the child has written anything
    err = child.stderr.read().decode()
    status = child.wait(timeout=120)
    assert err == "", err
    assert status == 141


# ------------------------------------------------------------------------- options

def test_hypermixer_only_options_refused_for_the_transformer(capsys, tmp_path):
    for flags in (["--share-hypernetwork"], ["--hypernetwork-hidden-dim", "4"],
                  ["--non-causal"]):
        status, _, err = run_cli(capsys, "train", "--architecture", "transformer", *flags,
                                 "--out", str(tmp_path / "t"))
        assert_one_line_error(status, err, flags[0], "hypermixer")
    assert not (tmp_path / "t").exists()


def test_hypernetwork_options_refused_for_hypermixing(capsys, tmp_path):
    """The hypermixing LM has no hypernetwork of the seeds' kind: --share-hypernetwork and
    --hypernetwork-hidden-dim were dropped without a word (exit 0, config.json without
    them); now refused, nothing written."""
    for flags in (["--share-hypernetwork"], ["--hypernetwork-hidden-dim", "4"]):
        status, _, err = run_cli(capsys, "train", "--architecture", "hypermixing", *flags,
                                 "--out", str(tmp_path / "t"))
        assert_one_line_error(status, err, flags[0], "hypermixer")
    assert not (tmp_path / "t").exists()


def test_hypermixing_only_options_refused_for_the_others(capsys, tmp_path):
    for architecture in ("transformer", "hypermixer"):
        for flags in (["--heads", "4"], ["--untied"]):
            status, _, err = run_cli(capsys, "train", "--architecture", architecture, *flags,
                                     "--out", str(tmp_path / "t"))
            assert_one_line_error(status, err, flags[0], "hypermixing")
    assert not (tmp_path / "t").exists()


def test_out_naming_a_file_is_refused_before_building(capsys, tmp_path, monkeypatch):
    import hypermixer.train as train_module

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(train_module, "build_network", no_build)
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    for out in (existing, existing / "sub"):
        status, _, err = run_cli(capsys, "train", "--out", str(out))
        assert_one_line_error(status, err, str(existing), "not a directory")
    assert existing.read_text() == "keep me"


# ------------------------------------------------------------------------- the run lock

def test_second_run_into_a_busy_folder_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    with run_folder_lock(out):
        pid = (out / LOCK_NAME).read_text().strip()
        status, _, err = run_cli(capsys, "train", "--out", str(out), "--epochs", "1")
        assert_one_line_error(status, err, str(out), "another training run", pid)
        with pytest.raises(RunFolderBusy):
            with run_folder_lock(out):
                pass
    with run_folder_lock(out):   # released: the next run may start
        pass


def test_lock_dies_with_its_process(tmp_path):
    """A killed run leaves no stale lock (the kernel drops a flock with its holder)."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hypermixer.runlock import "
         "run_folder_lock as lock\nwith lock(sys.argv[1]):\n print('held', flush=True)\n "
         "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=str(holder.pid)):
            with run_folder_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_folder_lock(out):
        pass


# ------------------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def model():
    tokenizer = Tokenizer.from_texts(["a b c d e f g"])
    config = ModelConfig.hypermixer(embedding_dim=8, hidden_dim=8, num_layers=1, max_seq_len=8)
    return build_network(config, len(tokenizer), seed=3), tokenizer


def test_tiny_temperature_samples_without_nan_or_warnings(model):
    network, tokenizer = model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny = generate_ids(network, [2, 3], tokenizer.end_id, max_new_tokens=5,
                            temperature=1e-320, seed=0)
    greedy = generate_ids(network, [2, 3], tokenizer.end_id, max_new_tokens=5)
    assert tiny == greedy   # a vanishing temperature is greedy decoding


@pytest.mark.parametrize("temperature, error", [
    ("0.5", TypeError), (None, TypeError), (True, TypeError), ([1.0], TypeError),
    (float("nan"), ValueError), (float("inf"), ValueError), (-1.0, ValueError)])
def test_bad_temperatures_are_named(model, temperature, error):
    network, tokenizer = model
    with pytest.raises(error, match="temperature"):
        generate_ids(network, [2], tokenizer.end_id, temperature=temperature)


def test_numpy_integers_are_accepted(model):
    network, tokenizer = model
    plain = generate_ids(network, [2], tokenizer.end_id, max_new_tokens=4, temperature=1.0,
                         top_k=2, seed=1)
    numpy = generate_ids(network, [2], tokenizer.end_id, max_new_tokens=np.int64(4),
                         temperature=np.float32(1.0), top_k=np.uint8(2), seed=1)
    assert plain == numpy
    # top_k 0 is not refused: it means "no top-k cut" (issue 11, test_generation_options)
    for name, value in (("max_new_tokens", 2.0), ("max_new_tokens", np.bool_(True)),
                        ("top_k", -1), ("max_new_tokens", -1), ("seed", -5),
                        ("seed", "x")):
        with pytest.raises((TypeError, ValueError), match=name):
            generate_ids(network, [2], tokenizer.end_id, **{name: value})


def test_zero_d_input_reported_as_zero_d():
    from hypermixer.layers import LayerNorm
    with pytest.raises(ValueError, match=r"0 dimensions with shape \(\)"):
        LayerNorm(4).forward(np.array(1.0))


def test_compare_checks_every_configuration_before_training(capsys, tmp_path):
    """--heads 3 does not divide the hypermixing LM's width: refused at once, before the
    hypermixer and the transformer are trained (it used to fail after training both)."""
    status, out, err = run_cli(capsys, "compare", "--heads", "3", "--out",
                               str(tmp_path / "c"))
    assert status == 2 and "heads" in err
    assert "training the" not in out + err
