"""hypermixer against its strongest PyTorch peers, each in its own process.

    python benchmarks/vs_pytorch.py [--threads 1 2] [--rounds 7] [--quick] [--no-compile]
                                    [--cases block-b1 lm-transformer ...] [--json FILE]

Why separate processes: two OpenMP runtimes (libgomp here, PyTorch's own) in one process on a
small machine spin against each other at every barrier and slow both sides. So every
implementation lives in a worker process of its own, started once per thread count with
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS set before anything loads. The
driver asks one worker at a time for a sample and waits for it, so only one implementation
computes at any moment, and it rotates the order every round ("alternating"), so slow drifts
of the machine hit every implementation alike. Each cell is the median of all its samples;
a sample repeats the step until it lasts at least --sample-seconds and divides, after one
untimed call (a process's first step after idling runs slow on this VM, see worker()).

Implementations:
  hypermixer      the compiled layers (NumPy's matmul gives the float32 2048^3 "peak")
  torch-eager     benchmarks/torch_peer.py: batched matmuls, no masks (every sequence is
                  full), autograd, torch.optim.Adam (fused=True where available),
                  clip_grad_norm_
  torch-compile   the same modules through torch.compile (compile time reported apart,
                  never inside a sample); a case that fails to compile is reported as such.
                  It compiles in its own process (TORCHINDUCTOR_COMPILE_THREADS=1): a pool of
                  compile workers left alive beside the measurements slowed the other
                  implementations' samples.
  speechbrain-eager, speechbrain-compile
                  the hypermixing case only, where speechbrain is installed: SpeechBrain's own
                  ``nnet/hypermixing.py`` module (loaded as check_official.py loads it),
                  untied, eager and through torch.compile. It is the official code, so no
                  question of a weaker rewrite; other cases show "-".
The ratio column is (best peer time) / (hypermixer time): above 1 means hypermixer is faster.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from statistics import median

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ("hypermixer", "torch-eager", "torch-compile", "speechbrain-eager",
         "speechbrain-compile")
SPEECHBRAIN = ("speechbrain-eager", "speechbrain-compile")
SEEDS_SIZE = dict(E=128, H=256, S=80, Ht=64, Hh=32)
BIG_SIZE = dict(E=512, H=2048, S=512, Ht=256, Hh=128)
TINY_SIZE = dict(E=8, H=16, S=8, Ht=4, Hh=2)
VOCAB = 533

# name -> (what, kind, parameters). kind "block": forward + every gradient (input and
# parameters), no optimizer; "step": forward, backward and one Adam update; "lm": one
# language-model training step (loss, gradients, global-norm clipping at 1.0, Adam).
CASES = {
    "block-b1": ("HyperMixerBlock fwd+grads, seeds' size", "block",
                 dict(SEEDS_SIZE, B=1, causal=False)),
    "block-b32": ("HyperMixerBlock fwd+grads, seeds' size", "block",
                  dict(SEEDS_SIZE, B=32, causal=False)),
    "causal-b8": ("HyperMixerBlock causal fwd+grads, seeds' size", "block",
                  dict(SEEDS_SIZE, B=8, causal=True)),
    "big-b8": ("HyperMixerBlock fwd+grads, E=512 H=2048 S=L=512", "block",
               dict(BIG_SIZE, B=8, causal=False)),
    "tiny-b1": ("HyperMixerBlock E=8 step (fwd+bwd+Adam)", "step",
                dict(TINY_SIZE, B=1, causal=False)),
    "lm-hypermixer": ("HyperMixer LM train step, 16x80", "lm",
                      dict(SEEDS_SIZE, B=16, arch="hypermixer")),
    "lm-transformer": ("Transformer LM train step, 16x80", "lm",
                       dict(SEEDS_SIZE, B=16, arch="transformer")),
    "hypermixing-b8": ("HyperMixing fwd+grads, d=256 k=512 L=512 h=4", "hypermixing",
                       dict(d=256, k=512, L=512, heads=4, B=8)),
}
QUICK = ("block-b1", "block-b32", "lm-transformer")


def block_flops(p):
    """Matmul FLOPs of forward + backward (3x the forward) of a bidirectional block."""
    e, h, s, ht, hh, b = p["E"], p["H"], p["S"], p["Ht"], p["Hh"], p["B"]
    o = 2 * s * ht + ht + s
    forward = 2 * (e * hh + hh * o) + 4 * e * s * ht + 4 * s * e * h
    return 3.0 * forward * b


# ============================================================================ worker side

def _inputs(p, seq_len, width, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p["B"], seq_len, width)).astype(np.float32)
    g = rng.standard_normal((p["B"], seq_len, width)).astype(np.float32)
    return x, g


def _lm_config(p):
    from hypermixer import ModelConfig
    extra = {}
    if p["arch"] == "hypermixer":
        extra = dict(hypernetwork_hidden_dim=p["Hh"], token_mixing_hidden_dim=p["Ht"])
    return ModelConfig(architecture=p["arch"], embedding_dim=p["E"], hidden_dim=p["H"],
                       num_layers=3, max_seq_len=p["S"], **extra)


def _ours(kind, p):
    """A zero-argument step for hypermixer's compiled layers (every sequence full)."""
    import numpy as np

    import hypermixer
    if kind == "lm":
        net = hypermixer.build_network(_lm_config(p), VOCAB, seed=0, dtype=np.float32)
        rng = np.random.default_rng(0)
        ids = rng.integers(0, VOCAB, size=(p["B"], p["S"]))
        targets = rng.integers(0, VOCAB, size=(p["B"], p["S"]))
        return lambda: net.train_step(ids, targets, None, lr=1e-7, clip_norm=1.0)
    if kind == "hypermixing":
        layer = hypermixer.HyperMixing(embedding_dim=p["d"], token_mixing_hidden_dim=p["k"],
                                       heads=p["heads"], tied=False, causal=False,
                                       normalize="sum", layer_norm=True,
                                       hypernetwork_bias=False, seed=0, dtype=np.float32)
        x, g = _inputs(p, p["L"], p["d"])
        return lambda: layer.compute_gradients(x, g)
    block = hypermixer.HyperMixerBlock(p["E"], p["H"], p["S"], hypernetwork_hidden_dim=p["Hh"],
                                       token_mixing_hidden_dim=p["Ht"], causal=p["causal"],
                                       seed=0, dtype=np.float32)
    x, g = _inputs(p, p["S"], p["E"])
    if kind == "block":
        return lambda: block.compute_gradients(x, g)

    def step():
        block.forward(x)
        block.backward(g, 1e-7)
    return step


