"""Time to produce one new token at a given position: the streaming ``hypermixing`` LM against
our Transformer LM with its key/value cache (what ``generate`` uses while the text fits in
max_seq_len) and, for reference, recomputing its whole window (issue 8, generation).

    python benchmarks/generation_latency.py [--threads 1] [--positions 10 100 1000]
                                            [--plot docs/generation_latency.png]

Both models: E=128, H=256, 3 layers, float32, untrained (the cost does not depend on the
weights). max_seq_len is set above the largest position. Streams (hypermixing's running sums,
the Transformer's cache) are fed up to the position, then the next tokens are timed one by
one; the window is as long as the position. Each point is the median of --repeats timings.
"""

import argparse
import time
from statistics import median



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--positions", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--vocab", type=int, default=533)
    parser.add_argument("--plot", default=None, help="PNG to write (needs matplotlib)")
    args = parser.parse_args(argv)

    import numpy as np

    import hypermixer
    from hypermixer import ModelConfig, build_network
    hypermixer.set_num_threads(args.threads)
    top = max(args.positions)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, size=top + args.repeats + 1)

    def network(arch):
        config = ModelConfig(architecture=arch, embedding_dim=128, hidden_dim=256,
                             num_layers=3, max_seq_len=top + args.repeats + 1)
        return build_network(config, args.vocab, seed=0, dtype=np.float32)

    transformer, hypermixing = network("transformer"), network("hypermixing")
    # Untimed warm-up of both, half a second: on this VM a process's first calls run up to
    # 2x slower (README, Performance), which made the first positions (timed first) look
    # slower than the later ones (0.24 ms at positions 10 and 30, 0.145 ms from 100 on).
    until = time.perf_counter() + 0.5
    while time.perf_counter() < until:
        for net in (hypermixing, transformer):
            warm = net.stream()
            for token in ids[:50]:
                warm.feed(int(token))
        transformer.forward(ids[:50])

    def timed_feeds(stream, tokens):
        times = []
        for token in tokens:
            start = time.perf_counter()
            stream.feed(int(token))
            times.append(time.perf_counter() - start)
        return times

    def stream_times(net, pos):
        stream = net.stream()
        for token in ids[:pos]:
            stream.feed(int(token))
        return median(timed_feeds(stream, ids[pos:pos + args.repeats]))

    def whole_stream(net):
        """Every token of one stream timed, positions 0..top+repeats: the mean and the
        worst, which medians at a few positions would not show (a rebuild at one position)."""
        times = timed_feeds(net.stream(), ids)
        return sum(times) / len(times), max(times), int(np.argmax(times))

    rows = []
    for pos in sorted(args.positions):
        window = ids[:pos + 1]
        transformer.forward(window)
        tr = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            transformer.forward(window)
            tr.append(time.perf_counter() - start)
        hm, cache = (stream_times(net, pos) for net in (hypermixing, transformer))
        rows.append((pos, hm, cache, median(tr)))
    print(f"{args.threads} thread(s); ms per new token, medians of {args.repeats}\n")
    print("| position | hypermixing (stream) | Transformer (KV cache) | Transformer (window) |")
    print("| --- | --- | --- | --- |")
    for pos, hm, cache, tr in rows:
        print(f"| {pos} | {hm * 1e3:.3f} | {cache * 1e3:.3f} | {tr * 1e3:.3f} |")
    print(f"\nEvery token of one stream, positions 0..{len(ids) - 1}:")
    for name, net in (("hypermixing (stream)", hypermixing), ("Transformer (KV cache)",
                                                               transformer)):
        mean, worst, where = whole_stream(net)
        print(f"- {name}: mean {mean * 1e3:.3f} ms, worst {worst * 1e3:.3f} ms (position "
              f"{where})")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        pos = [r[0] for r in rows]
        ax.plot(pos, [r[1] * 1e3 for r in rows], "o-", label="hypermixing (running sums)")
        ax.plot(pos, [r[2] * 1e3 for r in rows], "^-", label="Transformer (key/value cache)")
        ax.plot(pos, [r[3] * 1e3 for r in rows], "s--", label="Transformer (recomputed window)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("position of the new token")
        ax.set_ylabel("ms per new token")
        ax.set_title(f"Generation, E=128, 3 layers, {args.threads} thread(s)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
