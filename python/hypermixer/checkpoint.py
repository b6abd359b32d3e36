"""Saving and loading a model with everything needed to use it or to resume training.

A checkpoint is one ``.npz`` file (a zip of ``.npy`` arrays, read with ``allow_pickle=False``):

* ``format``: the string ``"hypermixer-checkpoint"``, so other files are recognised as such;
* ``meta``: one JSON document: format version, model configuration, vocabulary, dtype, the
  Adam step count of every leaf layer and the training state (stage, epoch, step, shuffling
  RNG, settings, loss history);
* ``param/<name>``, ``adam_m/<name>``, ``adam_v/<name>``: parameters and Adam moments, under
  the names of ``named_parameters()``.

Writing is atomic: the file is written under a temporary name in the same directory, flushed
to disk, then renamed over the old one, so a crash or error midway leaves the previous
checkpoint intact.
"""

import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from ._layer import INDEX_LIMIT
from .model import (ModelConfig, build_network, expected_parameter_count,
                    legacy_hypermixing_config)
from .tokenizer import tokenizer_from_meta

FORMAT_NAME = "hypermixer-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_FILENAME = "checkpoint.npz"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message says why."""


def checkpoint_path(location):
    """A checkpoint file given either the file itself or the model directory holding it."""
    location = Path(location)
    return location / CHECKPOINT_FILENAME if location.is_dir() else location


