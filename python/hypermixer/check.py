"""Compiled kernels against the NumPy reference on this machine: ``hypermixer check``.

The compiled layers are trusted per machine (CPU, libgomp, NumPy), not per source tree, so
this module ships with the package and needs nothing but NumPy. It holds:

* ``CASES``, the registry of every layer: how to build it in either implementation, what its
  input and output look like, and how long its longest chain of roundings is. The pytest
  conformance suite (``hypermixer/tests``) is parametrised over the same list, so a new layer
  is added once, here, with one ``Case(...)`` entry.
* the measurements both use: compiled vs reference, padding, batch vs one by one, finite
  differences, 1 vs all threads;
* :func:`check`, which prints the table and returns whether everything passed.
"""

import argparse
import math
import os
import platform
import sys
import time
import types
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _kernels
from . import layers as compiled
from . import reference
from ._blueprints import token_mixing_output_dim

IMPLEMENTATIONS = {"compiled": compiled, "reference": reference}
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ------------------------------------------------------------------------------ tolerances
#: Rounding of a sum of K products is at most K * eps relative to the sum of magnitudes, and
#: grows like sqrt(K) * eps for terms of random sign (our inputs); the two implementations
#: add in different orders, so each result differs by about that. K is the chain of sums a
#: result passes through (``Case.chain`` plus, for parameter gradients, the sum over all
#: valid rows). TOL_FACTOR covers what sqrt(K) * eps leaves out: the error is taken against
#: the largest entry of an array, LayerNorm divides by standard deviations, and a block chains
#: several layers. Over the registry, 3 to 6 seeds, all sizes and dtypes, the largest measured
#: error / (eps * sqrt(K)) was 3.1 (HyperMixingBlock, float64); 32 leaves a 10x margin
#: while a kernel error above about 1e-4 (float32) or 2e-13 (float64) relative still fails.
TOL_FACTOR = 32.0


def tolerance(dtype, k):
    """The relative error allowed between two correct implementations for a chain of k."""
    return TOL_FACTOR * float(np.finfo(dtype).eps) * math.sqrt(max(int(k), 1))


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| over a whole array (inf if shapes differ or
    ``actual`` is not finite where ``expected`` is)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return math.inf
    if expected.size == 0:
        return 0.0
    diff = np.abs(actual - expected)
    if not np.all(np.isfinite(diff)):
        return math.inf
    scale = float(np.abs(expected).max())
    worst = float(diff.max())
    return worst / scale if scale > 0 else worst


# ------------------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class Dims:
    """Every layer of the registry is built from one of these: E embedding, H hidden, S
    max_seq_len, Hh hypernetwork hidden, Ht token-mixing hidden, V vocabulary."""
    E: int
    H: int
    S: int
    Hh: int
    Ht: int
    V: int

    @property
    def O(self):   # a hypernetwork's output width, as the token mixing uses it
        return token_mixing_output_dim(self.S, self.Ht)


#: Small: odd sizes (tails in every vector loop), fast in the reference.
SMALL = Dims(E=10, H=14, S=9, Hh=4, Ht=5, V=13)
#: Medium: past the kernels' parallel thresholds (16384 to 65536 elements per region, e.g.
#: B*L*E = 12*64*96 in the token mixing) and the attention's 32-row tiles, so "all threads"
#: really splits the work.
MEDIUM = Dims(E=96, H=192, S=64, Hh=16, Ht=32, V=700)

#: The default model's layer shapes (ModelConfig, the seeds' vocabulary of 533).
MODEL = Dims(E=128, H=256, S=80, Hh=32, Ht=64, V=533)

#: (dims, padded length, lengths) per size: in one batch, sequences of length 1, short, odd,
#: one short of full and full. The small batch is shorter than max_seq_len (S = 9), the
#: others as long: the token mixing takes a different path for each.
SHAPES = {
    "small": (SMALL, 7, (7, 1, 4, 7)),
    "medium": (MEDIUM, 64, (64, 33, 1, 63, 64, 17, 64, 40, 2, 64, 50, 64)),
    "model": (MODEL, 80, (80, 37)),
}


