"""The HyperMixer and Transformer blocks and language model written as a careful PyTorch user
would: batched matmuls over the whole (B, L, E) batch, gradients by autograd, Adam from
torch.optim. Same math as docs/SPEC.md. A benchmark peer only, never a dependency of
hypermixer and not part of the installed package: benchmarks/vs_pytorch.py imports it
(benchmarks/check_torch_peer.py checks it against hypermixer.reference in float64).

Parameters keep hypermixer's names and shapes (biases and gains (1, n)), so
``load_parameters(module, layer)`` can copy them from any hypermixer layer or network.
Every module's forward takes ``(x, mask)``: mask is (B, L, 1), 1 on real rows and 0 on
padding (padding rows of every output are then 0, as SPEC section 3 asks), or None when every
sequence is full, which skips every mask multiplication (what a user with unpadded batches
writes).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-5


def padding_mask(lengths, seq_len, dtype):
    """(B, L, 1): 1 where position < length, else 0."""
    positions = torch.arange(seq_len)
    return (positions[None, :] < lengths[:, None]).to(dtype).unsqueeze(-1)


def _param(*shape):
    return nn.Parameter(torch.zeros(*shape))


def _masked(x, mask):
    return x if mask is None else x * mask


class LayerNorm(nn.Module):
    def __init__(self, e):
        super().__init__()
        self.gamma = _param(1, e)
        self.beta = _param(1, e)

    def forward(self, x, mask):
        y = F.layer_norm(x, x.shape[-1:], self.gamma.view(-1), self.beta.view(-1), LN_EPS)
        return _masked(y, mask)


class Hypernetwork(nn.Module):
    def __init__(self, e, hh, o):
        super().__init__()
        self.w1, self.b1 = _param(e, hh), _param(1, hh)
        self.w2, self.b2 = _param(hh, o), _param(1, o)

    def forward(self, m):
        return torch.relu(m @ self.w1 + self.b1) @ self.w2 + self.b2


class TokenMixingMLP(nn.Module):
    def __init__(self, e, s, ht, hh, causal):
        super().__init__()
        self.s, self.ht, self.causal = s, ht, causal
        self.hypernetwork = Hypernetwork(e, hh, 2 * s * ht + ht + s)

    def _split(self, theta):
        """W1 (..., S, Ht), c1 (..., 1, Ht), W2 (..., Ht, S), c2 (..., 1, S) of theta."""
        s, h = self.s, self.ht
        lead = theta.shape[:-1]
        w1 = theta[..., :s * h].reshape(lead + (s, h))
        c1 = theta[..., s * h:s * h + h].reshape(lead + (1, h))
        w2 = theta[..., s * h + h:2 * s * h + h].reshape(lead + (h, s))
        c2 = theta[..., 2 * s * h + h:].reshape(lead + (1, s))
        return w1, c1, w2, c2

    def forward(self, x, mask):
        xm = _masked(x, mask)
        seq_len = x.shape[1]
        if not self.causal:
            mean = xm.mean(dim=1) if mask is None else xm.sum(dim=1) / mask.sum(dim=1)  # (B, E)
            w1, c1, w2, c2 = self._split(self.hypernetwork(mean))
            hidden = torch.relu(xm.transpose(1, 2) @ w1[:, :seq_len] + c1)  # (B, E, Ht)
            mixed = hidden @ w2[:, :, :seq_len] + c2[:, :, :seq_len]       # (B, E, L)
            return _masked(xm + mixed.transpose(1, 2), mask)
        # Causal: position t has its own weights from the mean of rows 0..t.
        counts = torch.arange(1, seq_len + 1, dtype=x.dtype).view(1, -1, 1)
        means = xm.cumsum(dim=1) / counts                                   # (B, L, E)
        w1, c1, w2, c2 = self._split(self.hypernetwork(means))              # per t
        keep = torch.tril(torch.ones(seq_len, seq_len, dtype=x.dtype))      # s <= t
        w1 = w1[:, :, :seq_len] * keep[None, :, :, None]                    # (B, L, L, Ht)
        # (B, 1, E, L) @ (B, L, L, Ht): for every t, X^T (rows <= t) @ W1_t.
        hidden = torch.relu(xm.transpose(1, 2).unsqueeze(1) @ w1 + c1)      # (B, L, E, Ht)
        w2_t = torch.diagonal(w2[..., :seq_len], dim1=1, dim2=3)            # (B, Ht, L)
        mixed = (hidden @ w2_t.transpose(1, 2).unsqueeze(-1)).squeeze(-1)   # (B, L, E)
        c2_t = torch.diagonal(c2[..., 0, :seq_len], dim1=1, dim2=2)         # (B, L)
        return _masked(xm + mixed + c2_t.unsqueeze(-1), mask)


class ChannelMixingMLP(nn.Module):
    def __init__(self, e, h):
        super().__init__()
        self.w1, self.b1 = _param(e, h), _param(1, h)
        self.w2, self.b2 = _param(h, e), _param(1, e)

    def forward(self, x, mask):
        return _masked(x + torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2, mask)


class HyperMixerBlock(nn.Module):
    def __init__(self, e, h, s, hh=None, ht=None, causal=False):
        super().__init__()
        hh = hh or max(1, e // 4)
        ht = ht or max(1, e // 2)
        self.norm1 = LayerNorm(e)
        self.token_mixing = TokenMixingMLP(e, s, ht, hh, causal)
        self.norm2 = LayerNorm(e)
        self.channel_mixing = ChannelMixingMLP(e, h)

    def forward(self, x, mask):
        x = self.norm1(x, mask)
        x = self.token_mixing(x, mask)
        x = self.norm2(x, mask)
        return self.channel_mixing(x, mask)


class SelfAttention(nn.Module):
    def __init__(self, e):
        super().__init__()
        self.wq, self.wk, self.wv = _param(e, e), _param(e, e), _param(e, e)

    def forward(self, x, mask):
        scale = 1.0 / math.sqrt(x.shape[-1])
        if mask is None:   # all full: the causal flag alone, no mask tensor
            out = F.scaled_dot_product_attention(x @ self.wq, x @ self.wk, x @ self.wv,
                                                 is_causal=True, scale=scale)
            return out + x
        xm = x * mask
        seq_len = x.shape[1]
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
        allowed = causal[None] & (mask.transpose(1, 2) > 0)        # (B, L, L): j <= i, j real
        out = F.scaled_dot_product_attention(xm @ self.wq, xm @ self.wk, xm @ self.wv,
                                             attn_mask=allowed, scale=scale)
        return (out + xm) * mask


class TransformerBlock(nn.Module):
    def __init__(self, e, h, s=None):
        super().__init__()
        self.self_attention = SelfAttention(e)
        self.norm1 = LayerNorm(e)
        self.feed_forward = ChannelMixingMLP(e, h)
        self.norm2 = LayerNorm(e)

    def forward(self, x, mask):
        x = self.self_attention(x, mask)
        x = self.norm1(x, mask)
        x = self.feed_forward(x, mask)
        return self.norm2(x, mask)


class LanguageModel(nn.Module):
    """Embeddings, blocks, output projection; ``loss(ids, targets, lengths)`` is SPEC's mean
    over each sequence's positions, then over sequences. No shared hypernetwork."""

    def __init__(self, architecture, vocab, e=128, h=256, layers=3, s=80, hh=None, ht=None,
                 causal=True):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.token = _param(vocab, e)
        self.embeddings.position = _param(s, e)
        if architecture == "hypermixer":
            blocks = [HyperMixerBlock(e, h, s, hh, ht, causal) for _ in range(layers)]
        else:
            blocks = [TransformerBlock(e, h, s) for _ in range(layers)]
        self.blocks = nn.ModuleList(blocks)
        self.output = nn.Module()
        self.output.w = _param(e, vocab)
        self.output.b = _param(1, vocab)

    def logits(self, ids, mask):
        seq_len = ids.shape[1]
        x = _masked(self.embeddings.token[ids] + self.embeddings.position[:seq_len], mask)
        for block in self.blocks:
            x = block(x, mask)
        return _masked(x @ self.output.w + self.output.b, mask)

    def loss(self, ids, targets, lengths=None):
        """``lengths=None``: every sequence full, so the SPEC mean is the plain token mean."""
        if lengths is None:
            logits = self.logits(ids, None)
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        mask = padding_mask(lengths, ids.shape[1], self.output.w.dtype)
        logits = self.logits(ids, mask)
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                    reduction="none").view(ids.shape)
        per_sequence = (per_token * mask[..., 0]).sum(dim=1) / lengths.to(logits.dtype)
        return per_sequence.mean()


