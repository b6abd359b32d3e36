#!/usr/bin/env python
"""Resident memory of many compiled forward/backward calls must stay flat.

Runs N (default 10,000) forward+backward steps of a small HyperMixerBlock (causal and
bidirectional alternately, with varying batch shapes and lengths, so the layers' reusable
workspaces are regrown and shrunk), a TransformerBlock and HyperMixingBlocks (causal at 16
heads of width 8, the small-head generator path, and bidirectional), printing the resident set size
(RSS, from /proc/self/statm) at intervals. Exits 1 if RSS grows by more than --limit-mb
between the end of the warm-up and the end of the run.

    python scripts/rss_soak.py [--steps 10000] [--limit-mb 8]
"""

import argparse
import os
import sys
import time

import numpy as np

import hypermixer as hm


def rss_mb():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--limit-mb", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    hm.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    e, s = 16, 12
    layers = [hm.HyperMixerBlock(e, 32, s, causal=True, seed=1),
              hm.HyperMixerBlock(e, 32, s, causal=False, seed=2),
              hm.TransformerBlock(e, 32, s, seed=3),
              hm.HyperMixingBlock(e * 8, 64, heads=16, causal=True, normalize="mean", seed=4),
              hm.HyperMixingBlock(e, 32, heads=2, causal=False, seed=5)]
    # a fixed pool of inputs, so that the workload itself allocates nothing new over time
    shapes = [(1, s), (4, s), (2, 7), (3, 1), (8, s)]
    inputs = []
    for batch, length in shapes:
        x = rng.normal(size=(batch, length, e)).astype(np.float32)
        g = rng.normal(size=x.shape).astype(np.float32)
        lengths = rng.integers(1, length + 1, size=batch)
        inputs.append((x, g, lengths))

    wide = [(np.tile(x, 8), np.tile(g, 8)) for x, g, _ in inputs]

    warmup = min(500, args.steps // 10)
    baseline = None
    start = time.perf_counter()
    report_every = max(1, args.steps // 10)
    for step in range(1, args.steps + 1):
        layer = layers[step % len(layers)]
        x, g, lengths = inputs[step % len(inputs)]
        if layer.embedding_dim != e:   # the wide HyperMixingBlock: its width, the same rows
            x, g = wide[step % len(inputs)]
        layer.forward(x, lengths)
        layer.backward(g, 1e-4)
        if step == warmup:
            baseline = rss_mb()
            print(f"step {step:6d}  rss {baseline:8.1f} MB  (baseline after warm-up)")
        elif step % report_every == 0:
            print(f"step {step:6d}  rss {rss_mb():8.1f} MB")
    final = rss_mb()
    growth = final - baseline
    elapsed = time.perf_counter() - start
    print(f"{args.steps} steps in {elapsed:.1f} s; rss {baseline:.1f} -> {final:.1f} MB "
          f"(growth {growth:+.1f} MB, limit {args.limit_mb} MB)")
    if growth > args.limit_mb:
        print("FAIL: resident memory grew", file=sys.stderr)
        return 1
    print("OK: resident memory flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