# ------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class Case:
    """One layer (or the loss) of the conformance suite and of ``hypermixer check``.

    ``build(impl, dims, dtype, seed)`` returns the layer of module ``impl`` (``hypermixer``
    or ``hypermixer.reference``); ``kind`` is "features" (float input (B, L, in) ->
    (B, L, out)), "ids" (token ids in, no input gradient) or "loss" (logits in, a scalar
    out; the targets travel where the other kinds carry grad_output); ``chain(dims, L)`` is
    the longest chain of sums on the way from input to output (see ``TOL_FACTOR``).
    """
    name: str
    build: Callable
    chain: Callable
    mode: str = "-"
    kind: str = "features"
    in_width: Callable = lambda d: d.E
    out_width: Callable = lambda d: d.E
    #: each row is computed on its own, so a batch gives one-by-one's output and input
    #: gradient to the bit (not only within the tolerance)
    rows_exact: bool = False
    #: how generation feeds the layer one token at a time (see ``stream_forward``): "kv"
    #: (self-attention with a key/value cache), "state" (causal HyperMixing's running sums)
    #: or None (not streamed)
    stream: str = None

    @property
    def label(self):
        return self.name if self.mode == "-" else f"{self.name}[{self.mode}]"


def _token_mixing_chain(d, L):
    # pooled mean over L rows, the hypernetwork (E, then Hh), then the generated MLP (L, Ht)
    return L + d.E + d.Hh + L + d.Ht


def _attention_chain(d, L):
    # q/k/v (E), scores (E), softmax normaliser and probs @ v (L each)
    return 2 * d.E + 2 * L


def _hypermixing_chain(d, L):
    # the weight generators (E/heads twice), the sum over tokens (L), the generated MLP's
    # second product (2*Ht/heads) and the closing LayerNorm (2E): 2E + L + 2Ht bounds it
    return 2 * d.E + L + 2 * d.Ht


def _width8_heads(d):
    return d.E // 8 if d.E % 8 == 0 else 1


def _width4_heads(d):
    return d.E // 4 if d.E % 4 == 0 else 1