def load_parameters(module, layer):
    """Copy every parameter of a hypermixer layer (compiled or reference) into ``module``,
    matching by name; both must have exactly the same names and shapes."""
    source = dict(layer.named_parameters())
    target = dict(module.named_parameters())
    if source.keys() != target.keys():
        raise ValueError(f"parameter names differ: {sorted(source.keys() ^ target.keys())}")
    with torch.no_grad():
        for name, param in target.items():
            array = source[name]
            if tuple(param.shape) != array.shape:
                raise ValueError(f"{name}: shape {tuple(param.shape)} vs {array.shape}")
            param.data = torch.from_numpy(np.array(array, copy=True))
    return module


def make_adam(module, lr):
    """torch.optim.Adam with SPEC's constants."""
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)


# ---- HyperMixing (SPEC section 8): the official module's design, written from its facts ----

def hypermixing_positions(seq_len, d, dtype):
    """Rows 1..L of the official sinusoidal table: column i even gets sin(p / 10000^(2i/d)),
    column i+1 gets cos(p / 10000^(2(i+1)/d)) (the exponent uses the column index itself)."""
    p = torch.arange(1, seq_len + 1, dtype=torch.float64)[:, None]
    cols = torch.arange(d, dtype=torch.float64)[None, :]
    angle = p / torch.pow(10000.0, 2 * cols / d)
    table = torch.where(cols.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32).to(dtype)   # the official module keeps a float32 buffer


