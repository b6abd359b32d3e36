"""Word-level tokenizer for the language models.

Text is lower-cased and cut into words (runs of letters, digits and underscores) and single
punctuation marks, each its own token: ``"Hello, world!"`` becomes
``["hello", ",", "world", "!"]``. ``</s>`` is kept whole as the end-of-text token. A word the
vocabulary does not know becomes ``<unk>``; nothing is ever dropped.

The vocabulary is built from training text and saved with the model as JSON. Its order is
deterministic and independent of the order of the examples: the special tokens first, then the
words sorted alphabetically.
"""

import collections
import json
import operator
import re

END_TOKEN = "</s>"
UNKNOWN_TOKEN = "<unk>"
SPECIAL_TOKENS = (UNKNOWN_TOKEN, END_TOKEN)

# Order matters: the end token must win over "<" "/" "s" ">".
_TOKEN_PATTERN = re.compile(re.escape(END_TOKEN) + r"|\w+|[^\w\s]")

# Punctuation that hugs the previous word when turning tokens back into text.
_NO_SPACE_BEFORE = set(".,!?;:)]}%'")
_NO_SPACE_AFTER = set("([{$'")


def split_words(text):
    """The tokens of ``text`` as strings (lower-cased), before any vocabulary lookup."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _TOKEN_PATTERN.findall(text.lower())


def _token_id(value):
    """``value`` as an int id: NumPy integers accepted; floats (int() would truncate 2.7 to
    2), strings and bools refused."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TypeError(f"token ids must be integers, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"token ids must be integers, got {type(value).__name__} "
                        f"{value!r}") from None


def _texts(texts):
    if isinstance(texts, (str, bytes)):
        # iterating would give single characters: a vocabulary of letters, silently
        raise TypeError("texts must be an iterable of strings, not a single "
                        f"{type(texts).__name__}")
    return texts


class Tokenizer:
    """Maps text to token ids and back with a fixed vocabulary."""

    def __init__(self, vocabulary):
        vocabulary = list(vocabulary)
        for word in vocabulary:
            if not isinstance(word, str) or not word:
                raise ValueError(f"vocabulary entries must be non-empty strings, got {word!r}")
        for special in SPECIAL_TOKENS:
            if special not in vocabulary:
                raise ValueError(f"vocabulary must contain the special token {special!r}")
        if len(set(vocabulary)) != len(vocabulary):
            # one pass with a Counter: the vocabulary can come from a crafted checkpoint, and
            # list.count per word was quadratic (60,000 words took a minute)
            counts = collections.Counter(vocabulary)
            duplicates = sorted(w for w, c in counts.items() if c > 1)
            raise ValueError(f"vocabulary has {len(duplicates)} duplicate entries: "
                             f"{duplicates[:5]}")
        self.vocabulary = vocabulary
        self._ids = {word: i for i, word in enumerate(vocabulary)}
        self.unknown_id = self._ids[UNKNOWN_TOKEN]
        self.end_id = self._ids[END_TOKEN]

    @classmethod
    def from_texts(cls, texts, min_count=1, max_vocab=None):
        """Build the vocabulary from training text; words seen fewer than ``min_count``
        times are left out (they will read as ``<unk>``), and with ``max_vocab`` only the
        most frequent words are kept (ties: alphabetical), special tokens included."""
        counts = {}
        for text in _texts(texts):
            for word in split_words(text):
                counts[word] = counts.get(word, 0) + 1
        words = [w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS]
        if max_vocab is not None:
            if max_vocab < len(SPECIAL_TOKENS) + 1:
                raise ValueError(f"max_vocab must be at least {len(SPECIAL_TOKENS) + 1}, got "
                                 f"{max_vocab}")
            words = sorted(words, key=lambda w: (-counts[w], w))[:max_vocab - len(SPECIAL_TOKENS)]
        return cls(list(SPECIAL_TOKENS) + sorted(words))

    def __len__(self):
        return len(self.vocabulary)

    @property
    def vocab_size(self):
        return len(self.vocabulary)

    def encode(self, text):
        """Token ids of ``text`` (a list of ints); unknown words map to ``<unk>``."""
        return [self._ids.get(word, self.unknown_id) for word in split_words(text)]

    def decode(self, ids, skip_end=True):
        """Readable text from token ids: punctuation attached to its neighbour word."""
        words = []
        for i in ids:
            i = _token_id(i)
            if not 0 <= i < len(self.vocabulary):
                raise ValueError(f"token id {i} is outside the vocabulary (size {len(self)})")
            if skip_end and i == self.end_id:
                continue
            words.append(self.vocabulary[i])
        text = ""
        for word in words:
            glue = (not text or word[0] in _NO_SPACE_BEFORE or text[-1] in _NO_SPACE_AFTER)
            text += word if glue else " " + word
        return text

    def to_json(self):
        return json.dumps({"vocabulary": self.vocabulary}, ensure_ascii=False)

    @classmethod
    def from_json(cls, document):
        try:
            data = json.loads(document)
            vocabulary = data["vocabulary"]
        except (RecursionError, ValueError, TypeError, KeyError) as exc:
            # ValueError covers malformed JSON and integers past Python's digit limit;
            # RecursionError deeply nested arrays (both reachable from a crafted checkpoint)
            raise ValueError(f"not a saved tokenizer vocabulary: {type(exc).__name__}") from None
        if not isinstance(vocabulary, list):
            raise ValueError("saved tokenizer vocabulary must be a JSON list of strings")
        return cls(vocabulary)

    def __repr__(self):
        return f"Tokenizer(vocab_size={len(self)})"