CASES = [
    Case("LayerNorm", lambda m, d, t, s: m.LayerNorm(d.E, dtype=t),
         chain=lambda d, L: 2 * d.E, rows_exact=True),
    Case("Hypernetwork", lambda m, d, t, s: m.Hypernetwork(d.E, d.Hh, d.O, seed=s, dtype=t),
         chain=lambda d, L: d.E + d.Hh, out_width=lambda d: d.O),
    *[Case("TokenMixingMLP", (lambda causal: lambda m, d, t, s: m.TokenMixingMLP(
        d.E, d.S, token_mixing_hidden_dim=d.Ht, hypernetwork_hidden_dim=d.Hh, causal=causal,
        seed=s, dtype=t))(causal), chain=_token_mixing_chain, mode=mode)
      for mode, causal in (("bidirectional", False), ("causal", True))],
    Case("ChannelMixingMLP", lambda m, d, t, s: m.ChannelMixingMLP(d.E, d.H, seed=s, dtype=t),
         chain=lambda d, L: d.E + d.H),
    *[Case("HyperMixerBlock", (lambda causal: lambda m, d, t, s: m.HyperMixerBlock(
        d.E, d.H, d.S, hypernetwork_hidden_dim=d.Hh, token_mixing_hidden_dim=d.Ht,
        causal=causal, seed=s, dtype=t))(causal),
        chain=lambda d, L: 4 * d.E + _token_mixing_chain(d, L) + d.E + d.H, mode=mode)
      for mode, causal in (("bidirectional", False), ("causal", True))],
    Case("Embeddings", lambda m, d, t, s: m.Embeddings(d.V, d.S, d.E, seed=s, dtype=t),
         chain=lambda d, L: 2, kind="ids"),
    Case("SelfAttention", lambda m, d, t, s: m.SelfAttention(d.E, seed=s, dtype=t),
         chain=_attention_chain, stream="kv"),
    Case("FeedForward", lambda m, d, t, s: m.FeedForward(d.E, d.H, seed=s, dtype=t),
         chain=lambda d, L: d.E + d.H),
    Case("TransformerBlock", lambda m, d, t, s: m.TransformerBlock(d.E, d.H, d.S, seed=s,
                                                                    dtype=t),
         chain=lambda d, L: _attention_chain(d, L) + 4 * d.E + d.E + d.H, stream="kv"),
    Case("OutputProjection", lambda m, d, t, s: m.OutputProjection(d.E, d.V, seed=s, dtype=t),
         chain=lambda d, L: d.E, out_width=lambda d: d.V),
    Case("softmax_cross_entropy", lambda m, d, t, s: LossLayer(m, t),
         chain=lambda d, L: 2 * d.V, kind="loss", in_width=lambda d: d.V),
    *[Case("HyperMixing", (lambda causal: lambda m, d, t, s: m.HyperMixing(
        d.E, 2 * d.Ht, heads=2, causal=causal, hypernetwork_bias=True, seed=s,
        dtype=t))(causal), chain=_hypermixing_chain, mode=mode,
        stream="state" if causal else None)
      for mode, causal in (("bidirectional", False), ("causal", True))],
    # heads of width 8 with k = E (16 heads at E = 128, the hypermixing LM's default before 32)
    # take the kernels' small-head generator path; E not divisible by 8 falls back to 1 head
    *[Case("HyperMixing", (lambda causal: lambda m, d, t, s: m.HyperMixing(
        d.E, d.E, heads=_width8_heads(d), causal=causal, normalize="mean", seed=s,
        dtype=t))(causal), chain=lambda d, L: 4 * d.E + L, mode=mode,
        stream="state" if causal else None)
      for mode, causal in (("bidirectional, 8-wide heads", False), ("causal, 8-wide heads", True))],
    *[Case("HyperMixingBlock", (lambda causal: lambda m, d, t, s: m.HyperMixingBlock(
        d.E, d.H, 2 * d.Ht, heads=2, causal=causal, hypernetwork_bias=True, seed=s,
        dtype=t))(causal), chain=lambda d, L: 4 * d.E + _hypermixing_chain(d, L) + d.E + d.H,
        mode=mode, stream="state" if causal else None)
      for mode, causal in (("bidirectional", False), ("causal", True))],
    # the hypermixing LM's block: causal, k = E, heads of width 4 (32 at E = 128), tied
    # generators, "mean": one C call each way, and in float32 the width-4 path of the
    # generators (E a multiple of 16) and of the scan; E not divisible by 4 falls back to 1 head
    Case("HyperMixingBlock", lambda m, d, t, s: m.HyperMixingBlock(
        d.E, d.H, d.E, heads=_width4_heads(d), tied=True, causal=True, normalize="mean",
        seed=s, dtype=t), chain=lambda d, L: 4 * d.E + 4 * d.E + L + d.E + d.H,
        mode="causal, 4-wide tied heads (LM)", stream="state"),
]
CASES_BY_LABEL = {case.label: case for case in CASES}


class LossLayer:
    """``softmax_cross_entropy`` behind the small part of the layer protocol the checks use:
    no parameters, ``compute_gradients(logits, targets, lengths) -> (grad_logits, [])`` and
    ``forward`` returning the loss as a 0-d array."""

    def __init__(self, impl, dtype):
        self.impl, self.dtype = impl, np.dtype(dtype)

    def named_parameters(self):
        return []

    def forward(self, logits, targets, lengths=None):
        logits = np.asarray(logits, self.dtype)
        return np.asarray(self.impl.softmax_cross_entropy(logits, targets, lengths)[0])

    def compute_gradients(self, logits, targets, lengths=None):
        logits = np.asarray(logits, self.dtype)
        return self.impl.softmax_cross_entropy(logits, targets, lengths)[1], []


# ------------------------------------------------------------------------------ running a case
def build_pair(case, dims, dtype, seed=0):
    """(compiled, reference) layers with identical parameters, each moved away from its
    initial value (non-zero biases, gains away from 1) so every term of the backward counts."""
    pair = [case.build(IMPLEMENTATIONS[name], dims, dtype, seed) for name in IMPLEMENTATIONS]
    rng = np.random.default_rng(1000 + seed)
    for (_, a), (_, b) in zip(pair[0].named_parameters(), pair[1].named_parameters()):
        noise = rng.normal(0.0, 0.1, size=a.shape)
        a += noise.astype(a.dtype)   # the same step on both: equal only if they started equal
        b += noise.astype(b.dtype)
    return pair


def build_one(case, impl, dims, dtype, seed=0):
    """The layer of implementation ``impl`` ("compiled" or "reference") as in build_pair."""
    return build_pair(case, dims, dtype, seed)[list(IMPLEMENTATIONS).index(impl)]


