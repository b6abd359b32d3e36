"""Crafted checkpoints (issue 10, class 5): each is refused with a CheckpointError naming the
file, and the refusal itself is cheap. Every case measures the time and the memory the
loader spent (tracemalloc sees NumPy's data buffers and Python's objects alike) and asserts
under a second and under 50 MB, so a loader that reads or builds first and checks afterwards
fails here even when it ends with the right error.

Before the fix: an unwanted deflated member was decompressed (1 MB on disk, 1 GiB in memory),
a 10**5-layer configuration was built before being refused, deep or huge-integer metadata
raised RecursionError/ValueError without the file's name, NaN parameters and bad Adam or
training state loaded, a FIFO hung the loader, and checkpoints were written 0600.
"""

import errno
import json
import os
import stat
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from hypermixer import ModelConfig, Tokenizer, build_network
from hypermixer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

TIME_LIMIT_S = 1.0
MEMORY_LIMIT = 50 * 2**20


def small_network(**overrides):
    tokenizer = Tokenizer.from_texts([" ".join(f"w{i}" for i in range(20))])
    kw = dict(embedding_dim=8, hidden_dim=8, num_layers=1, max_seq_len=6)
    kw.update(overrides)
    network = build_network(ModelConfig.hypermixer(**kw), len(tokenizer), seed=1)
    network.apply_gradients([np.ones_like(a) for _, a in network.named_parameters()], 1e-3)
    return network, tokenizer


def trainer_state():
    """A real trainer's state, as train() saves it (built, not run)."""
    from hypermixer.train import Stage, Trainer, TrainSettings
    network, tokenizer = small_network()
    trainer = Trainer(network, tokenizer, [Stage("s", "data.txt")], TrainSettings(), "unused")
    trainer.history.append({"stage": "s", "epoch": 0, "step": 0, "train_loss": None,
                            "val_loss": 3.5, "tokens": 0, "seconds": 0.0})
    trainer.untrained_val_loss["s"] = 3.5
    return json.loads(json.dumps(trainer.training_state()))


@pytest.fixture
def good(tmp_path):
    network, tokenizer = small_network()
    return save_checkpoint(tmp_path / "good.npz", network, tokenizer, trainer_state())


def members(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_members(dest, arrays, raw=None, compress=None):
    """An .npz like np.savez writes, with ``raw`` members given as bytes (any header)."""
    import io
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as z:
        for key, arr in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(arr), allow_pickle=False)
            kind = zipfile.ZIP_DEFLATED if compress and key in compress else zipfile.ZIP_STORED
            z.writestr(key + ".npy", buffer.getvalue(), compress_type=kind)
        for key, data in (raw or {}).items():
            z.writestr(key + ".npy", data)
    return dest


def with_meta(good, dest, change):
    arrays = members(good)
    meta = json.loads(str(arrays["meta"]))
    result = change(meta)
    arrays["meta"] = np.array(result if isinstance(result, str) else json.dumps(result))
    return write_members(dest, arrays)


