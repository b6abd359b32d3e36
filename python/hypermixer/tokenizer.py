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
    return _TOKEN_PATTERN.findall(text.lower())


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
    def from_texts(cls, texts, min_count=1):
        """Build the vocabulary from training text; words seen fewer than ``min_count``
        times are left out (they will read as ``<unk>``)."""
        counts = {}
        for text in texts:
            for word in split_words(text):
                counts[word] = counts.get(word, 0) + 1
        words = sorted(w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS)
        return cls(list(SPECIAL_TOKENS) + words)

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
            i = int(i)
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
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ValueError(f"not a saved tokenizer vocabulary: {exc}") from exc
        if not isinstance(vocabulary, list):
            raise ValueError("saved tokenizer vocabulary must be a JSON list of strings")
        return cls(vocabulary)

    def __repr__(self):
        return f"Tokenizer(vocab_size={len(self)})"
