"""Training tokens/s of the ``hypermixing`` language model against our Transformer LM (issue 8).

    python benchmarks/lm_hypermixing.py [--threads 2] [--rounds 5] [--cases 16x80 2x512 1x2048]

Both models have the same width, depth and feed-forward size (E=128, H=256, 3 layers, the
seeds' size; hypermixing with its defaults: 32 heads, tied generators) and see the same
batches. One training step is the loss, every gradient, global-norm clipping at 1.0 and Adam.
Both run in this process
(they share one OpenMP runtime, so nothing spins against anything); the two alternate step by
step in every round so slow drifts of the machine hit both alike. Reported: median step time
and tokens/s of each, and their ratio (hypermixing / Transformer tokens/s).
"""

import argparse
import os
import sys
import time
from statistics import median


def build(arch, batch, seq_len, vocab):
    import numpy as np

    from hypermixer import ModelConfig, build_network
    config = ModelConfig(architecture=arch, embedding_dim=128, hidden_dim=256, num_layers=3,
                         max_seq_len=seq_len)
    net = build_network(config, vocab, seed=0, dtype=np.float32)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(batch, seq_len))
    targets = rng.integers(0, vocab, size=(batch, seq_len))
    return lambda: net.train_step(ids, targets, None, lr=1e-7, clip_norm=1.0)



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=["16x80", "2x512", "1x2048"],
                        help="BATCHxLENGTH")
    parser.add_argument("--vocab", type=int, default=533)
    args = parser.parse_args(argv)

    import hypermixer
    hypermixer.set_num_threads(args.threads)
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.1f}: other work is running, "
              "timings are noisy", file=sys.stderr)
    print(f"{args.threads} thread(s), {args.rounds} rounds, float32, E=128 H=256 3 layers\n")
    print("| batch x length | hypermixing ms | tokens/s | Transformer ms | tokens/s | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in args.cases:
        batch, seq_len = (int(v) for v in case.split("x"))
        steps = {arch: build(arch, batch, seq_len, args.vocab)
                 for arch in ("hypermixing", "transformer")}
        for step in steps.values():     # warm-up: workspaces, page faults
            step()
            step()
        times = {arch: [] for arch in steps}
        for _ in range(args.rounds):
            for arch, step in steps.items():
                start = time.perf_counter()
                step()
                times[arch].append(time.perf_counter() - start)
        tokens = batch * seq_len
        hm, tr = median(times["hypermixing"]), median(times["transformer"])
        print(f"| {batch} x {seq_len} | {hm * 1e3:.1f} | {tokens / hm:,.0f} | {tr * 1e3:.1f} | "
              f"{tokens / tr:,.0f} | {tr / hm:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
