"""Checkpoints (round trip, atomic save, corrupt files), training (resume, non-finite stop,
causality guard, plots) and generation."""

import json
import os
import sys

import numpy as np
import pytest

import hypermixer.checkpoint as checkpoint_module
import hypermixer.train as train_module
from hypermixer.checkpoint import (FORMAT_NAME, CheckpointError, load_checkpoint,
                                   save_checkpoint)
from hypermixer.generate import generate, generate_ids
from hypermixer.model import (LanguageModel, ModelConfig, NonCausalTrainingError,
                              backend_available, build_network)
from hypermixer.tokenizer import Tokenizer
from hypermixer.train import Stage, TrainingDiverged, TrainSettings, pad_batch, train

BACKEND = "compiled" if backend_available("compiled") else "reference"
TINY = ModelConfig(embedding_dim=8, hidden_dim=12, num_layers=2, max_seq_len=16)
PRETRAIN = ["the sun is a star.", "the moon goes around the earth.", "rain falls from clouds.",
            "plants need water and light.", "the sea is salty.", "birds can fly.",
            "fish swim in water.", "snow is cold."]
CHAT = ["User: what is the sun? Assistant: the sun is a star.",
        "User: what do plants need? Assistant: plants need water and light.",
        "User: can birds fly? Assistant: birds can fly.",
        "User: is snow cold? Assistant: snow is cold."]


@pytest.fixture
def stages(tmp_path):
    pretrain = tmp_path / "pretrain.json"
    pretrain.write_text(json.dumps(PRETRAIN))
    chat = tmp_path / "chat.txt"
    chat.write_text("\n".join(CHAT))
    return [Stage("pretrain", str(pretrain)), Stage("chat", str(chat))]


def quiet_train(out_dir, stages, settings, config=TINY, **options):
    with open(os.devnull, "w") as log:
        return train(config, out_dir, stages=stages, settings=settings, backend=BACKEND,
                     log=log, plot=False, **options)


def trained_network(config=TINY, steps=3):
    tokenizer = Tokenizer.from_texts(PRETRAIN)
    network = build_network(config, len(tokenizer), seed=1, backend=BACKEND)
    pairs = [(ids[:-1], ids[1:]) for ids in map(tokenizer.encode, PRETRAIN)]
    ids, targets, lengths = pad_batch(pairs)
    for _ in range(steps):
        network.train_step(ids, targets, lengths, lr=0.01)
    return network, tokenizer, (ids, targets, lengths)


def assert_same_state(a, b):
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(x, y, err_msg=name)
    for leaf_a, leaf_b in zip(a._leaves(), b._leaves()):
        assert leaf_a._adam_step == leaf_b._adam_step
        for (m1, v1), (m2, v2) in zip(leaf_a._adam_moments, leaf_b._adam_moments):
            np.testing.assert_array_equal(m1, m2)
            np.testing.assert_array_equal(v1, v2)


# ------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_restores_everything(tmp_path):
    network, tokenizer, batch = trained_network()
    path = save_checkpoint(tmp_path / "model.npz", network, tokenizer, {"position": 3})
    loaded = load_checkpoint(path, backend=BACKEND)
    assert loaded.network.config == network.config
    assert loaded.tokenizer.vocabulary == tokenizer.vocabulary
    assert loaded.training_state == {"position": 3}
    assert_same_state(loaded.network, network)
    # and they keep training identically
    a = network.train_step(*batch, lr=0.01)
    b = loaded.network.train_step(*batch, lr=0.01)
    assert a.loss == b.loss
    assert_same_state(loaded.network, network)


def test_shared_hypernetwork_is_still_one_object_after_loading(tmp_path):
    config = ModelConfig(**{**TINY.to_dict(), "share_hypernetwork": True, "num_layers": 3})
    network, tokenizer, _ = trained_network(config)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.npz", network, tokenizer),
                             backend=BACKEND).network
    assert len({id(block.hypernetwork) for block in loaded.blocks}) == 1
    assert loaded.parameters() == network.parameters()
    assert loaded.shared_hypernetwork._adam_step == 3
    assert_same_state(loaded, network)


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    network, tokenizer, batch = trained_network()
    path = save_checkpoint(tmp_path / "checkpoint.npz", network, tokenizer, {"n": 1})
    first = path.read_bytes()
    network.train_step(*batch, lr=0.01)

    def broken_writer(fileobj, arrays):
        fileobj.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "_write_arrays", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, network, tokenizer, {"n": 2})
    assert path.read_bytes() == first
    assert load_checkpoint(path, backend=BACKEND).training_state == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]  # no temp left


