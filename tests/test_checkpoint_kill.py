"""Checkpoints under abuse: killed writers, truncated, corrupted and foreign files.

* A child process saving a large checkpoint over and over is killed with SIGKILL at several
  moments; the checkpoint on disk must always load, and be one whole save (parameters and
  training state from the same save), never a mix or a torn file.
* Truncated files, files with random bytes flipped, other format versions, inconsistent
  metadata and files that are not checkpoints at all must raise CheckpointError (a
  ValueError) whose message names the file, never another exception or a crash.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

from hypermixer import ModelConfig, Tokenizer, build_network
from hypermixer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from hypermixer import ModelConfig, Tokenizer, build_network
    from hypermixer.checkpoint import save_checkpoint

    path = sys.argv[1]
    words = ["w%d" % i for i in range(int(sys.argv[2]))]
    tokenizer = Tokenizer.from_texts([" ".join(words)])
    config = ModelConfig.hypermixer(embedding_dim=64, hidden_dim=64, num_layers=1,
                                    max_seq_len=16)
    network = build_network(config, len(tokenizer), seed=0)
    # one zero-gradient step, so that the Adam moments are saved too
    network.apply_gradients([np.zeros_like(a) for _, a in network.named_parameters()], 0.0)
    i = 0
    while True:
        network.embeddings.token[0, 0] = i
        network.output.b[0, -1] = -i
        save_checkpoint(path, network, tokenizer, {"save": i})
        print(i, flush=True)
        i += 1
""")


def small_network(words=20, **overrides):
    tokenizer = Tokenizer.from_texts([" ".join(f"w{i}" for i in range(words))])
    kw = dict(embedding_dim=8, hidden_dim=8, num_layers=1, max_seq_len=6)
    kw.update(overrides)
    network = build_network(ModelConfig.hypermixer(**kw), len(tokenizer), seed=1)
    return network, tokenizer


@pytest.fixture
def good_file(tmp_path):
    network, tokenizer = small_network()
    network.apply_gradients([np.ones_like(a) for _, a in network.named_parameters()], 1e-3)
    path = save_checkpoint(tmp_path / "good.npz", network, tokenizer, {"step": 1})
    return path, network


def assert_clear_error(path, match=None):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value), f"message does not name the file: {info.value}"
    if match is not None:
        assert match in str(info.value), str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------- SIGKILL

def test_sigkill_during_repeated_saves_leaves_a_whole_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    path = tmp_path / "model" / "checkpoint.npz"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    # about 6 MB of parameters (12,000 x 64 twice), 18 MB with the Adam moments: a save
    # takes long enough for the kills to land inside one
    vocabulary = "12000"
    last_saved = -1
    interrupted = 0
    for delay in (0.0, 0.03, 0.11, 0.27):
        child = subprocess.Popen([sys.executable, str(script), str(path), vocabulary],
                                 stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        try:
            first = child.stdout.readline()   # one whole save exists from here on
            assert first.strip().isdigit(), f"writer failed to start: {first!r}"
            time.sleep(delay)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
        assert child.returncode == -signal.SIGKILL
        leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        interrupted += bool(leftovers)
        ckpt = load_checkpoint(path)
        save = ckpt.training_state["save"]
        net = ckpt.network
        # parameters and training state come from the same save
        assert net.embeddings.token[0, 0] == save and net.output.b[0, -1] == -save
        assert save >= 0
        assert all(leaf._adam_moments is not None for leaf in net._leaves())
        last_saved = save
        for p in leftovers:   # a later writer would have left its own; start clean
            p.unlink()
    assert last_saved >= 0
    # at least one kill must have landed in the middle of a write, or this tested nothing
    assert interrupted >= 1, "no kill interrupted a save (no temporary file left behind)"


def test_exception_during_save_keeps_previous(tmp_path, good_file, monkeypatch):
    path, network = good_file
    before = path.read_bytes()
    import hypermixer.checkpoint as ck

    def explode(fileobj, arrays):
        fileobj.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ck, "_write_arrays", explode)
    _, tokenizer = small_network()
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, network, tokenizer)
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    load_checkpoint(path)


# ---------------------------------------------------------------------------- damaged files

def test_truncated_files_give_a_clear_error(tmp_path, good_file):
    path, _ = good_file
    data = path.read_bytes()
    for cut in (0, 1, 4, 30, 100, len(data) // 3, len(data) // 2, len(data) - 22,
                len(data) - 1):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        assert_clear_error(bad)


