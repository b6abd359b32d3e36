"""The run's token cache (tokencache.py) and the windows read from it (datasets.TokenWindows):
the same sequences as the in-memory lists, reused while the data file and tokenizer are the
same, rebuilt when either changed, never left half-written, and training identical with and
without it."""

import io
import json
import os

import numpy as np
import pytest

import hypermixer.tokencache as tokencache
from hypermixer.checkpoint import load_checkpoint
from hypermixer.datasets import (DataError, TokenWindows, iter_texts, load_texts,
                                 make_sequences)
from hypermixer.model import ModelConfig, backend_available
from hypermixer.tokenizer import Tokenizer
from hypermixer.train import Stage, TrainSettings, evaluate, train

BACKEND = "compiled" if backend_available("compiled") else "reference"
TINY = ModelConfig(embedding_dim=8, hidden_dim=12, num_layers=2, max_seq_len=6)
LINES = ["the sun is a star and the moon goes around the earth every month.",
         "rain falls from clouds.", "plants need water and light.", "the sea is salty.",
         "birds can fly, fish swim in water, and snow is cold in the winter here.",
         "hi", "a much longer line that will be cut into several windows of six tokens."]


def write_corpus(path, lines=LINES):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tokenizer_for(path):
    return Tokenizer.from_texts(load_texts(path))


def cache(path, tokenizer, cache_dir, log=None):
    return tokencache.cached_tokens(path, tokenizer, cache_dir, "stage-0", "[t]", log)


def as_lists(windows):
    return [(list(map(int, x)), list(map(int, y))) for x, y in windows]


# ------------------------------------------------------------------ windows and reading
@pytest.mark.parametrize("max_seq_len", [1, 2, 3, 5, 8, 40])
def test_windows_are_make_sequences(max_seq_len):
    rng = np.random.default_rng(max_seq_len)
    token_lists = [list(rng.integers(0, 50, size=n)) for n in (1, 2, 3, 9, 10, 11, 17, 0, 4)]
    tokens = np.array([t for ids in token_lists for t in ids], dtype=np.uint16)
    offsets = np.cumsum([0] + [len(ids) for ids in token_lists])
    for examples in (np.arange(len(token_lists)), np.array([1, 4, 6]), np.array([], int)):
        expected, split = make_sequences([token_lists[e] for e in examples], max_seq_len)
        windows = TokenWindows(tokens, offsets, examples, max_seq_len)
        assert as_lists(windows) == [(list(map(int, x)), list(map(int, y)))
                                     for x, y in expected]
        assert windows.split_count == split
        assert len(windows) == len(expected)
        assert windows.target_count() == sum(len(y) for _, y in expected)
        if len(expected) > 2:
            assert as_lists(windows[1:3]) == as_lists(expected[1:3])
            assert as_lists(windows.take([2, 0])) == as_lists([expected[2], expected[0]])


def test_iter_texts_reads_as_load_texts(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes("first line\r\n\n  \nsecond\u2028third </s>\nnaïve café\n".encode())
    streamed = list(iter_texts(path))
    assert [text for text, _ in streamed] == load_texts(path)
    assert streamed[-1][1] == 1.0            # the whole file was read
    as_json = tmp_path / "same.json"
    as_json.write_text(json.dumps(load_texts(path)))
    assert [text for text, _ in iter_texts(as_json)] == load_texts(path)


@pytest.mark.parametrize("content", [b"ok line\nbad \xff byte\n", b"\n \n", b""])
def test_iter_texts_errors_are_load_texts_errors(tmp_path, content):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as expected:
        load_texts(path)
    with pytest.raises(DataError) as streamed:
        list(iter_texts(path))
    assert str(streamed.value) == str(expected.value)


# ------------------------------------------------------------------ reuse and staleness
def test_cache_is_built_once_then_reused(tmp_path):
    path = write_corpus(tmp_path / "corpus.txt")
    tokenizer = tokenizer_for(path)
    cache_dir = tmp_path / "run" / tokencache.CACHE_DIRNAME
    tokens, offsets, said = cache(path, tokenizer, cache_dir)
    assert "built" in said and "first use" in said
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    expected = [tokenizer.encode(t) for t in load_texts(path)]
    assert [list(map(int, tokens[a:b])) for a, b in zip(offsets[:-1], offsets[1:])] == expected
    files = {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()}
    assert sorted(files) == ["stage-0.json", "stage-0.offsets.npy", "stage-0.tokens.npy"]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a valid cache must not be tokenised again")

    original = tokencache.tokenize_file
    tokencache.tokenize_file = no_tokenizing
    try:
        again, again_offsets, said = cache(path, tokenizer, cache_dir)
    finally:
        tokencache.tokenize_file = original
    assert f"{len(tokens):,} tokens from the token cache" in said
    np.testing.assert_array_equal(again, tokens)
    np.testing.assert_array_equal(again_offsets, offsets)
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()} == files
    seal = json.loads((cache_dir / "stage-0.json").read_text())
    assert seal["source"]["size"] == path.stat().st_size
    assert seal["source"]["mtime_ns"] == path.stat().st_mtime_ns
    assert seal["source"]["sha256"] == tokencache.file_sha256(path)
    assert seal["tokenizer"] == tokencache.tokenizer_identity(tokenizer)