def _write_arrays(fileobj, arrays):
    np.savez(fileobj, **arrays)


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return   # not possible on every platform; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask():
    """The process umask, read without changing it where Linux allows (os.umask would set it,
    briefly, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(path, network, tokenizer, training_state=None):
    """Write ``network`` (parameters and Adam state), its tokenizer and the training state."""
    path = Path(path)
    # a pair that cannot be loaded back must not replace a checkpoint that can
    for what, value, needed in (("network", network, "config"),
                                ("tokenizer", tokenizer, "vocabulary")):
        if not hasattr(value, needed):
            raise TypeError(f"cannot write the checkpoint {path}: {what} must be a "
                            f"{'LanguageModel' if what == 'network' else 'tokenizer'}, got "
                            f"{type(value).__name__}")
    if len(tokenizer) != network.vocab_size:
        raise ValueError(f"cannot write the checkpoint {path}: the tokenizer has "
                         f"{len(tokenizer):,} tokens, the network's vocabulary "
                         f"{network.vocab_size:,}")
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = network._leaves()
    meta = {
        "format_version": FORMAT_VERSION,
        "config": network.config.to_dict(),
        "vocabulary": tokenizer.vocabulary,
        # a BPE tokenizer is saved whole (its merges); the word tokenizer is its vocabulary
        "tokenizer": tokenizer.to_json() if hasattr(tokenizer, "_backend") else None,
        "dtype": network.dtype.name,
        "adam_steps": [leaf._adam_step for leaf in leaves],
        "training_state": training_state,
    }
    arrays = {"format": np.array(FORMAT_NAME), "meta": np.array(json.dumps(meta))}
    names = {id(arr): name for name, arr in network.named_parameters()}
    for name, arr in network.named_parameters():
        arrays[f"param/{name}"] = arr
    for leaf in leaves:
        if leaf._adam_moments is None:
            continue
        for (_, param), (m, v) in zip(leaf._own_parameters, leaf._adam_moments):
            arrays[f"adam_m/{names[id(param)]}"] = m
            arrays[f"adam_v/{names[id(param)]}"] = v

    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; a checkpoint gets the mode of any new file instead
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            _write_arrays(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_name, path)
    except BaseException as exc:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and str(path) not in str(exc):
            # ENOSPC and friends say "No space left on device" without saying where
            message = f"cannot write the checkpoint {path}: {exc.strerror or exc}"
            raise (OSError(exc.errno, message) if exc.errno else OSError(message)) from exc
        raise
    _fsync_directory(path.parent)
    return path


class Checkpoint:
    """What :func:`load_checkpoint` returns: the network, its tokenizer, the training state."""

    def __init__(self, network, tokenizer, training_state, path):
        self.network = network
        self.tokenizer = tokenizer
        self.training_state = training_state
        self.path = path


# ------------------------------------------------------------------------------- reading
# A checkpoint can come from anyone. Everything below checks before it spends: the file type
# before opening it (a FIFO would block), each member's zip and .npy headers before reading
# it (only the members the model needs are read, none is decompressed: hypermixer writes
# them stored, so their sizes are bounded by the file's), and every metadata field before
# the network is built.
MAX_META_CHARS = 32 * 2**20       # the JSON metadata; a 60,000-word vocabulary is ~1M chars
MAX_NPY_HEADER = 10_000           # numpy's own default limit for .npy headers
MAX_COUNT = 2**53                 # steps, epochs, tokens: exact in a float64, never near it
_STORED = zipfile.ZIP_STORED


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Archive:
    """The zip directory of a checkpoint and reads of single members, each checked first."""

    def __init__(self, path):
        self.path = path
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such checkpoint (expected a model directory or "
                                  f"a {CHECKPOINT_FILENAME} file)") from None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot open the checkpoint: {exc.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise CheckpointError(f"{path}: not a regular file (a checkpoint is a .npz file; "
                                  f"this is a {_file_kind(info.st_mode)})")
        os.set_blocking(fd, True)
        self.file = os.fdopen(fd, "rb")
        try:
            self.zip = zipfile.ZipFile(self.file)
        except Exception as exc:   # noqa: BLE001 - damaged bytes surface as many types
            self.file.close()
            head = b""
            with open(path, "rb") as f:
                head = f.read(6)
            if head.startswith(b"\x93NUMPY"):
                raise CheckpointError(f"{path}: not a hypermixer checkpoint (a bare .npy "
                                      "array)") from None
            raise self.corrupt(exc) from None
        self.members = {}
        for member in self.zip.infolist():
            if member.filename.endswith(".npy"):
                self.members[member.filename[:-4]] = member

    def corrupt(self, exc):
        return CheckpointError(f"{self.path}: not a hypermixer checkpoint, or the file is "
                               f"truncated or corrupt ({type(exc).__name__}: {exc})")

    def close(self):
        self.zip.close()
        self.file.close()

    def _open(self, key):
        """The member's stream positioned after its .npy header, and (shape, order, dtype)."""
        member = self.members.get(key)
        if member is None:
            raise CheckpointError(f"{self.path}: the checkpoint has no array {key!r}")
        if member.compress_type != _STORED:
            raise CheckpointError(f"{self.path}: {key} is compressed; hypermixer writes "
                                  "checkpoint arrays uncompressed and reads no others")
        try:
            stream = self.zip.open(member)
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                header = npy_format.read_array_header_1_0(stream, max_header_size=MAX_NPY_HEADER)
            elif version in ((2, 0), (3, 0)):
                header = npy_format.read_array_header_2_0(stream, max_header_size=MAX_NPY_HEADER)
            else:
                raise ValueError(f"unknown .npy version {version}")
        except CheckpointError:
            raise
        except Exception as exc:   # noqa: BLE001
            raise self.corrupt(exc) from None
        shape, fortran, dtype = header
        if dtype.hasobject:
            raise CheckpointError(f"{self.path}: {key} holds Python objects (it would need "
                                  "pickle, which checkpoints never use)")
        data_bytes = member.file_size - stream.tell()
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != data_bytes:
            raise CheckpointError(f"{self.path}: {key}: its header says {dtype}{shape} "
                                  f"({count * dtype.itemsize} bytes), the member holds "
                                  f"{data_bytes}")
        return stream, header

    def _read_into(self, key, stream, target):
        try:
            view = memoryview(target).cast("B")
            if stream.readinto(view) != target.nbytes or stream.read(1):
                raise EOFError("the member ends early")
        except Exception as exc:   # noqa: BLE001 - BadZipFile (CRC), EOFError, OSError
            raise self.corrupt(exc) from None
        finally:
            stream.close()

    def read_string(self, key, max_chars):
        """A 0-d unicode array (``format`` and ``meta``) as a str, at most ``max_chars``."""
        stream, (shape, _, dtype) = self._open(key)
        if shape != () or dtype.kind != "U":
            stream.close()
            raise CheckpointError(f"{self.path}: {key} should be a string, it is "
                                  f"{dtype}{shape}")
        if dtype.itemsize // 4 > max_chars:
            stream.close()
            raise CheckpointError(f"{self.path}: {key} has {dtype.itemsize // 4:,} "
                                  f"characters, more than the {max_chars:,} allowed")
        buffer = np.empty((), dtype)
        self._read_into(key, stream, buffer)
        return str(buffer)

    def declared_bytes(self, prefix):
        return sum(m.file_size for k, m in self.members.items() if k.startswith(prefix))

    def count(self, prefix):
        return sum(1 for k in self.members if k.startswith(prefix))

    def read_into(self, key, target):
        """Read an array member straight into ``target`` (same shape and dtype, finite)."""
        stream, (shape, fortran, dtype) = self._open(key)
        if shape != target.shape or dtype != target.dtype:
            stream.close()
            raise CheckpointError(f"{self.path}: {key} is {dtype}{shape}, the model expects "
                                  f"{target.dtype}{target.shape}")
        if fortran and target.ndim > 1:
            staging = np.empty(target.shape[::-1], target.dtype)
            self._read_into(key, stream, staging)
            target[...] = staging.T
        else:
            self._read_into(key, stream, target)
        if not np.isfinite(target).all():
            raise CheckpointError(f"{self.path}: {key} holds NaN or infinite values; a model "
                                  "with them cannot be used or trained")