def test_corrupt_and_foreign_files_give_clear_errors(tmp_path):
    network, tokenizer, _ = trained_network()
    good = save_checkpoint(tmp_path / "good.npz", network, tokenizer).read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[:len(good) // 2])
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    bare = tmp_path / "bare.npy"
    np.save(bare, np.ones(3))
    for path, message in [(truncated, "truncated or corrupt"), (text, "not a hypermixer"),
                          (foreign, "no format marker"), (bare, "not a hypermixer"),
                          (tmp_path / "missing", "no such checkpoint")]:
        with pytest.raises(CheckpointError, match=message) as info:
            load_checkpoint(path, backend=BACKEND)
        assert str(path) in str(info.value)


def test_wrong_format_version_is_refused(tmp_path):
    network, tokenizer, _ = trained_network()
    path = save_checkpoint(tmp_path / "m.npz", network, tokenizer)
    with np.load(path) as archive:
        arrays = dict(archive)
    meta = json.loads(str(arrays["meta"]))
    meta["format_version"] = 99
    arrays["meta"] = np.array(json.dumps(meta))
    assert str(arrays["format"]) == FORMAT_NAME
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path, backend=BACKEND)


def test_a_directory_means_its_checkpoint_file(tmp_path):
    network, tokenizer, _ = trained_network()
    save_checkpoint(tmp_path / "checkpoint.npz", network, tokenizer)
    assert load_checkpoint(tmp_path, backend=BACKEND).tokenizer.vocabulary == \
        tokenizer.vocabulary


# ------------------------------------------------------------------------ training
def test_training_lowers_validation_loss_and_records_history(tmp_path, stages):
    settings = TrainSettings(epochs=3, batch_size=4, lr=0.02, validation_fraction=0.25)
    result = quiet_train(tmp_path, stages, settings)
    history = result.history
    assert [(p["stage"], p["epoch"]) for p in history] == \
        [("pretrain", e) for e in range(4)] + [("chat", e) for e in range(4)]
    # 6 pretrain and 3 chat training examples, batches of 4: 2 + 1 steps per epoch
    assert history[-1]["step"] == 3 * 2 + 3 * 1
    # every epoch of a stage trains on all of its target tokens once
    assert history[1]["tokens"] == history[2]["tokens"] == history[3]["tokens"] > 0
    assert history[3]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["val_loss"] < history[4]["val_loss"]
    state = load_checkpoint(tmp_path, backend=BACKEND).training_state
    assert state["position"] == {"stage": 1, "epoch": 3, "step": 9, "batch": 0}


def test_resumed_run_ends_where_an_uninterrupted_one_ends(tmp_path, stages, monkeypatch):
    settings = TrainSettings(epochs=2, batch_size=4, lr=0.02, seed=3)
    whole = quiet_train(tmp_path / "whole", stages, settings)

    class Interrupted(Exception):
        pass

    real_save = train_module.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        if os.path.basename(args[0]) == "checkpoint.npz":   # best.npz is written first
            raise Interrupted   # as if the process died right after the first epoch's save

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)
    with pytest.raises(Interrupted):
        quiet_train(tmp_path / "split", stages, settings)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "split", backend=BACKEND).training_state["position"] \
        == {"stage": 0, "epoch": 1, "step": 2, "batch": 0}
    resumed = quiet_train(tmp_path / "split", None, None, config=None, resume=True)

    assert_same_state(resumed.network, whole.network)
    strip = [{k: v for k, v in p.items() if k != "seconds"} for p in whole.history]
    assert [{k: v for k, v in p.items() if k != "seconds"}
            for p in resumed.history] == strip


def test_non_finite_loss_stops_with_the_place_and_keeps_the_last_checkpoint(
        tmp_path, stages, monkeypatch):
    settings = TrainSettings(epochs=2, batch_size=4, lr=0.02)
    calls = []
    real = LanguageModel._loss_locked

    def poisoned(self, token_ids, targets, lengths, with_gradients, in_place=False):
        loss, grads, lengths = real(self, token_ids, targets, lengths, with_gradients, in_place)
        if with_gradients:   # a training step, not an evaluation
            calls.append(1)
            loss = float("nan") if len(calls) == 4 else loss
        return loss, grads, lengths

    monkeypatch.setattr(LanguageModel, "_loss_locked", poisoned)
    with pytest.raises(TrainingDiverged) as info:
        quiet_train(tmp_path, stages, settings)
    message = str(info.value)
    # 2 steps per pretrain epoch: the 4th step is epoch 2, step 4
    assert "stage 'pretrain', epoch 2, step 4" in message
    assert "checkpoint.npz is kept" in message
    state = load_checkpoint(tmp_path, backend=BACKEND).training_state
    assert state["position"] == {"stage": 0, "epoch": 1, "step": 2, "batch": 0}