def _adam(torch, params):
    try:
        return torch.optim.Adam(params, lr=1e-7, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=1e-7, betas=(0.9, 0.999), eps=1e-8)


def _speechbrain(p, compiled):
    """HyperMixing forward + every gradient with SpeechBrain's own module (untied)."""
    import torch
    sys.path.insert(0, HERE)
    from check_official import load_speechbrain
    official, _ = load_speechbrain()
    torch.manual_seed(0)
    module = official(input_output_dim=p["d"], hypernet_size=p["k"], tied=False,
                      num_heads=p["heads"])
    x, g = _inputs(p, p["L"], p["d"])
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(g)
    forward = torch.compile(module) if compiled else module

    def step():
        forward(xt, xt, xt)[0].backward(gt)   # (output, dummy attention weights)
        module.zero_grad(set_to_none=True)
        xt.grad = None
    return step


def _peer(kind, p, compiled):
    """The same step in PyTorch, eager or through torch.compile."""
    import numpy as np
    import torch

    sys.path.insert(0, HERE)
    import torch_peer

    import hypermixer

    def maybe_compile(fn):
        return torch.compile(fn) if compiled else fn

    if kind == "lm":
        config = _lm_config(p)
        module = torch_peer.LanguageModel(
            config.architecture, VOCAB, config.embedding_dim, config.hidden_dim,
            config.num_layers, config.max_seq_len, config.resolved_hypernetwork_hidden_dim,
            config.resolved_token_mixing_hidden_dim, True)
        torch_peer.load_parameters(
            module, hypermixer.build_network(config, VOCAB, seed=0, dtype=np.float32))
        rng = np.random.default_rng(0)
        ids = torch.from_numpy(rng.integers(0, VOCAB, size=(p["B"], p["S"])))
        targets = torch.from_numpy(rng.integers(0, VOCAB, size=(p["B"], p["S"])))
        params = list(module.parameters())
        opt = _adam(torch, params)
        loss_fn = maybe_compile(module.loss)

        def lm_step():
            loss = loss_fn(ids, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return lm_step
    if kind == "hypermixing":
        module = torch_peer.HyperMixing(p["d"], p["k"], p["heads"])
        x, g = _inputs(p, p["L"], p["d"])
    else:
        module = torch_peer.HyperMixerBlock(p["E"], p["H"], p["S"], p["Hh"], p["Ht"],
                                            p["causal"])
        torch_peer.load_parameters(module, hypermixer.HyperMixerBlock(
            p["E"], p["H"], p["S"], hypernetwork_hidden_dim=p["Hh"],
            token_mixing_hidden_dim=p["Ht"], causal=p["causal"], seed=0, dtype=np.float32))
        x, g = _inputs(p, p["S"], p["E"])
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(g)
    forward = maybe_compile(module if kind == "hypermixing" else (lambda v: module(v, None)))
    opt = _adam(torch, list(module.parameters())) if kind == "step" else None

    def step():
        forward(xt).backward(gt)
        if opt is not None:
            opt.step()
        module.zero_grad(set_to_none=True)
        xt.grad = None
    return step


def _calibrate(fn, sample_seconds):
    """Calls per sample so that one sample lasts about ``sample_seconds``."""
    fn()
    fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, int(sample_seconds / max(once, 1e-9)))


