"""NumPy reference of HyperMixing and HyperMixingBlock (SPEC section 8): one sequence and one
head at a time, one formula per line. The oracle the compiled kernels are held to.

The causal mode is written with an explicit prefix sum over tokens (``cumsum``), which keeps
every running state (L, k_h, d_h) in memory: fine for an oracle, not for long sequences.
"""

import math

import numpy as np

from . import _hypermixing_blueprint as hb
from .reference import FeedForward, LayerNorm, ReferenceAdam

_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _cdf(z64):
    """Phi(z) = erfc(-z / sqrt 2) / 2: keeps its relative precision in the lower tail, where
    (1 + erf(z / sqrt 2)) / 2 cancels to 0 (below z = -8 in float64)."""
    return 0.5 * _erfc(-z64 / math.sqrt(2.0))


def gelu(z):
    """Exact GELU, z * Phi(z), evaluated in float64 and returned in z's dtype."""
    z64 = z.astype(np.float64)
    return (z64 * _cdf(z64)).astype(z.dtype)


def gelu_grad(z):
    """d gelu / dz = Phi(z) + z * phi(z)."""
    z64 = z.astype(np.float64)
    phi = np.exp(-0.5 * z64 * z64) / math.sqrt(2.0 * math.pi)
    return (_cdf(z64) + z64 * phi).astype(z.dtype)