def measured_load(path, **kw):
    """(exception or None, seconds, peak bytes allocated) of one load_checkpoint call."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        load_checkpoint(path, **kw)
        error = None
    except Exception as exc:   # noqa: BLE001 - returned for the caller to judge
        error = exc
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, seconds, peak


def assert_refused_cheaply(path, match, **kw):
    error, seconds, peak = measured_load(path, **kw)
    assert isinstance(error, CheckpointError), f"expected CheckpointError, got {error!r}"
    assert str(path) in str(error), f"message does not name the file: {error}"
    assert match in str(error), str(error)
    assert seconds < TIME_LIMIT_S, f"refusing took {seconds:.2f} s"
    assert peak < MEMORY_LIMIT, f"refusing allocated {peak / 2**20:.1f} MB"
    return str(error)


# ------------------------------------------------------------------------- what is read

def test_unwanted_deflated_member_is_never_decompressed(tmp_path, good):
    """A 100 MB zip bomb beside the real members: the checkpoint loads, in little memory."""
    dest = tmp_path / "bomb.npz"
    write_members(dest, members(good))
    with zipfile.ZipFile(dest, "a", zipfile.ZIP_DEFLATED) as z:
        with z.open("junk.npy", "w") as f:
            chunk = bytes(2**20)
            for _ in range(100):
                f.write(chunk)
    assert dest.stat().st_size < 2 * 2**20
    error, seconds, peak = measured_load(dest)
    assert error is None, error
    assert seconds < TIME_LIMIT_S and peak < MEMORY_LIMIT, (seconds, peak)


def test_compressed_wanted_member_is_refused(tmp_path, good):
    arrays = members(good)
    dest = write_members(tmp_path / "deflated.npz", arrays, compress={"meta"})
    assert_refused_cheaply(dest, "compressed")


def test_member_header_that_lies_about_its_size(tmp_path, good):
    """A parameter whose .npy header claims 10**12 floats in a few bytes: refused from the
    header, nothing allocated."""
    arrays = members(good)
    name = next(k for k in arrays if k.startswith("param/"))
    del arrays[name]
    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
              .ljust(117) + "\n").encode()
    raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16
    dest = write_members(tmp_path / "liar.npz", arrays, raw={name: raw})
    assert_refused_cheaply(dest, "header says")


def test_huge_meta_string_is_refused_from_its_header(tmp_path, good):
    arrays = members(good)
    del arrays["meta"]
    header = ("{'descr': '<U100000000', 'fortran_order': False, 'shape': (), }"
              .ljust(117) + "\n").encode()
    raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    dest = write_members(tmp_path / "bigmeta.npz", arrays, raw={"meta": raw})
    assert_refused_cheaply(dest, "meta")


# ------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("key, value, match", [
    ("num_layers", 100_000, "layers"),
    ("num_layers", 10**30, "num_layers"),
    ("embedding_dim", 100_000, "parameters"),       # fits in memory, not in the file
    ("hidden_dim", 2**31, "hidden_dim"),
    ("max_seq_len", True, "max_seq_len"),
    ("embedding_dim", 8.5, "embedding_dim"),
])
def test_config_sizes_refused_before_building(tmp_path, good, key, value, match):
    def change(meta):
        meta["config"][key] = value
        return meta
    assert_refused_cheaply(with_meta(good, tmp_path / "c.npz", change), match)


@pytest.mark.parametrize("changes, match", [
    (dict(heads=3), "must divide"),
    (dict(heads=0), "heads must be >= 1"),
    (dict(heads=2**70), "must divide"),
    (dict(heads="2"), "heads must be an int"),
    (dict(heads=True), "heads must be an int"),
    (dict(tied="yes"), "tied must be True, False or None"),
    (dict(token_mixing_hidden_dim=16, heads=8), "the model expects"),   # shapes differ
    (dict(token_mixing_hidden_dim=10**9), "parameters"),
    (dict(hypernetwork_hidden_dim=4), "apply to the hypermixer architecture only"),
])
def test_hypermixing_config_refused_before_building(tmp_path, changes, match):
    """A hypermixing checkpoint whose heads, tying or widths were altered."""
    tokenizer = Tokenizer.from_texts([" ".join(f"w{i}" for i in range(20))])
    network = build_network(ModelConfig(architecture="hypermixing", embedding_dim=8,
                                        hidden_dim=8, num_layers=1, max_seq_len=6),
                            len(tokenizer), seed=1)
    good = save_checkpoint(tmp_path / "hm.npz", network, tokenizer, trainer_state())
    assert load_checkpoint(good).network.config.resolved_heads == 2

    def change(meta):
        meta["config"].update(changes)
        return meta
    assert_refused_cheaply(with_meta(good, tmp_path / "c.npz", change), match)


# ------------------------------------------------------------------------- metadata

@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "metadata"),                         # deep nesting
    ('{"format_version": 1, "x": ' + "[" * 5000 + "]" * 5000 + "}", "nested"),
    ('{"format_version": ' + "9" * 10_000 + "}", "metadata"),            # huge integer
])
def test_hostile_json(tmp_path, good, text, match):
    assert_refused_cheaply(with_meta(good, tmp_path / "j.npz", lambda meta: text), match)


@pytest.mark.parametrize("steps, match", [
    (None, "adam_steps"), ([None], "Adam step"), ([10**30], "Adam step"),
    ([-1], "Adam step"), ([1.5], "Adam step"), ([True], "Adam step"),
])
def test_bad_adam_steps(tmp_path, good, steps, match):
    def change(meta):
        meta["adam_steps"] = steps if steps is None or len(steps) != 1 else \
            steps * len(meta["adam_steps"])
        return meta
    assert_refused_cheaply(with_meta(good, tmp_path / "a.npz", change), match)


def test_non_finite_and_impossible_arrays(tmp_path, good):
    arrays = members(good)
    name = next(k[len("param/"):] for k in arrays if k.startswith("param/"))
    for prefix, value, match in (("param/", np.nan, "NaN"), ("param/", np.inf, "NaN"),
                                 ("adam_m/", np.nan, "NaN"), ("adam_v/", -1.0, "negative")):
        changed = dict(arrays)
        bad = changed[prefix + name].copy()
        bad.flat[0] = value
        changed[prefix + name] = bad
        dest = write_members(tmp_path / f"x{len(prefix)}{value}.npz", changed)
        assert_refused_cheaply(dest, match)


def test_duplicate_heavy_vocabulary_is_refused_in_linear_time(tmp_path, good):
    """60,000 words with duplicates took a minute (list.count per word)."""
    def change(meta):
        meta["vocabulary"] = meta["vocabulary"][:2] + [f"w{i % 30_000}" for i in range(60_000)]
        return meta
    assert_refused_cheaply(with_meta(good, tmp_path / "dup.npz", change), "duplicate")


# ------------------------------------------------------------------------- training state

def state_change(mutate):
    def change(meta):
        mutate(meta["training_state"])
        return meta
    return change


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.update(position={"stage": 0, "epoch": None, "step": 0}), "epoch"),
    (lambda s: s.update(position={"stage": 5, "epoch": 0, "step": 0}), "stage"),
    (lambda s: s["position"].update(step=10**30), "step"),
    (lambda s: s["position"].update(step=-4), "step"),
    (lambda s: s.pop("shuffle_rng"), "shuffle_rng"),
    (lambda s: s["shuffle_rng"].update(bit_generator="MT19937"), "generator"),
    (lambda s: s["settings"].update(batch_size=0), "settings"),
    (lambda s: s["settings"].update(lr="fast"), "settings"),
    (lambda s: s["settings"].update(unknown=1), "settings"),
    (lambda s: s.update(stages=[]), "stages"),
    (lambda s: s.update(stages=[{"name": 3}]), "stage"),
    (lambda s: s.update(history={"a": 1}), "history"),
    (lambda s: s["history"].append({"stage": "s", "step": "x"}), "history"),
    (lambda s: s["history"].append({"stage": "s", "val_loss": [1]}), "history"),
    (lambda s: s["position"].update(batch=-1), "batch"),
    (lambda s: s.update(untrained_val_loss={"s": "low"}), "untrained"),
])
def test_training_state_checked_before_building(tmp_path, good, mutate, match):
    dest = with_meta(good, tmp_path / "t.npz", state_change(mutate))
    assert_refused_cheaply(dest, match, resume=True)


def test_valid_training_state_loads_for_resume(good):
    loaded = load_checkpoint(good, resume=True)
    assert loaded.training_state == trainer_state()


# ------------------------------------------------------------------------- the file itself

def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "checkpoint.npz"
    os.mkfifo(fifo)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(measured_load(fifo)), daemon=True)
    worker.start()
    worker.join(5)
    assert outcome, "loading a FIFO hung"
    error, seconds, _ = outcome[0]
    assert isinstance(error, CheckpointError) and "FIFO" in str(error), error
    assert str(fifo) in str(error) and seconds < TIME_LIMIT_S


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_device_is_refused(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    assert_refused_cheaply(device, "not a regular file")


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_new_checkpoint_respects_the_umask(tmp_path, mask):
    network, tokenizer = small_network()
    old = os.umask(mask)
    try:
        path = save_checkpoint(tmp_path / f"m{mask:o}.npz", network, tokenizer)
        plain = tmp_path / f"plain{mask:o}"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~mask == stat.S_IMODE(plain.stat().st_mode), oct(mode)


def test_full_disk_error_names_the_file(tmp_path, monkeypatch):
    import hypermixer.checkpoint as ck
    network, tokenizer = small_network()

    def full(fileobj, arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "_write_arrays", full)
    target = tmp_path / "run" / "checkpoint.npz"
    with pytest.raises(OSError) as info:
        save_checkpoint(target, network, tokenizer)
    assert info.value.errno == errno.ENOSPC
    assert str(target) in str(info.value) and "No space left" in str(info.value)
    assert not list(target.parent.iterdir())   # no temporary file left behind
