"""Python threads and the compiled layers.

* Two threads, each driving its own layer, get exactly (bit for bit) what the same work gives
  when run one after the other: the kernels keep no hidden global state that one call could
  change under another.
* The kernels release the GIL: another Python thread keeps running during a long kernel call.
* One layer object used from two threads at once is refused with RuntimeError (a layer holds
  its forward cache and workspaces), including through a composite that contains it.
"""

import threading
import time

import numpy as np
import pytest

import hypermixer



def make_layers(kind, seed):
    e, h, s = 16, 24, 12
    if kind == "transformer":
        return hypermixer.TransformerBlock(e, h, s, seed=seed)
    return hypermixer.HyperMixerBlock(e, h, s, hypernetwork_hidden_dim=6,
                                      token_mixing_hidden_dim=5,
                                      causal=(kind == "causal"), seed=seed)


def train(layer, seed, steps=15):
    """A few forward/backward/Adam steps on data of its own; returns everything produced."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        x = rng.normal(size=(3, 12, 16)).astype(np.float32)
        g = rng.normal(size=x.shape).astype(np.float32)
        lengths = rng.integers(1, 13, size=3)
        out.append(layer.forward(x, lengths))
        out.append(layer.backward(g, 1e-3))
    out.extend(a.copy() for _, a in layer.named_parameters())
    return out


def run_in_threads(jobs):
    """Run callables in threads started together; return their results, re-raising errors."""
    results = [None] * len(jobs)
    errors = []
    barrier = threading.Barrier(len(jobs))

    def worker(i, job):
        try:
            barrier.wait()
            results[i] = job()
        except BaseException as exc:   # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("omp_threads", [1, 2])
@pytest.mark.parametrize("kinds", [("bidirectional", "causal"), ("causal", "causal"),
                                   ("bidirectional", "transformer")])
def test_two_threads_two_blocks_match_sequential(kinds, omp_threads):
    hypermixer.set_num_threads(omp_threads)
    sequential = [train(make_layers(kind, seed=i), seed=10 + i) for i, kind in enumerate(kinds)]
    for _ in range(2):   # twice: interleavings differ from run to run
        layers = [make_layers(kind, seed=i) for i, kind in enumerate(kinds)]
        concurrent = run_in_threads([lambda i=i, layer=layer: train(layer, seed=10 + i)
                                     for i, layer in enumerate(layers)])
        for seq, con in zip(sequential, concurrent):
            assert len(seq) == len(con)
            for k, (a, b) in enumerate(zip(seq, con)):
                assert np.array_equal(a, b), f"array {k} differs when run concurrently"


def test_many_threads_many_layer_kinds_match_sequential():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 8))
    g = rng.normal(size=(2, 9, 8))
    lengths = np.array([9, 4])

    def factories():
        return [lambda: hypermixer.LayerNorm(8), lambda: hypermixer.ChannelMixingMLP(8, 12),
                lambda: hypermixer.TokenMixingMLP(8, 9, causal=True),
                lambda: hypermixer.TokenMixingMLP(8, 9),
                lambda: hypermixer.SelfAttention(8)]

    def job(layer):
        results = []
        for _ in range(4):
            results.append(layer.forward(x, lengths))
            gi, grads = layer.compute_gradients(x, g, lengths)
            results.append(gi)
            results.extend(grads)
        return results

    sequential = [job(make()) for make in factories()]
    concurrent = run_in_threads([lambda layer=make(): job(layer) for make in factories()])
    for s, c in zip(sequential, concurrent):
        for a, b in zip(s, c):
            assert np.array_equal(a, b)


# ---------------------------------------------------------------------------- GIL release

def big_layer_and_input():
    """A compiled layer whose single forward kernel takes a noticeable time."""
    layer = hypermixer.ChannelMixingMLP(256, 1024, seed=0)
    x = np.random.default_rng(0).normal(size=(8, 256, 256)).astype(np.float32)
    return layer, x


def timed_forward(layer, x):
    start = time.perf_counter()
    layer.forward(x)
    return time.perf_counter() - start


def test_kernels_release_the_gil():
    hypermixer.set_num_threads(1)
    layer, x = big_layer_and_input()
    timed_forward(layer, x)   # warm up (workspaces allocated)
    alone = min(timed_forward(layer, x) for _ in range(2))
    # While another thread runs the forward, this thread keeps taking small steps; with the
    # GIL held for the whole kernel, one gap would be as long as the kernel itself.
    done = threading.Event()
    worker = threading.Thread(target=lambda: (timed_forward(layer, x), done.set()))
    gaps = []
    last = time.perf_counter()
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        sum(range(100))
    worker.join()
    assert len(gaps) > 10, "the main thread barely ran while the kernel ran"
    assert max(gaps) < max(0.5 * alone, 0.05), (
        f"main thread stalled {max(gaps):.3f} s during a {alone:.3f} s kernel call")


# ---------------------------------------------------------------------------- refusal

def hold_busy(layer, x):
    """Run layer.forward(x) in a thread; returns once the layer and its sublayers are taken
    (or the thread has already finished)."""
    result = {}

    def work():
        result["y"] = layer.forward(x)

    t = threading.Thread(target=work)
    t.start()
    deadline = time.monotonic() + 30
    while (not all(sub._busy.locked() for sub in layer._subtree()) and t.is_alive()
           and time.monotonic() < deadline):
        time.sleep(0)
    return t, result


def assert_refused_while_busy(busy_layer, target, x_big, x_small, g_small):
    """While ``busy_layer`` runs a big forward in another thread, every entry point of
    ``target`` (the same layer, or a sublayer of it) raises RuntimeError."""
    t, result = hold_busy(busy_layer, x_big)
    refused = []
    try:
        for call in (lambda: target.forward(x_small),
                     lambda: target.backward(g_small, 0.1),
                     lambda: target.compute_gradients(x_small, g_small),
                     lambda: target.apply_gradients(
                         [np.zeros_like(a) for _, a in target.named_parameters()], 0.1)):
            if not t.is_alive():
                break
            try:
                call()
            except RuntimeError as exc:
                refused.append(str(exc))
            else:
                refused.append(None)
            still_running = t.is_alive()
            assert refused[-1] is not None or not still_running, (
                "a call from a second thread was accepted while the layer was busy")
    finally:
        t.join()
    assert len(refused) >= 1 and all(r is not None for r in refused), (
        "the big forward finished before any call could be tried; make it bigger")
    assert all("another thread" in r for r in refused)
    return result["y"]


@pytest.mark.parametrize("kind", ["channel", "block"])
def test_one_layer_from_two_threads_is_refused(kind):
    hypermixer.set_num_threads(1)
    if kind == "channel":
        layer, x_big = big_layer_and_input()
    else:
        layer = hypermixer.HyperMixerBlock(64, 256, 64, causal=True, seed=0)
        x_big = np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32)
    x_small = x_big[:1, :3]
    g_small = np.ones_like(x_small)
    params_before = [a.copy() for _, a in layer.named_parameters()]
    y = assert_refused_while_busy(layer, layer, x_big, x_small, g_small)
    # the refused calls changed nothing: parameters, and the busy forward's result
    for (_, a), b in zip(layer.named_parameters(), params_before):
        assert np.array_equal(a, b)
    assert np.array_equal(y, layer.forward(x_big))
    # and the layer works normally afterwards
    layer.forward(x_small)
    layer.backward(g_small, 0.0)


def test_sublayer_of_a_busy_block_is_refused():
    """The block's forward uses its sublayers' caches and workspaces: calling a sublayer
    (or a hypernetwork shared with another block) from a second thread meanwhile would
    corrupt them, so it is refused too."""
    hypermixer.set_num_threads(1)
    block = hypermixer.HyperMixerBlock(64, 256, 64, causal=True, seed=0)
    x_big = np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32)
    x_small = x_big[:1, :3]
    for sub in (block.norm1, block.token_mixing, block.channel_mixing):
        assert_refused_while_busy(block, sub, x_big, x_small, np.ones_like(x_small))
    other = hypermixer.HyperMixerBlock(64, 256, 64, causal=True, hypernetwork=block.hypernetwork)
    assert_refused_while_busy(block, other, x_big, x_small, np.ones_like(x_small))


def test_refusal_from_the_same_thread_is_not_triggered():
    """Sequential reuse from one thread, and from different threads one after the other,
    is fine."""
    layer = hypermixer.HyperMixerBlock(8, 12, 6)
    x = np.random.default_rng(1).normal(size=(2, 6, 8))
    y0 = layer.forward(x)
    (y1,) = run_in_threads([lambda: layer.forward(x)])
    assert np.array_equal(y0, y1)
    assert not layer._busy.locked()


def test_thread_count_changed_from_another_thread_mid_run():
    """set_num_threads is process-wide. Changing it while another thread is inside a kernel
    must neither crash (per-thread workspaces were sized for the old count; the kernels clamp
    to the slots they were given) nor change results (they do not depend on the count)."""
    layer = hypermixer.HyperMixerBlock(16, 24, 12, causal=True, seed=3)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 12, 16)).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    lengths = np.array([12, 3, 7, 12, 1, 9])
    hypermixer.set_num_threads(1)
    want_y = layer.forward(x, lengths)
    want_gi, want_grads = layer.compute_gradients(x, g, lengths)
    stop = threading.Event()

    def toggle():
        n = 0
        while not stop.is_set():
            hypermixer.set_num_threads(1 + n % 2)
            n += 1
            time.sleep(0.0005)

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        for _ in range(30):
            assert np.array_equal(layer.forward(x, lengths), want_y)
            gi, grads = layer.compute_gradients(x, g, lengths)
            assert np.array_equal(gi, want_gi)
            for a, b in zip(grads, want_grads):
                assert np.array_equal(a, b)
    finally:
        stop.set()
        toggler.join()