def edit_same_size(path):
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("salty", "SALTY"), encoding="utf-8")


def edit_longer(path):
    path.write_text(path.read_text(encoding="utf-8") + "one more line.\n", encoding="utf-8")


@pytest.mark.parametrize("change, reason", [
    (edit_same_size, "the data file's contents changed"),
    (edit_longer, "the data file's size changed"),
    (lambda path: None, "the tokenizer is another one"),
])
def test_stale_cache_is_rebuilt(tmp_path, change, reason):
    path = write_corpus(tmp_path / "corpus.txt")
    cache_dir = tmp_path / "cache"
    cache(path, tokenizer_for(path), cache_dir)
    change(path)
    # a new tokenizer: learnt from the changed file, or, for an unchanged file, with min_count
    tokenizer = (tokenizer_for(path) if change.__name__ != "<lambda>"
                 else Tokenizer.from_texts(load_texts(path), min_count=2))
    tokens, offsets, said = cache(path, tokenizer, cache_dir)
    assert reason in said and "built" in said
    expected = [tokenizer.encode(t) for t in load_texts(path)]
    assert [list(map(int, tokens[a:b])) for a, b in zip(offsets[:-1], offsets[1:])] == expected


def test_damaged_cache_is_rebuilt(tmp_path):
    path = write_corpus(tmp_path / "corpus.txt")
    tokenizer = tokenizer_for(path)
    cache_dir = tmp_path / "cache"
    good, _, _ = cache(path, tokenizer, cache_dir)
    good = np.array(good)
    tokens_file = cache_dir / "stage-0.tokens.npy"
    tokens_file.write_bytes(tokens_file.read_bytes()[:-4])       # truncated
    tokens, _, said = cache(path, tokenizer, cache_dir)
    assert "stage-0.tokens.npy is missing or has the wrong size" in said
    np.testing.assert_array_equal(tokens, good)
    (cache_dir / "stage-0.json").write_text("{not json")
    tokens, _, said = cache(path, tokenizer, cache_dir)
    assert "its description is unreadable" in said
    np.testing.assert_array_equal(tokens, good)


def test_tokenizing_shows_progress(tmp_path, monkeypatch):
    """Plain lines (the log is no terminal): one per chunk once the interval has passed,
    then a summary."""
    path = write_corpus(tmp_path / "corpus.txt", LINES * 400)    # 2,800 examples, 3 chunks
    monkeypatch.setattr(tokencache, "PROGRESS_INTERVAL_S", 0.0)
    log = io.StringIO()
    cache(path, tokenizer_for(path), tmp_path / "cache", log)
    lines = log.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["[t]"] * 4
    assert "37% (1,024 examples" in lines[0] and "ETA" in lines[0]
    assert "100% (2,800 examples" in lines[2]
    assert lines[3].startswith("[t]: tokenizing: 2,800 examples")


def test_missing_data_file_is_a_data_error(tmp_path):
    """A resumed run whose file was removed: the message load_texts gives, not an OSError."""
    path = write_corpus(tmp_path / "corpus.txt")
    tokenizer = tokenizer_for(path)
    cache(path, tokenizer, tmp_path / "cache")
    path.unlink()
    with pytest.raises(DataError, match="corpus.txt: no such data file"):
        cache(path, tokenizer, tmp_path / "cache")
    with pytest.raises(DataError, match="is a directory, expected a data file"):
        cache(tmp_path, tokenizer, tmp_path / "cache")


# ------------------------------------------------------------------ interrupted writes
class Cut(KeyboardInterrupt):
    """Stands for Ctrl-C (or a kill) at a chosen point of the cache write."""


