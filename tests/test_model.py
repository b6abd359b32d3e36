"""The language-model network: configuration, parameter counts, causality, shared
hypernetwork, compiled-vs-reference parity and the training step."""

import numpy as np
import pytest

from hypermixer._layer import ADAM_EPS
from hypermixer.model import (ModelConfig, NonCausalTrainingError, backend_available,
                              build_network, expected_parameter_count, global_norm)
from tests.helpers import assert_close

BACKENDS = [pytest.param("compiled", marks=pytest.mark.skipif(
                not backend_available("compiled"), reason="compiled LM layers not built")),
            "reference"]
TINY = dict(embedding_dim=8, hidden_dim=12, num_layers=2, max_seq_len=7)
VOCAB = 23


def tiny_network(architecture="hypermixer", backend="reference", dtype=np.float64, seed=5,
                 **overrides):
    config = ModelConfig(architecture=architecture, **{**TINY, **overrides})
    return build_network(config, VOCAB, seed=seed, dtype=dtype, backend=backend)


def random_batch(seed, batch=3, seq_len=7, lengths=(7, 4, 1)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(batch, seq_len))
    targets = rng.integers(0, VOCAB, size=(batch, seq_len))
    return ids, targets, np.array(lengths)


# ------------------------------------------------------------------------ configuration
def test_config_defaults_are_the_seeds_configuration():
    config = ModelConfig()
    assert (config.architecture, config.embedding_dim, config.hidden_dim, config.num_layers,
            config.max_seq_len) == ("hypermixer", 128, 256, 3, 80)
    assert config.resolved_hypernetwork_hidden_dim == 32
    assert config.resolved_token_mixing_hidden_dim == 64
    assert config.causal and not config.share_hypernetwork
    assert ModelConfig.transformer().architecture == "transformer"
    assert ModelConfig.hypermixer(num_layers=2).num_layers == 2


def test_config_json_round_trip():
    config = ModelConfig.hypermixer(embedding_dim=32, share_hypernetwork=True,
                                    hypernetwork_hidden_dim=5, causal=False)
    assert ModelConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("fields, error, message", [
    (dict(architecture="rnn"), ValueError, "architecture"),
    (dict(embedding_dim=0), ValueError, "embedding_dim must be >= 1"),
    (dict(num_layers=2.5), TypeError, "num_layers must be an int"),
    (dict(max_seq_len=True), TypeError, "max_seq_len must be an int"),
    (dict(causal="yes"), TypeError, "causal must be True or False"),
    (dict(architecture="transformer", share_hypernetwork=True), ValueError,
     "only apply to the hypermixer"),
    (dict(architecture="transformer", causal=False), ValueError, "always causal"),
])
def test_config_validation_says_what_is_wrong(fields, error, message):
    with pytest.raises(error, match=message):
        ModelConfig(**fields)


def test_config_from_dict_refuses_unknown_keys():
    # ("heads" is a real key now, of the hypermixing architecture)
    with pytest.raises(ValueError, match="unknown model configuration keys: dropout"):
        ModelConfig.from_dict({"dropout": 0.1})


# ------------------------------------------------------------------------ parameter counts
def spec_count(architecture, v, e=128, h=256, layers=3, s=80, hh=32, ht=64, shared=False):
    """SPEC section 2 parameter shapes, summed."""
    embeddings = v * e + s * e                      # token (V,E) + position (S,E)
    output = e * v + v                              # w (E,V) + b (1,V)
    norms = 2 * (e + e)                             # two LayerNorms, gamma and beta each
    mlp = e * h + h + h * e + e                     # ChannelMixingMLP / FeedForward
    if architecture == "transformer":
        return embeddings + layers * (3 * e * e + mlp + norms) + output
    o = 2 * s * ht + ht + s
    hypernetwork = e * hh + hh + hh * o + o
    return embeddings + (1 if shared else layers) * hypernetwork + layers * (mlp + norms) + output


def test_parameter_counts_match_the_spec_formulas_and_table():
    hypermixer = build_network(ModelConfig(), 533, backend="reference")
    transformer = build_network(ModelConfig.transformer(), 533, backend="reference")
    shared = build_network(ModelConfig(share_hypernetwork=True), 533, backend="reference")
    assert hypermixer.parameters() == spec_count("hypermixer", 533) == 1_386_917
    assert transformer.parameters() == spec_count("transformer", 533) == 493_973
    assert shared.parameters() == spec_count("hypermixer", 533, shared=True) == 693_317
    assert hypermixer.blocks[0].parameters() == 413_232
    assert transformer.blocks[0].parameters() == 115_584
    for network in (hypermixer, transformer, shared):
        assert expected_parameter_count(network.config, 533) == network.parameters()


def test_parameter_count_with_non_default_sizes():
    config = ModelConfig(embedding_dim=12, hidden_dim=20, num_layers=2, max_seq_len=9,
                         hypernetwork_hidden_dim=5, token_mixing_hidden_dim=7)
    network = build_network(config, 40, backend="reference")
    assert network.parameters() == spec_count("hypermixer", 40, e=12, h=20, layers=2, s=9,
                                              hh=5, ht=7)


