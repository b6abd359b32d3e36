"""Compiled layers: the same classes as ``hypermixer.reference``, arithmetic in C kernels.

Each class subclasses the shared constructor in ``_blueprints`` and implements ``_forward``
and ``_backward`` by calling ``hypermixer._kernels`` on arrays it allocates (outputs) or keeps
between calls (workspaces). Argument checking happens before any kernel runs, in ``_layer``.
"""

import sys

import numpy as np

from . import _blueprints as bp
from . import _kernels
from ._layer import ADAM_BETA1, ADAM_BETA2, ADAM_EPS

# Each section below appends its public names with its own `__all__ += [...]` line.
__all__ = []


class CompiledAdam:
    """The optimizer through csrc/optimizer.c, mixed into every compiled leaf layer: the flat
    store of a compiled root makes one fused call (global-norm clipping + Adam) per step."""

    @staticmethod
    def _fused_adam_step(params, m, v, grad, partial, lr, step, max_norm):
        return _kernels.adam_step(params, m, v, grad, partial, lr, ADAM_BETA1, ADAM_BETA2,
                                  ADAM_EPS, step, max_norm)

    @staticmethod
    def _gradient_norm(grad, partial):
        return _kernels.gradient_norm(grad, partial)


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

class Hypernetwork(CompiledAdam, bp.HypernetworkBase):
    __doc__ = bp.HypernetworkBase.__doc__

    def _forward(self, x, lengths):
        out = np.empty(x.shape[:2] + (self.output_dim,), self.dtype)
        # pre/hidden are cache, not workspace: a shared hypernetwork runs several forwards
        # before their backwards (see TokenMixingMLP), so each forward keeps its own.
        pre = np.empty(x.shape[:2] + (self.hidden_dim,), self.dtype)
        hidden = np.empty_like(pre)
        _kernels.hypernetwork_forward(out, pre, hidden, x, lengths, self.w1,
                                      self.b1.reshape(-1), self.w2, self.b2.reshape(-1))
        self._saved = (x, lengths, pre, hidden, None)
        return out

    def _forward_theta(self, x, lengths, max_seq_len, tm_hidden, seq_len, causal):
        """Only the token-mixing weights an input of ``seq_len`` rows uses, in the layout the
        token-mixing kernels read (csrc/hypernetwork.c): (B, 1, 2*L*Ht+Ht+L) from one mean
        per sequence, or causal (B, L, L*Ht+2*Ht+1), one record per prefix. The index
        arithmetic is in C: no per-length index arrays."""
        batch, rows, _ = x.shape
        size = _kernels.hypernetwork_theta_size(seq_len, tm_hidden, causal)
        theta = np.empty((batch, rows, size), self.dtype)
        pre = np.empty((batch, rows, self.hidden_dim), self.dtype)
        hidden = np.empty_like(pre)
        layout = (max_seq_len, tm_hidden, seq_len, causal)
        _kernels.hypernetwork_theta_forward(theta, pre, hidden, self._wcol(layout), x, lengths,
                                            self.w1, self.b1.reshape(-1), self.w2,
                                            self.b2.reshape(-1), *layout)
        self._saved = (x, lengths, pre, hidden, layout)
        return theta

    def _wcol(self, layout):
        """Scratch of the theta kernels (W2 columns gathered for the causal records; recomputed
        by each call)."""
        _, tm_hidden, seq_len, causal = layout
        rows = _kernels.hypernetwork_theta_scratch_rows(seq_len, tm_hidden, causal)
        return _keep_buffer(self, "_ws_wcol", (rows, self.hidden_dim))

    def _backward(self, grad_output):
        x, lengths, pre, hidden, layout = self._saved
        grad_input = np.empty(x.shape, self.dtype)
        dpre = _keep_buffer(self, "_ws_dpre", pre.shape)
        if layout is None:
            dw1, db1 = np.empty_like(self.w1), np.empty_like(self.b1)
            dw2, db2 = np.empty_like(self.w2), np.empty_like(self.b2)
            _kernels.hypernetwork_backward(grad_input, dw1, db1.reshape(-1), dw2,
                                           db2.reshape(-1), dpre, grad_output, x, pre, hidden,
                                           lengths, self.w1, self.w2)
        else:
            dw1, db1 = np.empty_like(self.w1), np.empty_like(self.b1)
            dw2, db2 = np.empty_like(self.w2), np.empty_like(self.b2)
            _kernels.hypernetwork_theta_backward(grad_input, dw1, db1.reshape(-1), dw2,
                                                 db2.reshape(-1), dpre, self._wcol(layout),
                                                 grad_output, x, pre, hidden, lengths, self.w1,
                                                 self.w2, *layout)
        return grad_input, [dw1, db1, dw2, db2]


