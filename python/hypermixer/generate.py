"""Text generation with a trained language model.

Decoding is greedy (``temperature=0``, the default) or sampled: logits divided by the
temperature, optionally restricted to the ``top_k`` most likely tokens, then drawn from the
softmax with a seeded generator. Generation stops at ``</s>`` or after ``max_new_tokens``.

The model sees at most ``max_seq_len`` tokens: when the prompt plus what has been generated is
longer, the model is given the last ``max_seq_len`` tokens only (a sliding window), so earlier
text is forgotten rather than refused. The whole window is recomputed for every new token.
"""

import numpy as np


def _next_token(logits, temperature, top_k, rng):
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.size:
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def generate_ids(network, prompt_ids, end_id, max_new_tokens=40, temperature=0.0, top_k=None,
                 seed=None):
    """New token ids after ``prompt_ids`` (the ``</s>`` that ends them is included)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    context = list(prompt_ids)
    if not context:
        raise ValueError("the prompt is empty: give at least one word")
    rng = np.random.default_rng(seed)
    new_ids = []
    for _ in range(max_new_tokens):
        window = np.array(context[-network.max_seq_len:], dtype=np.int64)
        logits = network.forward(window)[-1]
        token = _next_token(logits, temperature, top_k, rng)
        new_ids.append(token)
        context.append(token)
        if token == end_id:
            break
    return new_ids


def generate(network, tokenizer, prompt, max_new_tokens=40, temperature=0.0, top_k=None,
             seed=None):
    """The text the model writes after ``prompt`` (without the prompt and ``</s>``)."""
    new_ids = generate_ids(network, tokenizer.encode(prompt), tokenizer.end_id,
                           max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, seed=seed)
    return tokenizer.decode(new_ids)


def chat_prompt(user_text):
    """The training format of the instruction data: ``User: ... Assistant:``."""
    return f"User: {user_text.strip()} Assistant:"


def chat_reply(network, tokenizer, user_text, **options):
    """The assistant's answer to one user line; every turn stands alone (no memory)."""
    return generate(network, tokenizer, chat_prompt(user_text), **options)
