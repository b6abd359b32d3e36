"""Fork safety and the thread cap (issue 10, classes 1 and 2).

libgomp's worker threads do not survive fork(): before the fix, a child forked after the
parent ran a 2-thread kernel hung forever in its first parallel region. Every case runs in
a subprocess with a timeout, so a regression fails here instead of hanging the suite.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import hypermixer

TIMEOUT = 60  # seconds; a hang is the failure mode being tested

PRELUDE = textwrap.dedent("""
    import os, sys
    import numpy as np
    import hypermixer

    def work(_=None):
        block = hypermixer.HyperMixerBlock(embedding_dim=64, hidden_dim=128, max_seq_len=64,
                                           causal=False, seed=0)
        x = np.random.default_rng(0).normal(size=(8, 64, 64)).astype(np.float32)
        return block.forward(x).tobytes()
""")


def run_script(tmp_path, body, env=None):
    # a file, not -c: the 'spawn' and 'forkserver' workers re-import the main module
    path = tmp_path / "script.py"
    path.write_text(PRELUDE + textwrap.dedent(body))
    try:
        return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                              timeout=TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child process hung (no answer in {TIMEOUT} s)")


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_worker_pool_after_a_multithreaded_kernel(tmp_path, method):
    result = run_script(tmp_path, f"""
        import multiprocessing as mp
        if __name__ == "__main__":
            hypermixer.set_num_threads(2)
            expected = work()
            with mp.get_context({method!r}).Pool(2) as pool:
                results = pool.map(work, range(3))
            print(all(r == expected for r in results), len(results))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "3"]


def test_process_pool_executor_after_a_multithreaded_kernel(tmp_path):
    result = run_script(tmp_path, """
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        if __name__ == "__main__":
            hypermixer.set_num_threads(2)
            expected = work()
            with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
                results = list(pool.map(work, range(2)))
            print(all(r == expected for r in results))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]


def test_forked_child_runs_on_one_thread_and_refuses_more(tmp_path):
    result = run_script(tmp_path, """
        hypermixer.set_num_threads(2)
        expected = work()
        pid = os.fork()
        if pid == 0:
            ok = work() == expected
            threads = hypermixer.get_num_threads()
            try:
                hypermixer.set_num_threads(2)
                refused = "no"
            except RuntimeError as exc:
                refused = "spawn" in str(exc)
            hypermixer.set_num_threads(1)   # one thread is always allowed
            print(ok, threads, refused, work() == expected, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print(hypermixer.get_num_threads())   # the parent keeps its threads
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "1", "True", "True", "2"]


def test_fork_before_any_kernel_keeps_threads(tmp_path):
    result = run_script(tmp_path, """
        pid = os.fork()
        if pid == 0:
            hypermixer.set_num_threads(2)
            work()
            print(hypermixer.get_num_threads(), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2"]


@pytest.mark.parametrize("bad", [hypermixer.MAX_THREADS + 1, 10**5, 10**9, 2**31, 2**64])
def test_thread_count_above_the_cap_is_refused(bad):
    before = hypermixer.get_num_threads()
    with pytest.raises(ValueError, match=f"at most {hypermixer.MAX_THREADS}"):
        hypermixer.set_num_threads(bad)
    assert hypermixer.get_num_threads() == before


def test_the_cap_itself_is_accepted():
    hypermixer.set_num_threads(hypermixer.MAX_THREADS)
    assert hypermixer.get_num_threads() == hypermixer.MAX_THREADS


@pytest.mark.parametrize("env_value", ["1000000", "2147483648"])
def test_huge_omp_num_threads_is_capped_with_a_warning(tmp_path, env_value):
    env = dict(os.environ, OMP_NUM_THREADS=env_value)
    result = run_script(tmp_path, """
        print(hypermixer.get_num_threads())
        print(len(work()))
    """, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout.split()
    assert out[0] == str(hypermixer.MAX_THREADS)
    assert out[1] == str(8 * 64 * 64 * 4)
    assert f"at most {hypermixer.MAX_THREADS}" in result.stderr