__all__ += ["Hypernetwork"]


# ---- TokenMixingMLP (csrc/token_mixing.c) ----

class TokenMixingMLP(CompiledAdam, bp.TokenMixingMLPBase):
    __doc__ = bp.TokenMixingMLPBase.__doc__
    Hypernetwork = Hypernetwork

    def _work(self, width):
        """Per-thread scratch (threads, width), kept across calls."""
        slots = max(1, _kernels.get_num_threads())
        return _keep_buffer(self, "_ws_work", (slots, width))

    def _forward(self, x, lengths):
        batch, seq_len, width = x.shape
        # The hypernetwork generates only what an input of L rows uses, in the layout of a
        # token mixing with max_seq_len = L (causal: per position, only what prefix t uses).
        s, h = seq_len, self.token_mixing_hidden_dim
        layout = (self.max_seq_len, h, seq_len)
        y = np.empty_like(x)
        if self.causal:
            means = np.empty_like(x)
            _kernels.token_mixing_prefix_pool_forward(means, x, lengths)
            theta = self.hypernetwork._forward_theta(means, lengths, *layout, True)
            _kernels.token_mixing_causal_forward(y, self._work(h * width), x, theta, lengths,
                                                 s, h)
            act = None
        else:
            means = np.empty((batch, 1, width), self.dtype)
            _kernels.token_mixing_pool_forward(means.reshape(batch, width), x, lengths)
            theta = self.hypernetwork._forward_theta(means, np.ones(batch, np.int64), *layout,
                                                     False)
            act = np.empty((batch, h, width), self.dtype)
            _kernels.token_mixing_forward(y, act, x, theta.reshape(batch, -1), lengths, s, h)
        # The hypernetwork's own cache is kept with ours and put back before its backward:
        # a shared hypernetwork is overwritten by every other layer's forward in between.
        self._saved = (x, lengths, theta, act, self.hypernetwork._saved)
        return y

    def _backward(self, grad_output):
        x, lengths, theta, act, hyper_saved = self._saved
        batch, seq_len, width = x.shape
        s, h = seq_len, self.token_mixing_hidden_dim   # compact theta layout, as in _forward
        grad_input = np.empty_like(x)
        dtheta = np.empty_like(theta)
        if self.causal:
            chunk = _kernels.token_mixing_causal_chunk(seq_len)   # the rule block.c uses
            per_seq = _kernels.token_mixing_causal_partial_size(seq_len, width, chunk)
            partial = _keep_buffer(self, "_ws_partial", (batch, per_seq))
            work = self._work(h * width)
            _kernels.token_mixing_causal_backward(grad_input, dtheta, partial, work,
                                                  grad_output, x, theta, lengths, s, h, chunk)
        else:
            work = self._work(h * width)
            _kernels.token_mixing_backward(grad_input, dtheta.reshape(batch, -1), work,
                                           grad_output, x, theta.reshape(batch, -1), act,
                                           lengths, s, h)
        self.hypernetwork._saved = hyper_saved
        dmeans, grads = self.hypernetwork._backward(dtheta)
        if self.causal:
            _kernels.token_mixing_prefix_pool_backward(grad_input, dmeans, lengths)
        else:
            _kernels.token_mixing_pool_backward(grad_input, dmeans.reshape(batch, width),
                                                lengths)
        return grad_input, grads


__all__ += ["TokenMixingMLP"]


# ---- HyperMixerBlock (composite of the above) ----