def test_named_parameters_follow_forward_order():
    names = [name for name, _ in tiny_network("transformer").named_parameters()]
    assert names[:2] == ["embeddings.token", "embeddings.position"]
    assert names[2:5] == [f"blocks.0.self_attention.{w}" for w in ("wq", "wk", "wv")]
    assert names[-2:] == ["output.w", "output.b"]
    assert sum(name.startswith("blocks.1.") for name in names) == 11


def test_same_seed_gives_the_same_network_in_both_backends():
    if not backend_available("compiled"):
        pytest.skip("compiled LM layers not built")
    for architecture in ("hypermixer", "transformer", "hypermixing"):
        compiled = tiny_network(architecture, "compiled")
        reference = tiny_network(architecture, "reference")
        for (name, a), (_, b) in zip(compiled.named_parameters(),
                                     reference.named_parameters()):
            assert np.array_equal(a, b), name


# ------------------------------------------------------------------------ forward
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_with_padding_equals_each_sequence_alone(backend):
    network = tiny_network("hypermixer", backend)
    ids, _, lengths = random_batch(1)
    logits = network.forward(ids, lengths)
    assert logits.shape == (3, 7, VOCAB)
    for b, n in enumerate(lengths):
        alone = network.forward(ids[b, :n])
        assert_close(logits[b, :n], alone, np.float64, f"sequence {b}")


def test_bad_token_ids_are_refused():
    network = tiny_network()
    with pytest.raises(ValueError, match="exceeds max_seq_len 7"):
        network.forward(np.zeros(8, dtype=int))
    with pytest.raises(ValueError, match=r"must lie in \[0, 23\)"):
        network.forward(np.array([1, 23]))
    with pytest.raises(TypeError, match="integer"):
        network.forward(np.array([1.0, 2.0]))


# ------------------------------------------------------------------------ causality
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("architecture", ["hypermixer", "transformer", "hypermixing"])
def test_logits_at_t_ignore_tokens_after_t(architecture, backend):
    network = tiny_network(architecture, backend)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, VOCAB, size=7)
    logits = network.forward(ids)
    for t in range(6):
        changed = ids.copy()
        changed[t + 1:] = (ids[t + 1:] + 1 + rng.integers(0, VOCAB - 1, 6 - t)) % VOCAB
        again = network.forward(changed)
        np.testing.assert_array_equal(again[:t + 1], logits[:t + 1])
        assert not np.allclose(again[t + 1:], logits[t + 1:])


def test_noncausal_hypermixer_does_see_the_future_and_refuses_to_train():
    network = tiny_network(causal=False)
    ids = np.arange(7)
    changed = ids.copy()
    changed[-1] = 20
    # the first position changes: this is why such a model must not learn next tokens
    assert not np.allclose(network.forward(ids)[0], network.forward(changed)[0])
    before = [arr.copy() for _, arr in network.named_parameters()]
    with pytest.raises(NonCausalTrainingError, match="allow_noncausal"):
        network.train_step(ids[:-1], ids[1:])
    assert all(np.array_equal(a, b) for a, (_, b) in zip(before, network.named_parameters()))
    network.allow_noncausal_training = True
    assert network.train_step(ids[:-1], ids[1:]).applied


# ------------------------------------------------------------------------ shared hypernetwork
@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_hypernetwork_is_one_object_with_summed_gradients(backend):
    shared = tiny_network(backend=backend, share_hypernetwork=True, num_layers=3)
    separate = tiny_network(backend=backend, num_layers=3)
    hypernetworks = {id(block.hypernetwork) for block in shared.blocks}
    assert len(hypernetworks) == 1
    assert shared.shared_hypernetwork is shared.blocks[2].hypernetwork
    # Give the unshared network the very same function: every block's hypernetwork a copy
    # of the shared one, all other parameters equal.
    for (name, arr) in separate.named_parameters():
        source = dict(shared._named_parameters_with_duplicates())[name]
        arr[...] = source
    ids, targets, lengths = random_batch(3)
    loss_shared, grads_shared = shared.loss_and_gradients(ids, targets, lengths)
    loss_separate, grads_separate = separate.loss_and_gradients(ids, targets, lengths)
    assert loss_shared == pytest.approx(loss_separate, rel=1e-12)
    by_name = dict(zip([n for n, _ in separate.named_parameters()], grads_separate))
    for (name, _), grad in zip(shared.named_parameters(), grads_shared):
        if ".hypernetwork." in name:
            leaf = name.split(".hypernetwork.")[1]
            expected = sum(by_name[f"blocks.{i}.token_mixing.hypernetwork.{leaf}"]
                           for i in range(3))
        else:
            expected = by_name[name]
        assert_close(grad, expected, np.float64, name)


