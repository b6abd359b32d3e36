"""hypermixer: HyperMixer layers and language models on compiled C/OpenMP kernels.

``hypermixer.<Layer>`` are the compiled layers; ``hypermixer.reference.<Layer>`` are their
pure-NumPy twins with the same constructors and methods.
"""

import os as _os
import warnings as _warnings

import numpy as _np

from ._kernels import MAX_THREADS, get_num_threads, openmp_enabled
from ._kernels import default_num_threads as _default_num_threads
from ._kernels import forked_single_thread as _forked_single_thread
from ._kernels import set_num_threads as _set_num_threads
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layer_names

__version__ = "0.1.0"

if not 1 <= _default_num_threads() <= MAX_THREADS:   # negative: libgomp's int overflowed
    # Refusing here would make the package unimportable over an environment variable; the
    # kernels clamp to the cap, and this says so once.
    _warnings.warn(
        f"OMP_NUM_THREADS={_os.environ.get('OMP_NUM_THREADS')} asks for more threads than "
        f"hypermixer uses; it uses at most "
        f"{MAX_THREADS} (hypermixer.MAX_THREADS)", RuntimeWarning, stacklevel=2)


def set_num_threads(n=None):
    """Threads used by every kernel; ``None`` or 0 means all (OMP_NUM_THREADS if set).

    At most ``MAX_THREADS`` (1024). In a process forked (``os.fork``, multiprocessing's
    'fork' start method) after the parent ran a multi-threaded kernel, OpenMP cannot start
    threads again: the kernels run on one thread there, and asking for more is refused.
    Use the 'spawn' or 'forkserver' start method for multi-threaded workers.
    """
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, (int, _np.integer)):
        raise TypeError(f"number of threads must be an int or None, got {type(n).__name__}")
    n = int(n)
    if n < 0:
        raise ValueError(f"number of threads must be >= 0, got {n}")
    if n > MAX_THREADS:
        raise ValueError(
            f"number of threads must be at most {MAX_THREADS} (hypermixer.MAX_THREADS), got {n}")
    if n > 1 and _forked_single_thread():
        raise RuntimeError(
            f"cannot use {n} threads in a process forked after the parent ran multi-threaded "
            "kernels (OpenMP's threads do not survive fork); this process runs kernels on one "
            "thread. Start workers with the 'spawn' or 'forkserver' method to use more")
    _set_num_threads(n)


__all__ = (["get_num_threads", "set_num_threads", "openmp_enabled", "MAX_THREADS"]
           + list(_layer_names))

# Language-model application (model.py, tokenizer.py; train/generate/cli import lazily).
from .model import LanguageModel, ModelConfig, build_network  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402

__all__ += ["LanguageModel", "ModelConfig", "build_network", "Tokenizer"]

# Compiled vs reference on this machine: ``hypermixer.check()`` (a callable module).
from . import check  # noqa: E402
