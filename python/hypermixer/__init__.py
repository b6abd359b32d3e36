"""hypermixer: HyperMixer layers and language models on compiled C/OpenMP kernels.

``hypermixer.<Layer>`` are the compiled layers; ``hypermixer.reference.<Layer>`` are their
pure-NumPy twins with the same constructors and methods.
"""

from ._kernels import get_num_threads, openmp_enabled
from ._kernels import set_num_threads as _set_num_threads
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layer_names

__version__ = "0.1.0"


def set_num_threads(n=None):
    """Threads used by every kernel; ``None`` or 0 means all (OMP_NUM_THREADS if set)."""
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number of threads must be an int or None, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"number of threads must be >= 0, got {n}")
    _set_num_threads(n)


__all__ = ["get_num_threads", "set_num_threads", "openmp_enabled"] + list(_layer_names)

# Language-model application (model.py, tokenizer.py; train/generate/cli import lazily).
from .model import LanguageModel, ModelConfig, build_network  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402

__all__ += ["LanguageModel", "ModelConfig", "build_network", "Tokenizer"]

# Compiled vs reference on this machine (``hypermixer check``); binds the function over the
# submodule's name, as numpy.test does: use ``from hypermixer.check import ...`` for the rest.
from .check import check  # noqa: E402,F811
