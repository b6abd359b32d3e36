"""Regenerate the README's "train on your own text" figures: train each architecture on a
corpus with the BPE tokenizer, then evaluate and export the result, and print one Markdown
table with the machine, the commit, tokens/s and peak memory of every run.

    python scripts/train_own_text.py CORPUS.json [--epochs 1] [--vocab-size 4096]
        [--threads 2] [--out DIR] [--max-examples N]

The corpus is not shipped; the README says how to get Debian's fortunes. Timings depend on
what else runs on the machine: the load average is printed beside them.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# runs the command in a fresh process, so RUSAGE_CHILDREN is that one command's peak
_MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(code)")


def hypermixer(*args, env):
    """(completed process, wall seconds, peak resident memory in KiB) of one command."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m",
                             "hypermixer", *map(str, args)], env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.exit(f"hypermixer {args[0]} failed ({result.returncode}):\n{result.stderr}")
    peak = int(result.stderr.strip().splitlines()[-1])   # KiB on Linux
    return result, time.perf_counter() - started, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="own-text-runs")
    parser.add_argument("--max-examples", type=int, default=None,
                        help="train on the first N examples only (a quicker look)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus)
    examples = json.loads(corpus.read_text(encoding="utf-8"))
    if args.max_examples:
        examples = examples[:args.max_examples]
        corpus = out / "corpus.json"
        corpus.write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for architecture in ("transformer", "hypermixer"):
        run = out / architecture
        _, seconds, peak = hypermixer(
            "train", "--architecture", architecture, "--data", corpus, "--out", run,
            "--overwrite", "--epochs", args.epochs, "--tokenizer", "bpe", "--vocab-size",
            args.vocab_size, "--lr-schedule", "cosine", "--warmup-steps", 50, env=env)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        trained = [p for p in metrics if p["train_loss"] is not None]
        tokens = sum(p["tokens"] for p in trained)
        train_seconds = sum(p["seconds"] for p in trained)
        evaluation, _, _ = hypermixer("evaluate", "--model", run / "best.npz", "--data",
                                      corpus, env=env)
        hypermixer("export", "--model", run / "best.npz", "--out",
                   run / "model.safetensors", env=env)
        config = json.loads((run / "config.json").read_text())
        rows.append((architecture, f"{config['parameters']:,}", f"{tokens / train_seconds:,.0f}",
                     f"{train_seconds:.0f}", f"{peak / 1024:,.0f}",
                     f"{trained[-1]['val_loss']:.3f}", evaluation.stdout.split(" (")[0]))
    print(f"{len(examples):,} examples from {Path(args.corpus).name}, BPE {args.vocab_size}, "
          f"{args.epochs} epoch(s), OMP_NUM_THREADS={args.threads}; commit {commit()}; "
          f"{platform.machine()} {platform.processor() or ''} with {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    header = ("model", "parameters", "training tokens/s", "training s", "peak MB (RSS)",
              "val loss", "evaluate (whole corpus)")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
