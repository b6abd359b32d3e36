"""Compiled layers: the same classes as ``hypermixer.reference``, arithmetic in C kernels.

Each class subclasses the shared constructor in ``_blueprints`` and implements ``_forward``
and ``_backward`` by calling ``hypermixer._kernels`` on arrays it allocates (outputs) or keeps
between calls (workspaces). Argument checking happens before any kernel runs, in ``_layer``.
"""

import numpy as np

from . import _blueprints as bp
from . import _kernels
from ._layer import ADAM_BETA1, ADAM_BETA2, ADAM_EPS

# Each section below appends its public names with its own `__all__ += [...]` line.
__all__ = []


class CompiledAdam:
    """Adam through the C kernel, mixed into every compiled leaf layer."""

    def _adam_update(self, param, grad, m, v, lr, step):
        _kernels.adam_update(param.reshape(-1), m.reshape(-1), v.reshape(-1),
                             grad.reshape(-1), lr, ADAM_BETA1, ADAM_BETA2, ADAM_EPS, step)


# ---- LayerNorm (csrc/layernorm.c) ----

def _keep_buffer(owner, attr, shape):
    """A workspace of ``shape`` in ``owner.dtype`` kept on ``owner`` under ``attr``.

    The flat buffer is reused across calls while it is large enough (and not more than 4x
    too large), so steady-state training allocates no workspaces.
    """
    need = 1
    for n in shape:
        need *= int(n)
    buf = owner.__dict__.get(attr)
    if buf is None or buf.dtype != owner.dtype or buf.size < need or buf.size > 4 * need:
        buf = np.empty(max(need, 1), owner.dtype)
        setattr(owner, attr, buf)
    return buf[:need].reshape(shape)


class LayerNorm(CompiledAdam, bp.LayerNormBase):
    __doc__ = bp.LayerNormBase.__doc__

    def _forward(self, x, lengths):
        batch, seq_len, width = x.shape
        y = np.empty_like(x)
        xhat = _keep_buffer(self, "_ws_xhat", x.shape)
        mean = _keep_buffer(self, "_ws_mean", (batch, seq_len))
        rstd = _keep_buffer(self, "_ws_rstd", (batch, seq_len))
        _kernels.layernorm_forward(y, xhat, mean, rstd, x, lengths, self.gamma.reshape(-1),
                                   self.beta.reshape(-1))
        self._saved = (xhat, mean, rstd, lengths)
        return y

    def _backward(self, grad_output):
        xhat, _mean, rstd, lengths = self._saved
        batch, seq_len, width = xhat.shape
        grad_input = np.empty_like(grad_output)
        dgamma = np.empty_like(self.gamma)
        dbeta = np.empty_like(self.beta)
        partial = _keep_buffer(self, "_ws_partial",
                               (_kernels.layernorm_partial_rows(batch, seq_len), 2 * width))
        _kernels.layernorm_backward(grad_input, dgamma.reshape(-1), dbeta.reshape(-1), partial,
                                    grad_output, xhat, rstd, lengths, self.gamma.reshape(-1))
        return grad_input, [dgamma, dbeta]


__all__ += ["LayerNorm"]


# ---- ChannelMixingMLP (csrc/channel_mixing.c) ----

class ChannelMixingMLP(CompiledAdam, bp.ChannelMixingMLPBase):
    __doc__ = bp.ChannelMixingMLPBase.__doc__

    def _forward(self, x, lengths):
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows = int(offsets[-1])
        y = np.empty_like(x)
        xp = _keep_buffer(self, "_ws_xp", (rows, self.embedding_dim))
        hidden = _keep_buffer(self, "_ws_hidden", (rows, self.hidden_dim))
        scratch = _keep_buffer(self, "_ws_rows_e", (rows, self.embedding_dim))
        _kernels.channel_mixing_forward(y, xp, hidden, scratch, x, offsets, self.w1,
                                        self.b1.reshape(-1), self.w2, self.b2.reshape(-1))
        self._saved = (xp, hidden, offsets)
        return y

    def _backward(self, grad_output):
        xp, hidden, offsets = self._saved
        rows = xp.shape[0]
        grad_input = np.empty_like(grad_output)
        dw1, db1 = np.empty_like(self.w1), np.empty_like(self.b1)
        dw2, db2 = np.empty_like(self.w2), np.empty_like(self.b2)
        gp = _keep_buffer(self, "_ws_rows_e", (rows, self.embedding_dim))
        dhidden = _keep_buffer(self, "_ws_rows_h", (rows, self.hidden_dim))
        _kernels.channel_mixing_backward(grad_input, dw1, db1.reshape(-1), dw2,
                                         db2.reshape(-1), gp, dhidden, grad_output, xp, hidden,
                                         offsets, self.w1, self.w2)
        return grad_input, [dw1, db1, dw2, db2]


__all__ += ["ChannelMixingMLP"]


# ---- Hypernetwork (csrc/hypernetwork.c) ----

# ---- TokenMixingMLP (csrc/token_mixing.c) ----

# ---- HyperMixerBlock (composite of the above) ----

# ---- Language-model layers: Embeddings, SelfAttention, FeedForward, TransformerBlock,
#      OutputProjection, softmax cross-entropy ----

