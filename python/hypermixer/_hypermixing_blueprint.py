"""Constructors of HyperMixing and HyperMixingBlock (SPEC section 8), shared by both
implementations: parameter names, shapes, initial values, the position table, the state_dict
exchange with the official PyTorch module, and the block's chaining.

HyperMixing mixes tokens with a two-layer MLP whose weights are generated per token: for head
j, ``W1 = G1_j(Z_j)`` and ``W2 = G2_j(Z_j)`` (one row per token, k_h columns), where Z is the
token information (the input scaled plus a sinusoidal position code) and
``G(z) = gelu(z @ A^T + a) @ C^T + c``. The head's values V_j (its d_h columns of the input)
are mixed as ``Y_j = W2 @ gelu(W1^T @ V_j)``; heads side by side, then an optional LayerNorm.
In causal mode the sum over tokens inside ``W1^T @ V_j`` runs over the prefix 0..t only.
"""

import numpy as np

from ._layer import Layer, check_allocation, make_rng
from ._blueprints import _flag, _positive_int

#: The two ways of computing token information that trained weights expect.
#: "official": Z = X * sqrt(d) + P[1 : L+1] with the official table (its exponent uses the
#:             column index itself, 2i/d for column i).
#: "speechbrain": Z = X + P'[0 : L] with the standard sinusoid (exponent 2*floor(i/2)/d).
TOKEN_INFORMATION = ("official", "speechbrain")
NORMALIZE = ("sum", "mean")

#: SpeechBrain's module keeps its position table in its state_dict under this name, shaped
#: (1, max_length, d) (max_length 3000 by default).
SPEECHBRAIN_TABLE = "positional_encoding.pe"
#: The constant position buffers that load_state_dict skips (except SPEECHBRAIN_TABLE in a
#: "speechbrain" layer, which it keeps).
POSITION_BUFFERS = ("token_information.pe", SPEECHBRAIN_TABLE)
#: How far a loaded SpeechBrain table may be from ``position_table(..., "speechbrain")`` at
#: position p: ``PLAUSIBLE_SLOPE * (p + 1)``. Its float32 arithmetic puts a relative error of
#: a few float32 ulps on the angle, so the measured gap grows with p (at most 7.9e-8 * (p+1)
#: over 3000 rows, d from 2 to 1024, SpeechBrain 1.1.2); 1e-6 leaves a wide margin and still
#: refuses any other table (another flavour, shifted positions, learned values): those differ
#: by O(1) in the first rows.
PLAUSIBLE_SLOPE = 1e-6
#: Rows of the position table a stream computes at a time past the cached table: constant
#: memory, and one token in 64 pays for 64 rows (0.1-0.2 ms at d = 128)
POSITION_BLOCK = 64
#: How many such blocks a layer keeps (the most recently used)
POSITION_BLOCKS_KEPT = 4


def position_table(rows, dim, flavour="official"):
    """``(rows, dim)`` sinusoidal table, positions 0..rows-1, in float64.

    Computed in float64 and rounded to float32, also for a float64 layer: the official
    module does exactly that (a float32 buffer, kept as such when the model is converted to
    float64). SpeechBrain computes its table in float32 arithmetic, which this matches only
    to a few float32 ulps of the angle; a "speechbrain" layer that loaded SpeechBrain's
    buffer uses that instead (``HyperMixingBase.positions``).
    """
    return sinusoid(np.arange(rows), dim, flavour)


def sinusoid(positions, dim, flavour="official"):
    """The rows of ``position_table`` at the given 1-D ``positions``: the same elementwise
    arithmetic, so the same bits as the whole table's rows (tested)."""
    pos = np.asarray(positions, dtype=np.float64)[:, None]
    col = np.arange(dim, dtype=np.float64)[None, :]
    if flavour == "official":
        angle = pos / 10000.0 ** (2.0 * col / dim)
    else:
        angle = pos / 10000.0 ** (2.0 * np.floor(col / 2) / dim)
    # sin on the even columns, cos on the odd ones: each value as np.where(even, sin, cos)
    # would give it, for half the work (a streaming block of 64 rows: 142 -> 75 us)
    table = np.empty_like(angle)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return table.astype(np.float32).astype(np.float64)


