"""Pure-NumPy reference implementation of every layer: the oracle for the compiled kernels.

Written for clarity, not speed: one sequence at a time, one formula per line, mirroring SPEC
section 2. The classes take the same constructor arguments as the compiled ones in
``hypermixer`` and, for the same seed, start from the same parameters.
"""

import sys

import numpy as np

from . import _blueprints as bp
from ._layer import numpy_adam_step, numpy_gradient_norm


class ReferenceAdam:
    """The optimizer in NumPy, mixed into every reference leaf layer: the flat store of a
    reference root runs ``_layer.numpy_adam_step`` (global-norm clipping + Adam, SPEC
    section 2) over its whole buffer."""

    _fused_adam_step = staticmethod(numpy_adam_step)
    _gradient_norm = staticmethod(numpy_gradient_norm)


def relu(z):
    return np.maximum(z, 0)


class LayerNorm(ReferenceAdam, bp.LayerNormBase):
    __doc__ = bp.LayerNormBase.__doc__

    def _forward(self, x, lengths):
        y = np.zeros_like(x)
        self._saved = []
        for b, n in enumerate(lengths):
            xhat, rstd = self._normalize(x[b, :n])
            y[b, :n] = xhat * self.gamma + self.beta
            self._saved.append((xhat, rstd))
        return y

    def _normalize(self, xb):
        """``(xb - mean) * rstd`` and rstd per row, population variance, computed soundly:
        in float64 whatever the dtype; deviations from the row's first entry (a constant row
        gives exactly 0, a common offset cancels exactly); two passes; rows whose deviations
        would overflow when squared are scaled by a power of two first (exact), eps with them.
        """
        x = xb.astype(np.float64)
        with np.errstate(over="ignore"):   # an overflowing deviation selects rescaling
            dev = np.abs(x - x[:, :1]).max(axis=1, keepdims=True)
        top = np.abs(x).max(axis=1, keepdims=True)
        rescale = ~(dev <= 2.0 ** 450) & np.isfinite(top)
        scale = np.where(rescale, np.ldexp(1.0, -np.frexp(np.where(rescale, top, 1.0))[1]), 1.0)
        xs = x * scale
        d = xs - xs[:, :1]
        d = d - d.mean(axis=1, keepdims=True)
        inv = 1.0 / np.sqrt((d * d).mean(axis=1, keepdims=True) + self.eps * scale * scale)
        return (d * inv).astype(self.dtype), (inv * scale).astype(self.dtype)

    def _backward(self, grad_output):
        grad_input = np.zeros_like(grad_output)
        # parameter gradients summed in float64 too: float32 partial sums of gradients near
        # 1e38 overflow where the total fits
        dgamma = np.zeros(self.gamma.shape, np.float64)
        dbeta = np.zeros(self.beta.shape, np.float64)
        for b, (xhat, rstd) in enumerate(self._saved):
            g = grad_output[b, :len(xhat)]
            dgamma += (g.astype(np.float64) * xhat).sum(axis=0, keepdims=True)
            dbeta += g.astype(np.float64).sum(axis=0, keepdims=True)
            # In float64, like the statistics: in float32, g * gamma and its row sums can
            # overflow where the input gradient, scaled by a small rstd, does not.
            g64, xhat64 = g.astype(np.float64), xhat.astype(np.float64)
            dxhat = g64 * self.gamma.astype(np.float64)
            # Exact derivative of (x - mean) * rstd, valid for any std (SPEC section 7).
            grad_input[b, :len(xhat)] = rstd.astype(np.float64) * (
                dxhat
                - dxhat.mean(axis=1, keepdims=True)
                - xhat64 * (dxhat * xhat64).mean(axis=1, keepdims=True))
        with np.errstate(over="ignore"):   # a sum beyond float32 is inf, as it should be
            return grad_input, [dgamma.astype(self.dtype), dbeta.astype(self.dtype)]


class Hypernetwork(ReferenceAdam, bp.HypernetworkBase):
    __doc__ = bp.HypernetworkBase.__doc__

    def _forward(self, x, lengths):
        theta = np.zeros(x.shape[:2] + (self.output_dim,), self.dtype)
        self._saved = []
        for b, n in enumerate(lengths):
            m = x[b, :n]
            pre = m @ self.w1 + self.b1
            hidden = relu(pre)
            theta[b, :n] = hidden @ self.w2 + self.b2
            self._saved.append((m, pre, hidden))
        return theta

    def _backward(self, grad_output):
        grad_input = np.zeros(grad_output.shape[:2] + (self.embedding_dim,), self.dtype)
        dw1, db1 = np.zeros_like(self.w1), np.zeros_like(self.b1)
        dw2, db2 = np.zeros_like(self.w2), np.zeros_like(self.b2)
        for b, (m, pre, hidden) in enumerate(self._saved):
            g = grad_output[b, :len(m)]
            dw2 += hidden.T @ g
            db2 += g.sum(axis=0, keepdims=True)
            dpre = (g @ self.w2.T) * (pre > 0)
            dw1 += m.T @ dpre
            db1 += dpre.sum(axis=0, keepdims=True)
            grad_input[b, :len(m)] = dpre @ self.w1.T
        return grad_input, [dw1, db1, dw2, db2]


