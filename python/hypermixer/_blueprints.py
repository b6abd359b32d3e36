"""Constructors of the HyperMixer layers: names, shapes and initial values (SPEC 1, 2, 4).

Both implementations subclass these, so the compiled layers and ``hypermixer.reference`` take
the same keywords and, for the same seed, start from bit-identical parameters. The math lives in
the subclasses; composites whose math is only "call the sublayers in order" live here whole.

Initialisation draws from one ``numpy.random.Generator`` in canonical parameter order (biases,
gains and shifts are constants and draw nothing); a composite hands its generator to its
sublayers, so a block's parameters depend on the seed alone.
"""

import numpy as np

from ._layer import Layer, Sequential, check_allocation, check_lengths, he_normal, make_rng


def _positive_int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _flag(name, value):
    """``value`` as a bool; only True/False (NumPy's too): bool("no") would be True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def token_mixing_output_dim(max_seq_len, token_mixing_hidden_dim):
    """O = 2*S*Ht + Ht + S: the size of theta = (W1, c1, W2, c2), SPEC section 2."""
    return 2 * max_seq_len * token_mixing_hidden_dim + token_mixing_hidden_dim + max_seq_len


class LayerNormBase(Layer):
    """Per-token layer norm over the last axis: gamma (1, E) = 1, beta (1, E) = 0."""

    eps = 1e-5

    def __init__(self, embedding_dim, dtype=np.float32):
        super().__init__(dtype)
        self.embedding_dim = self.in_features = _positive_int("embedding_dim", embedding_dim)
        self.gamma = self._add_parameter("gamma", np.ones((1, embedding_dim), self.dtype))
        self.beta = self._add_parameter("beta", np.zeros((1, embedding_dim), self.dtype))


class HypernetworkBase(Layer):
    """Row-wise MLP ``relu(m @ w1 + b1) @ w2 + b2`` from E to O features.

    Input ``(R, E)`` or ``(B, R, E)``: every row is one pooled vector (one per sequence in the
    bidirectional token mixing, one per prefix in the causal one); rows past ``lengths`` are
    padding and give zero output.
    """

    def __init__(self, embedding_dim, hidden_dim, output_dim, seed=0, dtype=np.float32):
        super().__init__(dtype)
        self.embedding_dim = self.in_features = _positive_int("embedding_dim", embedding_dim)
        self.hidden_dim = _positive_int("hidden_dim", hidden_dim)
        self.output_dim = _positive_int("output_dim", output_dim)
        check_allocation(f"a hypernetwork's output of {output_dim} features",
                         [(hidden_dim, output_dim)] * 3, self.dtype)   # w2 and its Adam state
        rng = make_rng(seed)
        self.w1 = self._add_parameter("w1", he_normal(rng, embedding_dim, hidden_dim, self.dtype))
        self.b1 = self._add_parameter("b1", np.zeros((1, hidden_dim), self.dtype))
        self.w2 = self._add_parameter("w2", he_normal(rng, hidden_dim, output_dim, self.dtype))
        self.b2 = self._add_parameter("b2", np.zeros((1, output_dim), self.dtype))

    def _buffer_shapes(self, batch, rows):
        return [(batch, rows, self.output_dim)] * 2 + [(batch, rows, self.hidden_dim)] * 3

    def _output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)


class ChannelMixingMLPBase(Layer):
    """``Y = X + relu(X @ w1 + b1) @ w2 + b2`` per token (also the Transformer's FeedForward)."""

    def __init__(self, embedding_dim, hidden_dim, seed=0, dtype=np.float32):
        super().__init__(dtype)
        self.embedding_dim = self.in_features = _positive_int("embedding_dim", embedding_dim)
        self.hidden_dim = _positive_int("hidden_dim", hidden_dim)
        rng = make_rng(seed)
        self.w1 = self._add_parameter("w1", he_normal(rng, embedding_dim, hidden_dim, self.dtype))
        self.b1 = self._add_parameter("b1", np.zeros((1, hidden_dim), self.dtype))
        self.w2 = self._add_parameter("w2", he_normal(rng, hidden_dim, embedding_dim, self.dtype))
        self.b2 = self._add_parameter("b2", np.zeros((1, embedding_dim), self.dtype))

    def _buffer_shapes(self, batch, seq_len):
        return [(batch * seq_len, self.hidden_dim)] * 2   # hidden activations, their gradient


class TokenMixingMLPBase(Layer):
    """Mixes tokens with an MLP whose weights a hypernetwork generates (SPEC section 2).

    Its only parameters are its hypernetwork's, which may be shared: pass ``hypernetwork=``.
    Subclasses set ``Hypernetwork`` to their implementation's class.
    """

    Hypernetwork = None

    def __init__(self, embedding_dim, max_seq_len, token_mixing_hidden_dim=None,
                 hypernetwork_hidden_dim=None, causal=False, hypernetwork=None, seed=0,
                 dtype=np.float32):
        super().__init__(dtype)
        self.embedding_dim = self.in_features = _positive_int("embedding_dim", embedding_dim)
        self.max_seq_len = _positive_int("max_seq_len", max_seq_len)
        if token_mixing_hidden_dim is None:
            token_mixing_hidden_dim = max(1, embedding_dim // 2)
        self.token_mixing_hidden_dim = _positive_int("token_mixing_hidden_dim",
                                                     token_mixing_hidden_dim)
        self.causal = _flag("causal", causal)
        out_dim = token_mixing_output_dim(self.max_seq_len, self.token_mixing_hidden_dim)
        if hypernetwork is None:
            if hypernetwork_hidden_dim is None:
                hypernetwork_hidden_dim = max(1, embedding_dim // 4)
            hypernetwork = self.Hypernetwork(embedding_dim, hypernetwork_hidden_dim, out_dim,
                                             seed=make_rng(seed), dtype=self.dtype)
        else:
            if not isinstance(hypernetwork, self.Hypernetwork):
                raise TypeError(
                    f"hypernetwork must be a {self.Hypernetwork.__module__}.Hypernetwork, got "
                    f"{type(hypernetwork).__module__}.{type(hypernetwork).__name__}")
            if (hypernetwork.embedding_dim, hypernetwork.output_dim) != (embedding_dim, out_dim):
                raise ValueError(
                    f"shared hypernetwork maps {hypernetwork.embedding_dim} -> "
                    f"{hypernetwork.output_dim} features; this token mixing needs "
                    f"{embedding_dim} -> {out_dim}")
            if (hypernetwork_hidden_dim is not None
                    and hypernetwork_hidden_dim != hypernetwork.hidden_dim):
                raise ValueError(
                    f"hypernetwork_hidden_dim={hypernetwork_hidden_dim} disagrees with the "
                    f"shared hypernetwork's hidden_dim={hypernetwork.hidden_dim}")
        self.hypernetwork = self._add_child("hypernetwork", hypernetwork)
        self.hypernetwork_hidden_dim = self.hypernetwork.hidden_dim

    def _buffer_shapes(self, batch, seq_len):
        # the compiled layer generates theta in the compact layout of max_seq_len = L
        o = token_mixing_output_dim(seq_len, self.token_mixing_hidden_dim)
        hh, e = self.hypernetwork.hidden_dim, self.embedding_dim
        if self.causal:
            # theta and its gradient per position, the hypernetwork's activations, the
            # prefix means and the backward's partial sums (about 8 inputs' worth)
            return [(batch, seq_len, o)] * 2 + [(batch, seq_len, hh)] * 3 + \
                [(batch, 9 * seq_len, e)]
        return [(batch, o)] * 2 + [(batch, self.token_mixing_hidden_dim, e)]

    def split_theta(self, theta):
        """Views (W1 (S,Ht), c1 (1,Ht), W2 (Ht,S), c2 (1,S)) of theta's last axis."""
        s, h = self.max_seq_len, self.token_mixing_hidden_dim
        lead = theta.shape[:-1]
        w1 = theta[..., :s * h].reshape(lead + (s, h))
        c1 = theta[..., s * h:s * h + h].reshape(lead + (1, h))
        w2 = theta[..., s * h + h:2 * s * h + h].reshape(lead + (h, s))
        c2 = theta[..., 2 * s * h + h:].reshape(lead + (1, s))
        return w1, c1, w2, c2


class HyperMixerBlockBase(Sequential):
    """``y = channel_mixing(norm2(token_mixing(norm1(x))))``: pre-norm, residuals inside.

    Subclasses set the three sublayer classes; the chaining below is the same for both
    implementations, so it is written once.
    """

    LayerNorm = None
    TokenMixingMLP = None
    ChannelMixingMLP = None

    def __init__(self, embedding_dim, hidden_dim, max_seq_len, hypernetwork_hidden_dim=None,
                 token_mixing_hidden_dim=None, causal=False, hypernetwork=None, seed=0,
                 dtype=np.float32):
        super().__init__(dtype)
        rng = make_rng(seed)
        self.embedding_dim = self.in_features = _positive_int("embedding_dim", embedding_dim)
        self.hidden_dim = _positive_int("hidden_dim", hidden_dim)
        self.max_seq_len = _positive_int("max_seq_len", max_seq_len)
        self.causal = _flag("causal", causal)
        self.norm1 = self._add_child("norm1", self.LayerNorm(embedding_dim, dtype=self.dtype))
        self.token_mixing = self._add_child("token_mixing", self.TokenMixingMLP(
            embedding_dim, max_seq_len, token_mixing_hidden_dim=token_mixing_hidden_dim,
            hypernetwork_hidden_dim=hypernetwork_hidden_dim, causal=causal,
            hypernetwork=hypernetwork, seed=rng, dtype=self.dtype))
        self.norm2 = self._add_child("norm2", self.LayerNorm(embedding_dim, dtype=self.dtype))
        self.channel_mixing = self._add_child("channel_mixing", self.ChannelMixingMLP(
            embedding_dim, hidden_dim, seed=rng, dtype=self.dtype))
        self.hypernetwork = self.token_mixing.hypernetwork


# ---------------------------------------------------------------------------------------------
# Language-model layers (SPEC section 2): Embeddings, SelfAttention, TransformerBlock,
# OutputProjection, and the argument checking of the softmax cross-entropy loss.
# ---------------------------------------------------------------------------------------------



def check_token_ids(name, ids, lengths, vocab_size, max_seq_len=None):
    """Validate integer ids ``(L,)`` or ``(B, L)``.

    Returns ``(ids (B, L) int64, lengths, unbatched)``.

    Only the positions a sequence owns (``t < lengths[b]``) are range-checked: padding
    positions are never read, so any filler value (often -1) is accepted there.
    """
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim == 1:
        if lengths is not None:
            raise ValueError(f"lengths is only accepted with batched (B, L) {name}")
        arr = arr[np.newaxis]
        unbatched = True
    elif arr.ndim == 2:
        unbatched = False
    else:
        raise ValueError(
            f"{name} must be (L,) or (B, L), got {arr.ndim} dimensions with shape {arr.shape}")
    batch, seq_len = arr.shape
    if batch == 0:
        raise ValueError(f"{name}: batch is empty (B = 0)")
    if seq_len == 0:
        raise ValueError(f"{name}: sequence is empty (L = 0)")
    if max_seq_len is not None and seq_len > max_seq_len:
        raise ValueError(f"sequence length {seq_len} exceeds max_seq_len {max_seq_len}")
    lengths = check_lengths(lengths, batch, seq_len)
    valid = np.arange(seq_len)[np.newaxis, :] < lengths[:, np.newaxis]
    bad = valid & ((arr < 0) | (arr >= vocab_size))
    if bad.any():
        b, t = (int(i) for i in np.argwhere(bad)[0])
        where = f"position {t}" if unbatched else f"sequence {b}, position {t}"
        raise ValueError(
            f"{name} must lie in [0, {vocab_size}): got {int(arr[b, t])} at {where}")
    # a copy: the embeddings keep the ids until the backward, the caller may reuse its array
    return np.array(arr, dtype=np.int64, order="C", copy=True), lengths, unbatched


def check_cross_entropy_args(logits, targets, lengths):
    """Validate the loss inputs.

    Returns ``(logits (B, L, V), targets (B, L), lengths, unbatched)``.

    Logits keep their dtype when it is float32/float64 (other real dtypes become float64).
    """
    arr = np.asarray(logits)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"logits must be a real numeric array, got dtype {arr.dtype}")
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"logits must be (L, V) or (B, L, V), got {arr.ndim} dimensions with shape "
            f"{arr.shape}")
    tgt = np.asarray(targets)
    if tgt.ndim != arr.ndim - 1 or tgt.shape != arr.shape[:-1]:
        raise ValueError(
            f"targets must have shape {arr.shape[:-1]} to match logits {arr.shape}, got "
            f"{tgt.shape}")
    vocab = arr.shape[-1]
    if vocab == 0:
        raise ValueError("logits have no classes (V = 0)")
    tgt, lengths, unbatched = check_token_ids("targets", tgt, lengths, vocab)
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if unbatched:
        arr = arr[np.newaxis]
    return arr, tgt, lengths, unbatched


def check_gradient_out(out, z, unbatched):
    """The ``out`` of softmax_cross_entropy, checked against the (B, L, V) logits ``z``
    (``unbatched``: the caller passed (L, V)); returned as (B, L, V). Refused, with nothing
    written, unless it is a writeable C-contiguous ndarray of the logits' shape and dtype that
    shares no memory with them."""
    want = z.shape[1:] if unbatched else z.shape
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != want or out.dtype != z.dtype:
        raise ValueError(f"out must be a {z.dtype} array of shape {want}, got {out.dtype} "
                         f"{out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    if np.shares_memory(out, z):
        raise ValueError("out must not overlap the logits")
    return out[np.newaxis] if unbatched else out


class EmbeddingsBase(Layer):
    """``X[t] = token[id_t] + position[t]``: token (V, E), position (S, E) ~ N(0, 0.02).

    Input: integer ids ``(L,)`` or ``(B, L)``; output ``(L, E)`` / ``(B, L, E)``, padding rows
    0. Ids are not differentiable, so the input gradient is ``None``.
    """

    init_std = 0.02

    def __init__(self, vocab_size, max_seq_len, embedding_dim, seed=0, dtype=np.float32):
        super().__init__(dtype)
        self.vocab_size = _positive_int("vocab_size", vocab_size)
        self.max_seq_len = _positive_int("max_seq_len", max_seq_len)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        check_allocation("embedding tables", [(vocab_size, embedding_dim),
                                              (max_seq_len, embedding_dim)] * 3, np.float64)
        rng = make_rng(seed)
        self.token = self._add_parameter("token", rng.normal(
            0.0, self.init_std, size=(vocab_size, embedding_dim)).astype(self.dtype))
        self.position = self._add_parameter("position", rng.normal(
            0.0, self.init_std, size=(max_seq_len, embedding_dim)).astype(self.dtype))

    def _check_input(self, x, lengths):
        return check_token_ids("token ids", x, lengths, self.vocab_size, self.max_seq_len)

    def _output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)


class SelfAttentionBase(Layer):
    """Causal single-head attention ``Y = softmax(q k^T / sqrt(E)) v + X`` (no biases).

    wq, wk, wv (E, E), He init, drawn in that order. Row t attends to rows 0..t of its own
    sequence; padding rows are never attended and give zero output.
    """

    def __init__(self, embedding_dim, seed=0, dtype=np.float32):
        super().__init__(dtype)
        self.embedding_dim = self.in_features = _positive_int("embedding_dim", embedding_dim)
        rng = make_rng(seed)
        e = embedding_dim
        self.wq = self._add_parameter("wq", he_normal(rng, e, e, self.dtype))
        self.wk = self._add_parameter("wk", he_normal(rng, e, e, self.dtype))
        self.wv = self._add_parameter("wv", he_normal(rng, e, e, self.dtype))
        self.scale = float(1.0 / np.sqrt(e))   # a Python float keeps float32 math float32

    def _buffer_shapes(self, batch, seq_len):
        # attention weights and their gradient, q, k, v and their gradients, transposes
        return [(batch, seq_len, seq_len)] * 2 + [(batch, seq_len, self.embedding_dim)] * 8


class TransformerBlockBase(Sequential):
    """``y = norm2(feed_forward(norm1(self_attention(x))))``: post-norm, as the seeds.

    Subclasses set the three sublayer classes. Canonical order: self_attention.{wq,wk,wv},
    norm1.{gamma,beta}, feed_forward.{w1,b1,w2,b2}, norm2.{gamma,beta}.
    """

    SelfAttention = None
    LayerNorm = None
    FeedForward = None

    def __init__(self, embedding_dim, hidden_dim, max_seq_len, seed=0, dtype=np.float32):
        super().__init__(dtype)
        rng = make_rng(seed)
        self.embedding_dim = self.in_features = _positive_int("embedding_dim", embedding_dim)
        self.hidden_dim = _positive_int("hidden_dim", hidden_dim)
        self.max_seq_len = _positive_int("max_seq_len", max_seq_len)
        self.self_attention = self._add_child("self_attention", self.SelfAttention(
            embedding_dim, seed=rng, dtype=self.dtype))
        self.norm1 = self._add_child("norm1", self.LayerNorm(embedding_dim, dtype=self.dtype))
        self.feed_forward = self._add_child("feed_forward", self.FeedForward(
            embedding_dim, hidden_dim, seed=rng, dtype=self.dtype))
        self.norm2 = self._add_child("norm2", self.LayerNorm(embedding_dim, dtype=self.dtype))

    def _step(self, x, keys, values, position):
        """Generation: the output row (E,) of one new token x (E,) at ``position``; ``keys``
        and ``values`` (cap, E) cache the attention's k and v of the earlier tokens, and this
        token's are written into row ``position`` (see SelfAttention._step)."""
        one = np.ones(1, np.int64)
        a = self.self_attention._step(x, keys, values, position)
        a = self.norm1._forward(a[None, None], one)
        a = self.feed_forward._forward(a, one)
        return self.norm2._forward(a, one)[0, 0]


class OutputProjectionBase(Layer):
    """``logits = X @ w + b``: w (E, V) He, b (1, V) zeros; padding rows 0."""

    def __init__(self, embedding_dim, vocab_size, seed=0, dtype=np.float32):
        super().__init__(dtype)
        self.embedding_dim = self.in_features = _positive_int("embedding_dim", embedding_dim)
        self.vocab_size = _positive_int("vocab_size", vocab_size)
        rng = make_rng(seed)
        self.w = self._add_parameter("w", he_normal(rng, embedding_dim, vocab_size, self.dtype))
        self.b = self._add_parameter("b", np.zeros((1, vocab_size), self.dtype))

    def _buffer_shapes(self, batch, seq_len):
        return [(batch, seq_len, self.vocab_size)] * 2   # logits and their gradient

    def _output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.vocab_size,)
