"""Regenerate the README's "Train on your own text" figures: train each architecture on a
corpus with the BPE tokenizer, check the run folder, evaluate and export the result, and print
one Markdown table with the machine, the commit, the load average, tokens/s, epoch time and
peak memory of every run.

    python scripts/fortunes_corpus.py fortunes.json            # the corpus (not shipped)
    python scripts/train_own_text.py fortunes.json [--epochs 1] [--vocab-size 4096]
        [--threads 2] [--out DIR] [--max-examples N] [--eval-examples N]
        [--architectures A B ...] [--json F]

Each command runs in a process of its own (``python -m hypermixer ...`` with
OMP_NUM_THREADS=--threads), so ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read by a small
wrapper is that one command's peak resident memory. Training tokens/s and epoch time are the
trainer's own (metrics.jsonl: training batches only, validation excluded); "wall" is the
whole command (tokenizer learning, tokenising, validation, saving, plot). Timings depend on
what else runs on the machine: the 1-minute load average is printed before and after each run.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = ("transformer", "hypermixer", "hypermixing")
RUN_FILES = ("checkpoint.npz", "best.npz", "metrics.jsonl", "config.json", "loss.png")


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load():
    return os.getloadavg()[0]


# runs the command in a fresh process, so RUSAGE_CHILDREN is that one command's peak
_MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(code)")


def hypermixer(*args, env, echo=False, must_succeed=True):
    """(stdout, stderr, wall seconds, peak resident memory in KiB) of one command."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m",
                             "hypermixer", *map(str, args)], env=env, capture_output=True,
                            text=True)
    seconds = time.perf_counter() - started
    lines = result.stderr.strip().splitlines()
    if echo:
        print("\n".join(lines[:-1]), file=sys.stderr, flush=True)
    if result.returncode != 0 and must_succeed:
        sys.exit(f"hypermixer {args[0]} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout, "\n".join(lines[:-1]), seconds, int(lines[-1])   # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/own-text")
    parser.add_argument("--architectures", nargs="+", choices=ARCHITECTURES,
                        default=list(ARCHITECTURES))
    parser.add_argument("--max-examples", type=int, default=None,
                        help="train on the first N examples only (a quicker look)")
    parser.add_argument("--eval-examples", type=int, default=None, metavar="N",
                        help="evaluate on the first N examples (default: the whole corpus)")
    parser.add_argument("--json", default=None,
                        help="also write the measurements here (after every run)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus)
    examples = json.loads(corpus.read_text(encoding="utf-8"))
    if args.max_examples:
        examples = examples[:args.max_examples]
        corpus = out / "corpus.json"
        corpus.write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    evaluation_data = corpus
    if args.eval_examples:
        evaluation_data = out / "evaluate.json"
        evaluation_data.write_text(json.dumps(examples[:args.eval_examples], ensure_ascii=False),
                                   encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f"{len(examples):,} examples from {Path(args.corpus).name}, BPE {args.vocab_size}, "
          f"{args.epochs} epoch(s), OMP_NUM_THREADS={args.threads}; commit {commit()}; "
          f"{cpu_name()}, {os.cpu_count()} cores; start {time.strftime('%H:%M:%S UTC', time.gmtime())}",
          flush=True)
    records = []
    for architecture in args.architectures:
        run = out / architecture
        load_before = load()
        _, log, wall, peak = hypermixer(
            "train", "--architecture", architecture, "--data", corpus, "--out", run,
            "--overwrite", "--epochs", args.epochs, "--tokenizer", "bpe", "--vocab-size",
            args.vocab_size, "--lr-schedule", "cosine", "--warmup-steps", 50, env=env,
            echo=True)
        load_after = load()
        missing = [name for name in RUN_FILES if not (run / name).is_file()]
        if missing:
            sys.exit(f"{run} lacks {', '.join(missing)}")
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        trained = [p for p in metrics if p["train_loss"] is not None]
        tokens = sum(p["tokens"] for p in trained)
        train_seconds = sum(p["seconds"] for p in trained)
        evaluation, _, eval_wall, eval_peak = hypermixer(
            "evaluate", "--model", run / "best.npz", "--data", evaluation_data, env=env)
        export = run / "model.safetensors"
        _, export_log, _, _ = hypermixer("export", "--model", run / "best.npz", "--out", export,
                                         env=env)
        # generate loads the export (a status of 1 only means the model ended the text at once)
        generated, _, _, _ = hypermixer("generate", "--model", export, "--max-new-tokens", 40,
                                        "Q: What is the meaning of life?", env=env,
                                        must_succeed=False)
        config = json.loads((run / "config.json").read_text())
        record = {
            "architecture": architecture, "parameters": config["parameters"],
            "vocab_size": config["vocab_size"], "tokens_per_epoch": tokens // len(trained),
            "tokens_per_s": tokens / train_seconds,
            "epoch_seconds": [p["seconds"] for p in trained], "train_wall_s": wall,
            "peak_rss_mib": peak / 1024, "load_before": load_before, "load_after": load_after,
            "val_loss": trained[-1]["val_loss"], "train_loss": trained[-1]["train_loss"],
            "evaluate": evaluation.strip(), "evaluate_peak_rss_mib": eval_peak / 1024,
            "export": export_log.strip(), "sample": generated.strip(),
            "run_files": sorted(p.name for p in run.iterdir()),
        }
        records.append(record)
        print(f"{architecture}: {record['tokens_per_s']:,.0f} tokens/s, epoch "
              f"{train_seconds:.0f} s, wall {wall:.0f} s, peak {peak / 1024:,.0f} MiB, load "
              f"{load_before:.1f} -> {load_after:.1f}; files {', '.join(record['run_files'])}"
              f"\n  evaluate: {record['evaluate']}\n  {record['export']}\n  sample: "
              f"{record['sample']!r}", flush=True)
        if args.json:
            write_json(args, len(examples), records)
    header = ("model", "parameters", "training tokens/s", "epoch s", "train wall s",
              "peak RSS MiB", "load avg", "val loss", "evaluate")
    print("\n| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in records:
        row = (r["architecture"], f"{r['parameters']:,}", f"{r['tokens_per_s']:,.0f}",
               "/".join(f"{s:.0f}" for s in r["epoch_seconds"]), f"{r['train_wall_s']:.0f}",
               f"{r['peak_rss_mib']:,.0f}", f"{r['load_before']:.1f}-{r['load_after']:.1f}",
               f"{r['val_loss']:.3f}", r["evaluate"].split(" (")[0])
        print("| " + " | ".join(row) + " |")


def write_json(args, examples, records):
    Path(args.json).write_text(json.dumps({
        "corpus": str(args.corpus), "examples": examples, "epochs": args.epochs,
        "vocab_size": args.vocab_size, "threads": args.threads, "commit": commit(),
        "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
        "eval_examples": args.eval_examples,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
