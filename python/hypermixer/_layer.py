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

#: Entries per float64 partial sum of the global gradient norm (HM_NORM_BLOCK in
#: csrc/optimizer.h; the binding refuses a workspace sized for a larger block).
NORM_BLOCK = 4096

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


_MEMORY = []


def _physical_memory():
    """Bytes of RAM on this machine, or None where the platform does not say (asked once:
    two sysconf calls on every layer call were a measurable part of a small step)."""
    if not _MEMORY:
        try:
            _MEMORY.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (AttributeError, ValueError, OSError):
            _MEMORY.append(None)
    return _MEMORY[0]


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


def as_float_array(name, value, dtype, copy=False):
    """Convert array-like input to a C-contiguous array of ``dtype``.

    Decision (documented in the README): integer, non-contiguous, Fortran-ordered and
    read-only arrays are converted (copied); the caller's array is never written. With
    ``copy=True`` the result never shares memory with ``value`` (a layer's forward keeps its
    input until the backward, and the caller may reuse its buffer in between). Booleans,
    complex numbers, strings and objects are refused with TypeError, because converting them
    would silently change their meaning.
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    # a broadcast or strided view can be far larger once copied; below 2**24 entries no
    # dimension can pass the index limit nor the copy exhaust memory (the common, hot case)
    if not 0 < arr.size < 2**24:
        check_allocation(name, arr.shape, dtype)
    if copy:
        return np.array(arr, dtype=dtype, order="C", copy=True)
    # not ascontiguousarray: it turns a 0-d array into shape (1,), and errors then misreport it
    return np.asarray(arr, dtype=dtype, order="C")


def check_lengths(lengths, batch, seq_len):
    """Validate per-sequence lengths for a (B, L, ...) batch; None means all full.

    Returns a private int64 copy."""
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
    # a copy: layers keep the lengths until the backward, the caller may reuse its array
    return np.array(arr, dtype=np.int64, order="C", copy=True)


def check_clip_norm(clip_norm):
    """``None`` (no clipping) or a number > 0 (``inf`` never clips); anything else refused:
    a negative threshold would flip every gradient and NaN would turn clipping off."""
    if clip_norm is None:
        return None
    if isinstance(clip_norm, (bool, np.bool_)) or not isinstance(
            clip_norm, (int, float, np.integer, np.floating)):
        raise TypeError(f"clip_norm must be a number > 0 or None, got {clip_norm!r}")
    try:
        value = float(clip_norm)
    except OverflowError:   # an int past float's range: a threshold that never clips
        value = float("inf")
    if not value > 0:   # also catches NaN
        raise ValueError(f"clip_norm must be > 0 (or None for no clipping), got {clip_norm!r}")
    return value


def check_learning_rate(lr):
    if isinstance(lr, (bool, np.bool_)) or not isinstance(
            lr, (int, float, np.integer, np.floating)):
        raise TypeError(f"learning rate must be a number, got {lr!r}")
    try:
        lr = float(lr)
    except OverflowError:   # an int past float's range
        raise ValueError("learning rate must be a finite number >= 0, got an integer of "
                         f"{lr.bit_length()} bits") from None
    if not np.isfinite(lr) or lr < 0:
        raise ValueError(f"learning rate must be a finite number >= 0, got {lr}")
    return lr


def numpy_gradient_norm(grad, partial=None):
    """sqrt of the sum of squares of a flat gradient, accumulated in float64."""
    g = grad.astype(np.float64)
    return float(np.sqrt(np.dot(g, g)))


def numpy_adam_step(params, m, v, grad, partial, lr, step, max_norm):
    """The fused optimizer step in NumPy (the reference of csrc/optimizer.c): with
    ``max_norm >= 0`` the global norm first (non-finite: nothing changes), gradients scaled
    by ``max_norm / norm`` above the threshold, then Adam (SPEC section 2) in the dtype of
    the buffers. Returns the norm before clipping (0.0 when not computed)."""
    norm = 0.0
    g = grad
    if max_norm >= 0:
        norm = numpy_gradient_norm(grad)
        if not np.isfinite(norm):
            return norm
        if norm > max_norm:
            g = grad * np.asarray(max_norm / norm, grad.dtype)
    m *= ADAM_BETA1
    m += (1 - ADAM_BETA1) * g
    v *= ADAM_BETA2
    v += (1 - ADAM_BETA2) * g * g
    m_hat = m / (1 - ADAM_BETA1 ** step)
    v_hat = v / (1 - ADAM_BETA2 ** step)
    params -= lr * m_hat / (np.sqrt(v_hat) + ADAM_EPS)
    return norm


class FlatStore:
    """All parameters of one root layer in one contiguous 1-D buffer (``params``), its
    gradients in a second (``grad``), Adam's moments in two more (``m``, ``v``) and one
    Adam step counter (every parameter steps together).

    Decisions (README, "Flat memory"):

    * Parameters are made per leaf at construction (same seeded draws as before); a root
      gathers them here the first time it is used (a standalone layer) or at the end of its
      construction (a language model), and rebinds every leaf attribute to a view of
      ``params``, so ``named_parameters()`` is still the live storage. A shared leaf (a shared
      hypernetwork) is stored once.
    * A layer used as a root (``backward``, ``apply_gradients``, ``named_parameters()`` of a
      never-gathered layer) while its parameters live in another root's buffer re-homes them
      into a buffer of its own, values and Adam moments copied; the other root notices
      (``stale``) and gathers them back on its next use. Views taken before a re-home then no
      longer alias the parameters. The step counter moves with them (the larger one wins).
    * ``grad``, ``m`` and ``v`` are allocated on the first update, so inference costs one copy.
    """

    def __init__(self, root):
        self.root = root
        self.dtype = root.dtype
        self.stale = False
        leaves = root._leaves()
        sizes = [arr.size for leaf in leaves for _, arr in leaf._own_parameters]
        self.size = int(sum(sizes))
        check_allocation(f"{type(root).__name__}: flat parameters, gradients and Adam moments",
                         [(self.size,)] * 4, self.dtype, check_index=False)
        self.params = np.empty(self.size, self.dtype)
        self.grad = self.m = self.v = self.partial = None
        self.step = 0
        self.offsets = {}   # id(leaf) -> offset of its first parameter
        old_stores = {id(leaf._home): leaf._home for leaf in leaves if leaf._home is not None}
        # a copy's leaves bring their Adam state along instead of a store (Layer.__getstate__)
        carried = [leaf.__dict__.get("_carried_adam") if leaf._home is None else None
                   for leaf in leaves]
        if any(store.m is not None for store in old_stores.values()) or \
                any(c is not None and c[1] is not None for c in carried):
            self._allocate_moments()
        if any(c is not None and c[2] is not None for c in carried):
            self.gradient_buffer()
        self.step = max([store.step for store in old_stores.values()]
                        + [c[0] for c in carried if c is not None], default=0)
        offset = 0
        for leaf, carry in zip(leaves, carried):
            self.offsets[id(leaf)] = offset
            old = leaf._home
            old_offset = old.offsets[id(leaf)] if old is not None else None
            for index, (name, arr) in enumerate(leaf._own_parameters):
                end = offset + arr.size
                view = self.params[offset:end].reshape(arr.shape)
                view[...] = arr
                if self.m is not None and old is not None and old.m is not None:
                    self.m[offset:end] = old.m[old_offset:old_offset + arr.size]
                    self.v[offset:end] = old.v[old_offset:old_offset + arr.size]
                elif self.m is not None and carry is not None and carry[1] is not None:
                    self.m[offset:end] = carry[1][index][0].reshape(-1)
                    self.v[offset:end] = carry[1][index][1].reshape(-1)
                if self.grad is not None and carry is not None and carry[2] is not None:
                    self.grad[offset:end] = carry[2][index].reshape(-1)
                if old_offset is not None:
                    old_offset += arr.size
                # A leaf reads a parameter either from the attribute of its name or from
                # _own_parameters (names with dots); both are rebound to the view.
                if getattr(leaf, name, None) is arr:
                    setattr(leaf, name, view)
                leaf._own_parameters[index] = (name, view)
                offset = end
        for store in old_stores.values():
            store.stale = True   # some of its leaves now live here
        for leaf in leaves:
            leaf._home = self
            leaf.__dict__.pop("_carried_adam", None)
            leaf._parameters_moved()
        self.named = root._unique_named_parameters()
        # the named views, in order, tile params exactly (checked once, here)
        if sum(arr.size for _, arr in self.named) != self.size:
            raise RuntimeError("flat store layout does not match named_parameters()")
        # the implementation's optimizer (C kernel or NumPy), from the leaves it holds
        owner = leaves[0] if leaves else root
        self._fused_step = getattr(owner, "_fused_adam_step", numpy_adam_step)
        self._norm = getattr(owner, "_gradient_norm", numpy_gradient_norm)

    def _allocate_moments(self):
        if self.m is None:
            self.m = np.zeros(self.size, self.dtype)
            self.v = np.zeros(self.size, self.dtype)

    def gradient_buffer(self):
        if self.grad is None:
            self.grad = np.zeros(self.size, self.dtype)
        return self.grad

    def _workspace(self):
        if self.partial is None:
            self.partial = np.empty(max(1, -(-self.size // NORM_BLOCK)), np.float64)
        return self.partial

    def gradient_views(self):
        """The gradient buffer as one view per parameter (``named`` order, parameter
        shapes). A layer's ``_backward`` may write into these directly (see
        ``Layer.backward``); ``write_gradients`` then has nothing to copy."""
        buf = self.gradient_buffer()
        views = self.__dict__.get("_grad_views")
        if views is None or views[0] is not buf:
            out, offset = [], 0
            for _, arr in self.named:
                out.append(buf[offset:offset + arr.size].reshape(arr.shape))
                offset += arr.size
            views = self._grad_views = (buf, out)
        return views[1]

    def write_gradients(self, grads):
        """Copy per-parameter gradients (``named`` order) into the flat gradient buffer.
        Entries that are this buffer's own views (``gradient_views``; layers wrote them in
        place) are already there and are not copied."""
        buf = self.gradient_buffer()
        views = self.__dict__.get("_grad_views")
        if views is not None and views[0] is buf:
            if grads is views[1]:
                return buf   # written in place by the layer
            if any(g is v for g, v in zip(grads, views[1])):
                for g, v in zip(grads, views[1]):
                    if g is not v:
                        v[...] = g
                return buf
        if grads:
            np.concatenate([g.reshape(-1) for g in grads], out=buf)
        return buf

    def norm(self):
        """Global L2 norm of the flat gradient buffer (float64 accumulation)."""
        return float(self._norm(self.gradient_buffer(), self._workspace()))

    def step_from_gradients(self, lr, max_norm=-1.0):
        """One fused optimizer call over the whole buffer: global norm and clipping when
        ``max_norm >= 0`` (a non-finite norm updates nothing), then Adam.

        Returns ``(norm, applied)``; the step counter advances only when applied.
        """
        self._allocate_moments()
        grad = self.gradient_buffer()
        norm = float(self._fused_step(self.params, self.m, self.v, grad, self._workspace(),
                                      lr, self.step + 1, max_norm))
        if max_norm >= 0 and not np.isfinite(norm):
            return norm, False
        self.step += 1
        return norm, True


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
        self._home = None           # leaf: the FlatStore its parameters live in
        self._flat = None           # root: the FlatStore it gathered (may have gone stale)
        self._structure = None      # cached (subtree, leaves), reset when children change
        self._merge_plan = None
        self._checked_shape = None  # last (B, L) whose buffers passed check_allocation
        self._gradient_target = None  # FlatStore during backward(): gradients may go there
        self._cache = None          # (output shape as returned, was_unbatched)
        self._busy = threading.Lock()

    # ------------------------------------------------------------------ parameters
    def _add_parameter(self, name, array):
        if self._home is not None:
            raise RuntimeError("parameters cannot be added after the layer's first use")
        self._own_parameters.append((name, array))
        self._structure = None
        return array

    def _add_child(self, name, layer):
        if layer.dtype != self.dtype:
            raise TypeError(f"sublayer {name} has dtype {layer.dtype}, expected {self.dtype}")
        self._children.append((name, layer))
        self._structure = None
        self._merge_plan = None
        self._flat = None
        return layer

    def _named_parameters_with_duplicates(self, prefix=""):
        out = [(prefix + name, arr) for name, arr in self._own_parameters]
        for child_name, child in self._children:
            out.extend(child._named_parameters_with_duplicates(f"{prefix}{child_name}."))
        return out

    def _unique_named_parameters(self):
        seen = set()
        out = []
        for name, arr in self._named_parameters_with_duplicates():
            if id(arr) not in seen:
                seen.add(id(arr))
                out.append((name, arr))
        return out

    def named_parameters(self):
        """``[(name, array)]`` in canonical (forward) order; arrays are the live storage,
        views into one flat buffer (see :class:`FlatStore`).

        A parameter reachable twice (a shared hypernetwork) appears once, under the name of
        its first use. A sublayer of a gathered composite returns views into the
        composite's buffer (it is not re-homed by this call).
        """
        store = self._flat
        if store is not None and not store.stale:
            return list(store.named)
        if any(leaf._home is None for leaf in self._leaves()):
            return list(self._root_store().named)
        return self._unique_named_parameters()

    def parameters(self):
        """Number of trainable scalars, each shared array counted once."""
        return int(sum(arr.size for _, arr in self._unique_named_parameters()))

    def _structure_lists(self):
        if self._structure is None:
            subtree, leaves, seen = [], [], set()

            def visit(layer):
                if id(layer) in seen:
                    return
                seen.add(id(layer))
                subtree.append(layer)
                if layer._own_parameters:
                    leaves.append(layer)
                for _, child in layer._children:
                    visit(child)

            visit(self)
            self._structure = (subtree, leaves)
        return self._structure

    def _leaves(self):
        """Unique leaf layers (those owning parameters) in canonical order."""
        return list(self._structure_lists()[1])

    def _subtree(self):
        """This layer and every sublayer below it, each once (shared ones included)."""
        return self._structure_lists()[0]

    def _root_store(self):
        """The flat store this layer is the root of, gathered (or re-homed) if needed."""
        store = self._flat
        if store is None or store.stale:
            store = self._flat = FlatStore(self)
        return store

    # ------------------------------------------------------------------ Adam state views
    # One step counter per store; these keep the per-leaf spelling that checkpoints and
    # tests use. Setting a leaf's step sets its store's.
    @property
    def _adam_step(self):
        store = self._home if self._home is not None else self._flat
        if store is None:   # never used, or a copy not gathered yet (see __getstate__)
            return max((leaf.__dict__.get("_carried_adam", (0,))[0]
                        for leaf in self._leaves()), default=0)
        return store.step

    @_adam_step.setter
    def _adam_step(self, value):
        self._state_store().step = int(value)

    def _state_store(self):
        if self._home is None:
            self._root_store()
        return self._home if self._own_parameters else self._root_store()

    @property
    def _adam_moments(self):
        """``[(m, v)]`` views per own parameter, or None before the first update."""
        store = self._home
        if store is None:
            carried = self.__dict__.get("_carried_adam")
            return None if carried is None else carried[1]
        if store.m is None:
            return None
        return list(zip(self._store_slices(store.m), self._store_slices(store.v)))

    def _store_slices(self, buf):
        """Views of this leaf's part of ``buf`` (one of its store's flat buffers), one per
        own parameter, shaped like it."""
        out, offset = [], self._home.offsets[id(self)]
        for _, arr in self._own_parameters:
            out.append(buf[offset:offset + arr.size].reshape(arr.shape))
            offset += arr.size
        return out

    @_adam_moments.setter
    def _adam_moments(self, moments):
        store = self._state_store()
        if moments is None:
            if store.m is not None:
                for m, v in self._adam_moments:
                    m[...] = 0
                    v[...] = 0
            return
        store._allocate_moments()
        for (m, v), (m_new, v_new) in zip(self._adam_moments, moments):
            m[...] = m_new
            v[...] = v_new

    # ------------------------------------------------------------------ input handling
    def _check_input(self, x, lengths):
        """Return (x3, lengths, was_unbatched) or raise; used by the public entry points.

        ``x3`` is a private copy: the forward cache may keep it until the backward.
        Subclasses whose input is not a float feature array (token ids) override this.
        """
        x = as_float_array("input", x, self.dtype, copy=True)
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

    def _output_shape(self, input_shape):
        """Shape of ``_forward``'s output for a validated input of ``input_shape``, so that a
        gradient can be checked before anything runs. Same shape unless overridden
        (:class:`Sequential` chains its children)."""
        return input_shape

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
        key = x3.shape[:2]
        if key == self._checked_shape:
            return   # the same sizes passed before (parameters and memory do not change)
        shapes = self._buffer_shapes(x3.shape[0], x3.shape[1])
        if shapes:
            check_allocation(f"{type(self).__name__} on input of shape {x3.shape}", shapes,
                             self.dtype)
        self._checked_shape = key

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

    def _check_grad_output(self, grad_output, out_shape, unbatched):
        """``grad_output`` as a batched array of the layer's dtype, or raise."""
        g = as_float_array("grad_output", grad_output, self.dtype)
        expected = out_shape[1:] if unbatched else out_shape
        if g.shape != expected:
            raise ValueError(
                f"grad_output has shape {g.shape}, the forward produces {expected}")
        return g[np.newaxis] if unbatched else g

    # ------------------------------------------------------------------ protocol
    # Decisions (README, "Gradient safety"): every argument is checked before anything
    # changes, so a refused call leaves parameters, Adam state and the forward cache as they
    # were; the input is copied at the entry, so the caller may reuse its buffer before the
    # backward; a backward consumes the forward cache (a second one is refused).
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
        """Gradients at the cached forward, consuming the cache."""
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before forward (nothing is cached; "
                "each forward allows one backward)")
        out_shape, unbatched = self._cache
        g = self._check_grad_output(grad_output, out_shape, unbatched)
        self._cache = None
        grad_input, grads = self._backward(g)
        # A layer whose input is not differentiable (token ids) returns None as grad_input.
        if grad_input is not None and unbatched:
            grad_input = grad_input[0]
        return grad_input, grads

    def backward(self, grad_output, lr):
        """Gradients at the cached forward, then one Adam step; returns the input gradient.

        Equal, bit for bit, to ``compute_gradients`` + ``apply_gradients`` on the same input.
        """
        taken = self._enter()
        try:
            lr = check_learning_rate(lr)
            store = self._root_store()
            # a layer whose _backward can write its gradients in place reads this target
            self._gradient_target = store
            try:
                grad_input, grads = self._gradients_from_cache(grad_output)
            finally:
                self._gradient_target = None
            store.write_gradients(grads)
            store.step_from_gradients(lr)
            return grad_input
        finally:
            self._leave(taken)

    def compute_gradients(self, x, grad_output, lengths=None):
        """``(grad_input, param_grads)`` at ``x`` without updating anything.

        The arrays returned belong to the caller. Any pending forward is consumed (its cache
        is replaced by this call's); a refused call leaves it pending.
        """
        taken = self._enter()
        try:
            x3, lengths, unbatched = self._check_input(x, lengths)
            out_shape = self._output_shape(x3.shape)
            g = self._check_grad_output(grad_output, out_shape, unbatched)
            self._check_buffers(x3)
            self._cache = None
            y = self._forward(x3, lengths)
            if y.shape != out_shape:
                raise RuntimeError(f"{type(self).__name__}._output_shape predicted "
                                   f"{out_shape}, the forward gave {y.shape}")
            grad_input, grads = self._backward(g)
            if grad_input is not None and unbatched:
                grad_input = grad_input[0]
            return grad_input, grads
        finally:
            self._leave(taken)

    def _convert_gradients(self, param_grads, params):
        if isinstance(param_grads, np.ndarray) or not hasattr(param_grads, "__len__"):
            raise TypeError("param_grads must be a list of arrays")
        if len(param_grads) != len(params):
            raise ValueError(f"expected {len(params)} gradient arrays, got {len(param_grads)}")
        converted = []
        for (name, arr), grad in zip(params, param_grads):
            g = as_float_array(f"gradient of {name}", grad, self.dtype)
            if g.shape != arr.shape:
                raise ValueError(
                    f"gradient of {name} has shape {g.shape}, expected {arr.shape}")
            converted.append(g)
        return converted

    def apply_gradients(self, param_grads, lr):
        """One Adam step with ``param_grads`` in canonical order; bad input changes nothing."""
        taken = self._enter()
        try:
            lr = check_learning_rate(lr)
            store = self._root_store()
            grads = self._convert_gradients(param_grads, store.named)
            store.write_gradients(grads)
            store.step_from_gradients(lr)
        finally:
            self._leave(taken)

    # ------------------------------------------------------------------ flat buffers
    def gradient_buffer(self):
        """The flat gradient buffer (1-D, live): ``named_parameters()`` order, the layout
        of the parameter buffer. ``backward``/``apply_gradients`` and the language model's
        training step fill it; a data-parallel trainer may all-reduce it in place and then
        call :meth:`step_from_gradient_buffer`."""
        return self._root_store().gradient_buffer()

    def parameter_buffer(self):
        """The flat parameter buffer (1-D, live) that ``named_parameters()`` views."""
        return self._root_store().params

    def step_from_gradient_buffer(self, lr, clip_norm=None):
        """One fused optimizer call from the gradient buffer: global-norm clipping to
        ``clip_norm`` (None: none), then Adam. Returns ``(norm, applied)``; with clipping,
        a non-finite norm updates nothing (``applied`` False). The norm is 0.0 when no
        clipping was asked (it is not computed)."""
        taken = self._enter()
        try:
            lr = check_learning_rate(lr)
            clip = check_clip_norm(clip_norm)
            return self._root_store().step_from_gradients(
                lr, -1.0 if clip is None else clip)
        finally:
            self._leave(taken)

    # ------------------------------------------------------------------ for composites
    def _merge_targets(self, children):
        """``(targets, size, own)``: for each child, the positions of its parameters in
        ``named_parameters()`` order (shared arrays appear under several children), and the
        same positions where the child shares none of its parameters (else None). Depends
        only on the structure, so it is worked out once and kept."""
        key = tuple(id(child) for child in children)
        plan = self._merge_plan
        if plan is None or plan[0] != key:
            position = {id(arr): i for i, (_, arr) in
                        enumerate(self._unique_named_parameters())}
            targets = [[position[id(arr)] for _, arr in child._unique_named_parameters()]
                       for child in children]
            owners = [0] * len(position)
            for places in targets:
                for t in places:
                    owners[t] += 1
            own = [places if all(owners[t] == 1 for t in places) else None
                   for places in targets]
            plan = self._merge_plan = (key, targets, len(position), own)
        return plan[1:]

    def _merge_gradients(self, child_grads):
        """Map ``[(child, grads)]`` onto ``named_parameters()`` order, summing shared arrays."""
        targets, size, _ = self._merge_targets([child for child, _ in child_grads])
        out = [None] * size
        for (_, grads), places in zip(child_grads, targets):
            for t, g in zip(places, grads):
                out[t] = g if out[t] is None else out[t] + g
        return out

    # ------------------------------------------------------------------ copies
    # Decision (README, "Copies and pickling"): copy.deepcopy and pickle give an independent
    # layer with the same parameters, Adam moments and step, gradient buffer and forward
    # cache. The flat buffers themselves do not travel: NumPy pickles a view as an array of
    # its own, which would cut the parameters loose from the buffer the optimizer updates. So
    # each leaf carries its parameters and its slices of the moments and of the gradient
    # buffer (a data-parallel step may copy between filling that buffer and stepping from
    # it), and the copy gathers them into new flat buffers at its first use, as a new layer
    # does. The per-layer lock is new.
    def __getstate__(self):
        if self._busy.locked():
            raise RuntimeError(f"cannot copy or pickle {type(self).__name__} while it runs in "
                               "another thread")
        state = self.__dict__.copy()
        del state["_busy"]
        if self._own_parameters:
            moments = self._adam_moments
            state["_carried_adam"] = (self._adam_step, None if moments is None else
                                      [(m.copy(), v.copy()) for m, v in moments],
                                      self._gradient_slices())
        state.update(_home=None, _flat=None, _structure=None, _merge_plan=None,
                     _gradient_target=None)
        return state

    def _gradient_slices(self):
        """Copies of this leaf's part of its store's gradient buffer, per own parameter, or
        None when there is none."""
        store = self._home
        if store is None:
            carried = self.__dict__.get("_carried_adam")
            return None if carried is None else carried[2]
        if store.grad is None:
            return None
        return [g.copy() for g in self._store_slices(store.grad)]

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._busy = threading.Lock()

    def __copy__(self):
        # a shallow copy would share the parameter lists and sublayers with the original, and
        # the first use of either would re-home the other's parameters under it
        raise TypeError(f"a shallow copy of {type(self).__name__} would share its parameters "
                        "with the original; use copy.deepcopy")

    # ------------------------------------------------------------------ subclass hooks
    def _parameters_moved(self):
        """Called after the flat store rebound this leaf's parameters to new views; a layer
        that keeps other views of its parameters refreshes them here."""

    def _forward(self, x, lengths):
        raise NotImplementedError

    def _backward(self, grad_output):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(parameters={self.parameters()}, dtype={self.dtype.name})"


