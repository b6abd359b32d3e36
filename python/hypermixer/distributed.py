"""Data-parallel training over MPI (mpi4py): every rank trains on its shard of each batch.

Every rank holds the whole model and reads the same data, shuffles with the same generator
and so sees the same global batches. A global batch of B sequences is split by position:
rank r of K takes rows ``B*r//K`` to ``B*(r+1)//K`` (shards differ by at most one sequence;
a rank whose shard is empty contributes zeros). Each rank computes the loss and gradients of
its shard, weights them by ``B_r / B`` and writes them into one contiguous buffer, whose last
entry holds the weighted loss; one ``Allreduce`` sums the buffer over ranks. The loss is the
mean over sequences of per-sequence means (SPEC section 2), so this weighting gives exactly
the one-process loss and gradient, up to rounding. Clipping then uses the global norm of the
summed gradient and every rank applies the same Adam step, so the parameters stay identical
without ever being sent.

Validation batches are dealt round robin; each batch's loss goes into its own slot of a
float64 vector that one Allreduce fills, and the slots are summed in batch order on every
rank: the same number, bit for bit, as one process computes.

Rank 0 alone prints, plots and writes checkpoints. Under a communicator of more than one
rank, an exception on any rank prints the rank and the cause and calls ``MPI_Abort``, which
ends every rank at once instead of leaving the others waiting in a collective.
"""

import functools
import hashlib
import json
import os
import sys
import time
import traceback

import numpy as np

from .model import NonCausalTrainingError, StepResult, global_norm

# Seconds a failing rank waits between printing its error and MPI_Abort.
ABORT_GRACE_SECONDS = 0.3

