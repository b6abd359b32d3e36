"""Exporting a trained model as one ``.safetensors`` file, and loading it back.

The safetensors layout is small enough to write with NumPy alone (no extra dependency): an
8-byte little-endian header length N, N bytes of JSON header, then the raw little-endian
arrays back to back. The header maps every parameter name (those of ``named_parameters()``)
to its dtype, shape and byte range, and its ``__metadata__`` (strings only) holds what else
the model needs: the format marker, the model configuration and the tokenizer. Only the
weights are exported: no Adam state and no training position (use the checkpoint to resume).
"""

import json
from pathlib import Path

import numpy as np

from .model import (ModelConfig, build_network, expected_parameter_count,
                    legacy_hypermixing_config)
from .tokenizer import tokenizer_from_meta

FORMAT_NAME = "hypermixer-safetensors"
_DTYPES = {"float32": "F32", "float64": "F64"}
_FROM_CODE = {code: name for name, code in _DTYPES.items()}


class ExportError(ValueError):
    """A file that is not a usable hypermixer safetensors export; the message says why."""


def _tokenizer_document(tokenizer):
    if hasattr(tokenizer, "_backend"):
        return json.dumps({"tokenizer": tokenizer.to_json()})
    return json.dumps({"vocabulary": tokenizer.vocabulary})


def export_safetensors(network, tokenizer, path):
    """Write the parameters, configuration and tokenizer of ``network`` to ``path``."""
    path = Path(path)
    header, offset, blobs = {}, 0, []
    for name, array in network.named_parameters():
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _DTYPES[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": FORMAT_NAME,
                              "config": network.config.to_json(),
                              "tokenizer": _tokenizer_document(tokenizer)}
    encoded = json.dumps(header, ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)   # keep the data 8-byte aligned
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)
    temp.replace(path)
    return path


def _tensor_entries(path, header):
    """The header's tensor entries, each checked to be {"dtype": str, "shape": [int...],
    "data_offsets": [begin, end]}, or ExportError naming the first that is not."""
    entries = {}
    for name, entry in header.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and isinstance(offsets, list) and \
            len(offsets) == 2 and all(type(v) is int and v >= 0 for v in shape + offsets)
        if not ok:
            raise ExportError(f"{path}: tensor entry {name!r} is malformed (it needs dtype, "
                              "shape and data_offsets)")
        entries[name] = entry
    return entries


def load_safetensors(path, backend="compiled"):
    """``(network, tokenizer)`` from a file written by :func:`export_safetensors`.

    The file is checked before a network is built: the configuration (a hypermixing one
    written before configurations stored their heads and tying means the old defaults, as in
    checkpoints), every tensor entry, and that the tensors hold at least the parameters the
    configuration describes, so a small file cannot make us build a large network. The
    tensors must then be exactly the network's, finite."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file") from None
    except OSError as exc:
        raise ExportError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) < 8:
        raise ExportError(f"{path}: too short to be a safetensors file")
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8:
        raise ExportError(f"{path}: not a safetensors file (header length {size} past the end)")
    try:
        header = json.loads(raw[8:8 + size].decode("utf-8"))
        if not isinstance(header, dict):
            raise ExportError(f"{path}: not a safetensors file (the header is not an object)")
        meta = header.pop("__metadata__")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ExportError(f"{path}: a safetensors file, but not a hypermixer export")
        data = json.loads(meta["config"])
        if not isinstance(data, dict):
            raise ExportError(f"{path}: the model configuration is not a JSON object")
        if data.get("architecture") == "hypermixing":
            data = legacy_hypermixing_config(data)
        config = ModelConfig.from_dict(data)
        tokenizer = tokenizer_from_meta(json.loads(meta["tokenizer"]))
    except ExportError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError,
            RecursionError) as exc:
        raise ExportError(f"{path}: not a hypermixer safetensors export ({exc})") from None
    entries = _tensor_entries(path, header)
    codes = {entry["dtype"] for entry in entries.values()}
    if len(codes) != 1 or next(iter(codes)) not in _FROM_CODE:
        raise ExportError(f"{path}: tensors must all be F32 or all F64, got {sorted(codes)}")
    dtype = np.dtype(_FROM_CODE[codes.pop()])
    data = memoryview(raw)[8 + size:]
    try:
        count = expected_parameter_count(config, len(tokenizer))
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{path}: describes a network that cannot be built: {exc}") from None
    if count * dtype.itemsize > len(data):
        raise ExportError(f"{path}: the configuration describes {count:,} parameters "
                          f"({count * dtype.itemsize:,} bytes), the file holds {len(data):,}")
    try:
        network = build_network(config, len(tokenizer), seed=0, dtype=dtype, backend=backend)
    except (TypeError, ValueError, MemoryError) as exc:
        raise ExportError(f"{path}: describes a network that cannot be built: {exc}") from None
    named = network.named_parameters()
    extra = sorted(set(entries) - {name for name, _ in named})
    if extra:
        raise ExportError(f"{path}: tensors the model does not have: {extra[:5]}")
    for name, array in named:
        entry = entries.get(name)
        if entry is None:
            raise ExportError(f"{path}: no tensor {name!r}")
        begin, end = entry["data_offsets"]
        if tuple(entry["shape"]) != array.shape or not 0 <= begin <= end <= len(data) \
                or end - begin != array.nbytes:
            raise ExportError(f"{path}: tensor {name} is {entry['dtype']}{entry['shape']} at "
                              f"bytes {begin}..{end}, the model expects "
                              f"{array.dtype}{list(array.shape)}")
        values = np.frombuffer(data[begin:end], dtype=dtype.newbyteorder("<"))
        if not np.all(np.isfinite(values)):
            raise ExportError(f"{path}: tensor {name} has non-finite values (NaN or inf)")
        array[...] = values.reshape(array.shape)
    return network, tokenizer


def load_model(location, backend="compiled"):
    """``(network, tokenizer)`` from a run folder, a checkpoint ``.npz`` or an export."""
    if str(location).endswith(".safetensors"):
        return load_safetensors(location, backend=backend)
    from .checkpoint import load_checkpoint
    checkpoint = load_checkpoint(location, backend=backend)
    return checkpoint.network, checkpoint.tokenizer