class HyperMixingBase(Layer):
    """Multi-head HyperMixing (SPEC section 8) on ``(L, d)`` or ``(B, L, d)`` input.

    Parameters use the official module's names and shapes, so ``state_dict()`` and
    ``load_state_dict()`` exchange weights with it: ``hyper.w1_gen.fc1_weights`` (h, d_h, d_h),
    ``hyper.w1_gen.fc1_biases`` (h, d_h), ``hyper.w1_gen.fc2_weights`` (h, k_h, d_h),
    ``hyper.w1_gen.fc2_biases`` (h, k_h), the same for ``hyper.w2_gen`` unless tied, and
    ``layer_norm.weight`` / ``layer_norm.bias`` (d,). Biases only with
    ``hypernetwork_bias=True``; the LayerNorm only with ``layer_norm=True``.

    ``normalize="sum"`` sums the outer products over tokens (the official code); "mean"
    divides by the number of tokens summed (all of them, or t+1 in causal mode).
    There is no maximum length: the position table grows on demand.
    """

    def __init__(self, embedding_dim, token_mixing_hidden_dim=None, heads=1, tied=False,
                 causal=False, normalize="sum", layer_norm=True, hypernetwork_bias=False,
                 token_information="official", seed=0, dtype=np.float32):
        super().__init__(dtype)
        d = self.embedding_dim = self.in_features = _positive_int("embedding_dim",
                                                                  embedding_dim)
        if token_mixing_hidden_dim is None:
            token_mixing_hidden_dim = 2 * d
        k = self.token_mixing_hidden_dim = _positive_int("token_mixing_hidden_dim",
                                                         token_mixing_hidden_dim)
        h = self.heads = _positive_int("heads", heads)
        if d % h:
            raise ValueError(f"heads={h} must divide embedding_dim={d}")
        if k % h:
            raise ValueError(f"heads={h} must divide token_mixing_hidden_dim={k}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if token_information not in TOKEN_INFORMATION:
            raise ValueError(
                f"token_information must be one of {TOKEN_INFORMATION}, got "
                f"{token_information!r}")
        self.tied = _flag("tied", tied)
        self.causal = _flag("causal", causal)
        self.normalize = normalize
        self.layer_norm = _flag("layer_norm", layer_norm)
        self.hypernetwork_bias = _flag("hypernetwork_bias", hypernetwork_bias)
        self.token_information = token_information
        self.head_dim = dh = d // h
        self.head_hidden = kh = k // h
        # first, so that widths beyond memory or the index range get our message, not one
        # from NumPy (or from sqrt of a huge int below): each generator's fc1 (h, d_h, d_h)
        # and fc2 (h, k_h, d_h) with their biases, and the LayerNorm's
        generator = [(h, dh, dh), (h, kh, dh)] + \
            ([(h, dh), (h, kh)] if self.hypernetwork_bias else [])
        check_allocation("HyperMixing weights",
                         generator * (1 if self.tied else 2) +
                         ([(d,)] * 2 if self.layer_norm else []), self.dtype)
        # the scale of the input inside the token information
        self.info_scale = float(np.sqrt(d)) if token_information == "official" else 1.0
        self.info_offset = 1 if token_information == "official" else 0
        rng = make_rng(seed)
        self.generators = ["w1_gen"] if self.tied else ["w1_gen", "w2_gen"]
        for gen in self.generators:
            # He initialisation (SPEC section 1): both layers of a generator have fan-in d_h
            self._add_parameter(f"hyper.{gen}.fc1_weights", rng.normal(
                0.0, np.sqrt(2.0 / dh), size=(h, dh, dh)).astype(self.dtype))
            if self.hypernetwork_bias:
                self._add_parameter(f"hyper.{gen}.fc1_biases", np.zeros((h, dh), self.dtype))
            self._add_parameter(f"hyper.{gen}.fc2_weights", rng.normal(
                0.0, np.sqrt(2.0 / dh), size=(h, kh, dh)).astype(self.dtype))
            if self.hypernetwork_bias:
                self._add_parameter(f"hyper.{gen}.fc2_biases", np.zeros((h, kh), self.dtype))
        if self.layer_norm:
            self._add_parameter("layer_norm.weight", np.ones(d, self.dtype))
            self._add_parameter("layer_norm.bias", np.zeros(d, self.dtype))
        self._positions = np.zeros((0, d), self.dtype)
        # a SpeechBrain table received by load_state_dict: the array as given (emitted again
        # by state_dict) and its rows in float64; None when the layer has none
        self._loaded_table = None
        self._loaded_rows = None
        # rows past the table for streaming: [(first position, rows)], see position_rows
        self._position_blocks = []

    # ------------------------------------------------------------------ helpers
    def _param(self, name):
        for n, arr in self._own_parameters:
            if n == name:
                return arr
        return None

    def generator(self, gen):
        """``(A, a, C, c)`` of generator ``gen`` ("w1_gen" or "w2_gen"); a, c are None
        without biases. Tied layers answer "w2_gen" with the first generator."""
        if self.tied:
            gen = "w1_gen"
        p = f"hyper.{gen}."
        return (self._param(p + "fc1_weights"), self._param(p + "fc1_biases"),
                self._param(p + "fc2_weights"), self._param(p + "fc2_biases"))

    def positions(self, seq_len):
        """The ``(seq_len, d)`` table rows added to the first seq_len tokens (already offset
        by the flavour: rows 1..L of the official table, 0..L-1 of SpeechBrain's).

        A "speechbrain" layer that loaded SpeechBrain's own table (``positional_encoding.pe``,
        see load_state_dict) uses its rows, bit for bit, for the positions it covers, and
        ``position_table`` past its end: the same sinusoid, so the layer keeps having no
        maximum length (SpeechBrain's module stops at its max_length, 3000 by default).
        """
        if self._positions.shape[0] < seq_len:
            grow = max(seq_len, 2 * self._positions.shape[0], 64)
            self._positions = self._rows_at(np.arange(grow))
        return self._positions[:seq_len]

    def position_rows(self, positions):
        """The rows that the tokens at ``positions`` (1-D) get, as ``positions(n)[positions]``.

        Past the cached table (which only a forward grows) they come from blocks of
        ``POSITION_BLOCK`` rows, each computed from the first position that needs it; the
        ``POSITION_BLOCKS_KEPT`` most recently used are kept, none grows: a stream's cost and
        memory per token stay the same at any position. (Growing the table instead held p
        rows at position p and rebuilt it at every doubling: 129 ms for one token at position
        4,096 in the LM, gigabytes at 10**6.)"""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 1:   # one stream: no reductions (they cost more than the rest)
            first = last = int(positions[0])
        else:
            first, last = int(positions.min()), int(positions.max())
        if last < self._positions.shape[0]:
            return self._positions[positions]
        if last - first >= POSITION_BLOCK:   # far apart: those rows alone
            return self._rows_at(positions)
        blocks = self._position_blocks
        for i, (start, block) in enumerate(blocks):
            if start <= first and last < start + POSITION_BLOCK:
                if i:   # most recently used first
                    blocks.insert(0, blocks.pop(i))
                return block[positions - start]
        # a few blocks, so that streams fed in turn (two conversations on one network) do
        # not evict each other's block at every token
        blocks.insert(0, (first, self._rows_at(np.arange(first, first + POSITION_BLOCK))))
        del blocks[POSITION_BLOCKS_KEPT:]
        return blocks[0][1][positions - first]

    def _rows_at(self, positions):
        """The rows of ``positions`` (1-D): the sinusoid past the flavour's offset, or the
        loaded SpeechBrain rows where they reach, in the layer's dtype."""
        rows = sinusoid(positions + self.info_offset, self.embedding_dim,
                        self.token_information)
        if self._loaded_rows is not None:
            inside = positions < self._loaded_rows.shape[0]
            rows[inside] = self._loaded_rows[positions[inside]]
        return rows.astype(self.dtype)

    def _check_speechbrain_table(self, value):
        """The rows (float64) of a SpeechBrain position buffer, or ValueError / TypeError
        naming what is wrong with it."""
        name, d = SPEECHBRAIN_TABLE, self.embedding_dim
        arr = np.asarray(value)
        if arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"state dict entry {name} has dtype {arr.dtype}, expected float32 "
                            "or float64 (SpeechBrain's sinusoid table)")
        if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[1] < 1 or arr.shape[2] != d:
            raise ValueError(f"state dict entry {name} has shape {arr.shape}, expected "
                             f"(1, rows, {d}) with rows >= 1")
        rows = arr[0].astype(np.float64)
        if not np.all(np.isfinite(rows)):
            raise ValueError(f"state dict entry {name} has non-finite values")
        expected = position_table(rows.shape[0], d, "speechbrain")
        excess = np.abs(rows - expected) - PLAUSIBLE_SLOPE * (
            np.arange(rows.shape[0])[:, None] + 1.0)
        if np.any(excess > 0):
            p, c = np.unravel_index(int(np.argmax(excess)), excess.shape)
            raise ValueError(
                f"state dict entry {name} is not SpeechBrain's sinusoid table (positions from "
                f"0, exponent 2*floor(c/2)/d): row {p}, column {c} holds {rows[p, c]:.9g}, "
                f"the sinusoid {expected[p, c]:.9g}")
        return rows

    def _buffer_shapes(self, batch, seq_len):
        rows, d, k = batch * seq_len, self.embedding_dim, self.token_mixing_hidden_dim
        n_gen = len(self.generators)
        # token information, per generator pre-activations, activations, weights and their
        # gradients, the mixed output and the LayerNorm's cache
        return [(rows, d)] * (2 + 4 * n_gen + 4) + [(rows, k)] * (2 + 2 * n_gen)

    # ------------------------------------------------------------------ state_dict
    def state_dict(self):
        """``{official name: NumPy array}``, copies in the official shapes (no torch). A layer
        that loaded SpeechBrain's position table gives it back too (same shape, dtype and
        values), so that a round trip through either side keeps it."""
        state = {name: np.array(arr, copy=True) for name, arr in self._own_parameters}
        if self._loaded_table is not None:
            state[SPEECHBRAIN_TABLE] = np.array(self._loaded_table, copy=True)
        return state

    def load_state_dict(self, mapping, strict=True):
        """Load weights named as the official module's state_dict (NumPy arrays, or anything
        with ``.detach().cpu().numpy()`` / ``__array__``). Every entry is checked first;
        a missing, unknown or misshapen entry raises ValueError and changes nothing.

        Position buffers (``token_information.pe``, ``positional_encoding.pe``) are constants
        and are skipped, with one exception: a ``token_information="speechbrain"`` layer keeps
        SpeechBrain's ``positional_encoding.pe`` (shape (1, rows, d), float32 or float64) as
        its position table for the rows it has (see ``positions``), because SpeechBrain
        computes that table in float32 arithmetic, which our formula matches only to a few
        float32 ulps of the angle. The buffer must be finite and that sinusoid (within
        ``PLAUSIBLE_SLOPE * (p + 1)`` at position p), else it is refused like any bad entry.
        A mapping without it leaves the table as it was.

        A tied layer accepts ``hyper.w2_gen.*`` entries (PyTorch writes the shared generator
        twice) only when they equal the ``w1_gen`` ones.

        This layer's Adam moments restart from zero (they describe the old weights). The step
        counter is one per model (flat store): it restarts only when this layer is a model of
        its own, never for the other layers of a network or block it belongs to.
        """
        taken = self._enter()   # not while this layer (or what holds it) runs elsewhere
        try:
            self._load_state_dict(mapping, strict)
        finally:
            self._leave(taken)

    def _load_state_dict(self, mapping, strict):
        if not hasattr(mapping, "items"):
            raise TypeError(f"state dict must be a mapping, got {type(mapping).__name__}")
        expected = dict(self._own_parameters)
        keeps_table = self.token_information == "speechbrain"
        given = {}
        table = None
        for name, value in mapping.items():
            if not isinstance(name, str):
                raise TypeError(f"state dict keys must be str, got {name!r}")
            if name in POSITION_BUFFERS and not (keeps_table and name == SPEECHBRAIN_TABLE):
                continue
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            if name == SPEECHBRAIN_TABLE:
                rows = self._check_speechbrain_table(value)
                table = (np.array(value, copy=True), rows)
                continue
            arr = np.asarray(value)
            if arr.dtype.kind not in "iuf":
                raise TypeError(f"state dict entry {name} has dtype {arr.dtype}, expected "
                                "real numbers")
            given[name] = arr
        duplicates = {}
        if self.tied:
            for name in list(given):
                if name.startswith("hyper.w2_gen."):
                    duplicates[name] = given.pop(name)
        unknown = sorted(set(given) - set(expected))
        missing = sorted(set(expected) - set(given))
        if unknown and strict:
            raise ValueError(f"state dict has unexpected entries {unknown}; this layer has "
                             f"{sorted(expected)}")
        if missing:
            raise ValueError(f"state dict lacks {missing}")
        for name, arr in expected.items():
            if given[name].shape != arr.shape:
                raise ValueError(f"state dict entry {name} has shape {given[name].shape}, "
                                 f"expected {arr.shape}")
            # finite in this layer's dtype: 1e39 is a finite float64 but inf as float32
            with np.errstate(over="ignore"):
                converted = given[name].astype(self.dtype)
            if not np.all(np.isfinite(converted)):
                raise ValueError(f"state dict entry {name} has non-finite values as "
                                 f"{self.dtype.name} (NaN, inf, or beyond its range)")
        for name, arr in duplicates.items():
            twin = "hyper.w1_gen." + name[len("hyper.w2_gen."):]
            if twin not in given or arr.shape != given[twin].shape or \
                    not np.array_equal(arr, given[twin]):
                raise ValueError(
                    f"this layer is tied, but state dict entry {name} differs from {twin}")
        for name, arr in expected.items():
            arr[...] = given[name].astype(self.dtype)
        if table is not None:
            self._loaded_table, self._loaded_rows = table
            self._positions = np.zeros((0, self.embedding_dim), self.dtype)   # rebuild
            self._position_blocks = []
        # Adam moments describe the old weights: start this layer's afresh; the step counter
        # is the whole store's (a network's, a block's), so only a layer that is its own
        # model restarts it (resetting it reset every other layer's bias correction)
        self._adam_moments = None
        store = self._home
        if store is None or store.root is self:
            self._adam_step = 0