@pytest.mark.parametrize("cut_at", [1, 2, 3])
def test_interrupted_write_leaves_no_bad_cache(tmp_path, monkeypatch, cut_at):
    """An old valid cache, the file changes, and the rebuild is cut before the 1st, 2nd or
    3rd os.replace (tokens, offsets, description): the next use rebuilds from the new file,
    never returns the old tokens, and no temporary file is left behind."""
    path = write_corpus(tmp_path / "corpus.txt")
    cache_dir = tmp_path / "cache"
    cache(path, tokenizer_for(path), cache_dir)
    edit_same_size(path)
    tokenizer = tokenizer_for(path)
    calls = []
    real_replace = os.replace

    def replace(source, target):
        calls.append(target)
        if len(calls) == cut_at:
            raise Cut()
        real_replace(source, target)

    monkeypatch.setattr(tokencache.os, "replace", replace)
    with pytest.raises(Cut):
        cache(path, tokenizer, cache_dir)
    monkeypatch.setattr(tokencache.os, "replace", real_replace)
    assert not (cache_dir / "stage-0.json").exists()
    assert sorted(p.name for p in cache_dir.iterdir() if p.name.startswith(".")) == []
    tokens, offsets, said = cache(path, tokenizer, cache_dir)
    assert "built" in said
    expected = [tokenizer.encode(t) for t in load_texts(path)]
    assert [list(map(int, tokens[a:b])) for a, b in zip(offsets[:-1], offsets[1:])] == expected


def test_interrupted_tokenizing_leaves_no_bad_cache(tmp_path, monkeypatch):
    path = write_corpus(tmp_path / "corpus.txt", LINES * 400)   # several chunks
    tokenizer = tokenizer_for(path)
    cache_dir = tmp_path / "cache"
    cache(path, tokenizer, cache_dir)
    edit_longer(path)
    tokenizer = tokenizer_for(path)
    seen = []
    real_encode = tokenizer.encode

    def encode(text):
        seen.append(text)
        if len(seen) == 1500:                  # in the second chunk of 1024 examples
            raise Cut()
        return real_encode(text)

    monkeypatch.setattr(tokenizer, "encode", encode)
    with pytest.raises(Cut):
        cache(path, tokenizer, cache_dir)
    monkeypatch.setattr(tokenizer, "encode", real_encode)
    assert not (cache_dir / "stage-0.json").exists()
    assert [p.name for p in cache_dir.iterdir() if p.name.startswith(".")] == []
    tokens, offsets, said = cache(path, tokenizer, cache_dir)
    assert "built" in said
    assert len(offsets) - 1 == len(load_texts(path))
    np.testing.assert_array_equal(
        tokens, np.concatenate([tokenizer.encode(t) for t in load_texts(path)]))


# ------------------------------------------------------------------ training
def quiet_train(out_dir, stages, settings, **options):
    with open(os.devnull, "w") as log:
        return train(TINY, out_dir, stages=stages, settings=settings, backend=BACKEND,
                     log=log, plot=False, **options)


def test_training_is_the_same_with_and_without_cache(tmp_path):
    path = write_corpus(tmp_path / "corpus.txt")
    stages = [Stage("text", str(path))]
    settings = TrainSettings(epochs=2, batch_size=3, seed=4)
    cached = quiet_train(tmp_path / "cached", stages, settings)
    assert (tmp_path / "cached" / "token-cache" / "stage-0.json").is_file()
    plain = quiet_train(tmp_path / "plain", stages, settings, token_cache=False)
    assert not (tmp_path / "plain" / "token-cache").exists()
    # the same run again over the first: the cache is reused, and the result is the same
    log = io.StringIO()
    again = train(TINY, tmp_path / "cached", stages=stages, settings=settings,
                  backend=BACKEND, log=log, plot=False)
    assert "tokens from the token cache" in log.getvalue()
    for other in (plain, again):
        assert [(p["train_loss"], p["val_loss"]) for p in other.history] == \
            [(p["train_loss"], p["val_loss"]) for p in cached.history]
        for (name, x), (_, y) in zip(cached.network.named_parameters(),
                                     other.network.named_parameters()):
            np.testing.assert_array_equal(x, y, err_msg=name)
    # and the windows score as the in-memory lists of make_sequences do, bit for bit
    model = load_checkpoint(tmp_path / "cached", backend=BACKEND)
    tokens, offsets, _ = cache(path, model.tokenizer, tmp_path / "cached" / "token-cache")
    windows = TokenWindows(tokens, offsets, np.arange(len(offsets) - 1), TINY.max_seq_len)
    pairs, _ = make_sequences([model.tokenizer.encode(t) for t in load_texts(path)],
                              TINY.max_seq_len)
    assert evaluate(model.network, windows, 4) == evaluate(model.network, pairs, 4)
