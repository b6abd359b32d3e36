"""Neighbours of issue 10's classes found late: a tokenizer document that is deeply nested or
holds a huge integer is refused with ValueError (not RecursionError), and the training settings
take NumPy integers as integers (kept JSON-serialisable)."""

import json

import numpy as np
import pytest

from hypermixer.tokenizer import Tokenizer
from hypermixer.train import TrainSettings


@pytest.mark.parametrize("document", [
    '{"vocabulary": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"vocabulary": [' + "9" * 5000 + "]}",
    "not json",
    '{"other": []}',
])
def test_bad_tokenizer_documents_are_refused_with_value_error(document):
    with pytest.raises(ValueError, match="not a saved tokenizer vocabulary"):
        Tokenizer.from_json(document)


def test_train_settings_accept_numpy_integers_and_store_ints():
    settings = TrainSettings(epochs=np.int64(2), batch_size=np.int32(4), seed=np.uint8(3),
                             warmup_steps=np.int16(1), grad_accumulation=np.int64(2),
                             patience=np.int64(1))
    for name in ("epochs", "batch_size", "seed", "warmup_steps", "grad_accumulation",
                 "patience"):
        assert type(getattr(settings, name)) is int
    assert json.loads(json.dumps(settings.__dict__))["epochs"] == 2


def test_train_settings_still_refuse_bools_and_floats():
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=np.bool_(True))
    with pytest.raises(ValueError, match="batch-size"):
        TrainSettings(batch_size=2.0)