class TokenMixingMLP(ReferenceAdam, bp.TokenMixingMLPBase):
    __doc__ = bp.TokenMixingMLPBase.__doc__
    Hypernetwork = Hypernetwork

    # -- bidirectional: one theta per sequence, from the mean of all its rows
    def _forward(self, x, lengths):
        if self.causal:
            return self._forward_causal(x, lengths)
        means = np.stack([x[b, :n].mean(axis=0) for b, n in enumerate(lengths)])[:, None, :]
        theta = self.hypernetwork._forward(means, np.ones(len(lengths), np.int64))
        # A shared hypernetwork's cache is overwritten by the other layers' forwards before
        # this layer's backward: keep ours and put it back there.
        self._hyper_saved = self.hypernetwork._saved
        y = np.zeros_like(x)
        self._saved = []
        for b, n in enumerate(lengths):
            xb = x[b, :n]                                     # (L, E)
            w1, c1, w2, c2 = self.split_theta(theta[b, 0])
            z = xb.T @ w1[:n] + c1                            # (E, Ht)
            a = relu(z)
            mixed = a @ w2[:, :n] + c2[:, :n]                 # (E, L)
            y[b, :n] = xb + mixed.T
            self._saved.append((xb, theta[b, 0], z, a))
        return y

    def _backward(self, grad_output):
        if self.causal:
            return self._backward_causal(grad_output)
        grad_input = np.zeros_like(grad_output)
        dtheta = np.zeros((len(self._saved), 1, self.hypernetwork.output_dim), self.dtype)
        for b, (xb, theta, z, a) in enumerate(self._saved):
            n = len(xb)
            g = grad_output[b, :n]
            w1, c1, w2, c2 = self.split_theta(theta)
            dw1, dc1, dw2, dc2 = self.split_theta(dtheta[b, 0])  # views: writes land in dtheta
            dmixed = g.T                                      # (E, L)
            dw2[:, :n] = a.T @ dmixed
            dc2[:, :n] = dmixed.sum(axis=0, keepdims=True)
            dz = (dmixed @ w2[:, :n].T) * (z > 0)             # (E, Ht)
            dw1[:n] = xb @ dz
            dc1[:] = dz.sum(axis=0, keepdims=True)
            grad_input[b, :n] = g + (dz @ w1[:n].T).T
        self.hypernetwork._saved = self._hyper_saved
        dmeans, grads = self.hypernetwork._backward(dtheta)
        for b, (xb, *_rest) in enumerate(self._saved):
            n = len(xb)
            grad_input[b, :n] += dmeans[b, 0] / n             # exact mean-pool gradient (SPEC 7)
        return grad_input, grads

    # -- causal: row t uses theta_t generated from the mean of rows 0..t, and rows 0..t only
    def _forward_causal(self, x, lengths):
        prefix_means = np.zeros_like(x)
        for b, n in enumerate(lengths):
            counts = np.arange(1, n + 1, dtype=self.dtype)[:, None]
            prefix_means[b, :n] = np.cumsum(x[b, :n], axis=0) / counts
        theta = self.hypernetwork._forward(prefix_means, lengths)
        # A shared hypernetwork's cache is overwritten by the other layers' forwards before
        # this layer's backward: keep ours and put it back there.
        self._hyper_saved = self.hypernetwork._saved
        y = np.zeros_like(x)
        self._saved = []
        for b, n in enumerate(lengths):
            xb = x[b, :n]
            steps = []
            for t in range(n):
                w1, c1, w2, c2 = self.split_theta(theta[b, t])
                z = xb[:t + 1].T @ w1[:t + 1] + c1            # (E, Ht)
                a = relu(z)
                y[b, t] = xb[t] + a @ w2[:, t] + c2[0, t]
                steps.append((z, a))
            self._saved.append((xb, theta[b, :n], steps))
        return y

    def _backward_causal(self, grad_output):
        grad_input = np.zeros_like(grad_output)
        batch, seq_len = grad_output.shape[:2]
        dtheta = np.zeros((batch, seq_len, self.hypernetwork.output_dim), self.dtype)
        for b, (xb, theta, steps) in enumerate(self._saved):
            n = len(xb)
            for t, (z, a) in enumerate(steps):
                g = grad_output[b, t]                         # (E,)
                w1, c1, w2, c2 = self.split_theta(theta[t])
                dw1, dc1, dw2, dc2 = self.split_theta(dtheta[b, t])
                dw2[:, t] = a.T @ g
                dc2[0, t] = g.sum()
                dz = np.outer(g, w2[:, t]) * (z > 0)          # (E, Ht)
                dw1[:t + 1] = xb[:t + 1] @ dz
                dc1[:] = dz.sum(axis=0, keepdims=True)
                grad_input[b, :t + 1] += (dz @ w1[:t + 1].T).T
                grad_input[b, t] += g                         # residual
        self.hypernetwork._saved = self._hyper_saved
        dmeans, grads = self.hypernetwork._backward(dtheta)
        for b, (xb, *_rest) in enumerate(self._saved):
            n = len(xb)
            # m_t = mean(x[0..t]), so x[s] receives dm_t / (t + 1) from every t >= s.
            scaled = dmeans[b, :n] / np.arange(1, n + 1, dtype=self.dtype)[:, None]
            grad_input[b, :n] += np.cumsum(scaled[::-1], axis=0)[::-1]
        return grad_input, grads