class OneCallBlock:
    """Glue shared by the blocks whose forward and backward are one C call each
    (csrc/block.c, csrc/transformer_block.c)."""

    def _one_call_workspaces(self, sizes, prefix="_ws"):
        """(cache, scratch, index) of the element counts ``sizes``, kept on the block: the
        cache holds the forward's results until the backward, scratch is reused by both.
        Generation's steps keep their own (another ``prefix``), so that a token streamed
        between a forward and its backward leaves the forward's cache alone."""
        cache_n, scratch_n, index_n = sizes
        cache = _keep_buffer(self, prefix + "_cache", (cache_n,))
        scratch = _keep_buffer(self, prefix + "_scratch", (scratch_n,))
        index = self.__dict__.get(prefix + "_index")
        if index is None or index.size < index_n:
            index = np.empty(index_n, np.int64)
            setattr(self, prefix + "_index", index)
        return cache, scratch, index

    #: _backward accepts ``grads_out=``: views (named_parameters() order) to write the
    #: parameter gradients into, which it returns (Sequential._backward passes them)
    _grads_out = True

    def _one_call_gradients(self, params, grads_out=None):
        """Where the backward writes the parameter gradients: ``grads_out`` (views of a
        language model's flat gradient buffer) when given; straight into the flat gradient
        buffer during this block's own ``backward(g, lr)``; else new arrays (which
        ``compute_gradients`` hands to its caller). A block holds one hypernetwork, so its
        parameters are exactly its named_parameters(), in order."""
        if grads_out is not None:
            return grads_out
        store = self._gradient_target
        if store is not None and store.root is self:
            return store.gradient_views()
        return [np.empty_like(p) for p in params]


class HyperMixerBlock(OneCallBlock, bp.HyperMixerBlockBase):
    __doc__ = bp.HyperMixerBlockBase.__doc__
    #: which of _forward / _backward accept ``out=``, a buffer the caller keeps for the
    #: result (the language model's own steps reuse them; never handed to a user)
    _out_buffers = frozenset({"forward", "backward"})
    LayerNorm = LayerNorm
    TokenMixingMLP = TokenMixingMLP
    ChannelMixingMLP = ChannelMixingMLP

    # One C call each way for the whole block (csrc/block.c), instead of a Python hop and a
    # kernel entry per sublayer: at B=1 those hops cost more than the arithmetic. The
    # sublayers' own _forward/_backward stay for standalone use and compute the same bits.
    def _block_parameters(self):
        n1, hn, n2, cm = self.norm1, self.hypernetwork, self.norm2, self.channel_mixing
        return [n1.gamma, n1.beta, hn.w1, hn.b1, hn.w2, hn.b2, n2.gamma, n2.beta,
                cm.w1, cm.b1, cm.w2, cm.b2]

    def _block_sizes(self):
        slots = max(1, _kernels.get_num_threads())
        return (self.hidden_dim, self.hypernetwork.hidden_dim,
                self.token_mixing.token_mixing_hidden_dim, self.causal, slots)

    def _block_workspaces(self, batch, seq_len, sizes):
        return self._one_call_workspaces(_kernels.block_workspace_sizes(
            batch, seq_len, self.embedding_dim, *sizes))

    def _forward(self, x, lengths, out=None):
        batch, seq_len, _ = x.shape
        sizes = self._block_sizes()
        cache, scratch, index = self._block_workspaces(batch, seq_len, sizes)
        y = np.empty_like(x) if out is None else out
        _kernels.block_forward(y, cache, index, scratch, x, lengths, self._block_parameters(),
                               self.token_mixing.max_seq_len, *sizes)
        self._saved = (lengths, x.shape)
        return y

    def _backward(self, grad_output, out=None, grads_out=None):
        lengths, shape = self._saved
        self._saved = None
        sizes = self._block_sizes()
        cache, scratch, index = self._block_workspaces(shape[0], shape[1], sizes)
        params = self._block_parameters()
        grads = self._one_call_gradients(params, grads_out)
        grad_input = np.empty(shape, self.dtype) if out is None else out
        _kernels.block_backward(grad_input, grads, cache, index, scratch,
                                np.ascontiguousarray(grad_output), lengths,
                                params, self.token_mixing.max_seq_len, *sizes)
        return grad_input, grads


__all__ += ["HyperMixerBlock"]


# ---- Language-model layers: Embeddings, SelfAttention, FeedForward, TransformerBlock,
#      OutputProjection, softmax cross-entropy ----


