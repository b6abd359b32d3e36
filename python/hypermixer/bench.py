"""``hypermixer bench``: training-step speed of the compiled layers against the NumPy
reference, at 1 and 2 threads (or --threads ...). The comparison with PyTorch (eager and
torch.compile, each in its own process) lives outside the package: benchmarks/vs_pytorch.py.

One "step" is what training does per batch: forward, backward, one Adam update (for a block:
``forward(x)`` then ``backward(g, lr)``; for a language model: ``train_step``, which adds the
loss, global-norm clipping and the update of every parameter). Inputs are float32, every
sequence full length.

Each thread count runs in a child process whose OMP/OpenBLAS/MKL thread variables are set
before NumPy loads, so both implementations and the peak reference get the same number of
threads. Reported per cell: the median over >= 5 timed samples (a sample repeats
the step until it lasts >= 50 ms, then divides), GFLOP/s from the analytic matmul FLOP count
printed with the table, that rate as a fraction of the same process's NumPy float32
2048^3 matmul rate ("peak"), and the 1 -> 2 thread speedup.
"""

import argparse
import json
import os
import subprocess
import sys
import time

SMALL = dict(E=128, H=256, S=80, L=80, Ht=64, Hh=32)
BIG = dict(E=512, H=2048, S=512, L=512, Ht=256, Hh=128)
VOCAB = 533
IMPLS = ("compiled", "reference")

FORMULAS = [
    "Only matmul FLOPs count (elementwise work, LayerNorm, softmax and Adam are left out);",
    "a step is taken as 3x the forward (backward = 2 matmuls per forward matmul).",
    "HyperMixer bidirectional, per sequence: 2(E Hh + Hh O) hypernetwork + 4 E L Ht token "
    "mixing + 4 L E H channel mixing, O = 2 S Ht + Ht + S",
    "HyperMixer causal, per sequence: 2 L (E Hh + Hh O) hypernetwork (one per position) + "
    "E Ht L (L + 3) token mixing (rows <= t only) + 4 L E H",
    "Transformer, per sequence: 6 L E^2 projections + 2 E L (L + 1) scores and A v (j <= i "
    "only) + 4 L E H feed-forward",
    "hypermixing (LM default: k = E, 32 heads, d_h = E/32, tied), per sequence: 2 L (E d_h + "
    "k d_h) one weight generator + 4 L k d_h causal state and output products + 4 L E H",
    "LM: layers x block + 2 L E V output projection (V = 533), per sequence",
]


# ---------------------------------------------------------------------------- the cases

def _case(name, model, size, batch, causal=False):
    return {"name": name, "model": model, "size": size, "batch": batch, "causal": causal}


def cases(quick):
    if quick:
        out = [_case("HyperMixerBlock bidir", "hypermixer", "small", 8),
               _case("HyperMixerBlock causal", "hypermixer", "small", 8, causal=True),
               _case("TransformerBlock", "transformer", "small", 8),
               _case("HyperMixer LM step", "hypermixer-lm", "small", 16, causal=True)]
        return out
    out = []
    for batch in (1, 8, 32):
        out += [_case("HyperMixerBlock bidir", "hypermixer", "small", batch),
                _case("HyperMixerBlock causal", "hypermixer", "small", batch, causal=True),
                _case("TransformerBlock", "transformer", "small", batch)]
    out.append(_case("HyperMixerBlock bidir", "hypermixer", "big", 8))
    out.append(_case("HyperMixer LM step", "hypermixer-lm", "small", 16, causal=True))
    out.append(_case("Transformer LM step", "transformer-lm", "small", 16))
    out.append(_case("HyperMixing LM step", "hypermixing-lm", "small", 16, causal=True))
    return out


def forward_flops(case):
    """Matmul FLOPs of one forward pass over the batch (see FORMULAS)."""
    d = SMALL if case["size"] == "small" else BIG
    e, h, s, seq, ht, hh = d["E"], d["H"], d["S"], d["L"], d["Ht"], d["Hh"]
    o = 2 * s * ht + ht + s
    channel = 4 * seq * e * h
    if case["model"] == "hypermixing-lm":
        dh = e // 32
        block = 2 * seq * (e * dh + e * dh) + 4 * seq * e * dh + channel
    elif case["model"].startswith("hypermixer"):
        if case["causal"]:
            block = 2 * seq * (e * hh + hh * o) + e * ht * seq * (seq + 3) + channel
        else:
            block = 2 * (e * hh + hh * o) + 4 * e * seq * ht + channel
    else:
        block = 6 * seq * e * e + 2 * e * seq * (seq + 1) + channel
    if case["model"].endswith("-lm"):
        per_sequence = 3 * block + 2 * seq * e * VOCAB   # the default LM has 3 layers
    else:
        per_sequence = block
    return float(per_sequence * case["batch"])