class ChannelMixingMLP(ReferenceAdam, bp.ChannelMixingMLPBase):
    __doc__ = bp.ChannelMixingMLPBase.__doc__

    def _forward(self, x, lengths):
        y = np.zeros_like(x)
        self._saved = []
        for b, n in enumerate(lengths):
            xb = x[b, :n]
            pre = xb @ self.w1 + self.b1
            hidden = relu(pre)
            y[b, :n] = xb + hidden @ self.w2 + self.b2
            self._saved.append((xb, pre, hidden))
        return y

    def _backward(self, grad_output):
        grad_input = np.zeros_like(grad_output)
        dw1, db1 = np.zeros_like(self.w1), np.zeros_like(self.b1)
        dw2, db2 = np.zeros_like(self.w2), np.zeros_like(self.b2)
        for b, (xb, pre, hidden) in enumerate(self._saved):
            g = grad_output[b, :len(xb)]
            dw2 += hidden.T @ g
            db2 += g.sum(axis=0, keepdims=True)
            dpre = (g @ self.w2.T) * (pre > 0)
            dw1 += xb.T @ dpre
            db1 += dpre.sum(axis=0, keepdims=True)
            grad_input[b, :len(xb)] = g + dpre @ self.w1.T
        return grad_input, [dw1, db1, dw2, db2]


class HyperMixerBlock(bp.HyperMixerBlockBase):
    __doc__ = bp.HyperMixerBlockBase.__doc__
    LayerNorm = LayerNorm
    TokenMixingMLP = TokenMixingMLP
    ChannelMixingMLP = ChannelMixingMLP


__all__ = ["LayerNorm", "Hypernetwork", "TokenMixingMLP", "ChannelMixingMLP",
           "HyperMixerBlock"]


# ---------------------------------------------------------------------------------------------
# Language-model layers (SPEC section 2): Embeddings, SelfAttention, FeedForward,
# TransformerBlock, OutputProjection and the softmax cross-entropy loss.
# ---------------------------------------------------------------------------------------------

class Embeddings(ReferenceAdam, bp.EmbeddingsBase):
    __doc__ = bp.EmbeddingsBase.__doc__

    def _forward(self, ids, lengths):
        y = np.zeros(ids.shape + (self.embedding_dim,), self.dtype)
        for b, n in enumerate(lengths):
            y[b, :n] = self.token[ids[b, :n]] + self.position[:n]
        self._saved = (ids, lengths)
        return y

    def _backward(self, grad_output):
        ids, lengths = self._saved
        dtoken = np.zeros_like(self.token)
        dposition = np.zeros_like(self.position)
        for b, n in enumerate(lengths):
            g = grad_output[b, :n]
            np.add.at(dtoken, ids[b, :n], g)     # repeated ids accumulate
            dposition[:n] += g
        return None, [dtoken, dposition]


