"""Feeding a causal language model one token at a time (generation), with the state of the
tokens so far kept between calls instead of a recomputed window.

Two kinds: the ``hypermixing`` network keeps fixed-size running sums per layer and head, so a
token costs the same at any position (``_hypermixing_lm.Stream``); the Transformer keeps every
layer's keys and values (a KV cache), so a token costs O(position) in attention instead of the
window's O(position^2), up to ``max_seq_len`` tokens, its position table's length
(``TransformerStream``). Either way the logits are those of a full forward over the same
prefix: bit for bit for the compiled hypermixing network (its forward and its step add the same
terms in the same order), to rounding for its reference and for the Transformer (products
summed in another order).
"""

import copy
import operator

import numpy as np


class TokenStream:
    """Shared by the streams: the checks of ``feed`` and the position count. ``capacity`` is
    the number of tokens a stream can take (None: no limit)."""

    capacity = None

    def __init__(self, network):
        if not network.config.causal:
            raise ValueError("streaming needs a causal network")
        self.network = network
        self.position = 0

    @property
    def full(self):
        """Whether the next token would go past ``capacity``."""
        return self.capacity is not None and self.position >= self.capacity

    def feed(self, token_id):
        """Logits (V,) for the next token after ``token_id``."""
        net = self.network
        if isinstance(token_id, (bool, np.bool_)):
            raise TypeError(f"token id must be an integer, got {token_id!r}")
        try:
            token_id = operator.index(token_id)   # one token: not a float, not an array
        except TypeError:
            raise TypeError(f"token id must be an integer, got {type(token_id).__name__} "
                            f"{token_id!r}") from None
        if self.full:
            raise ValueError(f"this stream holds {self.capacity} tokens (the network's "
                             "max_seq_len) and is full; recompute a window instead")
        if not 0 <= token_id < net.vocab_size:
            raise ValueError(f"token id must lie in [0, {net.vocab_size}): got {token_id} at "
                             f"stream position {self.position}")
        ids = np.array([[token_id]], np.int64)
        # a feed that fails half way (Ctrl-C between two layers, MemoryError) leaves the
        # stream as it was: the state it updates in place is restored (a few kB)
        saved = [a.copy() for a in self._state_updated_in_place()]
        taken = net._enter()
        # _advance runs some layers' _forward on the new token (the embeddings, the output
        # layer, a reference network's sublayers), which replaces their forward caches: a
        # forward of the network pending its backward keeps them (forward, a streamed token,
        # then backward gives that forward's gradients). Compiled blocks step on workspaces
        # of their own and keep no cache here.
        caches = [(layer, layer.__dict__["_saved"]) for layer in taken
                  if "_saved" in layer.__dict__]
        try:
            logits = self._advance(ids)
        except BaseException:
            for array, before in zip(self._state_updated_in_place(), saved):
                array[...] = before
            raise
        finally:
            for layer, cache in caches:
                layer._saved = cache
            net._leave(taken)
        self.position += 1
        return logits

    def fork(self):
        """A second stream at this position, on the same network, with a copy of this
        stream's state; the two then go on independently (several continuations of one
        prompt, beam search) without feeding the prompt again. Costs one copy of the state."""
        taken = self.network._enter()   # not while a feed (of any stream) runs on it
        try:
            twin = copy.copy(self)   # the same network and position
            twin._copy_state()
        finally:
            self.network._leave(taken)
        return twin

    def _copy_state(self):
        """Replace every state array by a copy of its own (``fork``)."""
        raise NotImplementedError

    def _advance(self, ids):
        """Logits (V,) of the token ids (1, 1) at ``self.position``; update the state."""
        raise NotImplementedError

    def _state_updated_in_place(self):
        """The arrays ``_advance`` changes in place, which a failed feed must restore."""
        return []


class TransformerStream(TokenStream):
    """A Transformer network fed one token at a time with a cache of every layer's keys and
    values: the k and v of a token never change once computed (causal attention, absolute
    positions), so a new token needs its own q, k, v and one row of attention per layer."""

    def __init__(self, network):
        super().__init__(network)
        self.capacity = network.max_seq_len
        shape = (network.max_seq_len, network.config.embedding_dim)
        self.keys = [np.zeros(shape, network.dtype) for _ in network.blocks]
        self.values = [np.zeros(shape, network.dtype) for _ in network.blocks]

    # _state_updated_in_place: none. _advance writes only the rows at ``position`` of the
    # caches, which no later token reads until a feed succeeds (a retry rewrites them)

    def _copy_state(self):
        self.keys = [k.copy() for k in self.keys]
        self.values = [v.copy() for v in self.values]

    def _advance(self, ids):
        net = self.network
        one = np.ones(1, np.int64)
        emb = net.embeddings
        x = emb.token[ids[0, 0]] + emb.position[self.position]    # the forward's sum
        for block, keys, values in zip(net.blocks, self.keys, self.values):
            x = block._step(x, keys, values, self.position)
        return net.output._forward(x[None, None], one)[0, 0]