# ---------------------------------------------------------------------------- the steps

def _lm_config(case):
    from .model import ModelConfig
    d = SMALL
    arch = case["model"][:-len("-lm")]
    extra = {}
    if arch == "hypermixer":
        extra = dict(hypernetwork_hidden_dim=d["Hh"], token_mixing_hidden_dim=d["Ht"],
                     causal=True)
    return ModelConfig(architecture=arch, embedding_dim=d["E"], hidden_dim=d["H"],
                       num_layers=3, max_seq_len=d["S"], **extra)


def make_step(case, impl, lr=1e-7):
    """A zero-argument callable running one training step of ``case`` with ``impl``."""
    import numpy as np

    import hypermixer
    from . import reference
    from .model import build_network

    d = SMALL if case["size"] == "small" else BIG
    batch, seq = case["batch"], d["L"]
    rng = np.random.default_rng(0)
    lengths = np.full(batch, seq, dtype=np.int64)
    if case["model"].endswith("-lm"):
        config = _lm_config(case)
        backend = "reference" if impl == "reference" else "compiled"
        net = build_network(config, VOCAB, seed=0, dtype=np.float32, backend=backend)
        ids = rng.integers(0, VOCAB, size=(batch, seq))
        targets = rng.integers(0, VOCAB, size=(batch, seq))
        return lambda: net.train_step(ids, targets, lengths, lr=lr, clip_norm=1.0)

    e, h, s = d["E"], d["H"], d["S"]
    lib = reference if impl == "reference" else hypermixer
    if case["model"] == "hypermixer":
        layer = lib.HyperMixerBlock(e, h, s, hypernetwork_hidden_dim=d["Hh"],
                                    token_mixing_hidden_dim=d["Ht"], causal=case["causal"],
                                    seed=0, dtype=np.float32)
    else:
        layer = lib.TransformerBlock(e, h, s, seed=0, dtype=np.float32)
    x = rng.standard_normal((batch, seq, e)).astype(np.float32)
    g = rng.standard_normal((batch, seq, e)).astype(np.float32)

    def block_step():
        layer.forward(x, lengths)
        layer.backward(g, lr)
    return block_step


