# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Thin Cython bindings over the C kernels in csrc/.

Private module: the Layer classes in ``hypermixer`` validate every argument (shapes, dtypes,
lengths) before calling in here, allocate the outputs, and own the workspaces. Each binding
takes typed memoryviews of one precision (``floating``: float32 or float64), calls the
matching ``_f32``/``_f64`` kernel with the GIL released, and returns nothing.

One ``.pxi`` per kernel file, included below, keeps each concern in its own file while
building a single extension module.
"""

from cython cimport floating

include "threads.pxi"
include "checks.pxi"
include "gemm.pxi"
include "optimizer.pxi"
include "layernorm.pxi"
include "hypernetwork.pxi"
include "token_mixing.pxi"
include "channel_mixing.pxi"
include "embeddings.pxi"
include "attention.pxi"
include "output.pxi"
include "loss.pxi"
include "hypermixing.pxi"
include "block.pxi"
include "hypermixing_block.pxi"
