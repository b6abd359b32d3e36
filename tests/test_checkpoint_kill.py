"""Checkpoints under abuse: killed writers, truncated, corrupted and foreign files.

* A child process is stopped at a chosen point of a save (part of the temporary file
  written, all of it written but not yet renamed, between saves) and killed there with
  SIGKILL; the checkpoint on disk must load and be the previous whole save (parameters and
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
import zipfile

import numpy as np
import pytest

from hypermixer import ModelConfig, Tokenizer, build_network
from hypermixer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The writer saves twice, then starts a third save that stops at a chosen point (the hook
# replaces the module's own writing or renaming step) and announces it; the parent kills it
# there with SIGKILL. No timing is involved: every kill lands exactly where it is meant to.
CHILD = textwrap.dedent("""
    import io, os, sys, time
    import numpy as np
    import hypermixer.checkpoint as ck
    from hypermixer import ModelConfig, Tokenizer, build_network

    path, where = sys.argv[1], sys.argv[2]
    tokenizer = Tokenizer.from_texts([" ".join("w%d" % i for i in range(300))])
    config = ModelConfig.hypermixer(embedding_dim=16, hidden_dim=16, num_layers=1,
                                    max_seq_len=8)
    network = build_network(config, len(tokenizer), seed=0)
    # one zero-gradient step, so that the Adam moments are saved too
    network.apply_gradients([np.zeros_like(a) for _, a in network.named_parameters()], 0.0)

    def pause(message):
        print(message, flush=True)
        time.sleep(600)   # the parent kills us here

    real_write, real_replace = ck._write_arrays, os.replace

    def write_part(fileobj, arrays):
        whole = io.BytesIO()
        real_write(whole, arrays)
        data = whole.getvalue()
        fileobj.write(data[:int(len(data) * float(where))])
        fileobj.flush()
        os.fsync(fileobj.fileno())
        pause("paused in write")

    def replace_later(src, dst):
        pause("paused before rename")

    for i in range(3):
        if i == 2:
            if where == "idle":
                pause("paused between saves")
            elif where == "rename":
                os.replace = replace_later
            else:
                ck._write_arrays = write_part
        network.embeddings.token[0, 0] = i
        network.output.b[0, -1] = -i
        ck.save_checkpoint(path, network, tokenizer, {"save": i})
        print("saved", i, flush=True)
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

@pytest.mark.parametrize("where", ["0", "0.01", "0.5", "0.99", "1", "rename", "idle"])
def test_sigkill_during_a_save_leaves_the_previous_whole_checkpoint(tmp_path, where):
    """Killed with 0 %, 1 %, ... of the new file written, before the rename, or between
    saves: the file on disk is always the whole second save."""
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    path = tmp_path / "model" / "checkpoint.npz"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    child = subprocess.Popen([sys.executable, str(script), str(path), where],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=tmp_path)
    try:
        lines = []
        while not (lines and lines[-1].startswith("paused")):
            line = child.stdout.readline()
            assert line, f"writer ended early: {lines} {child.stderr.read()}"
            lines.append(line.strip())
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert lines[:2] == ["saved 0", "saved 1"]
    leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    # the interrupted save really was under way (its temporary file is there), or not begun
    assert len(leftovers) == (0 if where == "idle" else 1)
    if where not in ("idle", "0"):
        assert leftovers[0].stat().st_size > 0
    ckpt = load_checkpoint(path)
    net = ckpt.network
    # parameters and training state both come from the last whole save
    assert ckpt.training_state == {"save": 1}
    assert net.embeddings.token[0, 0] == 1 and net.output.b[0, -1] == -1
    assert all(leaf._adam_moments is not None for leaf in net._leaves())

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
