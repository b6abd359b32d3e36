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
import tempfile
from pathlib import Path

import numpy as np

from .model import ModelConfig, build_network
from .tokenizer import Tokenizer

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


def save_checkpoint(path, network, tokenizer, training_state=None):
    """Write ``network`` (parameters and Adam state), its tokenizer and the training state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = network._leaves()
    meta = {
        "format_version": FORMAT_VERSION,
        "config": network.config.to_dict(),
        "vocabulary": tokenizer.vocabulary,
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
        with os.fdopen(fd, "wb") as f:
            _write_arrays(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
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


def _read_all(path):
    """Every array of the file, read now so a corrupt member fails here, with the file named."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (expected a model directory or a "
                              f"{CHECKPOINT_FILENAME} file)")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path}: not a hypermixer checkpoint (a bare .npy array)")
        with archive:
            return {key: archive[key] for key in archive.files}
    except CheckpointError:
        raise
    except Exception as exc:   # noqa: BLE001 - damaged bytes surface as many types
        # (BadZipFile, EOFError, ValueError, OSError, KeyError, and from zipfile also
        # NotImplementedError for flag bits a flipped byte can set, MemoryError, ...)
        raise CheckpointError(f"{path}: not a hypermixer checkpoint, or the file is truncated "
                              f"or corrupt ({type(exc).__name__}: {exc})") from None


def load_checkpoint(path, backend="compiled"):
    """Rebuild the network from a checkpoint file or model directory (see the module doc)."""
    path = checkpoint_path(path)
    arrays = _read_all(path)
    if "format" not in arrays or str(arrays["format"]) != FORMAT_NAME or "meta" not in arrays:
        raise CheckpointError(f"{path}: not a hypermixer checkpoint (no format marker)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the checkpoint's metadata is corrupt: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the checkpoint's metadata is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}; this hypermixer "
                              f"reads version {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(meta["config"])
        tokenizer = Tokenizer(meta["vocabulary"])
        dtype = np.dtype(meta["dtype"])
        adam_steps = meta["adam_steps"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's metadata is invalid: {exc}") from None

    try:
        network = build_network(config, len(tokenizer), seed=0, dtype=dtype, backend=backend)
    except (TypeError, ValueError, MemoryError) as exc:
        # a dtype other than float32/float64, or sizes too large to build
        raise CheckpointError(f"{path}: the checkpoint describes a network that cannot be "
                              f"built: {exc}") from None
    leaves = network._leaves()
    if len(adam_steps) != len(leaves):
        raise CheckpointError(f"{path}: Adam state for {len(adam_steps)} layers, the network "
                              f"has {len(leaves)}")
    names = {id(arr): name for name, arr in network.named_parameters()}
    for name, arr in network.named_parameters():
        _copy_into(path, arrays, f"param/{name}", arr)
    for leaf, step in zip(leaves, adam_steps):
        leaf._adam_step = int(step)
        if step == 0:
            leaf._adam_moments = None
            continue
        moments = []
        for _, param in leaf._own_parameters:
            m, v = np.empty_like(param), np.empty_like(param)
            _copy_into(path, arrays, f"adam_m/{names[id(param)]}", m)
            _copy_into(path, arrays, f"adam_v/{names[id(param)]}", v)
            moments.append((m, v))
        leaf._adam_moments = moments
    return Checkpoint(network, tokenizer, meta.get("training_state"), path)


def _copy_into(path, arrays, key, target):
    """Copy a stored array into live storage (so shared parameters stay one object)."""
    if key not in arrays:
        raise CheckpointError(f"{path}: the checkpoint has no array {key!r}")
    stored = arrays[key]
    if stored.shape != target.shape or stored.dtype != target.dtype:
        raise CheckpointError(f"{path}: {key} is {stored.dtype}{stored.shape}, the model "
                              f"expects {target.dtype}{target.shape}")
    target[...] = stored
