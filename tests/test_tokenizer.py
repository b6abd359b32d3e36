"""Tokenizer and data loading: words, punctuation, unknown words, vocabulary, file errors."""

import json

import pytest

from hypermixer.datasets import DataError, load_texts, make_sequences
from hypermixer.tokenizer import END_TOKEN, UNKNOWN_TOKEN, Tokenizer, split_words

TEXTS = ["The cat sat on the mat. </s>",
         "User: Where is the cat? Assistant: On the mat! </s>"]


def test_words_are_lowercased_and_punctuation_is_its_own_token():
    assert split_words("Hello, World! It's 3pm.") == [
        "hello", ",", "world", "!", "it", "'", "s", "3pm", "."]


def test_end_token_stays_whole():
    assert split_words("Bye now.</s>") == ["bye", "now", ".", END_TOKEN]


def test_vocabulary_is_deterministic_and_independent_of_example_order():
    forward = Tokenizer.from_texts(TEXTS)
    backward = Tokenizer.from_texts(TEXTS[::-1])
    assert forward.vocabulary == backward.vocabulary
    assert forward.vocabulary[:2] == [UNKNOWN_TOKEN, END_TOKEN]
    words = forward.vocabulary[2:]
    assert words == sorted(set(w for t in TEXTS for w in split_words(t)) - {END_TOKEN})


def test_unknown_words_become_unk_and_are_never_dropped():
    tokenizer = Tokenizer.from_texts(TEXTS)
    text = "The zebra sat on the sofa."
    ids = tokenizer.encode(text)
    assert len(ids) == len(split_words(text))
    unknown = [w for w in split_words(text) if w not in tokenizer.vocabulary]
    assert unknown == ["zebra", "sofa"]
    assert ids.count(tokenizer.unknown_id) == 2
    assert tokenizer.decode(ids) == "the <unk> sat on the <unk>."


def test_min_count_leaves_rare_words_out():
    tokenizer = Tokenizer.from_texts(TEXTS, min_count=2)
    # "the" appears 4 times and ":" twice; "sat" once
    assert "the" in tokenizer.vocabulary and ":" in tokenizer.vocabulary
    assert "sat" not in tokenizer.vocabulary


def test_round_trip_of_known_text():
    tokenizer = Tokenizer.from_texts(TEXTS)
    text = "user: where is the cat? assistant: on the mat!"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    with_end = tokenizer.encode(text + " </s>")
    assert with_end[-1] == tokenizer.end_id
    assert tokenizer.decode(with_end) == text
    assert tokenizer.decode(with_end, skip_end=False).endswith(END_TOKEN)


def test_json_round_trip_keeps_the_vocabulary():
    tokenizer = Tokenizer.from_texts(TEXTS)
    again = Tokenizer.from_json(tokenizer.to_json())
    assert again.vocabulary == tokenizer.vocabulary
    assert again.encode(TEXTS[1]) == tokenizer.encode(TEXTS[1])


@pytest.mark.parametrize("vocabulary, message", [
    (["a", END_TOKEN], "<unk>"),
    ([UNKNOWN_TOKEN, END_TOKEN, "a", "a"], "duplicate"),
    ([UNKNOWN_TOKEN, END_TOKEN, ""], "non-empty"),
])
def test_bad_vocabularies_are_refused(vocabulary, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer(vocabulary)


def test_decode_refuses_ids_outside_the_vocabulary():
    tokenizer = Tokenizer.from_texts(TEXTS)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([len(tokenizer)])


# ------------------------------------------------------------------------------ data files
def test_json_array_loads_and_gets_end_tokens(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(["One example.", "Two </s>"]))
    assert load_texts(path) == ["One example. </s>", "Two </s>"]


def test_text_file_has_one_example_per_line(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("first line\n\n  second line </s>\n")
    assert load_texts(path) == ["first line </s>", "second line </s>"]


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  "fine",\n  "missing comma" "here"\n]')
    with pytest.raises(DataError) as info:
        load_texts(path)
    message = str(info.value)
    assert str(path) in message
    # the error is on line 3, right after the first string of that line
    assert "line 3, column" in message


def test_non_string_element_names_its_index(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(["ok", "ok", 42]))
    with pytest.raises(DataError, match=r"mixed\.json: array index 2: expected a string"):
        load_texts(path)


def test_top_level_must_be_an_array(tmp_path):
    path = tmp_path / "object.json"
    path.write_text('{"text": "hi"}')
    with pytest.raises(DataError, match="JSON array"):
        load_texts(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good line\ncaf\xe9 au lait\n")
    with pytest.raises(DataError, match=r"latin1\.txt: line 2, column 4: not valid UTF-8"):
        load_texts(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        load_texts(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no examples"):
        load_texts(empty)


def test_long_examples_are_split_into_windows_that_cover_every_target():
    ids = list(range(26))            # 25 (input, target) pairs
    pairs, split = make_sequences([ids, [7, 8, 9], [5]], max_seq_len=10)
    assert split == 1
    long_pairs = pairs[:3]
    assert [len(inputs) for inputs, _ in long_pairs] == [10, 10, 5]
    for inputs, targets in pairs:
        assert len(inputs) == len(targets)
        assert inputs[1:] == targets[:-1]          # targets run one token ahead
    assert sum((t for _, t in long_pairs), []) == ids[1:]  # every target exactly once
    assert pairs[3] == ([7, 8], [8, 9])
    assert len(pairs) == 4                          # the single-token example gives nothing
