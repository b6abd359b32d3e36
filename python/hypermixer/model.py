"""The language model: configuration, network builder and the training step.

A network is a composite :class:`~hypermixer._layer.Layer` with the children ``embeddings``,
``blocks.0`` .. ``blocks.N-1`` and ``output``; its input is token ids, its output logits. The
layer implementation is a parameter (``backend``): ``"compiled"`` uses the C kernels of
``hypermixer.layers``, ``"reference"`` the NumPy twins in ``hypermixer.reference``. Both start
from the same parameters for the same seed.
"""

import dataclasses
import importlib
import json

import numpy as np

from ._blueprints import check_token_ids, token_mixing_output_dim
from ._layer import (Sequential, check_allocation, check_clip_norm, check_learning_rate,
                     make_rng)
from . import _hypermixing_lm
from ._stream import TransformerStream

ARCHITECTURES = ("hypermixer", "transformer", "hypermixing")
BACKENDS = ("compiled", "reference")
_BACKEND_MODULES = {"compiled": "hypermixer.layers", "reference": "hypermixer.reference"}
_NEEDED_NAMES = ("Embeddings", "OutputProjection", "TransformerBlock", "HyperMixerBlock",
                 "Hypernetwork", "softmax_cross_entropy")


class NonCausalTrainingError(RuntimeError):
    """Training a next-token model whose token mixing sees the future (SPEC section 7)."""