class _Generator(nn.Module):
    """One small MLP per head: gelu(z A^T + a) C^T + c, weights stacked over heads."""

    def __init__(self, heads, d_head, k_head, bias):
        super().__init__()
        self.fc1_weights = nn.Parameter(torch.randn(heads, d_head, d_head) / math.sqrt(d_head))
        self.fc2_weights = nn.Parameter(torch.randn(heads, k_head, d_head) / math.sqrt(d_head))
        if bias:
            self.fc1_biases = nn.Parameter(torch.zeros(heads, d_head))
            self.fc2_biases = nn.Parameter(torch.zeros(heads, k_head))
        self.bias = bias

    def forward(self, z):                                   # z (B, L, h, d_h)
        hidden = torch.einsum("blhd,hed->blhe", z, self.fc1_weights)
        if self.bias:
            hidden = hidden + self.fc1_biases
        out = torch.einsum("blhe,hke->blhk", F.gelu(hidden), self.fc2_weights)
        return out + self.fc2_biases if self.bias else out   # (B, L, h, k_h)


class HyperMixing(nn.Module):
    """Bidirectional HyperMixing with sum normalisation, as the official module computes it;
    parameter names are the official state_dict's (``hyper.w1_gen.fc1_weights``, ...)."""

    def __init__(self, d, k, heads, tied=False, bias=False, layer_norm=True, max_length=3000):
        super().__init__()
        self.d, self.heads = d, heads
        # the table is computed once, as the official module's positional encoding is (a
        # table rebuilt every forward cost this peer 1.1 ms of about 35 at L=512, d=256)
        self.register_buffer("positions", hypermixing_positions(max_length, d, torch.float32),
                             persistent=False)
        self.hyper = nn.Module()
        self.hyper.w1_gen = _Generator(heads, d // heads, k // heads, bias)
        if not tied:
            self.hyper.w2_gen = _Generator(heads, d // heads, k // heads, bias)
        self.tied = tied
        self.layer_norm = nn.LayerNorm(d, eps=LN_EPS) if layer_norm else None

    def forward(self, x):                                   # x (B, L, d), every row real
        batch, seq_len, d = x.shape
        h = self.heads
        if seq_len > self.positions.shape[0]:
            raise ValueError(f"sequence of {seq_len} tokens, the table has "
                             f"{self.positions.shape[0]} rows")
        z = (x * math.sqrt(d) + self.positions[:seq_len].to(x.dtype)).view(
            batch, seq_len, h, d // h)
        w1 = self.hyper.w1_gen(z)
        w2 = w1 if self.tied else self.hyper.w2_gen(z)
        v = x.view(batch, seq_len, h, d // h)
        mixed = F.gelu(torch.einsum("blhk,blhd->bhkd", w1, v))
        y = torch.einsum("blhk,bhkd->blhd", w2, mixed).reshape(batch, seq_len, d)
        return self.layer_norm(y) if self.layer_norm is not None else y