def test_noncausal_model_trains_only_with_the_override(tmp_path, stages):
    config = ModelConfig(**{**TINY.to_dict(), "causal": False})
    settings = TrainSettings(epochs=1, batch_size=8)
    with pytest.raises(NonCausalTrainingError, match="allow-noncausal"):
        quiet_train(tmp_path / "a", stages, settings, config=config)
    assert not (tmp_path / "a").exists()
    allowed = TrainSettings(epochs=1, batch_size=8, allow_noncausal=True)
    assert quiet_train(tmp_path / "b", stages, allowed, config=config).history


def test_long_examples_are_announced(tmp_path, capsys):
    data = tmp_path / "long.txt"
    data.write_text(" ".join(["word"] * 30) + "\nshort one\n")
    config = ModelConfig(**{**TINY.to_dict(), "max_seq_len": 10})
    train(config, tmp_path / "out", stages=[Stage("long", str(data))],
          settings=TrainSettings(epochs=1, validation_fraction=0), backend=BACKEND,
          plot=False)
    assert "1 examples are longer than max_seq_len=10 tokens and were split" in \
        capsys.readouterr().err


def test_loss_plot_falls_back_to_csv_without_matplotlib(tmp_path, monkeypatch, capsys):
    from hypermixer.plot import plot_history
    history = [{"stage": "s", "epoch": 0, "step": 0, "train_loss": None, "val_loss": 3.0,
                "tokens": 0, "seconds": 0.0},
               {"stage": "s", "epoch": 1, "step": 5, "train_loss": 2.5, "val_loss": 2.0,
                "tokens": 100, "seconds": 1.5}]
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # makes the import fail
    path = plot_history({"m": history}, tmp_path / "loss", log=sys.stderr)
    assert path.suffix == ".csv"
    lines = path.read_text().splitlines()
    assert lines[0].split(",")[:2] == ["model", "stage"] and len(lines) == 3
    assert lines[2].split(",")[4:6] == ["2.5", "2.0"]
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_loss_plot_png_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    from hypermixer.plot import plot_history
    history = [{"stage": "s", "epoch": 1, "step": 1, "train_loss": 2.0, "val_loss": 2.0}]
    path = plot_history({"m": history}, tmp_path / "loss")
    assert path.suffix == ".png" and path.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------ generation
def test_greedy_generation_is_deterministic_and_stops_at_the_end_token():
    network, tokenizer, _ = trained_network(steps=40)
    prompt = tokenizer.encode("the sun is")
    ids = generate_ids(network, prompt, tokenizer.end_id, max_new_tokens=20)
    assert ids == generate_ids(network, prompt, tokenizer.end_id, max_new_tokens=20)
    # greedy: each new token is the argmax of the logits of the text so far
    context = list(prompt)
    for token in ids:
        window = np.array(context[-network.max_seq_len:])
        assert token == int(np.argmax(network.forward(window)[-1]))
        context.append(token)
    assert tokenizer.end_id not in ids[:-1]
    assert ids[-1] == tokenizer.end_id or len(ids) == 20
    assert generate_ids(network, prompt, tokenizer.end_id, max_new_tokens=0) == []


def test_top_1_sampling_equals_greedy_and_sampling_follows_the_seed():
    network, tokenizer, _ = trained_network(steps=10)
    greedy = generate(network, tokenizer, "rain falls", max_new_tokens=6)
    assert generate(network, tokenizer, "rain falls", max_new_tokens=6, temperature=1.0,
                    top_k=1, seed=4) == greedy
    hot = dict(max_new_tokens=6, temperature=5.0, seed=11)
    assert generate(network, tokenizer, "rain falls", **hot) == \
        generate(network, tokenizer, "rain falls", **hot)


def test_prompt_longer_than_the_context_uses_the_last_tokens():
    network, tokenizer, _ = trained_network()
    long_prompt = "the sea is salty. " * 6                  # 30 tokens > max_seq_len 16
    ids = tokenizer.encode(long_prompt)
    assert len(ids) > network.max_seq_len
    first = generate_ids(network, ids, tokenizer.end_id, max_new_tokens=1)
    window = ids[-network.max_seq_len:]
    assert first == [int(np.argmax(network.forward(np.array(window))[-1]))]
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(network, tokenizer, "   ")
