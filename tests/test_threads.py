"""Thread-count control: OpenMP is really linked, OMP_NUM_THREADS is respected,
set_num_threads overrides it and None goes back to it."""

import os
import subprocess
import sys

import pytest

import hypermixer


def test_openmp_is_linked_into_the_module():
    assert hypermixer.openmp_enabled()
    if sys.platform.startswith("linux"):
        with open("/proc/self/maps") as maps:
            assert "libgomp" in maps.read(), "the kernels module did not load libgomp"


@pytest.mark.parametrize("env_threads", ["1", "2", "3"])
def test_omp_num_threads_is_respected_and_overridable(env_threads):
    script = (
        "import hypermixer\n"
        "a = hypermixer.get_num_threads()\n"
        "hypermixer.set_num_threads(5)\n"
        "b = hypermixer.get_num_threads()\n"
        "hypermixer.set_num_threads(None)\n"
        "print(a, b, hypermixer.get_num_threads())\n")
    env = dict(os.environ, OMP_NUM_THREADS=env_threads)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [env_threads, "5", env_threads]


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("2", TypeError),
                                        (True, TypeError)])
def test_set_num_threads_refuses_bad_values(bad, error):
    before = hypermixer.get_num_threads()
    with pytest.raises(error, match="number of threads"):
        hypermixer.set_num_threads(bad)
    assert hypermixer.get_num_threads() == before
