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

from .model import ModelConfig, build_network
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


def load_safetensors(path, backend="compiled"):
    """``(network, tokenizer)`` from a file written by :func:`export_safetensors`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file") from None
    if len(raw) < 8:
        raise ExportError(f"{path}: too short to be a safetensors file")
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8:
        raise ExportError(f"{path}: not a safetensors file (header length {size} past the end)")
    try:
        header = json.loads(raw[8:8 + size].decode("utf-8"))
        meta = header.pop("__metadata__")
        if meta.get("format") != FORMAT_NAME:
            raise ExportError(f"{path}: a safetensors file, but not a hypermixer export")
        config = ModelConfig.from_json(meta["config"])
        tokenizer = tokenizer_from_meta(json.loads(meta["tokenizer"]))
    except ExportError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not a hypermixer safetensors export ({exc})") from None
    codes = {entry.get("dtype") for entry in header.values() if isinstance(entry, dict)}
    if len(codes) != 1 or next(iter(codes)) not in _FROM_CODE:
        raise ExportError(f"{path}: tensors must all be F32 or all F64, got {sorted(map(str, codes))}")
    dtype = np.dtype(_FROM_CODE[codes.pop()])
    try:
        network = build_network(config, len(tokenizer), seed=0, dtype=dtype, backend=backend)
    except (TypeError, ValueError, MemoryError) as exc:
        raise ExportError(f"{path}: describes a network that cannot be built: {exc}") from None
    data = memoryview(raw)[8 + size:]
    for name, array in network.named_parameters():
        entry = header.get(name)
        if entry is None:
            raise ExportError(f"{path}: no tensor {name!r}")
        begin, end = entry["data_offsets"]
        if tuple(entry["shape"]) != array.shape or not 0 <= begin <= end <= len(data) \
                or end - begin != array.nbytes:
            raise ExportError(f"{path}: tensor {name} is {entry['dtype']}{entry['shape']} at "
                              f"bytes {begin}..{end}, the model expects "
                              f"{array.dtype}{list(array.shape)}")
        array[...] = np.frombuffer(data[begin:end], dtype=dtype.newbyteorder("<")).reshape(
            array.shape)
    return network, tokenizer


def load_model(location, backend="compiled"):
    """``(network, tokenizer)`` from a run folder, a checkpoint ``.npz`` or an export."""
    if str(location).endswith(".safetensors"):
        return load_safetensors(location, backend=backend)
    from .checkpoint import load_checkpoint
    checkpoint = load_checkpoint(location, backend=backend)
    return checkpoint.network, checkpoint.tokenizer