class Sequential(Layer):
    """A composite whose math is its sublayers applied in the order they were added (blocks)."""

    def _output_shape(self, input_shape):
        for _, layer in self._children:
            input_shape = layer._output_shape(input_shape)
        return input_shape

    def _forward(self, x, lengths, out_buffers=None):
        """``out_buffers(direction, index)``, when given, returns a buffer the caller keeps
        for child ``index``'s result; children that can write into one (``_out_buffers``
        names the direction) get it as ``out``, the others allocate as usual."""
        for index, (_, layer) in enumerate(self._children):
            x = layer._forward(x, lengths, **_into(out_buffers, layer, "forward", index))
        return x

    def _backward(self, grad_output, out_buffers=None, grad_views=None):
        """``grad_views``, when given, is the flat gradient buffer as views in
        ``named_parameters()`` order (``FlatStore.gradient_views``): a child that can write
        its gradients in place (``_grads_out``) and shares none of its parameters with
        another child gets its own views as ``grads_out`` and returns them, so
        ``write_gradients`` has nothing to copy for it (the hypermixing LM at 2 x 512: 9.6 ->
        9.2 ms a step without the 1.3 MB copy)."""
        grad = grad_output
        children = [layer for _, layer in self._children]
        own = self._merge_targets(children)[2] if grad_views is not None else None
        child_grads = []
        for index in reversed(range(len(children))):
            layer = children[index]
            kwargs = _into(out_buffers, layer, "backward", index)
            if own is not None and own[index] and getattr(layer, "_grads_out", False):
                kwargs["grads_out"] = [grad_views[t] for t in own[index]]
            grad, grads = layer._backward(grad, **kwargs)
            child_grads.append((layer, grads))
        return grad, self._merge_gradients(child_grads[::-1])


def _into(out_buffers, layer, direction, index):
    """``{"out": buffer}`` for a child that can write its ``direction`` result into a kept
    buffer, when the caller keeps them; else ``{}``."""
    if out_buffers is None or direction not in getattr(layer, "_out_buffers", ()):
        return {}
    return {"out": out_buffers(direction, index)}
