"""Regenerate the README's "What the default run does" figures: the default run's log and
wall time, and the ``hypermixer compare`` table, with the machine, the commit and the load
average; ``--docs`` also copies the two loss plots to docs/loss.png and docs/compare.png.

    python scripts/readme_figures.py [--out DIR] [--threads 2] [--docs] [--epochs N]

The other figures have scripts of their own: "Performance" benchmarks/vs_pytorch.py and
benchmarks/bench.py, "Train on your own text" scripts/train_own_text.py. Timings depend on
what else runs on the machine (a loaded 2-core machine ran the default run 10x slower): the
load average is printed before and after each command; take README numbers on a quiet one.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_own_text import ROOT, commit, cpu_name, load  # noqa: E402


def hypermixer(*args, env):
    """(stdout, stderr, wall seconds) of one command, its output echoed."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hypermixer", *map(str, args)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"hypermixer {args[0]} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout, result.stderr, time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/readme-figures", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--docs", action="store_true",
                        help="copy the plots over docs/loss.png and docs/compare.png")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per stage instead of the default (a quick look only: "
                             "the README shows the defaults)")
    args = parser.parse_args(argv)
    epochs = [] if args.epochs is None else ["--epochs", args.epochs]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f"commit {commit()}; {cpu_name()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
          f"{args.threads}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")

    run = args.out / "default"
    before = load()
    _, log, wall = hypermixer("train", "--out", run, "--overwrite", *epochs, env=env)
    print(f"$ hypermixer train --out {run} {' '.join(map(str, epochs))}\n```\n{log.strip()}\n```")
    print(f"{wall:.1f} s wall clock; load average {before:.1f} before, {load():.1f} after\n")

    before = load()
    table, log, wall = hypermixer("compare", "--out", args.out / "compare", "--overwrite",
                                  *epochs, env=env)
    print(f"$ hypermixer compare --out {args.out / 'compare'}\n```\n{table.strip()}\n```")
    print(f"{wall:.1f} s wall clock; load average {before:.1f} before, {load():.1f} after")
    if args.docs:
        for source, target in ((run / "loss.png", "loss.png"),
                               (args.out / "compare" / "compare.png", "compare.png")):
            shutil.copyfile(source, ROOT / "docs" / target)
            print(f"copied {source} -> docs/{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