def make_inputs(case, dims, seq_len, lengths, seed=0):
    """``(x, g, lengths)`` for a batch; padding holds ordinary numbers (see fill_padding)."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    batch = len(lengths)
    if case.kind == "ids":
        x = rng.integers(0, dims.V, size=(batch, seq_len))
    elif case.kind == "loss":
        x = 3.0 * rng.normal(size=(batch, seq_len, dims.V))
    else:
        x = rng.normal(size=(batch, seq_len, case.in_width(dims)))
    if case.kind == "loss":
        g = rng.integers(0, dims.V, size=(batch, seq_len))   # the targets
    else:
        g = rng.normal(size=(batch, seq_len, case.out_width(dims)))
    return x, g, lengths


def padding_mask(lengths, seq_len):
    return np.arange(seq_len)[None, :] >= np.asarray(lengths)[:, None]


def fill_padding(case, x, g, lengths, garbage=np.nan):
    """Copies of x and g with ``garbage`` in every padding position (ids and targets get -1,
    which is out of range: padding must never be read)."""
    x, g = x.copy(), g.copy()
    mask = padding_mask(lengths, x.shape[1])
    x[mask] = -1 if case.kind == "ids" else garbage
    g[mask] = -1 if case.kind == "loss" else garbage
    return x, g


def run(layer, x, g, lengths):
    """``(output, input gradient or None, [parameter gradients])`` of one layer at x."""
    if isinstance(layer, LossLayer):
        y = layer.forward(x, g, lengths)
        gi, grads = layer.compute_gradients(x, g, lengths)
        return y, gi, list(grads)
    y = layer.forward(x, lengths)
    gi, grads = layer.compute_gradients(x, g, lengths)
    return y, gi, list(grads)


def one_by_one(case, layer, x, g, lengths):
    """What the batched ``run`` should give, assembled from each sequence run on its own
    (unbatched input, no lengths): padding rows 0, parameter gradients summed (the loss: its
    mean over sequences, each sequence's logit gradient divided by the batch size)."""
    batch, seq_len = x.shape[:2]
    parts = [run(layer, x[b, :n], g[b, :n], None) for b, n in enumerate(lengths)]
    if case.kind == "loss":
        y = np.asarray(np.mean([float(p[0]) for p in parts]))
        gi = np.zeros(x.shape, parts[0][1].dtype)
        for b, (n, part) in enumerate(zip(lengths, parts)):
            gi[b, :n] = part[1] / batch
        return y, gi, []
    y = np.zeros((batch, seq_len) + parts[0][0].shape[1:], parts[0][0].dtype)
    gi = None if parts[0][1] is None else np.zeros(x.shape, parts[0][1].dtype)
    grads = [np.zeros_like(a) for a in parts[0][2]]
    for b, (n, (y_b, gi_b, grads_b)) in enumerate(zip(lengths, parts)):
        y[b, :n] = y_b
        if gi is not None:
            gi[b, :n] = gi_b
        for total, part in zip(grads, grads_b):
            total += part
    return y, gi, grads


def stream_forward(case, layer, x, lengths):
    """The output of ``layer`` over a batch computed as generation computes it: one token
    at a time through ``_step``, the earlier tokens held as a key/value cache (``case.stream``
    "kv", one sequence at a time) or as running sums ("state", the whole batch per step).
    Padding rows 0, as the forward's."""
    x = np.ascontiguousarray(x, dtype=layer.dtype)
    batch, seq_len, width = x.shape
    y = np.zeros_like(x)
    if case.stream == "kv":
        for b, n in enumerate(lengths):
            keys, values = np.zeros((2, seq_len, width), layer.dtype)
            for t in range(n):
                y[b, t] = layer._step(x[b, t], keys, values, t)
        return y
    mixer = getattr(layer, "hypermixing", layer)
    state = np.zeros((batch, mixer.heads, mixer.head_hidden, mixer.head_dim), layer.dtype)
    for t in range(int(np.max(lengths))):
        y[:, t] = layer._step(np.ascontiguousarray(x[:, t]), state, np.full(batch, t))
    y[padding_mask(lengths, seq_len)] = 0
    return y


def reduction_length(case, dims, seq_len, lengths):
    """K of ``tolerance``: the forward chain plus the sum over valid rows that every
    parameter gradient (and the loss's mean) takes."""
    return case.chain(dims, seq_len) + int(np.sum(lengths))


def compare(result, expected):
    """Worst relative errors ``(output, input gradient, parameter gradients)`` of result
    against expected; the input gradient is None for layers without one."""
    y, gi, grads = result
    y_e, gi_e, grads_e = expected
    err_gi = None if gi_e is None else (math.inf if gi is None else relative_error(gi, gi_e))
    if len(grads) != len(grads_e):
        return relative_error(y, y_e), err_gi, math.inf
    err_p = max((relative_error(a, b) for a, b in zip(grads, grads_e)), default=None)
    return relative_error(y, y_e), err_gi, err_p


def bit_identical(a, b):
    """Two ``run`` results equal to the last bit (NaN == NaN)."""
    arrays_a = [a[0], a[1]] + list(a[2])
    arrays_b = [b[0], b[1]] + list(b[2])
    return len(arrays_a) == len(arrays_b) and all((u is None and v is None) or
               (u is not None and v is not None and np.array_equal(u, v, equal_nan=True))
               for u, v in zip(arrays_a, arrays_b))


def finite_difference_errors(case, layer, x, g, lengths, samples=4, seed=0, step=1e-6):
    """Largest ratio |analytic - central difference| / allowed error over a few entries of
    the input and of every parameter of a float64 layer (at most 1 passes).

    The objective is sum(output * g) (the loss itself for the loss). A central difference
    has truncation error ~ step^2 * f''' (~1e-12 here) and rounding error ~ eps * |f|_1 /
    step, where |f|_1 is the sum of the magnitudes the objective adds up; the tolerance is
    10x that rounding bound plus 1e-7 of the entry's scale for the truncation.
    """
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype=np.int64 if case.kind == "ids" else np.float64)
    _, gi, grads = run(layer, x, g, lengths)

    def terms():
        y = run_forward(layer, x, g, lengths)
        return y if case.kind == "loss" else y * g

    magnitude = float(np.abs(terms()).sum())
    rounding = 10 * np.finfo(np.float64).eps * magnitude / step
    worst = 0.0
    targets = [(x, gi)] if gi is not None else []
    targets += [(p, d) for (_, p), d in zip(layer.named_parameters(), grads)]
    for array, analytic in targets:
        for _ in range(samples):
            if array is x:   # only valid positions are inputs at all
                b = int(rng.integers(0, len(lengths)))
                idx = (b, int(rng.integers(0, lengths[b])), int(rng.integers(0, x.shape[2])))
            else:
                idx = tuple(int(rng.integers(0, n)) for n in array.shape)
            old = array[idx]
            array[idx] = old + step
            plus = float(np.sum(terms()))
            array[idx] = old - step
            minus = float(np.sum(terms()))
            array[idx] = old
            numeric = (plus - minus) / (2 * step)
            err = abs(numeric - float(analytic[idx]))
            allowed = rounding + 1e-7 * max(abs(numeric), abs(float(analytic[idx])))
            worst = max(worst, err / allowed)
    return worst   # <= 1 passes