class HyperMixing(ReferenceAdam, hb.HyperMixingBase):
    __doc__ = hb.HyperMixingBase.__doc__

    def _norm(self):
        """The output LayerNorm, a private reference LayerNorm on views of our (d,) arrays."""
        ln = LayerNorm(self.embedding_dim, dtype=self.dtype)
        ln.gamma = self._param("layer_norm.weight").reshape(1, -1)
        ln.beta = self._param("layer_norm.bias").reshape(1, -1)
        return ln

    def _generate(self, gen, j, zj):
        """W = gelu(zj @ A_j^T + a_j) @ C_j^T + c_j; returns W and the pre-activation."""
        A, a, C, c = self.generator(gen)
        pre = zj @ A[j].T
        if a is not None:
            pre = pre + a[j]
        w = gelu(pre) @ C[j].T
        if c is not None:
            w = w + c[j]
        return w, pre

    def _generator_backward(self, gen, j, zj, pre, dw, grads):
        """Adds the generator's parameter gradients into ``grads``; returns d zj."""
        A, a, C, c = self.generator(gen)
        name = "hyper.w1_gen." if self.tied else f"hyper.{gen}."
        if c is not None:
            grads[name + "fc2_biases"][j] += dw.sum(axis=0)
        grads[name + "fc2_weights"][j] += dw.T @ gelu(pre)
        dpre = (dw @ C[j]) * gelu_grad(pre)
        if a is not None:
            grads[name + "fc1_biases"][j] += dpre.sum(axis=0)
        grads[name + "fc1_weights"][j] += dpre.T @ zj
        return dpre @ A[j]

    def _forward(self, x, lengths):
        batch, seq_len, d = x.shape
        dh = self.head_dim
        mean = self.normalize == "mean"
        y = np.zeros_like(x)
        self._saved = []
        for b, n in enumerate(lengths):
            xb = x[b, :n]
            z = xb * self.info_scale + self.positions(n)             # token information
            heads = []
            for j in range(self.heads):
                cols = slice(j * dh, (j + 1) * dh)
                zj, vj = z[:, cols], xb[:, cols]
                w1, pre1 = self._generate("w1_gen", j, zj)            # (n, k_h)
                w2, pre2 = self._generate("w2_gen", j, zj)
                if self.causal:
                    # s[t] = sum over i <= t of the outer products w1[i] (x) v[i]: (n, k_h, d_h)
                    s = np.cumsum(w1[:, :, None] * vj[:, None, :], axis=0)
                    if mean:
                        s = s / np.arange(1, n + 1)[:, None, None]
                    y[b, :n, cols] = np.einsum("tk,tkf->tf", w2, gelu(s))
                else:
                    s = w1.T @ vj                                     # (k_h, d_h)
                    if mean:
                        s = s / n
                    y[b, :n, cols] = w2 @ gelu(s)
                heads.append((zj, vj, w1, pre1, w2, pre2, s.astype(self.dtype)))
            self._saved.append(heads)
        if self.layer_norm:
            self._ln = self._norm()
            y = self._ln._forward(y, lengths)
        return y

    def _backward(self, grad_output):
        grads = {name: np.zeros_like(arr) for name, arr in self._own_parameters}
        if self.layer_norm:
            grad_output, (dgamma, dbeta) = self._ln._backward(grad_output)
            grads["layer_norm.weight"] += dgamma.reshape(-1)
            grads["layer_norm.bias"] += dbeta.reshape(-1)
        dh = self.head_dim
        mean = self.normalize == "mean"
        grad_input = np.zeros_like(grad_output)
        for b, heads in enumerate(self._saved):
            n = len(heads[0][0])
            g = grad_output[b, :n]
            dx = np.zeros((n, self.embedding_dim), self.dtype)
            for j, (zj, vj, w1, pre1, w2, pre2, s) in enumerate(heads):
                cols = slice(j * dh, (j + 1) * dh)
                gj = g[:, cols]
                m = gelu(s)
                if self.causal:
                    dw2 = np.einsum("tkf,tf->tk", m, gj)
                    ds = w2[:, :, None] * gj[:, None, :] * gelu_grad(s)
                    if mean:
                        ds = ds / np.arange(1, n + 1)[:, None, None]
                    # r[i] = sum over t >= i of ds[t]: everything token i fed into
                    r = np.cumsum(ds[::-1], axis=0)[::-1]
                    dw1 = np.einsum("tkf,tf->tk", r, vj)
                    dv = np.einsum("tkf,tk->tf", r, w1)
                else:
                    dw2 = gj @ m.T
                    ds = (w2.T @ gj) * gelu_grad(s)
                    if mean:
                        ds = ds / n
                    dw1 = vj @ ds.T
                    dv = w1 @ ds
                if self.tied:
                    dz = self._generator_backward("w1_gen", j, zj, pre1, dw1 + dw2, grads)
                else:
                    dz = (self._generator_backward("w1_gen", j, zj, pre1, dw1, grads)
                          + self._generator_backward("w2_gen", j, zj, pre2, dw2, grads))
                dx[:, cols] = dv + dz * self.info_scale
            grad_input[b, :n] = dx
        return grad_input, [grads[name] for name, _ in self._own_parameters]

    def _step(self, x, state, positions):
        """Streaming: the output of one new token per sequence from the running sums
        ``state`` (B, h, k_h, d_h) of the earlier ones, which it updates in place."""
        dh = self.head_dim
        y = np.zeros_like(x)
        for b, t in enumerate(positions):
            z = x[b] * self.info_scale + self.position_rows([t])[0]
            for j in range(self.heads):
                cols = slice(j * dh, (j + 1) * dh)
                w1, _ = self._generate("w1_gen", j, z[None, cols])
                w2, _ = self._generate("w2_gen", j, z[None, cols])
                state[b, j] += np.outer(w1[0], x[b, cols])
                s = state[b, j] / (t + 1) if self.normalize == "mean" else state[b, j]
                y[b, cols] = w2[0] @ gelu(s)
        if self.layer_norm:
            y = self._norm()._forward(y[:, None, :], np.ones(len(y), np.int64))[:, 0]
        return y


class HyperMixingBlock(hb.HyperMixingBlockBase):
    __doc__ = hb.HyperMixingBlockBase.__doc__
    LayerNorm = LayerNorm
    HyperMixing = HyperMixing
    FeedForward = FeedForward
