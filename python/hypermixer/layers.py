"""Compiled layers: the same classes as ``hypermixer.reference``, arithmetic in C kernels.

Each class subclasses the shared constructor in ``_blueprints`` and implements ``_forward``
and ``_backward`` by calling ``hypermixer._kernels`` on arrays it allocates (outputs) or keeps
between calls (workspaces). Argument checking happens before any kernel runs, in ``_layer``.
"""

import numpy as np

from . import _blueprints as bp
from . import _kernels
from ._layer import ADAM_BETA1, ADAM_BETA2, ADAM_EPS


class CompiledAdam:
    """Adam through the C kernel, mixed into every compiled leaf layer."""

    def _adam_update(self, param, grad, m, v, lr, step):
        _kernels.adam_update(param.reshape(-1), m.reshape(-1), v.reshape(-1),
                             grad.reshape(-1), lr, ADAM_BETA1, ADAM_BETA2, ADAM_EPS, step)


# ---- LayerNorm (csrc/layernorm.c) ----

# ---- ChannelMixingMLP (csrc/channel_mixing.c) ----

# ---- Hypernetwork (csrc/hypernetwork.c) ----

# ---- TokenMixingMLP (csrc/token_mixing.c) ----

# ---- HyperMixerBlock (composite of the above) ----

# ---- Language-model layers: Embeddings, SelfAttention, FeedForward, TransformerBlock,
#      OutputProjection, softmax cross-entropy ----


__all__ = []
