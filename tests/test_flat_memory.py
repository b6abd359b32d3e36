"""Flat parameter memory (issue 9 item 2): one contiguous buffer per root, named_parameters()
as views into it, one fused optimizer call per step (global-norm clipping + Adam)."""

import numpy as np
import pytest

import hypermixer
from hypermixer import _kernels, reference
from hypermixer.model import ModelConfig, build_network, expected_parameter_count

MODULES = {"compiled": hypermixer, "reference": reference}
B1, B2, EPS = 0.9, 0.999, 1e-8


def tiny_block(module, dtype=np.float64, seed=4):
    return module.HyperMixerBlock(6, 10, 5, hypernetwork_hidden_dim=3,
                                  token_mixing_hidden_dim=4, causal=True, seed=seed,
                                  dtype=dtype)


def tiny_lm(backend, dtype=np.float64, share=False, arch="hypermixer"):
    kw = dict(share_hypernetwork=share) if arch == "hypermixer" else {}
    config = ModelConfig(architecture=arch, embedding_dim=8, hidden_dim=12, num_layers=2,
                         max_seq_len=6, **kw)
    return build_network(config, 11, seed=3, dtype=dtype, backend=backend)


def batch(seed=0, vocab=11):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(3, 6))
    targets = rng.integers(0, vocab, size=(3, 6))
    return ids, targets, np.array([6, 4, 2])


def assert_tiles_buffer(layer):
    flat = layer.parameter_buffer()
    assert flat.ndim == 1 and flat.flags.c_contiguous
    offset = 0
    for name, arr in layer.named_parameters():
        assert np.shares_memory(arr, flat), name
        # each view starts where the previous one ended: the buffer is tiled exactly
        start = (arr.__array_interface__["data"][0] - flat.__array_interface__["data"][0])
        assert start == offset * flat.itemsize, name
        offset += arr.size
    assert offset == flat.size == layer.parameters()


@pytest.mark.parametrize("impl", MODULES)
def test_block_parameters_are_views_of_one_buffer(impl):
    block = tiny_block(MODULES[impl])
    assert_tiles_buffer(block)
    for leaf_name in ("norm1", "token_mixing", "norm2", "channel_mixing"):
        for _, arr in getattr(block, leaf_name).named_parameters():
            assert np.shares_memory(arr, block.parameter_buffer())
    # writing through a view is writing the parameter (the storage is live)
    block.norm1.gamma[0, 0] = 7.0
    assert block.parameter_buffer()[0] == 7.0


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("arch", ["hypermixer", "transformer", "hypermixing"])
def test_model_parameters_are_views_of_one_buffer(backend, arch):
    net = tiny_lm(backend, arch=arch)
    assert_tiles_buffer(net)
    assert net.parameter_buffer().size == expected_parameter_count(net.config, 11)


def test_same_initial_values_as_per_layer_construction():
    # gathering copies the seeded draws: compiled and reference still start identical
    for (n1, a), (n2, b) in zip(tiny_lm("compiled").named_parameters(),
                                tiny_lm("reference").named_parameters()):
        assert n1 == n2 and np.array_equal(a, b)


def test_shared_hypernetwork_is_stored_once_and_steps_once():
    net = tiny_lm("compiled", share=True)
    assert_tiles_buffer(net)
    assert net.parameter_buffer().size == expected_parameter_count(net.config, 11)
    ids, targets, lengths = batch()
    _, grads = net.loss_and_gradients(ids, targets, lengths)
    names = [name for name, _ in net.named_parameters()]
    result = net.train_step(ids, targets, lengths, lr=1e-3, clip_norm=None)
    assert result.applied
    assert net._adam_step == net.shared_hypernetwork._adam_step == 1
    # after one step m = (1 - beta1) * g: the shared gradient (summed over both blocks)
    # entered the moment exactly once
    hyper = net.shared_hypernetwork
    for (m, _), grad_name in zip(hyper._adam_moments, ("w1", "b1", "w2", "b2")):
        index = names.index(f"blocks.0.token_mixing.hypernetwork.{grad_name}")
        assert np.allclose(m, (1 - B1) * grads[index], rtol=1e-12, atol=0)


def count_calls(monkeypatch):
    calls = []
    real = _kernels.adam_step

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_kernels, "adam_step", counted)
    return calls


def test_one_optimizer_call_per_step(monkeypatch):
    calls = count_calls(monkeypatch)
    net = tiny_lm("compiled")
    net.train_step(*batch(), lr=1e-3)
    assert len(calls) == 1
    block = tiny_block(hypermixer)
    x = np.random.default_rng(1).normal(size=(2, 5, 6))
    block.forward(x)
    block.backward(np.ones_like(x), 1e-3)
    assert len(calls) == 2


