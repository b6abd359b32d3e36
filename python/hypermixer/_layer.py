"""The Layer protocol of SPEC section 4, written once for both implementations.

Every layer, compiled (``hypermixer``) or NumPy reference (``hypermixer.reference``), derives
from :class:`Layer`. This module owns everything that is not arithmetic: input checking and
conversion, the forward cache, the (L, E) / (B, L, E) handling, gradient-list validation and
the Adam bookkeeping. A subclass supplies only the math, on validated 3-D arrays:

``_forward(x, lengths) -> y``
    ``x`` is C-contiguous ``(B, L, in_features)`` of the layer's dtype, ``lengths`` int64
    ``(B,)`` with ``1 <= lengths[b] <= L``. Caches whatever ``_backward`` needs.
``_backward(grad_output) -> (grad_input, grads)``
    Gradients at the cached forward; ``grads`` in the order of ``_own_parameters``
    (leaves) or of ``named_parameters()`` (composites, via :meth:`Layer._merge_gradients`).
``_adam_update(param, grad, m, v, lr, step)``
    Leaves only: one in-place Adam step for one array (the reference does it in NumPy,
    the compiled layers call the C kernel).

A composite layer (a block, a network) lists its sublayers in ``_children``. Sublayers may be
shared (one Hypernetwork serving several blocks, SPEC section 5): parameters are
de-duplicated by identity, their gradients summed, and each leaf takes one Adam step per
update, at every level of nesting.
"""

import os
import threading

import numpy as np

ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8

_SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_dtype(dtype):
    """Return ``dtype`` as a numpy dtype, or raise TypeError if it is not float32/float64."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if resolved not in _SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {resolved}")
    return resolved


def make_rng(seed):
    """An int seed or an existing Generator (so a composite can hand its own to sublayers)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


#: The kernels take every dimension as a C int (flat offsets are size_t).
INDEX_LIMIT = 2**31 - 1


def _physical_memory():
    """Bytes of RAM on this machine, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_allocation(what, shapes, dtype, check_index=True):
    """Refuse, before anything is allocated, arrays the kernels cannot index or this machine
    cannot hold: ValueError for a dimension beyond ``INDEX_LIMIT``, MemoryError when the
    arrays together need more bytes than the machine's physical memory.

    ``shapes`` is one shape or a list of shapes that live at the same time;
    ``check_index=False`` checks the memory only (for totals over many arrays).
    """
    if shapes and not isinstance(shapes[0], (tuple, list)):
        shapes = [shapes]
    itemsize = np.dtype(dtype).itemsize
    total = 0
    for shape in shapes:
        dims = tuple(int(n) for n in shape)
        if check_index and any(n > INDEX_LIMIT for n in dims):
            raise ValueError(
                f"{what}: shape {dims} has a dimension beyond {INDEX_LIMIT}, the largest the "
                "kernels can index")
        count = 1
        for n in dims:
            count *= n
        total += count * itemsize
    memory = _physical_memory()
    if memory is not None and total > memory:
        raise MemoryError(
            f"{what}: needs {total / 2**30:.1f} GiB ({', '.join(str(tuple(s)) for s in shapes)} "
            f"of {np.dtype(dtype).name}), more than this machine's {memory / 2**30:.1f} GiB")


def he_normal(rng, fan_in, fan_out, dtype):
    """Weights ~ N(0, sqrt(2 / fan_in)), drawn in float64 then cast, as SPEC section 1."""
    # the float64 draw, then the parameter and its two Adam moments: about 3 float64 copies
    check_allocation(f"a ({fan_in}, {fan_out}) weight matrix", [(fan_in, fan_out)] * 3,
                     np.float64)
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out)).astype(dtype)


def as_float_array(name, value, dtype):
    """Convert array-like input to a C-contiguous array of ``dtype``.

    Decision (documented in the README): integer, non-contiguous, Fortran-ordered and
    read-only arrays are converted (copied); the caller's array is never written. Booleans,
    complex numbers, strings and objects are refused with TypeError, because converting them
    would silently change their meaning.
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    # a broadcast or strided view can be far larger once copied
    check_allocation(name, arr.shape, dtype)
    # not ascontiguousarray: it turns a 0-d array into shape (1,), and errors then misreport it
    return np.asarray(arr, dtype=dtype, order="C")


