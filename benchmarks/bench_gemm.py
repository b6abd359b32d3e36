"""GFLOP/s of hypermixer's gemm against NumPy's matmul (OpenBLAS here), 1 and 2 threads.

    python benchmarks/bench_gemm.py [--repeats 7] [--threads 1 2] [--quick]

Each thread count runs in a child process whose OPENBLAS_NUM_THREADS / OMP_NUM_THREADS are
set before NumPy loads, so both libraries use the same number of threads. Every cell is the
median of --repeats timings; a timing covers enough back-to-back calls to last >= 20 ms.
FLOPs are 2 M N K per product.
"""

import argparse
import json
import os
import subprocess
import sys
import time

# (label, M, N, K, trans_a, trans_b): the square peak case, then products the layers make
# (E=128, H=256, S=L=80, Ht=64, Hh=32, B=32; E=512, H=2048 for the big one).
SHAPES = [
    ("square 2048^3", 2048, 2048, 2048, False, False),
    ("channel mix fwd B*L x H x E", 2560, 256, 128, False, False),
    ("channel mix dW1 E x H x B*L", 128, 256, 2560, True, False),
    ("token mix X^T W1 E x Ht x L", 128, 64, 80, True, False),
    ("token mix H W2 E x L x Ht", 128, 80, 64, False, False),
    ("hypernet w2 B x O x Hh", 32, 10384, 32, False, False),
    ("attention q k^T L x L x E", 80, 80, 128, False, True),
    ("big channel mix 4096 x 2048 x 512", 4096, 2048, 512, False, False),
]
QUICK = {"square 2048^3", "channel mix fwd B*L x H x E", "token mix X^T W1 E x Ht x L",
         "hypernet w2 B x O x Hh"}


def time_call(fn, repeats):
    """Median seconds per call: calibrate a batch lasting >= 20 ms, time `repeats` batches."""
    fn()
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= 0.02 or n >= 1 << 16:
            break
        n *= 2
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n)
    samples.sort()
    return samples[len(samples) // 2]


def worker(threads, repeats, quick, dtype_name):
    import numpy as np

    import hypermixer
    from hypermixer import _kernels

    hypermixer.set_num_threads(threads)
    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(0)
    rows = []
    for label, m, n, k, ta, tb in SHAPES:
        if quick and label not in QUICK:
            continue
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
        c = np.empty((m, n), dtype=dtype)
        op_a = a.T if ta else a
        op_b = b.T if tb else b
        flops = 2.0 * m * n * k
        t_ours = time_call(lambda: _kernels.gemm(a, b, c, ta, tb, 0.0), repeats)
        t_serial = time_call(lambda: _kernels.gemm_serial(a, b, c, ta, tb, 0.0), repeats)
        t_numpy = time_call(lambda: np.matmul(op_a, op_b, out=c), repeats)
        rows.append({"shape": label, "m": m, "n": n, "k": k, "trans_a": ta, "trans_b": tb,
                     "threads": threads, "dtype": dtype_name,
                     "gemm_gflops": flops / t_ours / 1e9,
                     "gemm_serial_gflops": flops / t_serial / 1e9,
                     "numpy_gflops": flops / t_numpy / 1e9})
    print(json.dumps(rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timings per cell (median)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true", help="four shapes, 5 repeats")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = max(5, 5 if args.quick else args.repeats)
    if args.worker is not None:
        worker(args.worker, repeats, args.quick, args.dtype)
        return 0
    rows = []
    for threads in args.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(threads),
               "--repeats", str(repeats), "--dtype", args.dtype]
        if args.quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows.extend(json.loads(out.strip().splitlines()[-1]))
    print(f"gemm GFLOP/s, {args.dtype}, median of {repeats}; FLOPs = 2 M N K")
    header = (f"{'shape':36s} {'M x N x K':>18s} {'op':>4s} {'thr':>3s} {'gemm':>7s} "
              f"{'serial':>7s} {'numpy':>7s} {'ratio':>6s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        op = ("T" if r["trans_a"] else "N") + ("T" if r["trans_b"] else "N")
        dims = f"{r['m']}x{r['n']}x{r['k']}"
        print(f"{r['shape']:36s} {dims:>18s} {op:>4s} {r['threads']:3d} "
              f"{r['gemm_gflops']:7.1f} {r['gemm_serial_gflops']:7.1f} "
              f"{r['numpy_gflops']:7.1f} {r['gemm_gflops'] / r['numpy_gflops']:6.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