def numpy_clip_adam(params, grads, m, v, step, lr, clip):
    """Global-norm clipping then Adam, all in float64, written out independently here."""
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    scale = clip / norm if norm > clip else 1.0
    out = []
    for p, g, mm, vv in zip(params, grads, m, v):
        g = g * scale
        mm[...] = B1 * mm + (1 - B1) * g
        vv[...] = B2 * vv + (1 - B2) * g * g
        m_hat = mm / (1 - B1 ** step)
        v_hat = vv / (1 - B2 ** step)
        out.append(p - lr * m_hat / (np.sqrt(v_hat) + EPS))
    return out, norm


def split(flat, like):
    out, offset = [], 0
    for arr in like:
        out.append(flat[offset:offset + arr.size].reshape(arr.shape).copy())
        offset += arr.size
    return out


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_train_step_equals_numpy_clipping_and_adam(backend, clip):
    # each step is checked from the model's own state (parameters and moments), so rounding
    # noise of earlier steps is not amplified by Adam's normalisation of tiny gradients
    net = tiny_lm(backend)
    store = net._root_store()
    for step in (1, 2, 3):
        ids, targets, lengths = batch(step)
        _, grads = net.loss_and_gradients(ids, targets, lengths)
        params = [a.copy() for _, a in net.named_parameters()]
        if step == 1:
            m = [np.zeros_like(a) for a in params]
            v = [np.zeros_like(a) for a in params]
        else:
            m, v = split(store.m, params), split(store.v, params)
        want, norm = numpy_clip_adam(params, grads, m, v, step, 1e-2, clip)
        result = net.train_step(ids, targets, lengths, lr=1e-2, clip_norm=clip)
        assert result.applied and np.isclose(result.grad_norm, norm, rtol=1e-12)
        assert net._adam_step == step
        if clip < 1:
            assert norm > clip   # the clipping branch really ran
        for (name, got), expected in zip(net.named_parameters(), want):
            assert np.allclose(got, expected, rtol=1e-12, atol=1e-15), name
        for got, expected in zip(split(store.m, params), m):
            assert np.allclose(got, expected, rtol=1e-12, atol=1e-300)


def test_gradient_buffer_step_equals_train_step():
    # the data-parallel path: fill the flat gradients, (all-reduce them), one fused step
    a, b = tiny_lm("compiled", np.float32), tiny_lm("compiled", np.float32)
    ids, targets, lengths = batch(5)
    result = a.train_step(ids, targets, lengths, lr=1e-2, clip_norm=0.1)
    loss, flat = b.loss_and_gradient_buffer(ids, targets, lengths)
    assert flat is b.gradient_buffer() and flat.size == b.parameter_buffer().size
    norm, applied = b.step_from_gradient_buffer(1e-2, clip_norm=0.1)
    assert applied and norm == result.grad_norm and loss == result.loss
    assert np.array_equal(a.parameter_buffer(), b.parameter_buffer())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("arch, share", [("hypermixer", False), ("hypermixer", True),
                                         ("transformer", False), ("hypermixing", False)])