def run_forward(layer, x, g, lengths):
    if isinstance(layer, LossLayer):
        return layer.forward(x, g, lengths)
    return layer.forward(x, lengths)


# ------------------------------------------------------------------------------ the table
@dataclass
class Row:
    label: str
    dtype: str
    size: str
    threads: int
    errors: tuple     # output, input gradient (None: no input gradient), parameter gradients
    tol: float
    same_bits: object  # True/False: this thread count gave the 1-thread bits; None: n/a
    problem: str = ""
    retried: bool = False   # passed on a second input after a float32 miss (see check_case)

    @property
    def passed(self):
        return not self.problem


def system_info():
    """Lines about what the kernels run on: instruction set, OpenMP, threads, versions."""
    omp = "not compiled in"
    if _kernels.openmp_enabled():
        omp = "OpenMP"
        try:
            with open("/proc/self/maps") as maps:
                text = maps.read()
            libs = sorted({os.path.basename(line.split()[-1]) for line in text.splitlines()
                           if any(n in line for n in ("libgomp", "libomp", "libiomp"))})
            if libs:
                omp += " (" + ", ".join(libs) + ")"
        except OSError:
            pass
    from . import __version__
    return [
        f"hypermixer {__version__}, NumPy {np.__version__}, Python {platform.python_version()}"
        f" on {platform.machine()} {platform.system()}",
        f"matrix kernels dispatched to: {_kernels.gemm_instruction_set()}",
        f"OpenMP runtime: {omp}; threads: {_kernels.get_num_threads()} "
        f"(CPUs: {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
    ]