def median_seconds(fn, repeats, min_sample=0.05):
    """Median seconds per call over ``repeats`` samples of >= min_sample seconds each."""
    fn()   # warm up: allocations, caches, thread pools
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    per_sample = max(1, int(min_sample / max(once, 1e-9)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_sample):
            fn()
        samples.append((time.perf_counter() - start) / per_sample)
    samples.sort()
    return samples[len(samples) // 2]


def numpy_peak(repeats):
    """GFLOP/s of a float32 2048^3 NumPy matmul in this process (median)."""
    import numpy as np
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    b = rng.standard_normal((2048, 2048)).astype(np.float32)
    c = np.empty_like(a)
    seconds = median_seconds(lambda: np.matmul(a, b, out=c), repeats, min_sample=0.0)
    return 2 * 2048.0 ** 3 / seconds / 1e9


def worker(threads, quick, repeats, impls):
    import hypermixer
    hypermixer.set_num_threads(threads)
    result = {"threads": threads, "peak_gflops": numpy_peak(repeats),
              "load_average_at_start": os.getloadavg()[0], "cpus": os.cpu_count(),
              "rows": []}
    for case in cases(quick):
        for impl in impls:
            step = make_step(case, impl)
            seconds = median_seconds(step, repeats)
            flops = 3 * forward_flops(case)
            result["rows"].append(dict(case, impl=impl, threads=threads, ms=seconds * 1e3,
                                       step_flops=flops, gflops=flops / seconds / 1e9))
            print(f"  [{threads} thr] {case['name']} B={case['batch']} {case['size']} "
                  f"{impl}: {seconds * 1e3:.2f} ms", file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------------------- reporting

def _key(row):
    return (row["name"], row["size"], row["batch"], row["impl"])


def format_table(results):
    threads = [r["threads"] for r in results]
    peaks = {r["threads"]: r["peak_gflops"] for r in results}
    cells = {}
    order = []
    for r in results:
        for row in r["rows"]:
            if _key(row) not in cells:
                cells[_key(row)] = {}
                order.append(_key(row))
            cells[_key(row)][row["threads"]] = row
    lines = []
    peak_text = ", ".join(f"{t} thr {peaks[t]:.1f}" for t in threads)
    lines.append(f"peak = NumPy float32 2048^3 matmul in the same process (GFLOP/s): "
                 f"{peak_text}")
    head = f"{'case':24s} {'size':5s} {'B':>3s} {'impl':10s}"
    for t in threads:
        head += f" | {t} thr:{'ms':>8s} {'GF/s':>6s} {'peak':>5s}"
    if len(threads) > 1:
        head += f" | {threads[0]}->{threads[-1]}"
    head += " | ms / compiled (" + ", ".join(f"{t} thr" for t in threads) + ")"
    lines.append(head)
    lines.append("-" * len(head))
    for key in order:
        name, size, batch, impl = key
        line = f"{name:24s} {size:5s} {batch:3d} {impl:10s}"
        for t in threads:
            row = cells[key].get(t)
            if row is None:
                line += f" | {'':6s}{'-':>8s} {'-':>6s} {'-':>5s}"
            else:
                line += (f" | {'':6s}{row['ms']:8.2f} {row['gflops']:6.1f} "
                         f"{row['gflops'] / peaks[t]:5.0%}")
        if len(threads) > 1:
            first, last = cells[key].get(threads[0]), cells[key].get(threads[-1])
            scale = first["ms"] / last["ms"] if first and last else float("nan")
            line += f" | {scale:5.2f}x"
        if impl != "compiled":
            ratios = []
            for t in threads:
                compiled = cells.get((name, size, batch, "compiled"), {}).get(t)
                mine = cells[key].get(t)
                ratios.append(f"{mine['ms'] / compiled['ms']:6.2f}" if compiled and mine
                              else f"{'-':>6s}")
            line += " | " + " ".join(ratios)
        lines.append(line)
    return "\n".join(lines)


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    threads = [r["threads"] for r in results]
    fig, axes = plt.subplots(len(threads), 1, figsize=(12, 4.4 * len(threads)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        labels = []
        for row in r["rows"]:
            label = f"{row['name']}\n{row['size']} B={row['batch']}"
            if label not in labels:
                labels.append(label)
        impls = [i for i in IMPLS if any(row["impl"] == i for row in r["rows"])]
        width = 0.8 / max(1, len(impls))
        for n, impl in enumerate(impls):
            values = []
            for label in labels:
                match = [row["gflops"] for row in r["rows"] if row["impl"] == impl and
                         f"{row['name']}\n{row['size']} B={row['batch']}" == label]
                values.append(match[0] if match else 0.0)
            ax.bar([i + n * width for i in range(len(labels))], values, width, label=impl)
        ax.axhline(r["peak_gflops"], color="gray", linestyle="--", linewidth=1,
                   label="NumPy 2048^3 matmul")
        ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("GFLOP/s (matmul FLOPs)")
        ax.set_title(f"training step, float32, {r['threads']} thread(s)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="hypermixer bench",
        description="Training-step speed: compiled vs NumPy reference "
                    "(PyTorch peers: benchmarks/vs_pytorch.py in the source tree).")
    parser.add_argument("--quick", action="store_true",
                        help="B=8 small blocks and the HyperMixer LM only, 5 samples")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="samples per cell (>= 5)")
    parser.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--json", default="bench.json", help="results file ('' for none)")
    parser.add_argument("--png", default="bench.png", help="plot file ('' for none)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = max(5, args.repeats)
    if any(t < 1 for t in args.threads):
        parser.error("--threads must be >= 1")
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.quick, repeats, args.impl)))
        return 0
    results = []
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "hypermixer.bench", "--worker", str(threads),
               "--repeats", str(repeats), "--impl", *args.impl]
        if args.quick:
            cmd.append("--quick")
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            print(f"benchmark worker for {threads} thread(s) failed", file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print()
    print("\n".join(FORMULAS))
    print(format_table(results))
    loads = ", ".join(f"{r['load_average_at_start']:.1f}" for r in results)
    print(f"{results[0]['cpus']} CPUs; 1-minute load average when each run started: {loads}")
    if any(r["load_average_at_start"] + r["threads"] > r["cpus"] + 0.5 for r in results):
        print("warning: other work was running, so timings are noisy; when fewer cores are "
              "free than threads, OpenMP threads also wait at every barrier and "
              "multi-thread times mean little")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"formulas": FORMULAS, "sizes": {"small": SMALL, "big": BIG},
                       "results": results}, fh, indent=1)
        print(f"wrote {args.json}")
    if args.png:
        if plot(results, args.png):
            print(f"wrote {args.png}")
        else:
            print("matplotlib is not installed: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