def test_gradients_written_in_place_equal_the_copied_ones(arch, share, dtype):
    # train_step and loss_and_gradient_buffer let the one-call blocks and the output layer
    # write straight into the flat gradient buffer (Sequential._backward's grad_views);
    # loss_and_gradients hands out fresh arrays. Both must be the same numbers, bit for bit,
    # including a hypernetwork shared by the blocks (its gradients summed, never in place).
    a = tiny_lm("compiled", dtype, share=share, arch=arch)
    b = tiny_lm("compiled", dtype, share=share, arch=arch)
    ids, targets, lengths = batch(7)
    views = a._root_store().gradient_views()
    taken = a._enter()
    try:
        grads_in_place = a._loss_locked(ids, targets, lengths, True, in_place=True)[1]
    finally:
        a._leave(taken)
    written = [name for (name, _), g, v in zip(a.named_parameters(), grads_in_place, views)
               if g is v]
    # the blocks (unless they share a hypernetwork) and the output layer wrote in place
    expected = [name for name, _ in a.named_parameters()
                if name.startswith("output.") or (name.startswith("blocks.") and not share)]
    assert written == expected
    loss, flat = a.loss_and_gradient_buffer(ids, targets, lengths)
    loss_b, grads = b.loss_and_gradients(ids, targets, lengths)
    assert loss == loss_b
    assert not any(np.shares_memory(g, b.gradient_buffer()) for g in grads)   # caller's own
    assert np.array_equal(flat, np.concatenate([g.ravel() for g in grads]))
    assert views is a._root_store().gradient_views()
    result = a.train_step(ids, targets, lengths, lr=1e-2, clip_norm=0.5)
    b.train_step(ids, targets, lengths, lr=1e-2, clip_norm=0.5)
    assert result.applied
    assert np.array_equal(a.parameter_buffer(), b.parameter_buffer())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_kernel_threads_bit_identical_and_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    n = 300_001   # past the parallel threshold and not a multiple of the norm block
    grad = rng.normal(size=n).astype(dtype)
    start = [rng.normal(size=n).astype(dtype), rng.random(n).astype(dtype) * 0.1,
             rng.random(n).astype(dtype) * 0.01]
    results = []
    for threads in (1, 2):
        hypermixer.set_num_threads(threads)
        p, m, v = (a.copy() for a in start)
        partial = np.empty(_kernels.norm_partial_size(n))
        norm = _kernels.adam_step(p, m, v, grad, partial, 1e-3, B1, B2, EPS, 3, 10.0)
        results.append((norm, p, m, v))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1:], results[1][1:]):
        assert np.array_equal(a, b)
    norm64 = np.sqrt(np.sum(grad.astype(np.float64) ** 2))
    assert np.isclose(results[0][0], norm64, rtol=1e-12)
    assert norm64 > 10.0
    want, _ = numpy_clip_adam([start[0].astype(np.float64)], [grad.astype(np.float64)],
                              [start[1].astype(np.float64)], [start[2].astype(np.float64)],
                              3, 1e-3, 10.0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.allclose(results[0][1], want[0], rtol=tol, atol=tol)


def test_non_finite_norm_updates_nothing():
    n = 10
    p, m, v = np.ones(n), np.zeros(n), np.zeros(n)
    grad = np.ones(n)
    grad[3] = np.nan
    partial = np.empty(_kernels.norm_partial_size(n))
    norm = _kernels.adam_step(p, m, v, grad, partial, 1e-3, B1, B2, EPS, 1, 1.0)
    assert np.isnan(norm)
    assert np.array_equal(p, np.ones(n)) and not m.any() and not v.any()


@pytest.mark.parametrize("impl", MODULES)
def test_sublayer_used_directly_after_gathering(impl):
    # a sublayer called as a root re-homes its parameters (values and Adam state kept);
    # the block gathers them back on its next use, and both keep training correctly
    module = MODULES[impl]
    block, twin = tiny_block(module), tiny_block(module)
    rng = np.random.default_rng(2)
    x, g = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 5, 6))
    for layer in (block, twin):
        layer.forward(x)
        layer.backward(g, 1e-2)
    norm = block.norm2
    norm.forward(x)
    norm.backward(g, 1e-2)
    assert_tiles_buffer(norm)   # norm2 is now a root of its own
    # same update applied by hand on the twin's norm2 through compute + apply
    _, grads = twin.norm2.compute_gradients(x, g)
    twin.norm2.apply_gradients(grads, 1e-2)
    for (n1, a), (_, b) in zip(block.named_parameters(), twin.named_parameters()):
        assert np.array_equal(a, b), n1
    block.forward(x)
    block.backward(g, 1e-2)
    twin.forward(x)
    twin.backward(g, 1e-2)
    assert_tiles_buffer(block)
    for (n1, a), (_, b) in zip(block.named_parameters(), twin.named_parameters()):
        assert np.array_equal(a, b), n1


def test_checkpoint_round_trip_keeps_the_flat_adam_state(tmp_path):
    from hypermixer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    import io
    import json
    import zipfile
    from hypermixer.tokenizer import SPECIAL_TOKENS, Tokenizer
    net = tiny_lm("compiled")
    tokenizer = Tokenizer(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(11 - 2)])
    for step in (1, 2):
        net.train_step(*batch(step), lr=1e-2)
    path = save_checkpoint(tmp_path / "c.npz", net, tokenizer)
    loaded = load_checkpoint(path).network
    assert loaded._adam_step == 2
    for name in ("params", "m", "v"):
        assert np.array_equal(getattr(loaded._root_store(), name),
                              getattr(net._root_store(), name))
    # a file whose layers disagree on the step count cannot map onto one counter: refused
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(np.load(path)["meta"].item())
    meta["adam_steps"][0] = 1
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(meta)))
    members["meta.npy"] = buf.getvalue()
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(CheckpointError, match="step counts differ"):
        load_checkpoint(bad)