def test_flipped_bytes_never_crash(tmp_path, good_file):
    """Random bytes flipped anywhere: either the file still loads (a flip in a field nobody
    checks, such as a zip timestamp) with the right values, or a CheckpointError names it."""
    path, network = good_file
    data = path.read_bytes()
    expected = {name: a.copy() for name, a in network.named_parameters()}
    rng = np.random.default_rng(2024)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(60):
        corrupt = bytearray(data)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            corrupt[pos] ^= int(rng.integers(1, 256))
        bad = tmp_path / f"flip{trial}.npz"
        bad.write_bytes(bytes(corrupt))
        try:
            loaded = load_checkpoint(bad)
        except CheckpointError as exc:
            assert str(bad) in str(exc)
            outcomes["refused"] += 1
            continue
        # the zip CRC guards the array data: a file that loads has the right values
        for name, a in loaded.network.named_parameters():
            assert np.array_equal(a, expected[name]), f"trial {trial}: {name} silently changed"
        outcomes["loaded"] += 1
    assert outcomes["refused"] > 0


def rewrite(path, dest, change_meta=None, drop=None, replace=None):
    """Copy checkpoint ``path`` to ``dest`` with its metadata or arrays changed."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    if change_meta is not None:
        meta = json.loads(str(arrays["meta"]))
        arrays["meta"] = np.array(json.dumps(change_meta(meta)))
    if drop is not None:
        del arrays[drop]
    if replace is not None:
        arrays.update(replace)
    np.savez(dest, **arrays)
    return dest


def set_key(key, value):
    def change(meta):
        meta[key] = value
        return meta
    return change


def set_config(key, value):
    def change(meta):
        meta["config"][key] = value
        return meta
    return change


@pytest.mark.parametrize("version", [0, 2, 999, None, "1"])
def test_wrong_version(tmp_path, good_file, version):
    path, _ = good_file
    bad = rewrite(path, tmp_path / "v.npz", change_meta=set_key("format_version", version))
    assert_clear_error(bad, match="version")


@pytest.mark.parametrize("change", [
    lambda m: [],                                  # metadata not an object
    lambda m: 5,
    set_key("dtype", "float16"),
    set_key("dtype", "int8"),
    set_key("dtype", "no-such-type"),
    set_key("vocabulary", "abc"),
    set_key("vocabulary", []),
    set_key("adam_steps", [1]),
    set_key("adam_steps", "x"),
    set_config("embedding_dim", -3),
    set_config("architecture", "rnn"),
    set_config("unknown_key", 1),
    set_config("max_seq_len", 10**9),              # would need petabytes: refused, not built
    set_config("embedding_dim", 10**7),
], ids=["list", "number", "float16", "int8", "bad-dtype", "vocab-str", "vocab-empty",
        "adam-count", "adam-type", "negative-dim", "architecture", "unknown-key",
        "huge-seq-len", "huge-embedding"])
def test_inconsistent_metadata(tmp_path, good_file, change):
    path, _ = good_file
    bad = rewrite(path, tmp_path / "meta.npz", change_meta=change)
    assert_clear_error(bad)


def test_missing_or_misshapen_arrays(tmp_path, good_file):
    path, network = good_file
    name = network.named_parameters()[0][0]
    assert_clear_error(rewrite(path, tmp_path / "a.npz", drop=f"param/{name}"), match=name)
    assert_clear_error(rewrite(path, tmp_path / "b.npz", drop=f"adam_m/{name}"), match=name)
    assert_clear_error(rewrite(path, tmp_path / "c.npz",
                               replace={f"param/{name}": np.zeros((2, 2), np.float32)}))
    assert_clear_error(rewrite(path, tmp_path / "d.npz",
                               replace={f"param/{name}": np.zeros(
                                   network.named_parameters()[0][1].shape, np.float64)}))
    assert_clear_error(rewrite(path, tmp_path / "e.npz", replace={"format": np.array("zzz")}))
    assert_clear_error(rewrite(path, tmp_path / "f.npz", replace={"meta": np.array("{not json")}))
    assert_clear_error(rewrite(path, tmp_path / "g.npz", drop="meta"))


def test_files_that_are_not_checkpoints(tmp_path):
    cases = {
        "empty.npz": b"",
        "text.npz": b"hello, I am a text file\n" * 10,
        "binary.npz": bytes(range(256)) * 4,
        "zipheader.npz": b"PK\x03\x04" + b"\x00" * 60,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert_clear_error(tmp_path / name)
    np.save(tmp_path / "array.npy", np.arange(5))
    assert_clear_error(tmp_path / "array.npy")
    np.savez(tmp_path / "other.npz", x=np.arange(3))
    assert_clear_error(tmp_path / "other.npz", match="not a hypermixer checkpoint")
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        z.writestr("readme.txt", "not numpy")
    assert_clear_error(tmp_path / "plain.zip")
    # an object array would need pickle, which loading refuses
    np.savez(tmp_path / "pickled.npz", format=np.array("hypermixer-checkpoint"),
             meta=np.array([{"a": 1}], dtype=object))
    assert_clear_error(tmp_path / "pickled.npz")
    assert_clear_error(tmp_path / "does-not-exist.npz", match="no such checkpoint")
    empty_dir = tmp_path / "model-dir"
    empty_dir.mkdir()
    assert_clear_error(empty_dir / "checkpoint.npz")
    with pytest.raises(CheckpointError, match="model-dir"):
        load_checkpoint(empty_dir)