def _valid_mask(lengths, seq_len):
    return (np.arange(seq_len)[None, :] < lengths[:, None])[:, :, None]


class HyperMixingBlockBase(Layer):
    """Pre-norm block: ``y = x + HyperMixing(norm1(x)); out = y + FF(norm2(y))`` where FF is
    the position-wise MLP ``relu(c @ w1 + b1) @ w2 + b2`` (the FeedForward layer without
    its own residual). Canonical order: norm1, hypermixing, norm2, feed_forward.

    Subclasses set ``LayerNorm``, ``HyperMixing`` and ``FeedForward``.
    """

    LayerNorm = None
    HyperMixing = None
    FeedForward = None

    def __init__(self, embedding_dim, hidden_dim, token_mixing_hidden_dim=None, heads=1,
                 tied=False, causal=False, normalize="sum", layer_norm=True,
                 hypernetwork_bias=False, token_information="official", seed=0,
                 dtype=np.float32):
        super().__init__(dtype)
        rng = make_rng(seed)
        self.embedding_dim = self.in_features = _positive_int("embedding_dim", embedding_dim)
        self.hidden_dim = _positive_int("hidden_dim", hidden_dim)
        # the norms and the feed-forward (the mixer checks its own), before any is made
        check_allocation("HyperMixingBlock weights",
                         [(self.embedding_dim,)] * 4 + [(self.embedding_dim, self.hidden_dim)] * 2
                         + [(self.hidden_dim,), (self.embedding_dim,)], np.float64)
        self.norm1 = self._add_child("norm1", self.LayerNorm(embedding_dim, dtype=self.dtype))
        self.hypermixing = self._add_child("hypermixing", self.HyperMixing(
            embedding_dim, token_mixing_hidden_dim, heads=heads, tied=tied, causal=causal,
            normalize=normalize, layer_norm=layer_norm, hypernetwork_bias=hypernetwork_bias,
            token_information=token_information, seed=rng, dtype=self.dtype))
        self.norm2 = self._add_child("norm2", self.LayerNorm(embedding_dim, dtype=self.dtype))
        self.feed_forward = self._add_child("feed_forward", self.FeedForward(
            embedding_dim, hidden_dim, seed=rng, dtype=self.dtype))
        self.causal = self.hypermixing.causal

    def _forward(self, x, lengths):
        # without padding rows the masks change nothing: skip them (and their copies)
        valid = None if int(lengths.min()) == x.shape[1] else _valid_mask(lengths, x.shape[1])
        mixed = self.hypermixing._forward(self.norm1._forward(x, lengths), lengths)
        y = x + mixed if valid is None else np.where(valid, x + mixed, 0).astype(self.dtype)
        c = self.norm2._forward(y, lengths)
        # FeedForward adds its own input back; this block's residual is y, not c:
        # out = y + (FF(c) - c), computed in place in FF's fresh output
        out = self.feed_forward._forward(c, lengths)
        out -= c
        out += y
        self._valid = valid
        return out

    def _step(self, x, state, positions):
        """Streaming (causal blocks): the output rows (B, E) of one new token per sequence,
        x (B, E) at ``positions`` (B,); ``state`` (B, heads, k_h, d_h) is the mixer's running
        sums, updated in place (see HyperMixing._step). The same arithmetic as the forward's
        rows, one token at a time."""
        ones = np.ones(len(x), np.int64)
        a = self.norm1._forward(x[:, None], ones)[:, 0]
        y = x + self.hypermixing._step(a, state, positions)
        c = self.norm2._forward(y[:, None], ones)
        return y + (self.feed_forward._forward(c, ones) - c)[:, 0]

    def _backward(self, grad_output):
        valid = self._valid
        g = grad_output if valid is None else np.where(valid, grad_output, 0).astype(self.dtype)
        gc, ff_grads = self.feed_forward._backward(g)
        gc -= g
        gy, n2_grads = self.norm2._backward(gc)
        gy += g
        ga, hm_grads = self.hypermixing._backward(gy)
        gx, n1_grads = self.norm1._backward(ga)
        if valid is None:
            gx += gy
        else:
            gx = np.where(valid, gy + gx, 0).astype(self.dtype)
        return gx, self._merge_gradients([(self.norm1, n1_grads), (self.hypermixing, hm_grads),
                                          (self.norm2, n2_grads),
                                          (self.feed_forward, ff_grads)])

    def _buffer_shapes(self, batch, seq_len):
        return super()._buffer_shapes(batch, seq_len) + [(batch, seq_len,
                                                          self.embedding_dim)] * 4