def check_case(case, dtype, size, thread_counts):
    """Rows for one case, dtype and size: compiled at each thread count against the
    reference, plus the padding check (NaN in padding changes no bit of any valid result).

    float32 only: when the first input misses the tolerance, a second input decides. A ReLU
    whose input lies within float32 rounding of 0 (|z| ~ 1e-7 of ~1e6 activations in the
    medium causal token mixing: it happens) switches on in one implementation and off in the
    other, which changes whole gradient rows; a wrong kernel misses on both inputs. Such rows
    are marked "pass*".
    """
    rows = _check_case_once(case, dtype, size, thread_counts, seed=0)
    tolerance_only = all(r.passed or r.problem.endswith(TOLERANCE_MISS) for r in rows)
    if dtype == np.float32 and tolerance_only and not all(r.passed for r in rows):
        second = _check_case_once(case, dtype, size, thread_counts, seed=1)
        if all(r.passed for r in second):
            for r in second:
                r.retried = True
            return second
    return rows


TOLERANCE_MISS = "beyond the tolerance against the reference"


def _check_case_once(case, dtype, size, thread_counts, seed):
    from . import set_num_threads
    dims, seq_len, lengths = SHAPES[size]
    comp, ref = build_pair(case, dims, dtype, seed=seed)
    x, g, lengths = make_inputs(case, dims, seq_len, lengths, seed=seed)
    k = reduction_length(case, dims, seq_len, lengths)
    tol = tolerance(dtype, k)
    expected = run(ref, x, g, lengths)
    rows, first = [], None
    xn, gn = fill_padding(case, x, g, lengths)
    for threads in thread_counts:
        set_num_threads(threads)
        problem = ""
        try:
            result = run(comp, x, g, lengths)
            errors = compare(result, expected)
            dirty = run(comp, xn, gn, lengths)
        finally:
            set_num_threads(None)
        worst = max(e for e in errors if e is not None)
        if not worst <= tol:
            names = ("output", "input gradient", "parameter gradients")
            bad = [n for n, e in zip(names, errors) if e is not None and not e <= tol]
            problem = f"{', '.join(bad)} {TOLERANCE_MISS}"
        elif not bit_identical(result, dirty):
            problem = "NaN in the padding changed a result"
        same = None
        if first is None:
            first = result
        else:
            same = bit_identical(first, result)
            if not same and not problem:
                problem = f"{threads} threads do not give the 1-thread bits"
        rows.append(Row(case.label, dtype.name, size, threads, errors, tol, same, problem))
    return rows


def check_stream(case, dtype, size, thread_counts, seed=0):
    """Rows for a layer that generation feeds one token at a time: its compiled output
    streamed (see ``stream_forward``) against the reference's forward and the compiled
    forward, at each thread count, and the same bits at every thread count."""
    from . import set_num_threads
    dims, seq_len, lengths = SHAPES[size]
    comp, ref = build_pair(case, dims, dtype, seed=seed)
    x, _, lengths = make_inputs(case, dims, seq_len, lengths, seed=seed)
    tol = tolerance(dtype, case.chain(dims, seq_len))
    expected = ref.forward(x, lengths)
    forward = comp.forward(x, lengths)
    rows, first = [], None
    for threads in thread_counts:
        set_num_threads(threads)
        try:
            streamed = stream_forward(case, comp, x, lengths)
        finally:
            set_num_threads(None)
        err = max(relative_error(streamed, expected), relative_error(streamed, forward))
        problem = "" if err <= tol else f"output {TOLERANCE_MISS} or the forward"
        same = None
        if first is None:
            first = streamed
        else:
            same = bool(np.array_equal(first, streamed))
            if not same and not problem:
                problem = f"{threads} threads do not give the 1-thread bits"
        rows.append(Row(f"{case.label} streamed", dtype.name, size, threads,
                        (err, None, None), tol, same, problem))
    return rows


def _fmt(err):
    return "-" if err is None else f"{err:.1e}"


