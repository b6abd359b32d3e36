"""Text generation with a trained language model.

Decoding is greedy (``temperature=0``, the default) or sampled: logits divided by the
temperature, optionally restricted to the ``top_k`` most likely tokens and then to the
smallest set whose probabilities reach ``top_p`` (nucleus sampling), then drawn from the
softmax with a seeded generator. Generation stops at ``</s>`` or after ``max_new_tokens``.

The model sees at most ``max_seq_len`` tokens: when the prompt plus what has been generated is
longer, the model is given the last ``max_seq_len`` tokens only (a sliding window), so earlier
text is forgotten rather than refused. The ``hypermixing`` network and the Transformer keep
the state of the tokens so far between tokens (``hypermixer._stream``; the Transformer while
the text fits in ``max_seq_len``), so a new token costs one position's work; past that, and
for the hypermixer, the whole window is recomputed for every new token.
"""

import operator

import numpy as np

from ._blueprints import check_token_ids


def _next_token(logits, temperature, top_k, rng, top_p=None):
    logits = logits.astype(np.float64)
    if not np.isfinite(logits).all():
        # greedy decoding too: argmax over NaN picks the first NaN, a token chosen by nothing
        raise ValueError("the model produced non-finite logits (NaN or infinite "
                         "parameters or activations); cannot choose a token from them")
    if temperature == 0:
        return int(np.argmax(logits))
    # Shift before dividing: the largest value becomes exactly 0, the others <= 0, so a tiny
    # temperature (1e-320) overflows them to -inf (probability 0) instead of giving inf - inf.
    with np.errstate(over="ignore"):
        scaled = (logits - logits.max()) / temperature
    if top_k is not None and top_k < scaled.size:
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    probs = np.exp(scaled)
    probs /= probs.sum()
    if top_p is not None and top_p < 1:
        # nucleus: the most likely tokens whose probabilities first reach top_p together
        order = np.argsort(-probs, kind="stable")
        keep = np.searchsorted(np.cumsum(probs[order]), top_p) + 1
        kept = np.zeros_like(probs)
        kept[order[:keep]] = probs[order[:keep]]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


def _count(name, value, minimum):
    """``value`` as a Python int >= minimum; NumPy integers are accepted, bools and floats not."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer >= {minimum}, got "
                        f"{type(value).__name__} {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {number}")
    return number


def _temperature(value):
    """``value`` as a finite float >= 0; strings and other non-numbers are refused by name."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                       np.floating)):
        raise TypeError(f"temperature must be a number >= 0, got {type(value).__name__} "
                        f"{value!r}")
    try:
        number = float(value)
    except OverflowError:   # an int past float's range
        number = float("inf")
    if not (np.isfinite(number) and number >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {value!r}")
    return number


def generate_ids(network, prompt_ids, end_id, max_new_tokens=40, temperature=0.0, top_k=None,
                 seed=None, top_p=None):
    """New token ids after ``prompt_ids`` (the ``</s>`` that ends them is included).
    ``top_k`` 0 or None: no top-k cut; ``top_p`` None or 1: no nucleus cut."""
    max_new_tokens = _count("max_new_tokens", max_new_tokens, 0)
    temperature = _temperature(temperature)
    if top_k is not None:
        top_k = _count("top_k", top_k, 0) or None
    if top_p is not None:
        if isinstance(top_p, (bool, np.bool_)) or not isinstance(
                top_p, (int, float, np.integer, np.floating)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
        top_p = float(top_p)
    if seed is not None and not isinstance(seed, np.random.Generator):
        seed = _count("seed", seed, 0)   # NumPy's own message does not name the seed
    # each id an integer (NumPy integers too): a float id would be truncated by the int64
    # window, a bool read as 0/1, a nested list or 2-D array taken as a batch
    context = [_count("prompt token id", token, 0) for token in prompt_ids]
    if not context:
        raise ValueError("the prompt is empty: give at least one word")
    # the whole prompt against the vocabulary, once: the stream sees one token at a time
    # (an error would name position 0) and a window only the last max_seq_len tokens (an
    # out-of-range id before them would pass unnoticed)
    check_token_ids("prompt token ids", np.array(context, np.int64), None,
                    network.vocab_size)
    if max_new_tokens == 0:
        return []
    rng = np.random.default_rng(seed)
    new_ids = []
    # a streaming network keeps the state of the tokens so far (hypermixing: running sums, any
    # length; the Transformer: its keys and values, while the text fits its position table);
    # past what a stream holds, and for the hypermixer, the window is recomputed
    stream = network.stream() if hasattr(network, "stream") else None
    if stream is not None and stream.capacity is not None and len(context) > stream.capacity:
        stream = None
    if stream is not None:
        for token in context[:-1]:
            stream.feed(token)
    for _ in range(max_new_tokens):
        if stream is not None and stream.full:
            stream = None
        if stream is not None:
            logits = stream.feed(context[-1])
        else:
            window = np.array(context[-network.max_seq_len:], dtype=np.int64)
            logits = network.forward(window)[-1]
        token = _next_token(logits, temperature, top_k, rng, top_p)
        new_ids.append(token)
        context.append(token)
        if token == end_id:
            break
    return new_ids


def generate(network, tokenizer, prompt, max_new_tokens=40, temperature=0.0, top_k=None,
             seed=None, top_p=None):
    """The text the model writes after ``prompt`` (without the prompt and ``</s>``)."""
    new_ids = generate_ids(network, tokenizer.encode(prompt), tokenizer.end_id,
                           max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, seed=seed, top_p=top_p)
    return tokenizer.decode(new_ids)


def chat_prompt(user_text):
    """The training format of the instruction data: ``User: ... Assistant:``."""
    return f"User: {user_text.strip()} Assistant:"


def chat_reply(network, tokenizer, user_text, **options):
    """The assistant's answer to one user line; every turn stands alone (no memory)."""
    return generate(network, tokenizer, chat_prompt(user_text), **options)


class Conversation:
    """A chat that remembers: every turn's prompt and reply (with its ``</s>``) stay in the
    context, of which the model sees the last ``max_seq_len`` tokens; older turns fall out
    of the window first."""

    def __init__(self, network, tokenizer, **options):
        self.network, self.tokenizer, self.options = network, tokenizer, options
        self.context = []

    def reply(self, user_text):
        prompt = (" " if self.context else "") + chat_prompt(user_text)
        self.context += self.tokenizer.encode(prompt)
        new_ids = generate_ids(self.network, self.context, self.tokenizer.end_id,
                               **self.options)
        if not new_ids or new_ids[-1] != self.tokenizer.end_id:
            new_ids = new_ids + [self.tokenizer.end_id]   # a turn always ends
        self.context = (self.context + new_ids)[-self.network.max_seq_len:]
        return self.tokenizer.decode(new_ids)
