"""Checks on the bundled training corpus in hypermixer/data."""

import importlib.resources
import json
import re

import pytest

MAX_SEQ_LEN = 80
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
ALLOWED_CHARS = re.compile(r"^[A-Za-z0-9 .,?!'\-<>/:]+$")


def _load(name):
    path = importlib.resources.files("hypermixer") / "data" / name
    with path.open("r", encoding="utf-8") as fh:
        data = json.load(fh)
    assert isinstance(data, list)
    assert all(isinstance(s, str) for s in data)
    return data


def _tokens(text):
    tokens = []
    for i, part in enumerate(text.split("</s>")):
        if i:
            tokens.append("</s>")
        tokens.extend(TOKEN_RE.findall(part))
    return tokens


@pytest.fixture(scope="module")
def pretrain():
    return _load("pretrain.json")


@pytest.fixture(scope="module")
def chat():
    return _load("chat.json")


def test_counts(pretrain, chat):
    assert len(pretrain) >= 300
    assert len(chat) >= 150


def test_every_example_ends_with_eos(pretrain, chat):
    for s in pretrain + chat:
        assert s.endswith(" </s>"), s
        assert s.count("</s>") == 1, s


def test_chat_format(chat):
    for s in chat:
        assert s.startswith("User: "), s
        assert s.count(" Assistant: ") == 1, s
        question, answer = s[len("User: "):-len(" </s>")].split(" Assistant: ")
        assert question.strip() and answer.strip(), s
        assert "User:" not in answer, s


def test_chat_has_rain_question(chat):
    assert any(s.startswith("User: What causes rain? Assistant: ") for s in chat)


def test_no_duplicates(pretrain, chat):
    assert len(set(pretrain)) == len(pretrain)
    assert len(set(chat)) == len(chat)
    assert not set(pretrain) & set(chat)


def test_plain_ascii(pretrain, chat):
    for s in pretrain + chat:
        assert s.isascii(), s
        assert ALLOWED_CHARS.match(s), s


def test_examples_fit_max_seq_len(pretrain, chat):
    for s in pretrain + chat:
        tokens = _tokens(s)
        assert tokens[-1] == "</s>", s
        assert len(tokens) <= MAX_SEQ_LEN, (len(tokens), s)


def test_tokenizer_counts_eos_as_one_token():
    assert _tokens("Rain falls. </s>") == ["Rain", "falls", ".", "</s>"]