class Embeddings(CompiledAdam, bp.EmbeddingsBase):
    __doc__ = bp.EmbeddingsBase.__doc__
    #: which of _forward / _backward accept ``out=``, a buffer the caller keeps for the
    #: result (the language model's own steps reuse them; never handed to a user)
    _out_buffers = frozenset({"forward"})

    def _forward(self, ids, lengths, out=None):
        y = np.empty(ids.shape + (self.embedding_dim,), self.dtype) if out is None else out
        _kernels.embeddings_forward(y, ids, lengths, self.token, self.position)
        self._saved = (ids, lengths)
        return y

    def _backward(self, grad_output):
        ids, lengths = self._saved
        dtoken = np.empty_like(self.token)
        dposition = np.empty_like(self.position)
        _kernels.embeddings_backward(dtoken, dposition, grad_output, ids, lengths)
        return None, [dtoken, dposition]


class SelfAttention(CompiledAdam, bp.SelfAttentionBase):
    __doc__ = bp.SelfAttentionBase.__doc__

    def _forward(self, x, lengths):
        batch, seq_len, e = x.shape
        y = np.empty_like(x)
        # forward cache: xc (x with zeroed padding rows), qkv = [q | k | v] per row and the
        # attention weights; kt and wcat are scratch
        xc = _keep_buffer(self, "_ws_xc", (batch, seq_len, e))
        qkv = _keep_buffer(self, "_ws_qkv", (batch, seq_len, 3 * e))
        probs = _keep_buffer(self, "_ws_probs", (batch, seq_len, seq_len))
        kt = _keep_buffer(self, "_ws_t", (batch, e, seq_len))
        wcat = _keep_buffer(self, "_ws_wcat", (e, 3 * e))
        _kernels.attention_forward(y, xc, qkv, probs, kt, wcat, x, self.wq, self.wk, self.wv,
                                   lengths)
        self._saved = (xc, qkv, probs, lengths)
        return y

    def _backward(self, grad_output):
        xc, qkv, probs, lengths = self._saved
        batch, seq_len, e = xc.shape
        grad_input = np.empty_like(xc)
        dwq, dwk, dwv = (np.empty_like(w) for w in (self.wq, self.wk, self.wv))
        dqkv = _keep_buffer(self, "_ws_dqkv", (batch, seq_len, 3 * e))
        dscores = _keep_buffer(self, "_ws_dscores", (batch, seq_len, seq_len))
        vt = _keep_buffer(self, "_ws_t", (batch, e, seq_len))
        wcat = _keep_buffer(self, "_ws_wcat", (e, 3 * e))
        dwcat = _keep_buffer(self, "_ws_dwcat", (e, 3 * e))
        _kernels.attention_backward(grad_input, dwq, dwk, dwv, dqkv, dscores, vt, wcat, dwcat,
                                    grad_output, xc, qkv, probs, self.wq, self.wk, self.wv,
                                    lengths)
        return grad_input, [dwq, dwk, dwv]

    def _step(self, x, keys, values, position):
        """Generation: the output row (E,) of one new token x (E,) at ``position``, whose
        earlier tokens' k and v are rows 0..position-1 of ``keys`` and ``values`` (cap, E);
        writes this token's into row ``position``."""
        e = self.embedding_dim
        y = np.empty(e, self.dtype)
        q = _keep_buffer(self, "_ws_step_q", (e,))
        scores = _keep_buffer(self, "_ws_step_scores", (keys.shape[0],))
        _kernels.attention_step(y, keys, values, q, scores, np.ascontiguousarray(x), self.wq,
                                self.wk, self.wv, position)
        return y


class FeedForward(ChannelMixingMLP):
    """The Transformer's position-wise MLP: the same math and parameters as ChannelMixingMLP."""


