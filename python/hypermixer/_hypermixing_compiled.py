"""Compiled HyperMixing and HyperMixingBlock (SPEC section 8) over csrc/hypermixing.c.

The forward is four kernel calls: token information, one generator per weight matrix (one
when tied), the mixing (bidirectional, or the causal prefix scan), then the LayerNorm kernel.
The backward runs them in reverse; a tied layer adds the two weight gradients and runs its one
generator's backward once.
"""

import math

import numpy as np

from . import _hypermixing_blueprint as hb
from . import _kernels
from .layers import CompiledAdam, FeedForward, LayerNorm, _keep_buffer


def causal_chunk(seq_len):
    """Tokens per checkpoint of the causal scan: about sqrt(L), so the checkpoints kept per
    sequence and head (L / chunk) and the sums rebuilt per thread (chunk) are both ~sqrt(L)
    states instead of L. Depends on L only (results never depend on it anyway: the rebuilt
    sums are the forward's bits)."""
    return max(8, int(math.ceil(math.sqrt(seq_len))))


class HyperMixing(CompiledAdam, hb.HyperMixingBase):
    __doc__ = hb.HyperMixingBase.__doc__

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._none = np.zeros((0, 0), self.dtype)   # "no bias" for the kernels
        if self.layer_norm:
            # a private LayerNorm working on views of our (d,) parameters
            self._ln = LayerNorm(self.embedding_dim, dtype=self.dtype)
            self._parameters_moved()

    def _parameters_moved(self):
        """Called by the flat store after it rebinds our parameters (views move)."""
        if self.layer_norm:
            self._ln.gamma = self._param("layer_norm.weight").reshape(1, -1)
            self._ln.beta = self._param("layer_norm.bias").reshape(1, -1)

    def _work(self, chunk):
        slots = max(1, _kernels.get_num_threads())
        size = _kernels.hypermixing_work_size(self.embedding_dim, self.token_mixing_hidden_dim,
                                              self.heads, chunk)
        return _keep_buffer(self, "_ws_work", (slots, size))

    def _or_none(self, arr):
        return self._none if arr is None else arr

    def _forward(self, x, lengths):
        batch, seq_len, d = x.shape
        k, h = self.token_mixing_hidden_dim, self.heads
        rows = batch * seq_len
        z = np.empty_like(x)
        _kernels.hypermixing_token_info_forward(z, x, self.positions(seq_len), lengths,
                                                self.info_scale)
        generated = []
        for gen in self.generators:
            A, a, C, c = self.generator(gen)
            w = np.empty((batch, seq_len, k), self.dtype)
            pre = np.empty((rows, d), self.dtype)
            act = np.empty((rows, d), self.dtype)
            _kernels.hypermixing_generator_forward(w.reshape(rows, k), pre, act,
                                                   z.reshape(rows, d), A, self._or_none(a), C,
                                                   self._or_none(c))
            generated.append((w, pre, act))
        w1, w2 = generated[0][0], generated[-1][0]
        mean = self.normalize == "mean"
        y = np.empty_like(x)
        shape = (batch, h, k // h, d // h)
        if self.causal:
            chunk = causal_chunk(seq_len)
            count = _kernels.hypermixing_checkpoint_count(seq_len, chunk)
            checkpoints = np.empty(batch * h * count * (k // h) * (d // h), self.dtype)
            _kernels.hypermixing_causal_forward(y, checkpoints, self._work(chunk), x, w1, w2,
                                                lengths, h, mean, chunk)
            mixing = (checkpoints, chunk)
        else:
            s, m = np.empty(shape, self.dtype), np.empty(shape, self.dtype)
            _kernels.hypermixing_forward(y, s, m, x, w1, w2, lengths, mean)
            mixing = (s, m)
        if self.layer_norm:
            y = self._ln._forward(y, lengths)
        self._saved = (x, lengths, z, generated, mixing)
        return y

    def _backward(self, grad_output):
        x, lengths, z, generated, mixing = self._saved
        batch, seq_len, d = x.shape
        k, h = self.token_mixing_hidden_dim, self.heads
        rows = batch * seq_len
        grads = {}
        if self.layer_norm:
            grad_output, (dgamma, dbeta) = self._ln._backward(grad_output)
            grads["layer_norm.weight"] = dgamma.reshape(-1)
            grads["layer_norm.bias"] = dbeta.reshape(-1)
        w1, w2 = generated[0][0], generated[-1][0]
        mean = self.normalize == "mean"
        grad_input = np.empty_like(x)
        dw1 = np.empty((batch, seq_len, k), self.dtype)
        dw2 = np.empty_like(dw1)
        if self.causal:
            checkpoints, chunk = mixing
            _kernels.hypermixing_causal_backward(grad_input, dw1, dw2, self._work(chunk),
                                                 grad_output, x, w1, w2, checkpoints, lengths,
                                                 h, mean, chunk)
        else:
            s, m = mixing
            ds = _keep_buffer(self, "_ws_ds", s.shape)
            _kernels.hypermixing_backward(grad_input, dw1, dw2, ds, grad_output, x, w1, w2,
                                          s, m, lengths, mean)
        if self.tied:
            dw1 += dw2
            dws = [dw1]
        else:
            dws = [dw1, dw2]
        dz = _keep_buffer(self, "_ws_dz", (rows, d))
        dpre = _keep_buffer(self, "_ws_dpre", (rows, d))
        for i, (gen, dw, (_, pre, act)) in enumerate(zip(self.generators, dws, generated)):
            A, a, C, c = self.generator(gen)
            dA, dC = np.empty_like(A), np.empty_like(C)
            da = None if a is None else np.empty_like(a)
            dc = None if c is None else np.empty_like(c)
            _kernels.hypermixing_generator_backward(
                dz, dA, self._or_none(da), dC, self._or_none(dc), dpre, dw.reshape(rows, k),
                z.reshape(rows, d), pre, act, A, C, i > 0)
            p = f"hyper.{gen}."
            grads[p + "fc1_weights"], grads[p + "fc2_weights"] = dA, dC
            grads[p + "fc1_biases"], grads[p + "fc2_biases"] = da, dc
        _kernels.hypermixing_token_info_backward(grad_input, dz.reshape(x.shape), lengths,
                                                 self.info_scale)
        return grad_input, [grads[name] for name, _ in self._own_parameters]

    def _step(self, x, state, positions):
        """Streaming (causal layers): one new token per sequence. x (B, d) at ``positions``
        (B,); state (B, h, k_h, d_h) holds the running sums of the earlier tokens and is
        updated in place. Returns the output rows (B, d), those a full forward gives."""
        batch, d = x.shape
        k = self.token_mixing_hidden_dim
        table = self.positions(int(positions.max()) + 1)
        z = x * self.dtype.type(self.info_scale) + table[positions]
        ws = []
        for gen in self.generators:
            A, a, C, c = self.generator(gen)
            w = np.empty((batch, k), self.dtype)
            pre, act = np.empty_like(z), np.empty_like(z)
            _kernels.hypermixing_generator_forward(w, pre, act, z, A, self._or_none(a), C,
                                                   self._or_none(c))
            ws.append(w)
        y = np.empty_like(x)
        _kernels.hypermixing_step(y, state, x, ws[0], ws[-1], positions,
                                  self.normalize == "mean")
        if self.layer_norm:
            y = self._ln._forward(y[:, None, :], np.ones(batch, np.int64))[:, 0]
        return y


class HyperMixingBlock(hb.HyperMixingBlockBase):
    __doc__ = hb.HyperMixingBlockBase.__doc__
    LayerNorm = LayerNorm
    HyperMixing = HyperMixing
    FeedForward = FeedForward
