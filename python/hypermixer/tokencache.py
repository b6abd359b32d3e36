"""A run's token cache: each training file read and tokenised once, kept as a token array.

For a stage, the folder ``<run>/token-cache/`` holds

* ``stage-<i>.tokens.npy``: every example's token ids, one after another (uint16 when the
  vocabulary fits, else int32), opened with ``numpy.load(mmap_mode='r')`` so that batches are
  read from the file and a large corpus never sits in memory as Python lists;
* ``stage-<i>.offsets.npy``: int64, example ``e`` is ``tokens[offsets[e]:offsets[e + 1]]``;
* ``stage-<i>.json``: what the arrays were made from: the source file's size, mtime and
  SHA-256, the tokenizer's SHA-256 (of its saved JSON) and the arrays' sizes.

The cache is used only when the source file's size and SHA-256 and the tokenizer match; else it
is rebuilt (and said so). The JSON is the cache's seal: it is removed before the arrays are
replaced and written last, each file through a temporary file and ``os.replace``, so a write
cut at any point leaves either a sealed, complete cache or no seal (and a rebuild).
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from .datasets import DataError, iter_texts

CACHE_DIRNAME = "token-cache"
FORMAT = 1                       # bump when the way examples are read or stored changes
_CHUNK_EXAMPLES = 1024           # examples tokenised per call of the tokenizer
PROGRESS_INTERVAL_S = 10.0


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_identity(tokenizer):
    return {"kind": type(tokenizer).__name__, "size": len(tokenizer),
            "sha256": hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()}


def token_dtype(tokenizer):
    return np.dtype(np.uint16) if len(tokenizer) <= 1 << 16 else np.dtype(np.int32)


class _Progress:
    """Tokenising progress: a tqdm bar on a terminal (when installed), else a plain line
    every PROGRESS_INTERVAL_S seconds, and a summary line after them."""

    def __init__(self, label, log):
        self.label, self.log = label, log
        self.started = self.last = time.perf_counter()
        self.bar = None
        if log is not None and getattr(log, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=100, desc=label, file=log, unit="%", leave=False,
                                dynamic_ncols=True, bar_format="{l_bar}{bar}| {elapsed}<"
                                "{remaining}{postfix}")

    def update(self, fraction, examples, tokens):
        if self.log is None:
            return
        if self.bar is not None:
            self.bar.n = round(100 * fraction, 1)
            self.bar.set_postfix(examples=examples, tokens=tokens, refresh=True)
            return
        now = time.perf_counter()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        elapsed = now - self.started
        eta = (f"{elapsed * (1 - fraction) / fraction:.0f} s" if fraction > 0 else "?")
        print(f"{self.label}: {100 * fraction:.0f}% ({examples:,} examples, {tokens:,} "
              f"tokens) ETA {eta}", file=self.log, flush=True)

    def close(self, examples, tokens):
        if self.bar is not None:
            self.bar.close()
        # a summary only after progress lines: a quick file needs no more than the caller's
        if self.log is not None and self.bar is None and self.last > self.started:
            print(f"{self.label}: {examples:,} examples, {tokens:,} tokens in "
                  f"{time.perf_counter() - self.started:.1f} s", file=self.log, flush=True)


def _encoder(tokenizer):
    batch = getattr(tokenizer, "encode_batch", None)
    return batch or (lambda texts: [tokenizer.encode(t) for t in texts])


def tokenize_file(path, tokenizer, write, label, log=None):
    """Tokenise the examples of ``path`` in chunks, handing each chunk's token ids to
    ``write`` (an array of the tokenizer's :func:`token_dtype`); returns the offsets (int64,
    one more than examples). Progress goes to ``log``."""
    dtype, encode = token_dtype(tokenizer), _encoder(tokenizer)
    lengths, pending, total = [0], [], 0
    progress = _Progress(label, log)

    def flush(fraction):
        nonlocal total
        ids = encode(pending)
        lengths.extend(len(x) for x in ids)
        chunk = (np.concatenate([np.asarray(x, dtype=dtype) for x in ids]) if ids
                 else np.zeros(0, dtype))
        write(chunk)
        total += len(chunk)
        pending.clear()
        progress.update(fraction, len(lengths) - 1, total)

    try:
        fraction = 0.0
        for text, fraction in iter_texts(path):
            pending.append(text)
            if len(pending) == _CHUNK_EXAMPLES:
                flush(fraction)
        if pending:
            flush(fraction)
    except BaseException:
        if progress.bar is not None:
            progress.bar.close()
        raise
    progress.close(len(lengths) - 1, total)
    return np.cumsum(np.asarray(lengths, dtype=np.int64))


def tokenize_in_memory(path, tokenizer, label, log=None):
    """``(tokens, offsets)`` of a file as in-memory arrays (no cache)."""
    chunks = []
    offsets = tokenize_file(path, tokenizer, chunks.append, label, log)
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, token_dtype(tokenizer))
    return tokens, offsets


def _names(cache_dir, key):
    cache_dir = Path(cache_dir)
    return (cache_dir / f"{key}.tokens.npy", cache_dir / f"{key}.offsets.npy",
            cache_dir / f"{key}.json")


def _temp(path):
    return path.with_name(f".{path.name}.tmp")


def _replace_atomically(path, write):
    """Write ``path`` through a temporary file: ``write(temp)`` then os.replace."""
    temp = _temp(path)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def _source_identity(path, sha256=None):
    stat = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "sha256": sha256 or file_sha256(path)}


def _why_stale(cache_dir, key, path, tokenizer):
    """None when the sealed cache matches the source file and tokenizer, else the reason."""
    tokens_path, offsets_path, seal_path = _names(cache_dir, key)
    try:
        seal = json.loads(seal_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no cache yet"
    except (OSError, ValueError):
        return "its description is unreadable"
    if not isinstance(seal, dict) or seal.get("format") != FORMAT:
        return "it was written in another format"
    source = seal.get("source") or {}
    if source.get("size") != os.stat(path).st_size:
        return "the data file's size changed"
    if seal.get("tokenizer") != tokenizer_identity(tokenizer):
        return "the tokenizer is another one"
    for array_path, field in ((tokens_path, "tokens_bytes"), (offsets_path, "offsets_bytes")):
        if not array_path.is_file() or array_path.stat().st_size != seal.get(field):
            return f"{array_path.name} is missing or has the wrong size"
    if source.get("sha256") != file_sha256(path):
        return "the data file's contents changed"
    return None


def _open(cache_dir, key):
    tokens_path, offsets_path, seal_path = _names(cache_dir, key)
    seal = json.loads(seal_path.read_text(encoding="utf-8"))
    tokens = np.load(tokens_path, mmap_mode="r", allow_pickle=False)
    offsets = np.load(offsets_path, mmap_mode="r", allow_pickle=False)
    if (tokens.shape != (seal["tokens"],) or offsets.shape != (seal["examples"] + 1,)
            or int(offsets[-1]) != seal["tokens"]):
        raise ValueError("cache arrays do not match their description")
    return tokens, offsets


def cached_tokens(path, tokenizer, cache_dir, key, label, log=None):
    """``(tokens, offsets)`` of the data file ``path``, memory-mapped from ``cache_dir``:
    the sealed cache named ``key`` when it matches the file and the tokenizer, else the file
    is tokenised (with progress on ``log``) and the cache rebuilt. Returns also a line saying
    which of the two happened."""
    path = Path(path)
    if not path.is_file():   # as load_texts says it (a resumed run's file may be gone)
        raise DataError(f"{path}: is a directory, expected a data file" if path.is_dir()
                        else f"{path}: no such data file")
    where = Path(cache_dir) / f"{key}.*"
    reason = _why_stale(cache_dir, key, path, tokenizer)
    if reason is None:
        try:
            tokens, offsets = _open(cache_dir, key)
            return tokens, offsets, (f"{label}: {len(tokens):,} tokens from the token cache "
                                     f"({where})")
        except (OSError, ValueError) as exc:
            reason = f"it could not be read ({exc})"
    build_cache(path, tokenizer, cache_dir, key, f"{label}: tokenizing", log)
    tokens, offsets = _open(cache_dir, key)
    return tokens, offsets, (f"{label}: {len(tokens):,} tokens, token cache built "
                             f"({reason if reason != 'no cache yet' else 'first use'}; "
                             f"{where})")


def build_cache(path, tokenizer, cache_dir, key, label, log=None):
    """Tokenise ``path`` into the cache files named ``key`` (see the module docstring for
    the order that makes an interrupted write harmless)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokens_path, offsets_path, seal_path = _names(cache_dir, key)
    seal_path.unlink(missing_ok=True)          # from here on, no cache until the new seal
    before = os.stat(path)
    sha256 = file_sha256(path)
    dtype = token_dtype(tokenizer)
    raw_path = _temp(tokens_path).with_suffix(".raw")
    try:
        with open(raw_path, "wb") as raw:
            offsets = tokenize_file(path, tokenizer, lambda chunk: raw.write(chunk.tobytes()),
                                    label, log)
        count = int(offsets[-1])

        def write_tokens(temp):
            # the .npy needs its length in the header: copy the raw ids into it in blocks
            array = np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=(count,))
            with open(raw_path, "rb") as raw:
                done, block = 0, 1 << 22
                while done < count:
                    part = np.fromfile(raw, dtype=dtype, count=min(block, count - done))
                    array[done:done + len(part)] = part
                    done += len(part)
            array.flush()
            del array

        _replace_atomically(tokens_path, write_tokens)
    finally:
        raw_path.unlink(missing_ok=True)
    _replace_atomically(offsets_path, lambda temp: _save_npy(temp, offsets))
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise ValueError(f"{path} changed while it was being tokenised; run again")
    seal = {"format": FORMAT, "source": _source_identity(path, sha256),
            "tokenizer": tokenizer_identity(tokenizer), "dtype": dtype.name,
            "examples": len(offsets) - 1, "tokens": count,
            "tokens_bytes": tokens_path.stat().st_size,
            "offsets_bytes": offsets_path.stat().st_size}
    _replace_atomically(seal_path, lambda temp: temp.write_text(json.dumps(seal, indent=1),
                                                                encoding="utf-8"))


def _save_npy(path, array):
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