class TransformerBlock(OneCallBlock, bp.TransformerBlockBase):
    __doc__ = bp.TransformerBlockBase.__doc__
    #: which of _forward / _backward accept ``out=``, a buffer the caller keeps for the
    #: result (the language model's own steps reuse them; never handed to a user)
    _out_buffers = frozenset({"forward", "backward"})
    SelfAttention = SelfAttention
    LayerNorm = LayerNorm
    FeedForward = FeedForward

    # One C call each way for the whole block (csrc/transformer_block.c), as HyperMixerBlock.
    def _step(self, x, keys, values, position):
        """Generation (see TransformerBlockBase._step) in one C call: the sublayers' step
        kernels in sequence, the same bits as calling them one by one."""
        scratch = _keep_buffer(self, "_ws_step", (_kernels.transformer_block_step_scratch(
            keys.shape[0], self.embedding_dim, self.hidden_dim),))
        y = np.empty(self.embedding_dim, self.dtype)
        _kernels.transformer_block_step(y, keys, values, scratch, np.ascontiguousarray(x),
                                        position, self._block_parameters(), self.hidden_dim)
        return y

    def _block_parameters(self):
        at, n1, ff, n2 = self.self_attention, self.norm1, self.feed_forward, self.norm2
        return [at.wq, at.wk, at.wv, n1.gamma, n1.beta, ff.w1, ff.b1, ff.w2, ff.b2,
                n2.gamma, n2.beta]

    def _block_workspaces(self, batch, seq_len):
        return self._one_call_workspaces(_kernels.transformer_block_workspace_sizes(
            batch, seq_len, self.embedding_dim, self.hidden_dim))

    def _forward(self, x, lengths, out=None):
        cache, scratch, index = self._block_workspaces(x.shape[0], x.shape[1])
        y = np.empty_like(x) if out is None else out
        _kernels.transformer_block_forward(y, cache, index, scratch, x, lengths,
                                           self._block_parameters(), self.hidden_dim)
        self._saved = (lengths, x.shape)
        return y

    def _backward(self, grad_output, out=None, grads_out=None):
        lengths, shape = self._saved
        self._saved = None
        cache, scratch, index = self._block_workspaces(shape[0], shape[1])
        params = self._block_parameters()
        grads = self._one_call_gradients(params, grads_out)
        grad_input = np.empty(shape, self.dtype) if out is None else out
        _kernels.transformer_block_backward(grad_input, grads, cache, index, scratch,
                                            np.ascontiguousarray(grad_output), lengths,
                                            params, self.hidden_dim)
        return grad_input, grads


class OutputProjection(CompiledAdam, bp.OutputProjectionBase):
    __doc__ = bp.OutputProjectionBase.__doc__
    #: which of _forward / _backward accept ``out=``, a buffer the caller keeps for the
    #: result (the language model's own steps reuse them; never handed to a user)
    _out_buffers = frozenset({"forward", "backward"})
    #: _backward accepts ``grads_out=`` (see OneCallBlock)
    _grads_out = True

    def _forward(self, x, lengths, out=None):
        # out: a (B, L, V) buffer of the layer's dtype the caller keeps (the language model's
        # loss reuses one, so its largest arrays are not fresh pages every step)
        logits = np.empty(x.shape[:2] + (self.vocab_size,), self.dtype) if out is None else out
        _kernels.output_forward(logits, x, self.w, self.b, lengths)
        self._saved = (x, lengths)
        return logits

    def _backward(self, grad_output, out=None, grads_out=None):
        x, lengths = self._saved
        real_rows = int(lengths.sum())
        # packing workspaces, used only when some sequence is shorter than the padded length
        rows = real_rows if real_rows < x.shape[0] * x.shape[1] else 1
        grad_input = np.empty_like(x) if out is None else out
        dw, db = (np.empty_like(self.w), np.empty_like(self.b)) if grads_out is None \
            else grads_out
        xp = _keep_buffer(self, "_ws_xp", (rows, self.embedding_dim))
        gp = _keep_buffer(self, "_ws_gp", (rows, self.vocab_size))
        _kernels.output_backward(grad_input, dw, db, xp, gp, grad_output, x, self.w, lengths)
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
    grad = np.empty_like(z) if out is None else bp.check_gradient_out(out, z, unbatched)
    row_loss = np.empty(z.shape[:2], np.float64)
    loss = _kernels.cross_entropy(grad, row_loss, z, tgt, lengths)
    return float(loss), (grad[0] if unbatched else grad)


__all__ += ["Embeddings", "SelfAttention", "FeedForward", "TransformerBlock",
            "OutputProjection", "softmax_cross_entropy"]

from ._hypermixing_compiled import HyperMixing, HyperMixingBlock  # noqa: E402  (SPEC 8)
__all__ += ["HyperMixing", "HyperMixingBlock"]

# The hypermixing language model's embeddings (no position table), defined here so that
# pickle can name their class
from ._hypermixing_lm import token_embeddings_class  # noqa: E402
TokenEmbeddings = token_embeddings_class(sys.modules[__name__])
