"""Check that benchmarks/torch_peer.py (the benchmarks' PyTorch peer) computes what hypermixer.reference computes (float64):
forward outputs, input gradients and every parameter gradient of the HyperMixerBlock
(bidirectional and causal), the TransformerBlock and both language models, on a padded batch.

    python benchmarks/check_torch_peer.py        # prints one line per check, exit 1 on failure
"""

import sys

import numpy as np
import torch

import torch_peer  # benchmarks/torch_peer.py, beside this script
from hypermixer import reference
from hypermixer.model import ModelConfig, build_network

TOL = 1e-10   # max |difference| / max |reference value|, per array


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max()
    return np.abs(a - b).max() / (scale if scale > 0 else 1.0)


def report(what, errors):
    worst_name, worst = max(errors.items(), key=lambda kv: kv[1])
    ok = worst <= TOL
    print(f"{'ok  ' if ok else 'FAIL'} {what:36s} {len(errors):3d} arrays, worst {worst:.2e} "
          f"({worst_name})")
    return ok


def check_block(what, layer, module, rng, batch, seq_len, width, lengths, unmasked=False):
    """``unmasked``: every sequence full and the peer run with mask=None (its fast path)."""
    x = rng.standard_normal((batch, seq_len, width))
    g = rng.standard_normal((batch, seq_len, width))
    for b, n in enumerate(lengths):
        g[b, n:] = 0.0   # the reference ignores gradients at padding; so does the mask
    y_ref = layer.forward(x, lengths)
    gx_ref, grads_ref = layer.compute_gradients(x, g, lengths)
    torch_peer.load_parameters(module, layer)
    module.zero_grad(set_to_none=True)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    lt = torch.from_numpy(np.asarray(lengths, dtype=np.int64))
    mask = None if unmasked else torch_peer.padding_mask(lt, seq_len, torch.float64)
    y = module(xt, mask)
    (y * torch.from_numpy(g)).sum().backward()
    errors = {"forward": rel(y.detach().numpy(), y_ref), "input grad": rel(xt.grad, gx_ref)}
    params = dict(module.named_parameters())
    for (name, _), grad in zip(layer.named_parameters(), grads_ref):
        errors[name] = rel(params[name].grad.numpy(), grad)
    return report(what, errors)


def check_lm(what, config, rng, batch, vocab, lengths, unmasked=False):
    net = build_network(config, vocab, seed=3, dtype=np.float64, backend="reference")
    seq_len = config.max_seq_len
    ids = rng.integers(0, vocab, size=(batch, seq_len))
    targets = rng.integers(0, vocab, size=(batch, seq_len))
    loss_ref, grads_ref = net.loss_and_gradients(ids, targets, lengths)
    module = torch_peer.LanguageModel(
        config.architecture, vocab, config.embedding_dim, config.hidden_dim,
        config.num_layers, seq_len, config.resolved_hypernetwork_hidden_dim,
        config.resolved_token_mixing_hidden_dim, config.causal)
    torch_peer.load_parameters(module, net)
    lt = None if unmasked else torch.from_numpy(np.asarray(lengths, dtype=np.int64))
    loss = module.loss(torch.from_numpy(ids), torch.from_numpy(targets), lt)
    loss.backward()
    errors = {"loss": rel(loss.item(), loss_ref)}
    params = dict(module.named_parameters())
    for (name, _), grad in zip(net.named_parameters(), grads_ref):
        errors[name] = rel(params[name].grad.numpy(), grad)
    return report(what, errors)


def main():
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(0)
    e, h, s, ht, hh = 16, 24, 9, 6, 5
    lengths = [9, 4, 1]
    ok = True
    for causal in (False, True):
        layer = reference.HyperMixerBlock(e, h, s, hypernetwork_hidden_dim=hh,
                                          token_mixing_hidden_dim=ht, causal=causal, seed=1,
                                          dtype=np.float64)
        module = torch_peer.HyperMixerBlock(e, h, s, hh, ht, causal)
        name = "HyperMixerBlock " + ("causal" if causal else "bidirectional")
        ok &= check_block(name, layer, module, rng, 3, s, e, lengths)
        # A batch padded to fewer rows than max_seq_len uses only the first L generated rows.
        ok &= check_block(name + " (L < S)", layer, module, rng, 3, s - 2, e, [7, 3, 5])
        ok &= check_block(name + " (full, no mask)", layer, module, rng, 3, s, e, [s] * 3,
                          unmasked=True)
    layer = reference.TransformerBlock(e, h, s, seed=2, dtype=np.float64)
    ok &= check_block("TransformerBlock", layer, torch_peer.TransformerBlock(e, h, s), rng, 3,
                      s, e, lengths)
    ok &= check_block("TransformerBlock (full, no mask)", layer,
                      torch_peer.TransformerBlock(e, h, s), rng, 3, s, e, [s] * 3, unmasked=True)
    for arch in ("hypermixer", "transformer"):
        config = ModelConfig(architecture=arch, embedding_dim=e, hidden_dim=h, num_layers=2,
                             max_seq_len=s)
        ok &= check_lm(f"{arch} LM loss and gradients", config, rng, 3, 11, lengths)
        ok &= check_lm(f"{arch} LM (full, no mask)", config, rng, 3, 11, [s] * 3,
                       unmasked=True)
    ok &= check_hypermixing(rng)
    return 0 if ok else 1


def check_hypermixing(rng):
    """The official-design HyperMixing peer against hypermixer.reference, weights moved with
    the official state_dict names; only once hypermixer has HyperMixing."""
    if not hasattr(reference, "HyperMixing"):
        print("skip HyperMixing: hypermixer.reference has no HyperMixing")
        return True
    ok = True
    d, k, seq_len = 16, 12, 7
    for heads, tied in ((1, False), (2, True), (4, False)):
        layer = reference.HyperMixing(embedding_dim=d, token_mixing_hidden_dim=k, heads=heads,
                                      tied=tied, causal=False, normalize="sum",
                                      layer_norm=True, hypernetwork_bias=False, seed=4,
                                      dtype=np.float64)
        module = torch_peer.HyperMixing(d, k, heads, tied=tied)
        module.load_state_dict({name: torch.from_numpy(np.array(value))
                                for name, value in layer.state_dict().items()})
        x = rng.standard_normal((2, seq_len, d))
        g = rng.standard_normal((2, seq_len, d))
        y_ref = layer.forward(x)
        gx_ref, grads_ref = layer.compute_gradients(x, g)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        y = module(xt)
        (y * torch.from_numpy(g)).sum().backward()
        errors = {"forward": rel(y.detach().numpy(), y_ref), "input grad": rel(xt.grad, gx_ref)}
        ok &= report(f"HyperMixing heads={heads} tied={tied}", errors)
    return ok


if __name__ == "__main__":
    sys.exit(main())