def _check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"ModelConfig.{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"ModelConfig.{name} must be >= 1, got {value}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of a language model. The defaults are the seeds' configuration (SPEC section 6).

    ``hypernetwork_hidden_dim`` (default E/4), ``token_mixing_hidden_dim`` (default E/2),
    ``share_hypernetwork`` and ``causal`` concern the HyperMixer only. The Transformer's
    attention is always causal.
    """

    architecture: str = "hypermixer"
    embedding_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 3
    max_seq_len: int = 80
    hypernetwork_hidden_dim: int = None
    token_mixing_hidden_dim: int = None
    share_hypernetwork: bool = False
    causal: bool = True
    #: hypermixing only: HyperMixing heads (default 32; see resolved_heads)
    heads: int = None
    #: hypermixing only: one weight generator for W1 and W2 (default True; see resolved_tied)
    tied: bool = None

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"ModelConfig.architecture must be one of {ARCHITECTURES}, got "
                             f"{self.architecture!r}")
        for name in ("embedding_dim", "hidden_dim", "num_layers", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        for name in ("hypernetwork_hidden_dim", "token_mixing_hidden_dim", "heads"):
            _check_positive_int(name, getattr(self, name), allow_none=True)
        # NumPy integers (and a NumPy string) are accepted and stored as Python's, so that
        # the configuration stays JSON (checkpoints, exports, config.json)
        object.__setattr__(self, "architecture", str(self.architecture))
        for name in ("embedding_dim", "hidden_dim", "num_layers", "max_seq_len",
                     "hypernetwork_hidden_dim", "token_mixing_hidden_dim", "heads"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("share_hypernetwork", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"ModelConfig.{name} must be True or False, got "
                                f"{getattr(self, name)!r}")
        if self.tied is not None and not isinstance(self.tied, bool):
            raise TypeError(f"ModelConfig.tied must be True, False or None, got "
                            f"{self.tied!r}")
        if self.heads is not None and self.architecture != "hypermixing":
            raise ValueError("heads only applies to the hypermixing architecture")
        if self.tied is not None and self.architecture != "hypermixing":
            raise ValueError("tied only applies to the hypermixing architecture")
        if self.architecture == "hypermixing":
            _check_hypermixing_config(self)
        if self.architecture == "transformer":
            hypermixer_only = [name for name in ("hypernetwork_hidden_dim",
                                                 "token_mixing_hidden_dim")
                               if getattr(self, name) is not None]
            if self.share_hypernetwork:
                hypermixer_only.append("share_hypernetwork")
            if hypermixer_only:
                raise ValueError(f"{', '.join(hypermixer_only)} only apply to the hypermixer "
                                 "architecture; the transformer has no hypernetwork")
            if not self.causal:
                raise ValueError("the transformer's self-attention is always causal; "
                                 "causal=False applies to the hypermixer only")

    @classmethod
    def hypermixer(cls, **overrides):
        return cls(architecture="hypermixer", **overrides)

    @classmethod
    def transformer(cls, **overrides):
        return cls(architecture="transformer", **overrides)

    @property
    def resolved_hypernetwork_hidden_dim(self):
        return self.hypernetwork_hidden_dim or max(1, self.embedding_dim // 4)

    @property
    def resolved_token_mixing_hidden_dim(self):
        if self.architecture == "hypermixing":
            return self.token_mixing_hidden_dim or self.embedding_dim
        return self.token_mixing_hidden_dim or max(1, self.embedding_dim // 2)

    @property
    def resolved_heads(self):
        """hypermixing: 32 heads by default (fewer when 32 does not divide E or k, or would
        make heads narrower than 4: E = 64 gets 16, E = 32 gets 8).

        Why 32: the causal scan computes k * E / heads exact GELUs per token and layer (and
        their slopes backward), and the generators k * E / heads + E^2 / heads products, so
        the work per token halves with each doubling of the heads; at E = k = 128 the heads
        are 4 wide and have a vector path of their own (csrc/hypermixing_w4.h). On the bundled
        corpus (E = 128, seeds 0-5, `hypermixer train` defaults, untied generators) the best
        validation loss of the instruction stage averaged 3.10 with 32 heads, and in earlier
        builds 3.17 with 16 and 3.12 with 64; the Transformer 3.26; tied (the default, see
        resolved_tied) 2.99."""
        if self.heads is not None:
            return self.heads
        return _default_heads(32, self.embedding_dim, self.resolved_token_mixing_hidden_dim,
                              narrowest=4)

    @property
    def resolved_tied(self):
        """hypermixing: tied by default, one generator makes both W1 and W2 (the official
        code's `tied` option).

        Why: it halves the generators' work and parameters, and on the bundled corpus
        (E = 128, 32 heads, seeds 0-5, `hypermixer train` defaults) the best validation loss
        of the instruction stage averaged 2.99 tied against 3.10 untied and 3.26 for the
        Transformer (tied below the Transformer in all six seeds; final 3.54 against 3.62
        untied)."""
        return True if self.tied is None else self.tied

    def to_dict(self):
        data = dataclasses.asdict(self)
        if self.architecture == "hypermixing":
            # the resolved values, so that a later change of a default cannot change the
            # shapes a saved configuration describes
            data["heads"] = self.resolved_heads
            data["tied"] = self.resolved_tied
        return data

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ValueError(f"a model configuration must be a JSON object, got "
                             f"{type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model configuration keys: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, document):
        try:
            data = json.loads(document)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model configuration is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _check_hypermixing_config(config):
    if config.hypernetwork_hidden_dim is not None or config.share_hypernetwork:
        raise ValueError("hypernetwork_hidden_dim and share_hypernetwork apply to the "
                         "hypermixer architecture only; hypermixing generates its weights "
                         "per token and head")
    h, k = config.resolved_heads, config.resolved_token_mixing_hidden_dim
    if config.embedding_dim % h or k % h:
        raise ValueError(f"ModelConfig.heads={h} must divide embedding_dim="
                         f"{config.embedding_dim} and token_mixing_hidden_dim={k}")


def layer_module(backend):
    """The module holding one implementation's layers, checked to have the LM layers."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    module = importlib.import_module(_BACKEND_MODULES[backend])
    missing = [name for name in _NEEDED_NAMES if not hasattr(module, name)]
    if missing:
        raise RuntimeError(f"the {backend} backend does not provide {', '.join(missing)}")
    return module


def backend_available(backend):
    try:
        layer_module(backend)
    except (RuntimeError, ImportError):
        return False
    return True


def expected_parameter_count(config, vocab_size):
    """Parameter count from the SPEC formulas, without building anything (for ``info``)."""
    if config.architecture == "hypermixing":
        return _hypermixing_lm.parameter_count(config, vocab_size)
    e, h, s, v = config.embedding_dim, config.hidden_dim, config.max_seq_len, vocab_size
    embeddings = v * e + s * e
    output = e * v + v
    norms = 2 * 2 * e
    feed_forward = e * h + h + h * e + e
    if config.architecture == "transformer":
        return embeddings + config.num_layers * (3 * e * e + feed_forward + norms) + output
    hh = config.resolved_hypernetwork_hidden_dim
    o = token_mixing_output_dim(s, config.resolved_token_mixing_hidden_dim)
    hypernetwork = e * hh + hh + hh * o + o
    copies = 1 if config.share_hypernetwork else config.num_layers
    return (embeddings + copies * hypernetwork + config.num_layers * (feed_forward + norms)
            + output)


def legacy_hypermixing_config(raw):
    """A hypermixing configuration as saved before configurations stored their resolved
    heads (heads = null meant the default of then, 8) and their tying (no "tied" key: the
    generators were untied): the same network, described with today's keys."""
    raw = dict(raw)
    if raw.get("heads") is None:
        raw["heads"] = legacy_hypermixing_heads(raw)
    if "tied" not in raw:
        raw["tied"] = False
    return raw


def legacy_hypermixing_heads(raw):
    """The heads a hypermixing configuration saved with heads = null meant: the default of
    then, 8 (fewer when E or k is not divisible by 8). Configurations now store the count."""
    e = raw.get("embedding_dim")
    k = raw.get("token_mixing_hidden_dim") or e
    if not isinstance(e, int) or not isinstance(k, int) or e < 1 or k < 1:
        return None   # ModelConfig reports what is wrong
    return _default_heads(8, e, k)


def _default_heads(most, e, k, narrowest=1):
    """The largest power of two up to ``most`` that divides both E and k and leaves heads at
    least ``narrowest`` wide (E / heads), or 1."""
    heads = most
    while heads > 1 and (e % heads or k % heads or e // heads < narrowest):
        heads //= 2
    return heads


@dataclasses.dataclass
class StepResult:
    loss: float
    grad_norm: float      # global norm before clipping
    tokens: int           # target positions that counted in the loss
    applied: bool         # False when the loss was not finite and nothing was updated


class LanguageModel(Sequential):
    """Token ids ``(L,)`` or ``(B, L)`` (+ lengths) -> logits ``(L, V)`` or ``(B, L, V)``.

    Build it with :func:`build_network`. Parameters of a shared hypernetwork are counted once,
    their gradients summed over blocks, and they take one Adam step per update (``_layer``).
    """

    def __init__(self, config, vocab_size, seed=0, dtype=np.float32, backend="compiled"):
        super().__init__(dtype)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
                or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        self.config = config
        self.vocab_size = int(vocab_size)
        self.backend = backend
        self.max_seq_len = config.max_seq_len
        #: A non-causal HyperMixer refuses to train unless this is set (see train_step).
        self.allow_noncausal_training = False
        impl = layer_module(backend)
        self._cross_entropy = impl.softmax_cross_entropy
        # Each layer refuses its own arrays when they cannot fit; the whole model is checked
        # here first, or layers that fit one by one could together exhaust memory mid-build.
        count = expected_parameter_count(config, self.vocab_size)
        check_allocation(f"a language model of {count:,} parameters (with Adam state)",
                         [(count,)] * 3, np.float64, check_index=False)
        rng = make_rng(seed)   # one generator, drawn in canonical order
        e, s = config.embedding_dim, config.max_seq_len
        if config.architecture == "hypermixing":   # positions come from the token information
            embeddings = impl.TokenEmbeddings(
                self.vocab_size, e, seed=rng, dtype=self.dtype)
        else:
            embeddings = impl.Embeddings(self.vocab_size, s, e, seed=rng, dtype=self.dtype)
        self.embeddings = self._add_child("embeddings", embeddings)
        self.shared_hypernetwork = None
        if config.architecture == "hypermixer" and config.share_hypernetwork:
            # Created right before block 0, whose first random parameters it holds, so the
            # draw order is still the canonical one.
            self.shared_hypernetwork = impl.Hypernetwork(
                e, config.resolved_hypernetwork_hidden_dim,
                token_mixing_output_dim(s, config.resolved_token_mixing_hidden_dim),
                seed=rng, dtype=self.dtype)
        self.blocks = []
        hm_blocks = (_hypermixing_lm.build_blocks(impl, config, rng, self.dtype)
                     if config.architecture == "hypermixing" else None)
        for index in range(config.num_layers):
            if hm_blocks:
                block = hm_blocks[index]
            elif config.architecture == "hypermixer":
                block = impl.HyperMixerBlock(
                    e, config.hidden_dim, s,
                    hypernetwork_hidden_dim=config.resolved_hypernetwork_hidden_dim,
                    token_mixing_hidden_dim=config.resolved_token_mixing_hidden_dim,
                    causal=config.causal, hypernetwork=self.shared_hypernetwork,
                    seed=rng, dtype=self.dtype)
            else:
                block = impl.TransformerBlock(e, config.hidden_dim, s, seed=rng,
                                              dtype=self.dtype)
            self.blocks.append(self._add_child(f"blocks.{index}", block))
        self.output = self._add_child(
            "output", impl.OutputProjection(e, self.vocab_size, seed=rng, dtype=self.dtype))
        # every parameter into one flat buffer now, so named_parameters() are its views
        self._root_store()

    # ------------------------------------------------------------------ protocol
    def _check_input(self, token_ids, lengths):
        # hypermixing has no position table: max_seq_len is its training window only
        limit = None if self.config.architecture == "hypermixing" else self.max_seq_len
        return check_token_ids("token ids", token_ids, lengths, self.vocab_size, limit)

    def stream(self):
        """A stream feeding this network one token at a time (see hypermixer._stream):
        hypermixing's running sums (constant cost, any length) or the Transformer's key/value
        cache (up to max_seq_len tokens); None for the hypermixer, which recomputes a window
        (its token mixing at position t depends on the whole prefix through the
        hypernetwork's mean, so no state of fixed size carries it)."""
        if self.config.architecture == "hypermixing" and self.config.causal:
            return _hypermixing_lm.Stream(self)
        if self.config.architecture == "transformer":
            return TransformerStream(self)
        return None

    def _output_shape(self, input_shape):
        return tuple(input_shape) + (self.vocab_size,)

    # ------------------------------------------------------------------ training
    def _prepare(self, token_ids, targets, lengths):
        """Batched ids, targets and lengths, checked; targets past a length are ignored."""
        ids, lengths, _ = self._check_input(token_ids, lengths)
        targets = np.asarray(targets)
        if targets.ndim == 1:
            targets = targets[np.newaxis]
        if targets.shape != ids.shape:
            raise ValueError(f"targets must have the shape of the token ids {ids.shape}, got "
                             f"{targets.shape}")
        targets, _, _ = check_token_ids("targets", targets, lengths, self.vocab_size)
        return ids, targets, lengths

    def _loss_locked(self, token_ids, targets, lengths, with_gradients, in_place=False):
        """Loss and, if asked, gradients; the caller holds the network (``_enter``).

        With gradients the forward cache is consumed; without, the forward stays pending
        (a ``backward`` with the logits' gradient may follow, as after ``forward``).
        ``in_place``: layers that can write their gradients straight into the flat gradient
        buffer do, and the returned list holds those views (for a caller that then calls
        ``write_gradients``; never handed to a user, whose arrays must outlive the step).
        """
        ids, targets, lengths = self._prepare(token_ids, targets, lengths)
        self._check_buffers(ids)   # logits (B, L, V) etc. must fit before any is made
        self._cache = None
        # Every layer's output and input gradient that the layer can write into a buffer
        # (``_out_buffers``), and the logits' gradient, live in buffers kept on the network
        # between steps. Fresh arrays cost page faults every step (about 1,500 at B=16, L=80,
        # V=533 for the logits and their gradient alone; a Transformer LM step 14.6 against
        # 13.6 ms measured in a fresh process). They are never handed to the caller.
        def buffers(direction, index):
            is_logits = direction == "forward" and self._children[index][1] is self.output
            width = self.vocab_size if is_logits else self.config.embedding_dim
            return self._loss_buffer(f"_{direction}_buf{index}", ids.shape + (width,))

        logits = self._forward(ids, lengths, out_buffers=buffers)
        loss, grad_logits = self._cross_entropy(
            logits, targets, lengths,
            out=self._loss_buffer("_grad_logits_buf", ids.shape + (self.vocab_size,)))
        grads = None
        if with_gradients:
            views = self._root_store().gradient_views() if in_place else None
            grads = self._backward(grad_logits, out_buffers=buffers, grad_views=views)[1]
        else:
            self._cache = (logits.shape, False)
        return float(loss), grads, lengths

    def _loss_buffer(self, attr, shape):
        """A buffer of ``shape`` kept on the network under ``attr`` (replaced when the shape
        changes; never handed to the caller)."""
        buf = self.__dict__.get(attr)
        if buf is None or buf.shape != shape:
            buf = np.empty(shape, self.dtype)
            setattr(self, attr, buf)
        return buf

    def _loss(self, token_ids, targets, lengths, with_gradients):
        taken = self._enter()
        try:
            return self._loss_locked(token_ids, targets, lengths, with_gradients)
        finally:
            self._leave(taken)

    def loss(self, token_ids, targets, lengths=None):
        """Mean next-token cross-entropy (SPEC section 2), without gradients."""
        return self._loss(token_ids, targets, lengths, with_gradients=False)[0]

    def loss_and_gradients(self, token_ids, targets, lengths=None):
        """``(loss, param_grads)`` with the gradients in ``named_parameters()`` order (arrays
        the caller owns)."""
        loss, grads, _ = self._loss(token_ids, targets, lengths, with_gradients=True)
        return loss, grads

    def loss_and_gradient_buffer(self, token_ids, targets, lengths=None):
        """``(loss, flat)``: the gradients written into the flat gradient buffer
        (:meth:`gradient_buffer`, live, overwritten by the next call). A data-parallel step
        all-reduces ``flat`` in place, then calls :meth:`step_from_gradient_buffer`."""
        taken = self._enter()
        try:
            loss, grads, _ = self._loss_locked(token_ids, targets, lengths, True, in_place=True)
            return loss, self._root_store().write_gradients(grads)
        finally:
            self._leave(taken)

    def train_step(self, token_ids, targets, lengths=None, lr=1e-3, clip_norm=1.0):
        """One update: loss, all gradients, then one fused optimizer call over the flat
        buffer (global-norm clipping to ``clip_norm`` and Adam). ``clip_norm`` is a number
        > 0, ``inf`` or None (no clipping); anything else is refused before any work.

        A non-finite loss or gradient changes nothing and returns ``applied=False``; the
        caller decides what to do (the trainer stops with a message).
        """
        if not (self.config.causal or self.allow_noncausal_training):
            raise NonCausalTrainingError(
                "this HyperMixer has causal=False: its token mixing lets position t see the "
                "tokens after t, so next-token training would learn from its own labels. "
                "Use causal=True, or set allow_noncausal_training (CLI: --allow-noncausal) "
                "if this is really intended")
        lr = check_learning_rate(lr)
        clip = check_clip_norm(clip_norm)
        # one hold from the loss to the update: the layers write their gradients into the
        # flat buffer, which no other thread may touch before the update reads it
        taken = self._enter()
        try:
            loss, grads, lengths = self._loss_locked(token_ids, targets, lengths, True,
                                                     in_place=True)
            store = self._root_store()
            store.write_gradients(grads)
            tokens = int(lengths.sum())
            if not np.isfinite(loss):
                return StepResult(loss, store.norm(), tokens, applied=False)
            # the norm is always computed (it is reported); inf never clips
            norm, applied = store.step_from_gradients(
                lr, float("inf") if clip is None else clip)
            return StepResult(loss, norm, tokens, applied=applied)
        finally:
            self._leave(taken)

    def __repr__(self):
        return (f"LanguageModel({self.config.architecture}, layers={self.config.num_layers}, "
                f"parameters={self.parameters():,}, backend={self.backend}, "
                f"dtype={self.dtype.name})")


def global_norm(arrays):
    """sqrt of the sum of squares of every entry of every array (per-array dot, float64 sum)."""
    return float(np.sqrt(sum(float(np.dot(a.ravel(), a.ravel())) for a in arrays)))


def build_network(config, vocab_size, seed=0, dtype=np.float32, backend="compiled"):
    """A :class:`LanguageModel` for ``config`` over a vocabulary of ``vocab_size`` tokens."""
    return LanguageModel(config, vocab_size, seed=seed, dtype=dtype, backend=backend)
