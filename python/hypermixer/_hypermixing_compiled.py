"""Compiled HyperMixing and HyperMixingBlock (SPEC section 8) over csrc/hypermixing.c.

The forward is four kernel calls: token information, one generator per weight matrix (one
when tied), the mixing (bidirectional, or the causal prefix scan), then the LayerNorm kernel.
The backward runs them in reverse; a tied layer adds the two gradients and runs its one
generator's backward once.

The bidirectional mixing never forms the generated (L, k) weights: it works from the
generators' activations and their second layers (csrc/hypermixing.c, hypermixing_forward), so
the generators run only their first layer here. The causal scan needs the weights per token
and gets them. Activations, their GELU slopes and the mixing's states are workspaces kept on
the layer (one forward's worth), so steady-state training allocates only what it returns.
"""

import math

import numpy as np

from . import _hypermixing_blueprint as hb
from . import _kernels
from .layers import CompiledAdam, FeedForward, LayerNorm, OneCallBlock, _keep_buffer


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
        dh, kh = d // h, k // h
        rows = batch * seq_len
        z = _keep_buffer(self, "_ws_z", x.shape)
        _kernels.hypermixing_token_info_forward(z, x, self.positions(seq_len), lengths,
                                                self.info_scale)
        generated = []
        for i, gen in enumerate(self.generators):
            A, a, C, c = self.generator(gen)
            # the causal scan needs the generated weights; the bidirectional mixing does not
            w = (_keep_buffer(self, f"_ws_w{i}", (batch, seq_len, k)) if self.causal
                 else None)
            act = _keep_buffer(self, f"_ws_act{i}", (rows, d))
            slope = _keep_buffer(self, f"_ws_slope{i}", (rows, d))
            _kernels.hypermixing_generator_forward(
                self._none if w is None else w.reshape(rows, k), act, slope,
                z.reshape(rows, d), A, self._or_none(a), C, self._or_none(c))
            generated.append((w, act, slope))
        mean = self.normalize == "mean"
        y = _keep_buffer(self, "_ws_y", x.shape) if self.layer_norm else np.empty_like(x)
        if self.causal:
            w1, w2 = generated[0][0], generated[-1][0]
            chunk = causal_chunk(seq_len)
            count = _kernels.hypermixing_checkpoint_count(seq_len, chunk)
            checkpoints = _keep_buffer(self, "_ws_ck", (batch * h * count * kh * dh,))
            _kernels.hypermixing_causal_forward(y, checkpoints, self._work(chunk), x, w1, w2,
                                                lengths, h, mean, chunk)
            mixing = (checkpoints, chunk)
        else:
            _, _, C1, c1 = self.generator("w1_gen")
            _, _, C2, c2 = self.generator("w2_gen")
            P = _keep_buffer(self, "_ws_P", (batch, h, dh + 1, dh))
            Q = _keep_buffer(self, "_ws_Q", (batch, h, dh + 1, dh))
            s = _keep_buffer(self, "_ws_s", (batch, h, kh, dh))
            m = _keep_buffer(self, "_ws_m", (batch, h, kh, dh))
            _kernels.hypermixing_forward(y, P, s, m, Q, x, generated[0][1], generated[-1][1],
                                         C1, self._or_none(c1), C2, self._or_none(c2),
                                         lengths, mean)
            mixing = (P, s, m, Q)
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
        mean = self.normalize == "mean"
        grad_input = np.empty_like(x)
        n_gen = len(self.generators)
        dacts = [_keep_buffer(self, f"_ws_dact{i}", (rows, d)) for i in range(n_gen)]
        dCs, dcs = [], []
        for gen in self.generators:
            _, _, C, c = self.generator(gen)
            dCs.append(np.empty_like(C))
            dcs.append(None if c is None else np.empty_like(c))
        if self.causal:
            checkpoints, chunk = mixing
            w1, w2 = generated[0][0], generated[-1][0]
            dw1 = _keep_buffer(self, "_ws_dw1", (batch, seq_len, k))
            dw2 = _keep_buffer(self, "_ws_dw2", (batch, seq_len, k))
            # tied: the kernel adds dw2 into dw1 itself (w1 and w2 are one array)
            _kernels.hypermixing_causal_backward(grad_input, dw1, dw2, self._work(chunk),
                                                 grad_output, x, w1, w2, checkpoints, lengths,
                                                 h, mean, chunk, self.tied)
            dws = [dw1] if self.tied else [dw1, dw2]
            dws = [dw.reshape(rows, k) for dw in dws]
        else:
            P, s, m, Q = mixing
            _, _, C1, c1 = self.generator("w1_gen")
            _, _, C2, c2 = self.generator("w2_gen")
            work = _keep_buffer(self, "_ws_mix", (
                batch * h * _kernels.hypermixing_mix_work_elements(d, k, h),))
            _kernels.hypermixing_backward(
                grad_input, dacts[0], dacts[-1], dCs[0], self._or_none(dcs[0]), dCs[-1],
                self._or_none(dcs[-1]), work, grad_output, x, generated[0][1],
                generated[-1][1], C1, self._or_none(c1), C2, self._or_none(c2), P, s, m, Q,
                lengths, mean, self.tied)
            dws = [self._none] * n_gen
        dz = _keep_buffer(self, "_ws_dz", (rows, d))
        for i, gen in enumerate(self.generators):
            A, a, C, c = self.generator(gen)
            _, act, slope = generated[i]
            dA = np.empty_like(A)
            da = None if a is None else np.empty_like(a)
            _kernels.hypermixing_generator_backward(
                dz, dA, self._or_none(da), dCs[i], self._or_none(dcs[i]), dacts[i], dws[i],
                z.reshape(rows, d), act, slope, A, C, i > 0)
            p = f"hyper.{gen}."
            grads[p + "fc1_weights"], grads[p + "fc2_weights"] = dA, dCs[i]
            grads[p + "fc1_biases"], grads[p + "fc2_biases"] = da, dcs[i]
        _kernels.hypermixing_token_info_backward(grad_input, dz.reshape(x.shape), lengths,
                                                 self.info_scale)
        return grad_input, [grads[name] for name, _ in self._own_parameters]

    def _step(self, x, state, positions):
        """Streaming (causal layers): one new token per sequence. x (B, d) at ``positions``
        (B,); state (B, h, k_h, d_h) holds the running sums of the earlier tokens and is
        updated in place. Returns the output rows (B, d), those a full forward gives."""
        batch, d = x.shape
        k = self.token_mixing_hidden_dim
        z = x * self.dtype.type(self.info_scale) + self.position_rows(positions)
        ws = []
        for gen in self.generators:
            A, a, C, c = self.generator(gen)
            w = np.empty((batch, k), self.dtype)
            act = np.empty_like(z)
            _kernels.hypermixing_generator_forward(w, act, self._none, z, A, self._or_none(a),
                                                   C, self._or_none(c))
            ws.append(w)
        y = np.empty_like(x)
        _kernels.hypermixing_step(y, state, x, ws[0], ws[-1], positions,
                                  self.normalize == "mean")
        if self.layer_norm:
            y = self._ln._forward(y[:, None, :], np.ones(batch, np.int64))[:, 0]
        return y