def format_table(rows):
    head = ("layer", "dtype", "size", "threads", "output", "input grad", "param grads",
            "tolerance", "1=all bits", "result")
    body = [(r.label, r.dtype, r.size, str(r.threads), *(_fmt(e) for e in r.errors),
             f"{r.tol:.1e}", "-" if r.same_bits is None else ("yes" if r.same_bits else "NO"),
             ("pass*" if r.retried else "pass") if r.passed else "FAIL")
            for r in rows]
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in [head, tuple("-" * w for w in widths)] + body]
    return "\n".join(lines)


def check(quick=False, cases=None, out=None):
    """Run compiled vs reference for every registered layer, print the table and return
    True when everything passed (False names the failing layers on the last lines).

    Full: float32 and float64, every size of ``SHAPES`` (mixed lengths with padding, lengths
    1 to full; medium past the parallel thresholds; the default model's shapes), at 1 thread
    and at all threads.
    ``quick``: the small batch only.
    """
    from . import get_num_threads, set_num_threads
    out = sys.stdout if out is None else out
    before = get_num_threads()
    set_num_threads(None)
    all_threads = get_num_threads()
    try:
        return _check(quick, cases, out, all_threads)
    finally:   # the caller's thread setting, if it was not the default
        set_num_threads(None if before == all_threads else before)


def _check(quick, cases, out, all_threads):
    thread_counts = [1] if all_threads == 1 else [1, all_threads]
    sizes = ["small"] if quick else list(SHAPES)
    cases = CASES if cases is None else cases
    for line in system_info():
        print(line, file=out)
    start = time.perf_counter()
    rows = []
    for case in cases:
        for dtype in DTYPES:
            for size in sizes:
                checks = [(check_case, case.label)]
                if case.stream:
                    checks.append((check_stream, f"{case.label} streamed"))
                for check_one, label in checks:
                    try:
                        rows.extend(check_one(case, dtype, size, thread_counts))
                    except Exception as exc:   # a crash is a failure of that layer, reported
                        rows.append(Row(label, dtype.name, size, 0, (None, None, None),
                                        math.nan, None,
                                        f"raised {type(exc).__name__}: {exc}"))
    print(format_table(rows), file=out)
    failed = [r for r in rows if not r.passed]
    seconds = time.perf_counter() - start
    if any(r.retried for r in rows):
        print("pass*: float32 missed on the first input and passed on a second one (a ReLU "
              "input within rounding of 0 flips; see hypermixer.check.check_case)", file=out)
    if all_threads == 1:
        print("note: one thread available, so the 1-vs-all-threads comparison did not run",
              file=out)
    if failed:
        for r in failed:
            print(f"FAIL: {r.label} {r.dtype} {r.size} threads={r.threads}: {r.problem}",
                  file=out)
        names = list(dict.fromkeys(r.label for r in failed))
        print(f"{len(failed)} of {len(rows)} checks failed ({seconds:.2f} s); failing layers: "
              + ", ".join(names), file=out)
        return False
    print(f"all {len(rows)} checks passed ({seconds:.2f} s)", file=out)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="hypermixer check",
        description="Compare the compiled kernels with the NumPy reference on this machine.")
    parser.add_argument("--quick", action="store_true", help="the small batch only (~seconds)")
    parser.add_argument("--layer", action="append", metavar="NAME",
                        help="only this layer (repeatable), e.g. LayerNorm or "
                             "'TokenMixingMLP[causal]'; a name without [mode] takes every mode")
    args = parser.parse_args(argv)
    cases = None
    if args.layer:
        cases = [c for c in CASES if c.label in args.layer or c.name in args.layer]
        unknown = [n for n in args.layer
                   if not any(n in (c.label, c.name) for c in CASES)]
        if unknown:
            parser.error(f"unknown layer {', '.join(unknown)}; known: "
                         + ", ".join(c.label for c in CASES))
    return 0 if check(quick=args.quick, cases=cases) else 1


class _CallableModule(types.ModuleType):
    """``hypermixer.check()`` calls :func:`check` while ``hypermixer.check`` stays this
    module (``hypermixer.check.CASES``, ``import hypermixer.check as hc`` keep working)."""

    def __call__(self, quick=False, cases=None, out=None):
        return check(quick=quick, cases=cases, out=out)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
