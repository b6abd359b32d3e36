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
"""

import json
from pathlib import Path

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
