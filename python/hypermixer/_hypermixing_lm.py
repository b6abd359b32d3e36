"""The ``hypermixing`` language model's own pieces (issue 8): token embeddings without a
position table, the blocks, and streaming generation with a fixed-size state.

Positions enter through each HyperMixing layer's token information (SPEC section 8), so the
network has no learned position table and accepts inputs of any length. ``max_seq_len`` is
only the length of the training windows; generation streams past it.
"""

import numpy as np

from ._stream import TokenStream


def token_embeddings_class(impl):
    """``impl.Embeddings`` without its position table: ``X[t] = token[id_t]``."""

    class TokenEmbeddings(impl.Embeddings):
        __doc__ = """Token embeddings only, token (V, E) ~ N(0, 0.02); input of any length."""

        def __init__(self, vocab_size, embedding_dim, seed=0, dtype=np.float32):
            super().__init__(vocab_size, 1, embedding_dim, seed=seed, dtype=dtype)
            self._own_parameters = [(n, a) for n, a in self._own_parameters if n == "token"]
            self.max_seq_len = None
            self.position = np.zeros((0, embedding_dim), self.dtype)

        def _forward(self, ids, lengths, **out):
            # the kernels add a position row: hand them zeros as long as the input
            if self.position.shape[0] < ids.shape[1]:
                self.position = np.zeros((ids.shape[1], self.embedding_dim), self.dtype)
            return super()._forward(ids, lengths, **out)

        def _backward(self, grad_output):
            _, grads = super()._backward(grad_output)
            return None, grads[:1]

    # importable as impl.TokenEmbeddings (layers.py, reference.py assign it), so that
    # pickle finds the class of a network's embeddings
    TokenEmbeddings.__module__ = impl.__name__
    TokenEmbeddings.__qualname__ = "TokenEmbeddings"
    return TokenEmbeddings


def build_blocks(impl, config, rng, dtype):
    return [impl.HyperMixingBlock(
        config.embedding_dim, config.hidden_dim, config.resolved_token_mixing_hidden_dim,
        heads=config.resolved_heads, tied=config.resolved_tied, causal=config.causal,
        normalize="mean", seed=rng, dtype=dtype) for _ in range(config.num_layers)]


def parameter_count(config, vocab_size):
    e, h, v = config.embedding_dim, config.hidden_dim, vocab_size
    k, heads = config.resolved_token_mixing_hidden_dim, config.resolved_heads
    dh = e // heads
    generators = 1 if config.resolved_tied else 2
    mixing = generators * (e * dh + k * dh) + 2 * e
    block = 4 * e + mixing + (e * h + h + h * e + e)
    return v * e + config.num_layers * block + e * v + v


class Stream(TokenStream):
    """Feeds a causal ``hypermixing`` network one token at a time. Per layer and head it keeps
    the running sum (k_h, d_h) of the tokens so far, so a new token costs the same at any
    position; the logits equal those of a full forward over the same prefix."""

    def __init__(self, network):
        super().__init__(network)
        hm = network.blocks[0].hypermixing   # every block has the same shape
        # one array, so that a feed saves and restores all of it in one copy
        # (layers, 1, heads, k_h, d_h)
        self._sums = np.zeros((len(network.blocks), 1, hm.heads, hm.head_hidden, hm.head_dim),
                              network.dtype)

    def _state_updated_in_place(self):
        return [self._sums]

    def _copy_state(self):
        self._sums = self._sums.copy()

    def _advance(self, ids):
        net = self.network
        one = np.ones(1, np.int64)
        x = net.embeddings._forward(ids, one)[:, 0]
        position = np.array([self.position])
        for block, state in zip(net.blocks, self._sums):   # a view per layer
            x = block._step(x, state, position)
        return net.output._forward(x[:, None], one)[0, 0]