def check_lengths(lengths, batch, seq_len):
    """Validate per-sequence lengths for a (B, L, ...) batch; None means all full."""
    if lengths is None:
        return np.full(batch, seq_len, dtype=np.int64)
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != batch:
        raise ValueError(
            f"lengths must have one entry per sequence: expected shape ({batch},), got {arr.shape}")
    if arr.size and (arr.min() < 1 or arr.max() > seq_len):
        raise ValueError(
            f"lengths must lie in 1..{seq_len} (the padded length), got min {arr.min()} "
            f"and max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


class Layer:
    """Base of every layer; see the module docstring for what a subclass provides."""

    #: Width of the last input axis; ``None`` for layers whose input is not features.
    in_features = None
    #: Longest sequence accepted; ``None`` when the layer has no limit.
    max_seq_len = None

    def __init__(self, dtype=np.float32):
        self.dtype = resolve_dtype(dtype)
        self._own_parameters = []   # [(name, array)] of a leaf, canonical order
        self._children = []         # [(name, layer)] of a composite, canonical order
        self._adam_moments = None   # leaf: [(m, v)] per own parameter, made on first step
        self._adam_step = 0
        self._cache = None          # (output shape as returned, was_unbatched)
        self._busy = threading.Lock()

    # ------------------------------------------------------------------ parameters
    def _add_parameter(self, name, array):
        self._own_parameters.append((name, array))
        return array

    def _add_child(self, name, layer):
        if layer.dtype != self.dtype:
            raise TypeError(f"sublayer {name} has dtype {layer.dtype}, expected {self.dtype}")
        self._children.append((name, layer))
        return layer

    def _named_parameters_with_duplicates(self, prefix=""):
        out = [(prefix + name, arr) for name, arr in self._own_parameters]
        for child_name, child in self._children:
            out.extend(child._named_parameters_with_duplicates(f"{prefix}{child_name}."))
        return out

    def named_parameters(self):
        """``[(name, array)]`` in canonical (forward) order; arrays are the live storage.

        A parameter reachable twice (a shared hypernetwork) appears once, under the name of
        its first use.
        """
        seen = set()
        out = []
        for name, arr in self._named_parameters_with_duplicates():
            if id(arr) not in seen:
                seen.add(id(arr))
                out.append((name, arr))
        return out

    def parameters(self):
        """Number of trainable scalars, each shared array counted once."""
        return int(sum(arr.size for _, arr in self.named_parameters()))

    def _leaves(self):
        """Unique leaf layers (those owning parameters) in canonical order."""
        seen = set()
        out = []

        def visit(layer):
            if layer._own_parameters and id(layer) not in seen:
                seen.add(id(layer))
                out.append(layer)
            for _, child in layer._children:
                visit(child)

        visit(self)
        return out

    # ------------------------------------------------------------------ input handling
    def _check_input(self, x, lengths):
        """Return (x3, lengths, was_unbatched) or raise; used by the public entry points.

        Subclasses whose input is not a float feature array (token ids) override this.
        """
        x = as_float_array("input", x, self.dtype)
        if x.ndim == 2:
            if lengths is not None:
                raise ValueError("lengths is only accepted with batched (B, L, E) input")
            x = x[np.newaxis]
            unbatched = True
        elif x.ndim == 3:
            unbatched = False
        else:
            raise ValueError(
                f"input must be (L, {self.in_features}) or (B, L, {self.in_features}), "
                f"got {x.ndim} dimensions with shape {x.shape}")
        batch, seq_len, width = x.shape
        if batch == 0:
            raise ValueError("input batch is empty (B = 0)")
        if seq_len == 0:
            raise ValueError("input sequence is empty (L = 0)")
        if self.in_features is not None and width != self.in_features:
            raise ValueError(f"input has {width} features, this layer expects {self.in_features}")
        if self.max_seq_len is not None and seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_seq_len {self.max_seq_len}")
        lengths = check_lengths(lengths, batch, seq_len)
        return x, lengths, unbatched

    def _subtree(self):
        """This layer and every sublayer below it, each once (shared ones included)."""
        seen = set()
        out = []

        def visit(layer):
            if id(layer) not in seen:
                seen.add(id(layer))
                out.append(layer)
                for _, child in layer._children:
                    visit(child)

        visit(self)
        return out

    def _buffer_shapes(self, batch, seq_len):
        """Shapes of the arrays larger than the input that a forward and backward on
        ``(batch, seq_len, ...)`` input allocate; checked by :func:`check_allocation` before
        the forward runs. Layers with such buffers override this; by default a composite
        adds up its children's (all their caches live until the backward)."""
        shapes = []
        for _, child in self._children:
            shapes.extend(child._buffer_shapes(batch, seq_len))
        return shapes

    def _check_buffers(self, x3):
        shapes = self._buffer_shapes(x3.shape[0], x3.shape[1])
        if shapes:
            check_allocation(f"{type(self).__name__} on input of shape {x3.shape}", shapes,
                             self.dtype)

    def _enter(self):
        """Take this layer and all its sublayers, or raise without waiting.

        A composite runs its sublayers' ``_forward``/``_backward`` directly, which use their
        caches and workspaces; so a sublayer (or a hypernetwork shared with another block)
        must be refused to other threads while the composite runs, not only the composite.
        """
        taken = []
        for layer in self._subtree():
            if not layer._busy.acquire(blocking=False):
                for held in taken:
                    held._busy.release()
                busy = "" if layer is self else f" (its sublayer {type(layer).__name__} is)"
                raise RuntimeError(
                    f"{type(self).__name__} is already running in another thread{busy}; a "
                    "layer holds its forward cache, so use one layer object per thread")
            taken.append(layer)
        return taken

    @staticmethod
    def _leave(taken):
        for layer in taken:
            layer._busy.release()

    # ------------------------------------------------------------------ protocol
    def forward(self, x, lengths=None):
        """Run the layer on ``(L, E)`` or ``(B, L, E)``; padding rows of the output are 0."""
        taken = self._enter()
        try:
            x3, lengths, unbatched = self._check_input(x, lengths)
            self._check_buffers(x3)
            self._cache = None  # a failing _forward must not leave a stale cache behind
            y = self._forward(x3, lengths)
            self._cache = (y.shape, unbatched)
            return y[0] if unbatched else y
        finally:
            self._leave(taken)

    def _gradients_from_cache(self, grad_output):
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before forward (nothing is cached)")
        out_shape, unbatched = self._cache
        g = as_float_array("grad_output", grad_output, self.dtype)
        expected = out_shape[1:] if unbatched else out_shape
        if g.shape != expected:
            raise ValueError(
                f"grad_output has shape {g.shape}, the last forward produced {expected}")
        if unbatched:
            g = g[np.newaxis]
        grad_input, grads = self._backward(g)
        # A layer whose input is not differentiable (token ids) returns None as grad_input.
        if grad_input is not None and unbatched:
            grad_input = grad_input[0]
        return grad_input, grads

    def backward(self, grad_output, lr):
        """Gradients at the cached forward, then one Adam step; returns the input gradient."""
        taken = self._enter()
        try:
            grad_input, grads = self._gradients_from_cache(grad_output)
            self._apply_checked(grads, lr)
            return grad_input
        finally:
            self._leave(taken)

    def compute_gradients(self, x, grad_output, lengths=None):
        """``(grad_input, param_grads)`` at ``x`` without updating anything."""
        taken = self._enter()
        try:
            x3, lengths, unbatched = self._check_input(x, lengths)
            self._check_buffers(x3)
            self._cache = None
            y = self._forward(x3, lengths)
            self._cache = (y.shape, unbatched)
            return self._gradients_from_cache(grad_output)
        finally:
            self._leave(taken)

    def apply_gradients(self, param_grads, lr):
        """One Adam step with ``param_grads`` in canonical order; bad input changes nothing."""
        taken = self._enter()
        try:
            params = self.named_parameters()
            if isinstance(param_grads, np.ndarray) or not hasattr(param_grads, "__len__"):
                raise TypeError("param_grads must be a list of arrays")
            if len(param_grads) != len(params):
                raise ValueError(
                    f"expected {len(params)} gradient arrays, got {len(param_grads)}")
            converted = []
            for (name, arr), grad in zip(params, param_grads):
                g = as_float_array(f"gradient of {name}", grad, self.dtype)
                if g.shape != arr.shape:
                    raise ValueError(
                        f"gradient of {name} has shape {g.shape}, expected {arr.shape}")
                converted.append(g)
            self._apply_checked(converted, lr)
        finally:
            self._leave(taken)

    def _apply_checked(self, grads, lr):
        lr = float(lr)
        if not np.isfinite(lr) or lr < 0:
            raise ValueError(f"learning rate must be a finite number >= 0, got {lr}")
        start = 0
        for leaf in self._leaves():
            count = len(leaf._own_parameters)
            leaf._adam_leaf_step(grads[start:start + count], lr)
            start += count

    def _adam_leaf_step(self, grads, lr):
        if self._adam_moments is None:
            self._adam_moments = [(np.zeros_like(a), np.zeros_like(a))
                                  for _, a in self._own_parameters]
        self._adam_step += 1
        for (_, param), grad, (m, v) in zip(self._own_parameters, grads, self._adam_moments):
            self._adam_update(param, grad, m, v, lr, self._adam_step)

    # ------------------------------------------------------------------ for composites
    def _merge_gradients(self, child_grads):
        """Map ``[(child, grads)]`` onto ``named_parameters()`` order, summing shared arrays."""
        by_id = {}
        for child, grads in child_grads:
            for (_, arr), g in zip(child.named_parameters(), grads):
                if id(arr) in by_id:
                    by_id[id(arr)] = by_id[id(arr)] + g
                else:
                    by_id[id(arr)] = g
        return [by_id[id(arr)] for _, arr in self.named_parameters()]

    # ------------------------------------------------------------------ subclass hooks
    def _forward(self, x, lengths):
        raise NotImplementedError

    def _backward(self, grad_output):
        raise NotImplementedError

    def _adam_update(self, param, grad, m, v, lr, step):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(parameters={self.parameters()}, dtype={self.dtype.name})"


class Sequential(Layer):
    """A composite whose math is its sublayers applied in the order they were added (blocks)."""

    def _forward(self, x, lengths):
        for _, layer in self._children:
            x = layer._forward(x, lengths)
        return x

    def _backward(self, grad_output):
        grad = grad_output
        child_grads = []
        for _, layer in reversed(self._children):
            grad, grads = layer._backward(grad)
            child_grads.append((layer, grads))
        return grad, self._merge_gradients(child_grads[::-1])