def _file_kind(mode):
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def _parse_meta(path, text):
    try:
        meta = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path}: the checkpoint's metadata is nested too "
                              "deeply") from None
    except ValueError as exc:   # JSONDecodeError, and integers beyond Python's digit limit
        raise CheckpointError(f"{path}: the checkpoint's metadata is corrupt: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the checkpoint's metadata is not a JSON object")
    return meta


def _check_int(path, what, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(f"{path}: {what} must be an integer in [{low}, {high}], got "
                              f"{_short(value)}")
    return value


def _check_meta(path, meta, archive):
    """Validated (config, tokenizer, dtype, adam_steps); nothing is built yet."""
    version = meta.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {_short(version)}; this "
                              f"hypermixer reads version {FORMAT_VERSION}")
    missing = [k for k in ("config", "vocabulary", "dtype", "adam_steps") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint's metadata is invalid: no "
                              f"{', '.join(missing)}")
    raw = meta["config"]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: the checkpoint's metadata is invalid: the model "
                              "configuration is not a JSON object")
    for name in ("embedding_dim", "hidden_dim", "num_layers", "max_seq_len",
                 "hypernetwork_hidden_dim", "token_mixing_hidden_dim"):
        if raw.get(name) is not None:
            _check_int(path, f"config {name}", raw[name], 1, INDEX_LIMIT)
    if raw.get("num_layers", 0) > max(archive.count("param/"), 1):
        # every block has parameters of its own: a layer count beyond the arrays present
        # is refused here, before building (it used to build 10**5 layers, then fail)
        raise CheckpointError(f"{path}: the configuration has {raw['num_layers']:,} layers, "
                              f"the file holds only {archive.count('param/'):,} arrays")
    vocabulary = meta["vocabulary"]
    if not isinstance(vocabulary, list) or len(vocabulary) > INDEX_LIMIT:
        raise CheckpointError(f"{path}: the checkpoint's metadata is invalid: the vocabulary "
                              f"must be a JSON list of strings")
    if meta["dtype"] not in ("float32", "float64"):
        raise CheckpointError(f"{path}: the checkpoint's metadata is invalid: dtype must be "
                              f"float32 or float64, got {_short(meta['dtype'])}")
    adam_steps = meta["adam_steps"]
    if not isinstance(adam_steps, list):
        raise CheckpointError(f"{path}: the checkpoint's metadata is invalid: adam_steps must "
                              f"be a list, got {_short(adam_steps)}")
    for step in adam_steps:
        _check_int(path, "an Adam step count", step, 0, MAX_COUNT)
    if raw.get("architecture") == "hypermixing":
        # written before configurations stored their resolved heads (the default was 8, now
        # 32) or their tying (untied then, tied now): the network in the file has the old
        # defaults' shapes
        raw = legacy_hypermixing_config(raw)
    try:
        config = ModelConfig.from_dict(raw)
        tokenizer = tokenizer_from_meta(meta)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's metadata is invalid: {exc}") from None
    dtype = np.dtype(meta["dtype"])
    try:
        count = expected_parameter_count(config, len(tokenizer))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the checkpoint describes a network that cannot be "
                              f"built: {exc}") from None
    stored = archive.declared_bytes("param/")
    if count * dtype.itemsize > stored:
        # the parameters must be in the file (stored uncompressed): a small file cannot make
        # us allocate a large network
        raise CheckpointError(f"{path}: the configuration describes {count:,} parameters "
                              f"({count * dtype.itemsize:,} bytes), the file holds "
                              f"{stored:,} bytes of parameters")
    return config, tokenizer, dtype, adam_steps