class HyperMixingBlock(OneCallBlock, hb.HyperMixingBlockBase):
    __doc__ = hb.HyperMixingBlockBase.__doc__
    # OneCallBlock's _grads_out holds: the causal backward writes into grads_out
    #: which of _forward / _backward accept ``out=``, a buffer the caller keeps for the
    #: result (the language model's own steps reuse them; never handed to a user)
    _out_buffers = frozenset({"forward", "backward"})
    LayerNorm = LayerNorm
    HyperMixing = HyperMixing
    FeedForward = FeedForward

    # A causal block runs as one C call each way (csrc/hypermixing_block.c): the sublayer
    # kernels in sequence, with the residual additions in C, the same bits as the sublayers
    # one call at a time (tests/test_hypermixing_block_fused.py). Measured for the
    # hypermixing LM's block (E = 128, 32 tied heads, 2 threads): the Python hops, the
    # residuals' NumPy passes and the fresh arrays cost 0.36 ms per block forward+backward at
    # 16 x 80 tokens and 0.47 ms at 1 x 2048. The bidirectional block keeps the sublayer
    # calls (its mixing kernels differ, and no language model uses it).
    def _slots(self, params):
        """The 18 parameter slots of csrc/hypermixing_block.h, None where there is none."""
        n1, n2, ff = self.norm1, self.norm2, self.feed_forward
        slots = [n1.gamma, n1.beta]
        for gen in ("w1_gen", "w2_gen"):
            p = f"hyper.{gen}."
            slots += [params.get(p + "fc1_weights"), params.get(p + "fc1_biases"),
                      params.get(p + "fc2_weights"), params.get(p + "fc2_biases")]
        slots += [params.get("layer_norm.weight"), params.get("layer_norm.bias"),
                  n2.gamma, n2.beta, ff.w1, ff.b1, ff.w2, ff.b2]
        return slots

    def _hypermixing_names(self):
        return dict(self.hypermixing._own_parameters)

    def _sizes(self, seq_len):
        hm = self.hypermixing
        return (self.hidden_dim, hm.token_mixing_hidden_dim, hm.heads, causal_chunk(seq_len),
                max(1, _kernels.get_num_threads()), hm.tied, hm.normalize == "mean",
                hm.layer_norm, hm.info_scale)

    def _forward(self, x, lengths, out=None):
        if not self.causal:
            y = super()._forward(x, lengths)
            if out is None:
                return y
            out[...] = y
            return out
        sizes = self._sizes(x.shape[1])
        cache, scratch, index = self._one_call_workspaces(
            _kernels.hypermixing_block_workspace_sizes(x.shape, sizes))
        y = np.empty_like(x) if out is None else out
        _kernels.hypermixing_block_forward(
            y, cache, index, scratch, x, lengths, self.hypermixing.positions(x.shape[1]),
            self._slots(self._hypermixing_names()), sizes)
        self._saved = (lengths, x.shape, sizes)
        return y

    def _step(self, x, state, positions):
        """Streaming (see HyperMixingBlockBase._step): the sublayer kernels on the new rows
        in one C call (hypermixing_block_step), the forward's arithmetic: the same bits as the
        sublayers called one by one, in a third of the time (the Python hops were most of a
        generated token's cost)."""
        n = x.shape[0]
        sizes = self._sizes(n)
        cache, scratch, index = self._one_call_workspaces(
            _kernels.hypermixing_block_workspace_sizes((1, n, self.embedding_dim), sizes),
            prefix="_ws_step")
        positions = np.asarray(positions, np.int64)
        y = np.empty_like(x)
        _kernels.hypermixing_block_step(
            y, state, cache, index, scratch, np.ascontiguousarray(x), positions,
            self.hypermixing.position_rows(positions), self._slots(self._hypermixing_names()),
            sizes)
        return y

    def _backward(self, grad_output, out=None, grads_out=None):
        if not self.causal:   # grads_out is only an offer: fresh arrays are returned here
            grad_input, grads = super()._backward(grad_output)
            if out is None:
                return grad_input, grads
            out[...] = grad_input
            return out, grads
        lengths, shape, sizes = self._saved
        self._saved = None
        cache, scratch, index = self._one_call_workspaces(
            _kernels.hypermixing_block_workspace_sizes(shape, sizes))
        names = self._hypermixing_names()
        params = self._slots(names)
        if grads_out is None:
            grads = {name: np.empty_like(arr) for name, arr in names.items()}
            slots = self._slots(grads)
            for i in (0, 1, 12, 13, 14, 15, 16, 17):     # the norms' and feed-forward's own
                slots[i] = np.empty_like(params[i])
        else:
            # named_parameters() order: norm1's two, the mixer's own, norm2's two, the
            # feed-forward's four
            mixer = len(self.hypermixing._own_parameters)
            grads = dict(zip(names, grads_out[2:2 + mixer]))
            slots = self._slots(grads)
            slots[0:2] = grads_out[0:2]
            slots[12:18] = grads_out[2 + mixer:]
        grad_input = np.empty(shape, self.dtype) if out is None else out
        _kernels.hypermixing_block_backward(grad_input, slots, cache, index, scratch,
                                            np.ascontiguousarray(grad_output), lengths, params,
                                            sizes)
        if grads_out is not None:
            return grad_input, grads_out
        hm_grads = [grads[name] for name, _ in self.hypermixing._own_parameters]
        return grad_input, self._merge_gradients([
            (self.norm1, slots[0:2]), (self.hypermixing, hm_grads), (self.norm2, slots[12:14]),
            (self.feed_forward, slots[14:18])])