def test_shared_hypernetwork_takes_exactly_one_adam_step():
    network = tiny_network(share_hypernetwork=True, num_layers=3)
    ids, targets, lengths = random_batch(4)
    _, grads = network.loss_and_gradients(ids, targets, lengths)
    before = {name: arr.copy() for name, arr in network.named_parameters()}
    lr = 0.01
    network.apply_gradients(grads, lr)
    assert network.shared_hypernetwork._adam_step == 1
    # One bias-corrected Adam step from zero moments moves p by -lr * g / (|g| + eps).
    for (name, arr), grad in zip(network.named_parameters(), grads):
        expected = before[name] - lr * grad / (np.abs(grad) + ADAM_EPS)
        np.testing.assert_allclose(arr, expected, rtol=1e-12, atol=1e-15, err_msg=name)


# ------------------------------------------------------------------------ training step
def test_train_step_clips_to_the_global_norm():
    networks = [tiny_network(seed=9) for _ in range(3)]   # clipped, by hand, unclipped
    ids, targets, lengths = random_batch(5)
    # A first, unclipped step on all three: Adam's first step is nearly scale-free, so the
    # clipping shows only in the second one, through the moments.
    for network in networks:
        network.train_step(ids, targets, lengths, lr=0.01, clip_norm=None)
    _, grads = networks[1].loss_and_gradients(ids, targets, lengths)
    norm = global_norm(grads)
    assert norm == pytest.approx(np.sqrt(sum((g ** 2).sum() for g in grads)))
    clip = norm / 4
    result = networks[0].train_step(ids, targets, lengths, lr=0.01, clip_norm=clip)
    networks[1].apply_gradients([g * (clip / norm) for g in grads], 0.01)
    networks[2].apply_gradients(grads, 0.01)
    assert result.grad_norm == pytest.approx(norm) and result.applied
    assert result.tokens == lengths.sum()
    pairs = list(zip(*(n.named_parameters() for n in networks)))
    for (name, a), (_, b), _ in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15, err_msg=name)
    assert any(not np.allclose(a, c) for (_, a), _, (_, c) in pairs)


def test_train_steps_lower_the_loss_on_a_fixed_batch():
    network = tiny_network("transformer", seed=1)
    ids, targets, lengths = random_batch(6)
    first = network.loss(ids, targets, lengths)
    for _ in range(30):
        network.train_step(ids, targets, lengths, lr=0.01)
    assert network.loss(ids, targets, lengths) < 0.5 * first


def test_non_finite_loss_changes_nothing():
    network = tiny_network()
    ids, targets, lengths = random_batch(7)
    network.output.b[0, 0] = np.nan
    before = [arr.copy() for _, arr in network.named_parameters()]
    result = network.train_step(ids, targets, lengths)
    assert not result.applied and not np.isfinite(result.loss)
    for a, (_, b) in zip(before, network.named_parameters()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------ parity
@pytest.mark.parametrize("architecture, extra", [
    ("hypermixer", {}), ("transformer", {}), ("hypermixer", {"share_hypernetwork": True})])
def test_compiled_and_reference_networks_agree_in_float64(architecture, extra):
    if not backend_available("compiled"):
        pytest.skip("compiled LM layers not built")
    compiled = tiny_network(architecture, "compiled", **extra)
    reference = tiny_network(architecture, "reference", **extra)
    ids, targets, lengths = random_batch(8)
    assert_close(compiled.forward(ids, lengths), reference.forward(ids, lengths), np.float64,
                 "logits")
    loss_c, grads_c = compiled.loss_and_gradients(ids, targets, lengths)
    loss_r, grads_r = reference.loss_and_gradients(ids, targets, lengths)
    assert loss_c == pytest.approx(loss_r, rel=1e-12)
    for (name, _), gc, gr in zip(compiled.named_parameters(), grads_c, grads_r):
        assert_close(gc, gr, np.float64, f"gradient of {name}")


def test_numpy_integers_in_a_config_are_stored_as_python_ints(tmp_path):
    """ModelConfig accepts NumPy integers; it must store them as int, or the configuration
    cannot be written as JSON (checkpoint, export, config.json)."""
    import json

    from hypermixer.checkpoint import load_checkpoint, save_checkpoint
    from hypermixer.tokenizer import SPECIAL_TOKENS, Tokenizer
    config = ModelConfig(architecture=np.str_("hypermixing"), embedding_dim=np.int64(16),
                         hidden_dim=np.int32(8), num_layers=np.int64(1),
                         max_seq_len=np.uint8(6), heads=np.int64(4),
                         token_mixing_hidden_dim=np.int16(8))
    data = config.to_dict()
    assert all(type(v) is int for k, v in data.items()
               if k not in ("architecture", "share_hypernetwork", "causal", "tied")
               and v is not None)
    assert type(data["architecture"]) is str
    json.dumps(data)
    tokenizer = Tokenizer(list(SPECIAL_TOKENS) + ["a", "b", "c"])
    net = build_network(config, len(tokenizer), seed=0)
    save_checkpoint(tmp_path / "m.npz", net, tokenizer)
    assert load_checkpoint(tmp_path / "m.npz").network.config.to_dict() == data