def _peak(impl):
    """GFLOP/s of a float32 2048^3 matmul: NumPy in our worker, torch in the peers'."""
    import numpy as np
    a = np.random.default_rng(1).standard_normal((2048, 2048)).astype(np.float32)
    if impl == "hypermixer":
        out = np.empty_like(a)
        fn = lambda: np.matmul(a, a, out=out)  # noqa: E731
    else:
        import torch
        at = torch.from_numpy(a)
        out_t = torch.empty_like(at)
        fn = lambda: torch.matmul(at, at, out=out_t)  # noqa: E731
    return fn, 2 * 2048.0 ** 3


def worker(impl, threads):
    """Answer requests on stdin, one JSON line each, until EOF."""
    if impl != "hypermixer":
        import torch
        torch.set_num_threads(threads)
    import hypermixer
    hypermixer.set_num_threads(threads)
    steps = {}
    for line in sys.stdin:
        request = json.loads(line)
        name = request["case"]
        answer = {"case": name}
        try:
            if name not in steps:
                start = time.perf_counter()
                if name == "peak":
                    fn, flops = _peak(impl)
                else:
                    what, kind, p = CASES[name]
                    if kind == "hypermixing" and not hasattr(hypermixer, "HyperMixing"):
                        raise NotImplementedError("hypermixer has no HyperMixing layer yet")
                    if impl == "hypermixer":
                        fn = _ours(kind, p)
                    elif impl in SPEECHBRAIN:
                        fn = _speechbrain(p, impl == "speechbrain-compile")
                    else:
                        fn = _peer(kind, p, impl == "torch-compile")
                    flops = None
                calls = _calibrate(fn, request["sample_seconds"])  # compiles, warms up
                steps[name] = (fn, calls, flops)
                answer["setup_seconds"] = time.perf_counter() - start
            fn, calls, flops = steps[name]
            # One untimed call first: on this VM a process's first step after a few tenths of
            # a second idle (the other workers' turns) ran up to 2x slower, with twice the CPU
            # time, for reasons outside the process (measured: the big block 300-350 ms after
            # 0.3-2 s idle, 180 ms when called back to back). Training runs steps back to
            # back, so the steady state is what is timed, for every implementation alike.
            fn()
            samples = []
            for _ in range(request["samples"]):
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                samples.append((time.perf_counter() - start) / calls)
            answer["seconds"] = samples
            if flops:
                answer["flops"] = flops
        except Exception as exc:   # reported in the table, the run goes on
            answer["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            traceback.print_exc(file=sys.stderr)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


# ============================================================================ driver side

class Worker:
    def __init__(self, impl, threads):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   # torch.compile compiles in its own process: no pool of compile workers
                   # left alive beside the measurements (they slowed the others' samples)
                   TORCHINDUCTOR_COMPILE_THREADS="1")
        self.impl = impl
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", impl,
             "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.failed = {}

    def ask(self, case, samples, sample_seconds):
        if case in self.failed:
            return {"case": case, "error": self.failed[case]}
        self.proc.stdin.write(json.dumps({"case": case, "samples": samples,
                                          "sample_seconds": sample_seconds}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.failed[case] = "worker process died"
            return {"case": case, "error": self.failed[case]}
        answer = json.loads(line)
        if "error" in answer:
            self.failed[case] = answer["error"]
        return answer

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)



def run(threads, impls, cases, rounds, samples, sample_seconds):
    workers = [Worker(impl, threads) for impl in impls]
    results = {}   # (case, impl) -> {"seconds": [...], "setup_seconds": s, "error": ...}
    try:
        for r in range(rounds):
            for case in ["peak"] + cases:
                order = workers[r % len(workers):] + workers[:r % len(workers)]
                for w in order:
                    if case == "peak" and w.impl == "torch-compile":
                        continue
                    if w.impl in SPEECHBRAIN and (case == "peak" or
                                                  CASES[case][1] != "hypermixing"):
                        continue   # SpeechBrain has the HyperMixing module only
                    answer = w.ask(case, samples, sample_seconds)
                    cell = results.setdefault((case, w.impl), {"seconds": []})
                    cell["seconds"].extend(answer.get("seconds", []))
                    for key in ("setup_seconds", "error", "flops"):
                        if key in answer:
                            cell[key] = answer[key]
                    time.sleep(0.05)   # let the last worker's spinning threads go to sleep
            print(f"  [{threads} thr] round {r + 1}/{rounds} done", file=sys.stderr,
                  flush=True)
    finally:
        for w in workers:
            w.close()
    return results


def format_table(threads, results, impls, cases):
    peaks = {impl: results[("peak", impl)] for impl in impls if ("peak", impl) in results}
    peak_gflops = {impl: c["flops"] / median(c["seconds"]) / 1e9
                   for impl, c in peaks.items() if c.get("seconds")}
    best_peak = max(peak_gflops.values()) if peak_gflops else float("nan")
    lines = [f"### {threads} thread(s)",
             "float32 2048^3 matmul peak (GFLOP/s): " +
             ", ".join(f"{'NumPy' if i == 'hypermixer' else 'PyTorch'} {g:.1f}"
                       for i, g in peak_gflops.items()) + f"; best {best_peak:.1f}", ""]
    head = "| case | " + " | ".join(f"{i} ms" for i in impls) + " | best peer / hypermixer |"
    lines += [head, "|" + " --- |" * (len(impls) + 2)]
    for case in cases:
        what = CASES[case][0]
        cells, times = [], {}
        for impl in impls:
            c = results.get((case, impl), {})
            if c.get("seconds"):
                times[impl] = median(c["seconds"])
                cells.append(f"{times[impl] * 1e3:.3f}")
            elif not c and impl in SPEECHBRAIN:
                cells.append("-")
            else:
                cells.append("n/a (" + c.get("error", "not run") + ")")
        peers = [t for i, t in times.items() if i != "hypermixer"]
        ratio = (f"**{min(peers) / times['hypermixer']:.2f}x**"
                 if peers and "hypermixer" in times else "-")
        lines.append(f"| {case}: {what} | " + " | ".join(cells) + f" | {ratio} |")
        if case == "big-b8" and "hypermixer" in times:
            gflops = block_flops(CASES[case][2]) / times["hypermixer"] / 1e9
            lines.append(f"|   big-b8 hypermixer: {gflops:.1f} GFLOP/s = "
                         f"{gflops / best_peak:.0%} of the best matmul peak | | | | |")
        if CASES[case][1] == "lm" and "hypermixer" in times:
            tokens = CASES[case][2]["B"] * CASES[case][2]["S"]
            rates = ", ".join(f"{i} {tokens / t:,.0f}" for i, t in times.items())
            lines.append(f"|   {case} tokens/s: {rates} | | | | |")
    setups = [f"{case} {impl} {c['setup_seconds']:.1f} s"
              for (case, impl), c in results.items()
              if impl == "torch-compile" and "setup_seconds" in c and case != "peak"]
    if setups:
        lines += ["", "torch.compile setup (compile + warm-up, excluded): " + "; ".join(setups)]
    return "\n".join(lines)


def environment():
    import numpy as np
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "python": platform.python_version(), "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        model = [line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")]
        info["cpu"] = model[0] if model else "?"
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
        info["simd"] = [f for f in ("avx512f", "avx2", "fma") if f" {f}" in flags]
    except OSError:
        pass
    try:
        import hypermixer
        info["hypermixer"] = hypermixer.__version__
        info["gemm"] = hypermixer._kernels.gemm_instruction_set()
    except Exception:   # an older build without the binding
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                        capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    try:
        import importlib.metadata
        info["torch"] = importlib.metadata.version("torch")
    except Exception:
        info["torch"] = None
    try:
        info["speechbrain"] = importlib.metadata.version("speechbrain")
    except Exception:
        info["speechbrain"] = None
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=1, help="samples per round and cell")
    parser.add_argument("--sample-seconds", type=float, default=0.1)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--json", default="", help="write the raw samples here")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.threads[0])
        return 0
    cases = args.cases or (list(QUICK) if args.quick else list(CASES))
    impls = ["hypermixer"]
    info = environment()
    if info.get("torch"):
        impls += ["torch-eager"] + ([] if args.no_compile else ["torch-compile"])
        if info.get("speechbrain") and any(CASES[c][1] == "hypermixing" for c in cases):
            impls += ["speechbrain-eager"] + ([] if args.no_compile
                                              else ["speechbrain-compile"])
    print("environment: " + json.dumps(info))
    if info["load_average"][0] > 0.5:
        print(f"warning: load average {info['load_average'][0]:.1f} before the run: other "
              "work is running, timings are noisy and multi-thread ones may mean little")
    tables, raw = [], {}
    for threads in args.threads:
        results = run(threads, impls, cases, args.rounds, args.samples, args.sample_seconds)
        tables.append(format_table(threads, results, impls, cases))
        raw[threads] = {f"{case}|{impl}": cell for (case, impl), cell in results.items()}
    print(f"\nmedians of {args.rounds} rounds x {args.samples} sample(s), each sample "
          f">= {args.sample_seconds} s; implementations alternate, one process each\n")
    print("\n\n".join(tables))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": info, "cases": CASES, "results": raw}, fh, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
