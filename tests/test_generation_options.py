"""Sampling options (top-p, top-k 0 = off, notes on flags that greedy decoding ignores) and a
chat that keeps the conversation as context, trimmed to the model's window."""

import io
import sys

import numpy as np
import pytest

from hypermixer.checkpoint import save_checkpoint
from hypermixer.cli import main
from hypermixer.generate import Conversation, _next_token, generate_ids
from hypermixer.model import ModelConfig, backend_available, build_network
from hypermixer.tokenizer import Tokenizer

BACKEND = "compiled" if backend_available("compiled") else "reference"
TEXTS = ["User: what is snow? Assistant: snow is cold.", "the sun is a star.",
         "rain falls from clouds.", "birds can fly."]


@pytest.fixture(scope="module")
def model():
    tokenizer = Tokenizer.from_texts(TEXTS)
    network = build_network(ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1,
                                        max_seq_len=12), len(tokenizer), seed=3,
                            backend=BACKEND)
    return network, tokenizer


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    # p = 0.7: tokens 0 and 1 (0.5 + 0.3 >= 0.7) and never 2 or 3
    drawn = {_next_token(logits, 1.0, None, rng, top_p=0.7) for _ in range(300)}
    assert drawn == {0, 1}
    assert {_next_token(logits, 1.0, None, rng, top_p=0.5) for _ in range(100)} == {0}
    assert {_next_token(logits, 1.0, None, rng, top_p=1.0) for _ in range(600)} == {0, 1, 2, 3}


def test_top_k_zero_means_no_limit_and_tiny_top_p_is_greedy(model):
    network, tokenizer = model
    prompt = tokenizer.encode("the sun")
    common = dict(max_new_tokens=8, temperature=1.5, seed=11)
    assert generate_ids(network, prompt, tokenizer.end_id, top_k=0, **common) == \
        generate_ids(network, prompt, tokenizer.end_id, top_k=None, **common)
    greedy = generate_ids(network, prompt, tokenizer.end_id, max_new_tokens=8)
    assert generate_ids(network, prompt, tokenizer.end_id, top_p=1e-9, **common) == greedy
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            generate_ids(network, prompt, tokenizer.end_id, top_p=bad, **common)


def test_flags_ignored_by_greedy_decoding_are_named(model, tmp_path, capsys):
    network, tokenizer = model
    save_checkpoint(tmp_path / "m.npz", network, tokenizer)
    main(["generate", "--model", str(tmp_path / "m.npz"), "--backend", BACKEND, "--top-k",
          "3", "--top-p", "0.9", "the sun"])
    err = capsys.readouterr().err
    assert "--top-k, --top-p ignored: --temperature 0" in err
    main(["generate", "--model", str(tmp_path / "m.npz"), "--backend", BACKEND,
          "--temperature", "1", "--top-k", "3", "--seed", "1", "the sun"])
    assert "ignored" not in capsys.readouterr().err


def test_conversation_keeps_context_within_the_window(model):
    network, tokenizer = model
    chat = Conversation(network, tokenizer, max_new_tokens=3)
    first = chat.reply("what is snow?")
    after_first = list(chat.context)
    assert after_first[-1] == tokenizer.end_id   # every turn ends with </s>
    # the second turn is generated after the first one, not alone
    second_prompt = tokenizer.encode(" User: and rain? Assistant:")
    context = after_first + second_prompt
    new = generate_ids(network, context, tokenizer.end_id, max_new_tokens=3)
    if new[-1] != tokenizer.end_id:
        new.append(tokenizer.end_id)
    chat.reply("and rain?")
    assert chat.context == (context + new)[-network.max_seq_len:]
    for _ in range(5):
        chat.reply("tell me more about the sun and the moon and the stars")
    assert len(chat.context) <= network.max_seq_len
    assert isinstance(first, str)


def test_chat_ends_cleanly_at_end_of_input(model, tmp_path, capsys, monkeypatch):
    network, tokenizer = model
    save_checkpoint(tmp_path / "m.npz", network, tokenizer)
    monkeypatch.setattr(sys, "stdin", io.StringIO("what is snow?\nand rain?"))   # no quit
    code = main(["chat", "--model", str(tmp_path / "m.npz"), "--backend", BACKEND,
                 "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [line.startswith("Assistant:") for line in out.splitlines()] == [True, True]


@pytest.mark.parametrize("architecture", ["hypermixer", "transformer", "hypermixing"])
def test_prompt_ids_checked_whole_against_the_vocabulary(architecture):
    """An out-of-range id is refused with its position in the prompt, also where a stream
    would see it alone (the Transformer, hypermixing) and where it lies before the last
    max_seq_len tokens that a window would read (every architecture)."""
    network = build_network(ModelConfig(architecture=architecture, embedding_dim=8,
                                        hidden_dim=8, num_layers=1, max_seq_len=6), 10,
                            seed=0, backend=BACKEND)
    with pytest.raises(ValueError, match=r"\[0, 10\): got 12 at position 1"):
        generate_ids(network, [1, 12, 3], 0)
    long_prompt = [1] * 20
    long_prompt[2] = 10
    for new in (0, 3):
        with pytest.raises(ValueError, match="got 10 at position 2"):
            generate_ids(network, long_prompt, 0, max_new_tokens=new)
    assert generate_ids(network, [1, 2, 3], 0, max_new_tokens=0) == []