# How launchers tell a process its world size: MPICH/Intel MPI (Hydra) and Slurm's PMI set
# PMI_SIZE, Open MPI sets OMPI_COMM_WORLD_SIZE.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def launched_size():
    """The number of ranks the launcher says this process belongs to (1 without one)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def world_from_environment():
    """``MPI.COMM_WORLD`` when this process was started by mpiexec with more than one rank,
    else None (MPI is not even imported then)."""
    size = launched_size()
    if size == 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(
            f"started by mpiexec as one of {size} ranks, but mpi4py is not installed, so every "
            "rank would train alone and overwrite the others' checkpoint. Install it with "
            "pip install 'hypermixer[mpi]'") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != size:
        raise RuntimeError(
            f"the launcher started {size} ranks but mpi4py sees a world of "
            f"{comm.Get_size()}: mpiexec belongs to a different MPI than the one mpi4py "
            f"uses ({MPI.Get_library_version().splitlines()[0].strip()}); run the mpiexec "
            "of that MPI (after pip install 'hypermixer[mpi]' it is the one in the same "
            "environment's bin/)")
    return comm


def size_of(comm):
    return 1 if comm is None else comm.Get_size()


def rank_of(comm):
    return 0 if comm is None else comm.Get_rank()


def shard_bounds(count, size):
    """Start of each rank's contiguous shard of ``count`` items, and the end: size+1 ints."""
    return [count * r // size for r in range(size + 1)]


def abort_on_error(function):
    """Run ``function(..., comm=...)``; with more than one rank, an exception anywhere ends the
    whole job (MPI_Abort) after printing the rank and the cause."""
    @functools.wraps(function)
    def guarded(*args, comm=None, **kwargs):
        if size_of(comm) == 1:
            return function(*args, comm=comm, **kwargs)
        try:
            return function(*args, comm=comm, **kwargs)
        except BaseException as exc:   # noqa: BLE001 - anything left unhandled hangs the rest
            rank, size = comm.Get_rank(), comm.Get_size()
            cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            # The one line that matters first: MPI_Abort tears down the launcher's output
            # pipes, and under load it has dropped the tail of a long traceback before.
            print(f"hypermixer: rank {rank} of {size} failed ({cause}); aborting all "
                  f"{size} ranks", file=sys.stderr, flush=True)
            if not isinstance(exc, (ValueError, OSError, KeyboardInterrupt)):
                traceback.print_exc(file=sys.stderr)
                sys.stderr.flush()
            time.sleep(ABORT_GRACE_SECONDS)   # let the launcher forward what we printed
            comm.Abort(1)
    return guarded


class GradientBuffer:
    """Every parameter's gradient in one preallocated contiguous array, plus one slot for the
    loss, so that a training step costs one Allreduce.

    ``views`` are the gradients in ``named_parameters()`` order, shaped like the parameters
    and living inside ``flat``.
    """

    def __init__(self, network):
        shapes = [arr.shape for _, arr in network.named_parameters()]
        sizes = [int(np.prod(shape)) for shape in shapes]
        self.flat = np.zeros(sum(sizes) + 1, dtype=network.dtype)
        self.views = []
        start = 0
        for shape, size in zip(shapes, sizes):
            self.views.append(self.flat[start:start + size].reshape(shape))
            start += size

    def fill(self, grads, loss, weight):
        """Write ``weight * grads`` and ``weight * loss`` into the buffer."""
        w = np.asarray(weight, dtype=self.flat.dtype)
        for view, grad in zip(self.views, grads):
            np.multiply(grad, w, out=view)
        self.flat[-1] = loss * weight

    def clear(self):
        self.flat.fill(0)

    @property
    def loss(self):
        return float(self.flat[-1])


def _gradient_buffer(network):
    # made once per network and kept on it (one allocation for the whole run)
    buffer = getattr(network, "_mpi_gradient_buffer", None)
    if buffer is None:
        buffer = network._mpi_gradient_buffer = GradientBuffer(network)
    return buffer


def train_step(comm, network, token_ids, targets, lengths, lr=1e-3, clip_norm=1.0,
               timings=None):
    """:meth:`LanguageModel.train_step` on the global batch ``(B, L)``, the work shared by the
    ranks of ``comm`` (every rank passes the same batch). Without a communicator, or with one
    rank, it is exactly ``network.train_step``.

    ``timings``, a dict, accumulates the seconds spent in "gradients" (this rank's shard),
    "wait" (for the slowest rank, at a barrier that only timing adds), "allreduce" and
    "update" (norm, clipping, Adam); the benchmark reads it.
    """
    if size_of(comm) == 1:
        return network.train_step(token_ids, targets, lengths, lr=lr, clip_norm=clip_norm)
    from mpi4py import MPI
    if not (network.config.causal or network.allow_noncausal_training):
        raise NonCausalTrainingError(
            "this HyperMixer has causal=False, so next-token training would learn from its "
            "own labels; set allow_noncausal_training (CLI: --allow-noncausal) to do it anyway")
    ids = np.asarray(token_ids)
    targets = np.asarray(targets)
    lengths = np.asarray(lengths, dtype=np.int64)
    batch = len(lengths)
    bounds = shard_bounds(batch, comm.Get_size())
    lo, hi = bounds[comm.Get_rank()], bounds[comm.Get_rank() + 1]
    buffer = _gradient_buffer(network)
    started = time.perf_counter()
    if hi > lo:
        width = int(lengths[lo:hi].max())   # pad the shard to its own longest sequence only
        loss, grads = network.loss_and_gradients(ids[lo:hi, :width], targets[lo:hi, :width],
                                                 lengths[lo:hi])
        buffer.fill(grads, loss, (hi - lo) / batch)
    else:
        buffer.clear()
    computed = waited = time.perf_counter()
    if timings is not None:   # separate load imbalance from the cost of the reduction
        comm.Barrier()
        waited = time.perf_counter()
    comm.Allreduce(MPI.IN_PLACE, buffer.flat, op=MPI.SUM)
    reduced = time.perf_counter()
    grads = buffer.views
    loss = buffer.loss
    norm = global_norm(grads)
    tokens = int(lengths.sum())
    if not (np.isfinite(loss) and np.isfinite(norm)):
        return StepResult(loss, norm, tokens, applied=False)
    if clip_norm is not None and norm > clip_norm:
        scale = np.asarray(clip_norm / norm, network.dtype)
        for grad in grads:
            grad *= scale
    network.apply_gradients(grads, lr)
    if timings is not None:
        for key, seconds in (("gradients", computed - started), ("wait", waited - computed),
                             ("allreduce", reduced - waited),
                             ("update", time.perf_counter() - reduced)):
            timings[key] = timings.get(key, 0.0) + seconds
    return StepResult(loss, norm, tokens, applied=True)


def evaluate(comm, network, pairs, batch_size, pad_batch):
    """Mean loss over sequences of ``pairs`` in batches of ``batch_size``, batches dealt round
    robin over the ranks; equal, bit for bit, to the one-process sum in batch order."""
    if not pairs:
        return float("nan")
    starts = range(0, len(pairs), batch_size)
    contributions = np.zeros(len(starts), dtype=np.float64)
    for index in range(rank_of(comm), len(starts), size_of(comm)):
        chunk = pairs[starts[index]:starts[index] + batch_size]
        ids, targets, lengths = pad_batch(chunk)
        contributions[index] = network.loss(ids, targets, lengths) * len(chunk)
    if size_of(comm) > 1:
        from mpi4py import MPI
        comm.Allreduce(MPI.IN_PLACE, contributions, op=MPI.SUM)   # x + 0.0 is exact
    total = 0.0
    for value in contributions:
        total += float(value)
    return total / len(pairs)


def fingerprint(network, tokenizer):
    """A digest of the parameters, Adam steps and vocabulary, to compare ranks' start."""
    digest = hashlib.sha256()
    for name, arr in network.named_parameters():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    digest.update(json.dumps([leaf._adam_step for leaf in network._leaves()]).encode())
    digest.update(json.dumps(tokenizer.vocabulary).encode())
    return digest.hexdigest()


def check_same_start(comm, network, tokenizer):
    """Refuse to train when ranks built different models (different data or checkpoint
    files on different machines): they would silently drift apart."""
    if size_of(comm) == 1:
        return
    prints = comm.allgather(fingerprint(network, tokenizer))
    odd = [rank for rank, value in enumerate(prints) if value != prints[0]]
    if odd:
        raise RuntimeError(
            f"ranks {odd} start from a different model or vocabulary than rank 0: every rank "
            "must read the same data files (and, with --resume, the same checkpoint)")