def check_training_state(path, state):
    """Refuse a training state that a resumed run could not use, naming the file.

    The trainer's state (see ``train.Trainer.training_state``) is checked field by field:
    position, stages, settings, shuffling generator, history and untrained losses.
    """
    from .train import TrainSettings   # train imports this module

    def bad(what):
        return CheckpointError(f"{path}: the checkpoint's training state is invalid: {what}")

    if not isinstance(state, dict):
        raise bad("not a JSON object")
    for key in ("position", "stages", "settings", "shuffle_rng", "history",
                "untrained_val_loss"):
        if key not in state:
            raise bad(f"no {key}")
    stages = state["stages"]
    if not isinstance(stages, list) or not stages:
        raise bad("stages must be a non-empty list")
    for stage in stages:
        if not (isinstance(stage, dict) and isinstance(stage.get("name"), str)
                and isinstance(stage.get("data_path"), str)):
            raise bad(f"a stage must have a name and a data_path, got {_short(stage)}")
    position = state["position"]
    if not isinstance(position, dict) or set(position) - {"batch"} != {"stage", "epoch", "step"}:
        raise bad(f"position must have stage, epoch and step, got {_short(position)}")
    _check_int(path, "the training position's batch", position.get("batch", 0), 0, MAX_COUNT)
    _check_run_extras(path, state, bad)   # realdata's fields (best, interrupted epoch, ...)
    _check_int(path, "the training position's stage", position["stage"], 0, len(stages) - 1)
    for key, value in position.items():   # epoch, step and any finer counter (batch)
        _check_int(path, f"the training position's {key}", value, 0, MAX_COUNT)
    settings = state["settings"]
    if not isinstance(settings, dict):
        raise bad("settings must be a JSON object")
    try:
        TrainSettings(**settings)
    except (TypeError, ValueError) as exc:
        raise bad(f"settings: {exc}") from None
    try:
        np.random.default_rng(0).bit_generator.state = state["shuffle_rng"]
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise bad(f"the shuffling generator's state: {_short(str(exc))}") from None
    history = state["history"]
    if not isinstance(history, list):
        raise bad("history must be a list")
    for point in history:
        if not isinstance(point, dict) or not isinstance(point.get("stage"), str):
            raise bad(f"a history point must be an object with a stage, got {_short(point)}")
        for key in ("epoch", "step", "tokens"):
            if key in point:
                _check_int(path, f"history {key}", point[key], 0, MAX_COUNT)
        for key in ("train_loss", "val_loss", "seconds"):
            value = point.get(key)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise bad(f"history {key} must be a number, got {_short(value)}")
    losses = state["untrained_val_loss"]
    if not isinstance(losses, dict) or not all(
            v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
            for v in losses.values()):   # None: a stage without validation data
        raise bad("untrained_val_loss must map stage names to numbers")


