"""The byte-level BPE tokenizer (trained on the user's data, exact round trip for any UTF-8
text, saved inside the checkpoint) and the word tokenizer's --max-vocab / --min-count."""

import json

import numpy as np
import pytest

from hypermixer.checkpoint import load_checkpoint, save_checkpoint
from hypermixer.cli import main
from hypermixer.model import ModelConfig, backend_available, build_network
from hypermixer.tokenizer import END_TOKEN, BPETokenizer, Tokenizer

BACKEND = "compiled" if backend_available("compiled") else "reference"
TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "A journey of a thousand miles begins with a single step.",
         "To be, or not to be: that is the question.",
         "All that glitters is not gold; all who wander are not lost."] * 5
ODD = ["", " ", "  leading and trailing  ", "Tabs\tand\nnew\r\nlines\n",
       "ÜBER straße — “quotes” ‘and’ … ellipsis", "日本語のテキスト、中文字符。",
       "emoji 🙂🚀 and a combining e\u0301 and a zero width\u200bjoiner",
       "numbers 3.14159 -2e10 0x1F", "\x00 control \x07 chars \x7f",
       "never seen: Ωμέγα Привет שלום مرحبا", "</s> inside text"]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.from_texts(TEXTS, vocab_size=300)


def test_round_trip_is_exact_for_any_text(bpe):
    for text in TEXTS + ODD:
        ids = bpe.encode(text)
        assert all(0 <= i < len(bpe) for i in ids)
        assert bpe.decode(ids, skip_end=False) == text, repr(text)


def test_round_trip_of_random_unicode(bpe):
    rng = np.random.default_rng(7)
    for _ in range(50):
        points = rng.integers(1, 0x10FFFF, size=int(rng.integers(1, 30)))
        text = "".join(chr(p) for p in points if not 0xD800 <= p <= 0xDFFF)
        assert bpe.decode(bpe.encode(text), skip_end=False) == text


def test_merges_were_learnt_and_the_end_token_is_one_token(bpe):
    assert len(bpe) == 300
    common = "the quick brown fox"
    assert len(bpe.encode(common)) < len(common.encode())   # fewer tokens than bytes
    assert bpe.encode(END_TOKEN) == [bpe.end_id]
    assert bpe.decode(bpe.encode("stop here " + END_TOKEN)) == "stop here "


def test_bad_sizes_and_ids_are_refused(bpe):
    with pytest.raises(ValueError, match="258"):
        BPETokenizer.from_texts(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe.decode([len(bpe)])


def test_bpe_is_saved_inside_the_checkpoint(tmp_path, bpe):
    network = build_network(ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1,
                                        max_seq_len=8), len(bpe), seed=0, backend=BACKEND)
    save_checkpoint(tmp_path / "m.npz", network, bpe)
    loaded = load_checkpoint(tmp_path / "m.npz", backend=BACKEND).tokenizer
    assert isinstance(loaded, BPETokenizer) and loaded.vocabulary == bpe.vocabulary
    for text in ODD:
        assert loaded.encode(text) == bpe.encode(text)


def test_train_and_generate_with_bpe_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--tokenizer", "bpe", "--vocab-size", "280", "--embedding-dim", "8",
                 "--hidden-dim", "8", "--num-layers", "1", "--max-seq-len", "32",
                 "--backend", BACKEND])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "vocabulary 280" in err
    config = json.loads((out / "config.json").read_text())
    assert config["tokenizer"] == "BPETokenizer" and config["vocab_size"] == 280
    assert isinstance(load_checkpoint(out, backend=BACKEND).tokenizer, BPETokenizer)
    code = main(["generate", "--model", str(out), "--backend", BACKEND, "--temperature", "1",
                 "--seed", "1", "--max-new-tokens", "5", "The quick"])
    assert code in (0, 1), capsys.readouterr().err   # 1: the model ended the text at once


def test_word_tokenizer_max_vocab_and_min_count():
    texts = ["a a a b b c", "a b d"]
    assert Tokenizer.from_texts(texts).vocabulary == ["<unk>", "</s>", "a", "b", "c", "d"]
    # counts a 4, b 3, c 1, d 1: the two most frequent words, alphabetical order kept
    assert Tokenizer.from_texts(texts, max_vocab=4).vocabulary == ["<unk>", "</s>", "a", "b"]
    # a tie at the cut is broken alphabetically
    assert Tokenizer.from_texts(texts, max_vocab=5).vocabulary == \
        ["<unk>", "</s>", "a", "b", "c"]
    assert Tokenizer.from_texts(texts, min_count=2).vocabulary == ["<unk>", "</s>", "a", "b"]
    with pytest.raises(ValueError, match="max_vocab"):
        Tokenizer.from_texts(texts, max_vocab=2)


def test_tokenizer_options_that_do_not_match_are_refused(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "r"),
                 "--vocab-size", "300"])
    assert code == 2 and "--vocab-size is for --tokenizer bpe" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint.npz").exists()
