"""Loading training text and turning it into next-token training sequences.

Two file formats are accepted:

* ``*.json``: a JSON array of strings, one example each (the bundled corpus is in this form);
* any other name: plain UTF-8 text, one example per line; blank lines are skipped.

An example that does not end with ``</s>`` gets one appended, so the model always learns where
text stops. A malformed file raises :class:`DataError` naming the file and the place (line and
column, or the array index) of the problem.

Long examples: a sequence of n tokens gives n - 1 (input, next token) pairs. When n - 1 exceeds
``max_seq_len`` the example is cut into consecutive windows of ``max_seq_len`` inputs, each
window's targets running one token ahead (window k covers tokens k*S .. k*S + S). Every token
is still a target exactly once; what is lost is context across a window boundary.
:func:`make_sequences` reports how many examples were split, and training prints that count.

Large corpora: training keeps a stage's tokens in one flat array (memory-mapped from the run's
token cache, ``tokencache.py``) with the examples' boundaries, and :class:`TokenWindows` makes
the same windows as :func:`make_sequences` from it, as (start, length) pairs into that array,
so no Python list per token is ever built. :func:`iter_texts` reads a plain-text file one line
at a time.
"""

import json
from pathlib import Path

import numpy as np

from .tokenizer import END_TOKEN

BUNDLED_DATA_DIR = Path(__file__).resolve().parent / "data"


class DataError(ValueError):
    """A training-data file that cannot be used; the message names the file and place."""


def bundled_data_path(name):
    """Path of a bundled corpus file: ``"pretrain"`` or ``"chat"``."""
    path = BUNDLED_DATA_DIR / f"{name}.json"
    if not path.is_file():
        raise DataError(f"bundled data file {path} is missing (is the package installed fully?)")
    return path


def with_end_token(text):
    text = text.strip()
    return text if text.endswith(END_TOKEN) else f"{text} {END_TOKEN}"


def _read_utf8(path):
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a data file") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}: line {line}, column {column}: not valid UTF-8 text ({exc.reason})") from None


def _load_json_array(path, text):
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON: "
                        f"{exc.msg}") from None
    if not isinstance(document, list):
        raise DataError(f"{path}: expected a JSON array of strings at the top level, got a "
                        f"{type(document).__name__}")
    examples = []
    for index, item in enumerate(document):
        if not isinstance(item, str):
            raise DataError(f"{path}: array index {index}: expected a string, got "
                            f"{type(item).__name__} {json.dumps(item)[:40]}")
        if not item.strip():
            raise DataError(f"{path}: array index {index}: the example is empty")
        examples.append(with_end_token(item))
    return examples


def load_texts(path):
    """The examples of a data file as a list of strings, each ending with ``</s>``."""
    path = Path(path)
    text = _read_utf8(path)
    if path.suffix.lower() == ".json":
        examples = _load_json_array(path, text)
    else:
        examples = [with_end_token(line) for line in text.splitlines() if line.strip()]
    if not examples:
        raise DataError(f"{path}: contains no examples")
    return examples


def iter_texts(path):
    """The examples of a data file one at a time, as :func:`load_texts` gives them, without
    holding a plain-text file in memory (a JSON array is parsed whole). Yields
    ``(example, fraction of the file read)``; the same errors as :func:`load_texts`."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        examples = load_texts(path)
        for index, example in enumerate(examples, start=1):
            yield example, index / len(examples)
        return
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a data file") from None
    with handle:
        size = max(path.stat().st_size, 1)
        found = False
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: line {number}, column {exc.start + 1}: not valid "
                                f"UTF-8 text ({exc.reason})") from None
            # splitlines as load_texts does: a \r or \u2028 inside the line also ends one
            for text in line.splitlines():
                if text.strip():
                    found = True
                    yield with_end_token(text), handle.tell() / size
    if not found:
        raise DataError(f"{path}: contains no examples")


def make_sequences(token_lists, max_seq_len):
    """Split tokenized examples into ``(inputs, targets)`` pairs of at most ``max_seq_len``.

    Returns ``(pairs, split_count)``: the list of pairs of int lists, and how many examples
    were longer than one window and were split (see the module docstring). Examples of a
    single token have nothing to predict and are skipped.
    """
    pairs = []
    split_count = 0
    for ids in token_lists:
        if len(ids) - 1 > max_seq_len:
            split_count += 1
        for start in range(0, len(ids) - 1, max_seq_len):
            window = ids[start:start + max_seq_len + 1]
            pairs.append((window[:-1], window[1:]))
    return pairs, split_count


class TokenWindows:
    """The (inputs, targets) windows of some examples, as :func:`make_sequences` makes them,
    kept as (start, length) pairs into one flat token array (which may be memory-mapped).

    ``tokens`` holds the examples one after another, example ``e`` at
    ``tokens[offsets[e]:offsets[e + 1]]``; ``examples`` (sorted indices) picks the examples.
    Behaves as a read-only sequence of pairs: ``windows[i]`` is ``(inputs, targets)`` as
    int64 arrays, ``windows[a:b]`` and ``windows.take(indices)`` are TokenWindows again.
    ``split_count`` is how many of the examples needed more than one window.
    """

    def __init__(self, tokens, offsets, examples, max_seq_len, _spans=None):
        self.tokens = tokens
        if _spans is not None:
            self.starts, self.lengths = _spans
            self.split_count = 0
            return
        examples = np.asarray(examples, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        first = offsets[examples]
        sizes = offsets[examples + 1] - first
        # an example of n tokens has n - 1 targets, in ceil((n - 1) / S) windows
        counts = np.where(sizes >= 2, (sizes - 2) // max_seq_len + 1, 0)
        self.split_count = int(np.count_nonzero(sizes - 1 > max_seq_len))
        owner = np.repeat(np.arange(len(examples)), counts)
        # k-th window of its example: position in the repeat minus the example's first window
        k = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        self.starts = first[owner] + k * max_seq_len
        # window of S + 1 tokens (S inputs, S targets one ahead), shorter at the example's end
        self.lengths = np.minimum(max_seq_len + 1, sizes[owner] - k * max_seq_len)

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, key):
        if isinstance(key, slice):   # views, no copy: evaluation slices batch by batch
            return TokenWindows(self.tokens, None, None, None,
                                _spans=(self.starts[key], self.lengths[key]))
        start, length = int(self.starts[key]), int(self.lengths[key])
        window = np.asarray(self.tokens[start:start + length], dtype=np.int64)
        return window[:-1], window[1:]

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def take(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return TokenWindows(self.tokens, None, None, None,
                            _spans=(self.starts[indices], self.lengths[indices]))

    def target_count(self):
        return int((self.lengths - 1).sum())