def _check_run_extras(path, state, bad):
    """The trainer's optional fields: interrupted epoch, best model, early stopping."""
    if state.get("epoch_rng") is not None:
        try:
            np.random.default_rng(0).bit_generator.state = state["epoch_rng"]
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise bad(f"the epoch's shuffling state: {_short(str(exc))}") from None
    for key in ("partial", "best"):
        value = state.get(key)
        if value is not None and not (isinstance(value, dict) and all(
                isinstance(v, (int, float, str)) and not isinstance(v, bool)
                for v in value.values())):
            raise bad(f"{key} must be an object of numbers, got {_short(value)}")
    _check_int(path, "stale_epochs", state.get("stale_epochs", 0), 0, MAX_COUNT)
    stopped = state.get("early_stopped", [])
    if not (isinstance(stopped, list) and all(isinstance(n, str) for n in stopped)):
        raise bad(f"early_stopped must be a list of stage names, got {_short(stopped)}")
    if state.get("partial") is not None and state.get("epoch_rng") is None:
        raise bad("an interrupted epoch without its shuffling state")


def load_checkpoint(path, backend="compiled", resume=False):
    """Rebuild the network from a checkpoint file or model directory (see the module doc).

    Every field is checked before anything is built; ``resume=True`` also checks the
    training state that a resumed run needs (:func:`check_training_state`).
    """
    path = checkpoint_path(path)
    archive = _Archive(path)
    try:
        return _load(path, archive, backend, resume)
    finally:
        archive.close()


def _load(path, archive, backend, resume):
    if "format" not in archive.members or "meta" not in archive.members:
        raise CheckpointError(f"{path}: not a hypermixer checkpoint (no format marker)")
    if archive.read_string("format", 100) != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a hypermixer checkpoint (no format marker)")
    meta = _parse_meta(path, archive.read_string("meta", MAX_META_CHARS))
    config, tokenizer, dtype, adam_steps = _check_meta(path, meta, archive)
    state = meta.get("training_state")
    if resume:
        check_training_state(path, state)

    try:
        network = build_network(config, len(tokenizer), seed=0, dtype=dtype, backend=backend)
    except (TypeError, ValueError, MemoryError) as exc:
        # sizes too large to build on this machine
        raise CheckpointError(f"{path}: the checkpoint describes a network that cannot be "
                              f"built: {exc}") from None
    leaves = network._leaves()
    if len(adam_steps) != len(leaves):
        raise CheckpointError(f"{path}: Adam state for {len(adam_steps)} layers, the network "
                              f"has {len(leaves)}")
    if len(set(adam_steps)) > 1:
        # one step counter per model (flat store); every writer stepped all layers together
        raise CheckpointError(f"{path}: Adam step counts differ between layers "
                              f"({sorted(set(adam_steps))}); a model takes every step at once")
    names = {id(arr): name for name, arr in network.named_parameters()}
    for name, arr in network.named_parameters():
        archive.read_into(f"param/{name}", arr)
    for leaf, step in zip(leaves, adam_steps):
        leaf._adam_step = step
        if step == 0:
            leaf._adam_moments = None
            continue
        moments = []
        for _, param in leaf._own_parameters:
            m, v = np.empty_like(param), np.empty_like(param)
            archive.read_into(f"adam_m/{names[id(param)]}", m)
            archive.read_into(f"adam_v/{names[id(param)]}", v)
            if (v < 0).any():
                raise CheckpointError(f"{path}: adam_v/{names[id(param)]} has negative "
                                      "entries (a second moment is a mean of squares)")
            moments.append((m, v))
        leaf._adam_moments = moments
    return Checkpoint(network, tokenizer, state, path)
