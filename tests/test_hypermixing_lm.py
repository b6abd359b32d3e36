"""The hypermixing language model (issue 8 items 4-5): build, parameter count, no length
limit, training step, causality, streaming generation equal to a full forward."""

import numpy as np
import pytest

from hypermixer.generate import generate_ids
from hypermixer.model import ModelConfig, build_network, expected_parameter_count

SMALL = dict(architecture="hypermixing", embedding_dim=16, hidden_dim=24, num_layers=2,
             max_seq_len=12, heads=4)


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_builds_and_counts(backend):
    config = ModelConfig(**SMALL)
    net = build_network(config, 30, seed=1, backend=backend)
    assert net.parameters() == expected_parameter_count(config, 30)
    names = [n for n, _ in net.named_parameters()]
    assert names[0] == "embeddings.token"          # no position table
    assert "blocks.0.hypermixing.hyper.w1_gen.fc1_weights" in names


def test_same_parameters_both_backends_and_parity():
    config = ModelConfig(**SMALL)
    c = build_network(config, 30, seed=2, dtype=np.float64)
    r = build_network(config, 30, seed=2, dtype=np.float64, backend="reference")
    for (n, a), (_, b) in zip(c.named_parameters(), r.named_parameters()):
        assert np.array_equal(a, b), n
    ids = np.random.default_rng(0).integers(0, 30, size=(2, 9))
    lengths = np.array([9, 5])
    lc, gc = c.loss_and_gradients(ids, ids, lengths)
    lr, gr = r.loss_and_gradients(ids, ids, lengths)
    assert abs(lc - lr) <= 1e-12 * abs(lr)
    for (n, _), a, b in zip(c.named_parameters(), gc, gr):
        assert np.abs(a - b).max() <= 1e-10 * max(np.abs(b).max(), 1e-12), n


def test_inputs_longer_than_max_seq_len_are_accepted():
    net = build_network(ModelConfig(**SMALL), 30, seed=1)
    logits = net.forward(np.arange(40) % 30)   # max_seq_len is 12: only the training window
    assert logits.shape == (40, 30) and np.isfinite(logits).all()


def test_causal_logits():
    net = build_network(ModelConfig(**SMALL), 30, seed=1, dtype=np.float64)
    ids = np.random.default_rng(1).integers(0, 30, size=20)
    full = net.forward(ids)
    changed = ids.copy()
    changed[10:] = (changed[10:] + 7) % 30
    assert np.array_equal(net.forward(changed)[:10], full[:10])


def test_training_lowers_the_loss():
    net = build_network(ModelConfig(**SMALL), 30, seed=1)
    ids = np.tile(np.arange(10), (4, 1))
    first = net.train_step(ids[:, :-1], ids[:, 1:], lr=3e-3).loss
    for _ in range(30):
        last = net.train_step(ids[:, :-1], ids[:, 1:], lr=3e-3).loss
    assert last < 0.5 * first


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_streaming_equals_full_forward_past_100(backend):
    config = ModelConfig(**dict(SMALL, num_layers=2))
    net = build_network(config, 30, seed=3, dtype=np.float64, backend=backend)
    ids = np.random.default_rng(2).integers(0, 30, size=130 if backend == "compiled" else 104)
    full = net.forward(ids)
    stream = net.stream()
    for t, token in enumerate(ids):
        logits = stream.feed(token)
        if t >= 95 or t < 3:
            assert np.abs(logits - full[t]).max() <= 1e-10 * np.abs(full[t]).max(), t


def test_generate_uses_the_stream():
    net = build_network(ModelConfig(**SMALL), 30, seed=4, dtype=np.float64)
    prompt = [1, 2, 3]
    new = generate_ids(net, prompt, end_id=29, max_new_tokens=20)
    # greedy decoding by full forwards over the whole text gives the same tokens
    context = list(prompt)
    for token in new:
        assert int(np.argmax(net.forward(np.array(context))[-1])) == token
        context.append(token)


def test_config_checks():
    with pytest.raises(ValueError, match="heads"):
        ModelConfig(architecture="hypermixing", heads=3)
    with pytest.raises(ValueError, match="heads only"):
        ModelConfig(architecture="transformer", heads=4)
    with pytest.raises(ValueError, match="hypermixer architecture only"):
        ModelConfig(architecture="hypermixing", share_hypernetwork=True)
    assert ModelConfig(architecture="hypermixing").resolved_heads == 32
    # to_dict stores the resolved tying (and heads): the round trip gives them explicitly
    assert ModelConfig.from_dict(ModelConfig(**SMALL).to_dict()) == ModelConfig(**SMALL,
                                                                                tied=True)
    assert ModelConfig(architecture="hypermixing").resolved_tied
    with pytest.raises(ValueError, match="tied only"):
        ModelConfig(architecture="transformer", tied=True)
    with pytest.raises(TypeError, match="tied"):
        ModelConfig(architecture="hypermixing", tied=1)


def test_saved_configuration_keeps_its_heads(tmp_path, monkeypatch):
    """Configurations store the resolved heads and tying; a checkpoint written before they
    did (heads = null, no "tied" key) meant the old defaults, 8 heads and two generators, and
    loads so, not with today's 32 tied heads."""
    from hypermixer import model as model_module
    from hypermixer.checkpoint import load_checkpoint, save_checkpoint
    from hypermixer.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_texts(["a b c d e f g"])
    base = dict(architecture="hypermixing", embedding_dim=32, hidden_dim=24, num_layers=1,
                max_seq_len=8)
    assert ModelConfig(**base).to_dict()["heads"] == 8     # 32 heads, but at least 4 wide
    assert ModelConfig(**base).to_dict()["tied"] is True
    old = build_network(ModelConfig(**base, heads=8, tied=False), len(tokenizer), seed=3)

    def old_to_dict(self):
        # the writer of then: heads stored as null, no "tied" key
        data = dict(model_module.dataclasses.asdict(self), heads=None)
        del data["tied"]
        return data

    monkeypatch.setattr(model_module.ModelConfig, "to_dict", old_to_dict)
    save_checkpoint(tmp_path / "old.npz", old, tokenizer)
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path / "old.npz").network
    assert loaded.config.resolved_heads == 8 and loaded.config.resolved_tied is False
    assert len(list(loaded.named_parameters())) == len(list(old.named_parameters()))
    for (n, a), (_, b) in zip(old.named_parameters(), loaded.named_parameters()):
        assert np.array_equal(a, b), n