class SelfAttention(ReferenceAdam, bp.SelfAttentionBase):
    __doc__ = bp.SelfAttentionBase.__doc__

    def _forward(self, x, lengths):
        y = np.zeros_like(x)
        self._saved = []
        for b, n in enumerate(lengths):
            xb = x[b, :n]
            q, k, v = xb @ self.wq, xb @ self.wk, xb @ self.wv
            scores = q @ k.T * self.scale                       # (L, L)
            scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
            scores = scores - scores.max(axis=1, keepdims=True)
            weights = np.exp(scores)                            # exp(-inf) = 0 above the diagonal
            attn = weights / weights.sum(axis=1, keepdims=True)
            y[b, :n] = attn @ v + xb
            self._saved.append((xb, q, k, v, attn))
        return y

    def _backward(self, grad_output):
        grad_input = np.zeros_like(grad_output)
        dwq, dwk, dwv = (np.zeros_like(w) for w in (self.wq, self.wk, self.wv))
        for b, (xb, q, k, v, attn) in enumerate(self._saved):
            g = grad_output[b, :len(xb)]
            dv = attn.T @ g
            dattn = g @ v.T
            # softmax backward, row by row; masked entries have attn = 0 and stay 0
            dscores = attn * (dattn - (dattn * attn).sum(axis=1, keepdims=True))
            dq = dscores @ k * self.scale                       # the 1/sqrt(E) of SPEC 7
            dk = dscores.T @ q * self.scale
            dwq += xb.T @ dq
            dwk += xb.T @ dk
            dwv += xb.T @ dv
            grad_input[b, :len(xb)] = g + dq @ self.wq.T + dk @ self.wk.T + dv @ self.wv.T
        return grad_input, [dwq, dwk, dwv]

    def _step(self, x, keys, values, position):
        """Generation: the output row of one new token (see the compiled layer)."""
        keys[position], values[position] = x @ self.wk, x @ self.wv
        scores = keys[:position + 1] @ (x @ self.wq) * self.scale
        weights = np.exp(scores - scores.max())
        return weights / weights.sum() @ values[:position + 1] + x


class FeedForward(ChannelMixingMLP):
    """The Transformer's position-wise MLP: the same math and parameters as ChannelMixingMLP."""


class TransformerBlock(bp.TransformerBlockBase):
    __doc__ = bp.TransformerBlockBase.__doc__
    SelfAttention = SelfAttention
    LayerNorm = LayerNorm
    FeedForward = FeedForward


class OutputProjection(ReferenceAdam, bp.OutputProjectionBase):
    __doc__ = bp.OutputProjectionBase.__doc__
    #: _forward accepts ``out=``, a buffer the language model keeps for the logits
    _out_buffers = frozenset({"forward"})

    def _forward(self, x, lengths, out=None):
        y = np.zeros(x.shape[:2] + (self.vocab_size,), self.dtype) if out is None else out
        y[...] = 0
        self._saved = []
        for b, n in enumerate(lengths):
            xb = x[b, :n]
            y[b, :n] = xb @ self.w + self.b
            self._saved.append(xb)
        return y

    def _backward(self, grad_output):
        grad_input = np.zeros(grad_output.shape[:2] + (self.embedding_dim,), self.dtype)
        dw, db = np.zeros_like(self.w), np.zeros_like(self.b)
        for b, xb in enumerate(self._saved):
            g = grad_output[b, :len(xb)]
            dw += xb.T @ g
            db += g.sum(axis=0, keepdims=True)
            grad_input[b, :len(xb)] = g @ self.w.T
        return grad_input, [dw, db]


def softmax_cross_entropy(logits, targets, lengths=None, out=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``targets``.

    ``logits`` (L, V) or (B, L, V), ``targets`` (L,) or (B, L), optional ``lengths`` (B,).
    The loss is the mean over the valid positions of each sequence, then the mean over
    sequences. Returns ``(loss as float, grad_logits)`` with grad_logits = d loss / d logits
    (same shape and dtype as the logits, 0 at padding positions), written into ``out`` when
    given (a C-contiguous array of the logits' shape and dtype, not overlapping them).
    """
    z, tgt, lengths, unbatched = bp.check_cross_entropy_args(logits, targets, lengths)
    batch = len(lengths)
    if out is None:
        grad = np.zeros_like(z)
    else:
        grad = bp.check_gradient_out(out, z, unbatched)
        grad[...] = 0
    total = 0.0
    for b, n in enumerate(lengths):
        zb = z[b, :n]
        shifted = zb - zb.max(axis=1, keepdims=True)            # numerically stable
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_norm
        rows = np.arange(n)
        total += float(-log_probs[rows, tgt[b, :n]].astype(np.float64).mean())
        probs = np.exp(log_probs)
        probs[rows, tgt[b, :n]] -= 1
        grad[b, :n] = probs / (n * batch)
    return total / batch, (grad[0] if unbatched else grad)


__all__ += ["Embeddings", "SelfAttention", "FeedForward", "TransformerBlock",
            "OutputProjection", "softmax_cross_entropy"]

from ._hypermixing_reference import HyperMixing, HyperMixingBlock  # noqa: E402  (SPEC 8)
__all__ += ["HyperMixing", "HyperMixingBlock"]

# The hypermixing language model's embeddings (no position table), defined here so that
# pickle can name their class
from ._hypermixing_lm import token_embeddings_class  # noqa: E402
TokenEmbeddings = token_embeddings_class(sys.modules[__name__])
