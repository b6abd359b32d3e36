"""Training throughput of data-parallel MPI runs: K ranks x T threads, same global batches.

    python benchmarks/bench_mpi.py [--layouts 1x2 2x1] [--steps 8] [--batch-size 16]
                                   [--architecture hypermixer] [--dtype float32]

Each layout runs in its own processes: ``1xT`` as one plain process (the one-process code path,
``LanguageModel.train_step``), ``KxT`` with K > 1 under the mpiexec beside this Python (the
``mpich`` wheel of ``pip install '.[mpi]'``), with OMP_NUM_THREADS=T for every rank. The model is
the default configuration (SPEC section 6) over a 533-token vocabulary; the batches are random
token ids with ragged lengths, drawn from a fixed seed, the same for every layout. After 2
warm-up steps, ``--steps`` steps are timed; rank 0 reports global tokens/s and how the step
time splits into gradients (its shard), wait (for the slowest rank: shards differ in tokens;
a barrier added only when timing), all-reduce and update (norm, clipping, Adam). Times are medians over the timed steps; tokens/s is the total
over them.

On a machine with fewer cores than K x T the ranks share cores and every number means little;
the script prints the load average so that a busy machine is visible in the output.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 533


def batches(config, batch_size, count, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lengths = rng.integers(config.max_seq_len // 2, config.max_seq_len + 1, size=batch_size)
        ids = rng.integers(0, VOCAB, size=(batch_size, int(lengths.max())))
        targets = rng.integers(0, VOCAB, size=ids.shape)
        out.append((ids, targets, lengths.astype(np.int64)))
    return out


def worker(args):
    """One rank (or the one process) of a layout; rank 0 prints a JSON line."""
    import numpy as np
    from hypermixer import distributed
    from hypermixer.model import ModelConfig, build_network
    comm = distributed.world_from_environment()
    config = ModelConfig(architecture=args.architecture)
    network = build_network(config, VOCAB, seed=0, dtype=np.dtype(args.dtype))
    data = batches(config, args.batch_size, args.steps + 2)
    for ids, targets, lengths in data[:2]:   # warm-up: buffers, page faults, thread pool
        distributed.train_step(comm, network, ids, targets, lengths, lr=1e-4)
    if comm is not None:
        comm.Barrier()
    steps = []   # per step: seconds, tokens, and the phases of distributed.train_step
    for ids, targets, lengths in data[2:]:
        timings = {}
        started = time.perf_counter()
        result = distributed.train_step(comm, network, ids, targets, lengths, lr=1e-4,
                                        timings=timings)
        steps.append(dict(timings, step=time.perf_counter() - started, tokens=result.tokens))
    if distributed.rank_of(comm) == 0:
        medians = {f"{key}_ms": 1e3 * float(np.median([s[key] for s in steps]))
                   for key in steps[0] if key != "tokens"}
        print(json.dumps({"ranks": distributed.size_of(comm), "threads": args.threads,
                          "tokens_per_s": sum(s["tokens"] for s in steps)
                          / sum(s["step"] for s in steps),
                          "parameters": network.parameters(),
                          "allreduce_bytes": 0 if comm is None else
                          network._mpi_gradient_buffer.flat.nbytes, **medians}), flush=True)


def run_layout(layout, args):
    ranks, threads = (int(n) for n in layout.split("x"))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--worker", "--threads", str(threads),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--architecture", args.architecture, "--dtype", args.dtype]
    if ranks > 1:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        command = [str(mpiexec), "-n", str(ranks)] + command
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"layout {layout} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["1x1", "1x2", "2x1"],
                        help="RANKSxTHREADS, e.g. 1x2 2x1 4x1 8x1")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--architecture", default="hypermixer",
                        choices=("hypermixer", "transformer"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    load = os.getloadavg()[0]
    print(f"{args.architecture}, default size, {args.dtype}, global batch {args.batch_size}, "
          f"{args.steps} timed steps; {os.cpu_count()} cores, load average {load:.1f} at start"
          + (" (BUSY: other processes share the cores; compare rows of this run only)"
             if load > 0.5 * (os.cpu_count() or 1) else ""))
    rows = []
    print("| ranks x threads | tokens/s | step ms | gradients ms | wait ms | all-reduce ms "
          "| update ms | all-reduce share |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for layout in args.layouts:
        row = run_layout(layout, args)
        rows.append(row)
        parts = [f"{row[key]:.1f}" if key in row else "-"
                 for key in ("gradients_ms", "wait_ms", "allreduce_ms", "update_ms")]
        share = f"{100 * row['allreduce_ms'] / row['step_ms']:.0f}%" if "allreduce_ms" in row \
            else "-"
        print(f"| {row['ranks']} x {row['threads']} | {row['tokens_per_s']:.0f} | "
              f"{row['step_ms']:.1f} | {' | '.join(parts)} | {share} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