class BPETokenizer:
    """Byte-level BPE trained on the user's text, through the ``tokenizers`` library (an
    optional extra: ``pip install hypermixer[bpe]``).

    Text is read as UTF-8 bytes, so every string has an encoding and ``decode(encode(s))``
    gives ``s`` back exactly: case, spaces, newlines, any script. ``</s>`` is one special
    token. The whole tokenizer is one JSON document (``to_json``), saved in the checkpoint.
    Same interface as :class:`Tokenizer`; ``unknown_id`` is None (nothing is unknown).
    """

    unknown_id = None

    def __init__(self, backend):
        self._backend = backend
        end_id = backend.token_to_id(END_TOKEN)
        if end_id is None:
            raise ValueError(f"BPE tokenizer has no {END_TOKEN!r} token")
        self.end_id = end_id
        size = backend.get_vocab_size(with_added_tokens=True)
        by_id = {i: t for t, i in backend.get_vocab(with_added_tokens=True).items()}
        self.vocabulary = [by_id[i] for i in range(size)]

    @staticmethod
    def _library():
        try:
            import tokenizers
        except ImportError:
            raise ValueError("the BPE tokenizer needs the 'tokenizers' package: "
                             "pip install 'hypermixer[bpe]'") from None
        return tokenizers

    @classmethod
    def from_texts(cls, texts, vocab_size=4096, min_frequency=2):
        """Learn merges on ``texts`` until the vocabulary has ``vocab_size`` tokens (the 256
        bytes and ``</s>`` included), or no pair occurs ``min_frequency`` times."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 258:
            raise ValueError(f"BPE vocabulary size must be an integer >= 258 (256 bytes, "
                             f"</s> and one merge), got {vocab_size!r}")
        lib = cls._library()
        backend = lib.Tokenizer(lib.models.BPE())
        backend.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[END_TOKEN],
            initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    def __len__(self):
        return len(self.vocabulary)

    @property
    def vocab_size(self):
        return len(self.vocabulary)

    def encode(self, text):
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_end=True):
        ids = [_token_id(i) for i in ids]
        for i in ids:
            if not 0 <= i < len(self.vocabulary):
                raise ValueError(f"token id {i} is outside the vocabulary (size {len(self)})")
        if skip_end:
            ids = [i for i in ids if i != self.end_id]
        return self._backend.decode(ids, skip_special_tokens=False)

    def to_json(self):
        return json.dumps({"kind": "bpe", "tokenizers": self._backend.to_str()})

    @classmethod
    def from_json(cls, document):
        lib = cls._library()
        try:
            backend = lib.Tokenizer.from_str(json.loads(document)["tokenizers"])
        except Exception as exc:   # noqa: BLE001 - the library raises its own types
            raise ValueError(f"not a saved BPE tokenizer: {exc}") from None
        return cls(backend)

    def __repr__(self):
        return f"BPETokenizer(vocab_size={len(self)})"


def tokenizer_from_meta(meta):
    """The tokenizer a checkpoint's metadata describes (word-level or BPE)."""
    document = meta.get("tokenizer")
    if document is not None:
        if not isinstance(document, str) or '"bpe"' not in document:
            raise ValueError("unknown tokenizer in the checkpoint")
        return BPETokenizer.from_json(document)
    return Tokenizer(meta["vocabulary"])
