"""Training a language model in stages, with checkpoints that a later run can resume.

The default run has two stages, as the seeds: pre-training on the bundled ``pretrain.json``,
then instruction tuning on ``chat.json``. The vocabulary is built from the data of all stages
before training starts, so it does not change between them.

Per stage: the examples are split once into training and validation sets (seeded, the same on
every run with the same seed); each epoch shuffles the training sequences with one run-wide
generator, cuts them into mini-batches padded to their longest sequence (with ``lengths``),
and takes one Adam step per batch on the next-token loss, after clipping the gradients to a
global norm. The validation loss is measured before the first epoch and after every epoch.

The learning rate can rise linearly over ``warmup_steps`` and then follow a cosine down to 0
at the last step of the run (``lr_schedule="cosine"``); ``grad_accumulation`` > 1 sums the
gradients of that many mini-batches (weighted by their sequences, so the step is the one of
the large batch) before one Adam step.

The run folder holds ``checkpoint.npz`` (the last state, written atomically after every
epoch and when training is interrupted), ``best.npz`` (the model with the lowest validation
loss of the current stage; a new stage has a new validation set, so it starts a new best),
``config.json`` (model, settings, stages, vocabulary size) and ``metrics.jsonl`` (one JSON
line per measured point). ``patience`` stops a stage after that many epochs without a better
validation loss. With no validation data (``validation_fraction=0``, or a stage of one
example) no validation loss is reported (``None``), no ``best.npz`` is written and
``patience`` is refused.

``resume`` continues from ``checkpoint.npz`` exactly where the run stopped, also in the
middle of an epoch after Ctrl-C or SIGTERM, so a resumed run ends with the same model as an
uninterrupted one. Each stage's file is tokenised once into the run's token cache
(``token-cache/``, see ``tokencache.py``), reused by ``--resume`` and ``--overwrite`` while the
file and the tokenizer are unchanged; batches are read from its memory map. A non-finite loss
stops training with a message naming the stage, epoch and step; the checkpoint of the last
completed epoch is left as it was.
"""

import dataclasses
import json
import contextlib
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import distributed, runlock, tokencache
from .checkpoint import CHECKPOINT_FILENAME, load_checkpoint, save_checkpoint
from .datasets import TokenWindows, bundled_data_path, iter_texts
from .model import NonCausalTrainingError, StepResult, build_network, global_norm
from .tokenizer import BPETokenizer, Tokenizer

PROGRESS_INTERVAL_S = 10.0
# Independent random streams derived from the one seed (spawn keys, so none of them repeats
# the stream that initialises the parameters): the validation split of each stage, and the
# shuffling of batches (whose state is saved in checkpoints).
_SPLIT_STREAM, _SHUFFLE_STREAM = 1, 2


def _stream(seed, *key):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where."""


class Terminated(KeyboardInterrupt):
    """Raised by the command line's SIGTERM handler, so a batch scheduler's stop is treated
    like Ctrl-C (save, message) but ends with status 143."""


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after saving; ``status`` is 130 or 143."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    data_path: str


@dataclasses.dataclass
class TrainSettings:
    epochs: int = 8                    # per stage
    batch_size: int = 16
    lr: float = 1e-3
    clip_norm: float = 1.0             # global gradient norm; None turns clipping off
    validation_fraction: float = 0.1
    seed: int = 0
    allow_noncausal: bool = False
    warmup_steps: int = 0              # linear rise of the learning rate over these steps
    lr_schedule: str = "constant"      # or "cosine": down to 0 at the run's last step
    grad_accumulation: int = 1         # mini-batches summed into one Adam step
    patience: int = None               # epochs without a better validation loss; None: off

    def __post_init__(self):
        # NumPy integers are integers to a user; stored as int so the settings stay JSON
        for name in ("epochs", "batch_size", "grad_accumulation", "seed", "warmup_steps",
                     "patience"):
            value = getattr(self, name)
            if isinstance(value, np.integer) and not isinstance(value, np.bool_):
                setattr(self, name, int(value))
        for name in ("epochs", "batch_size", "grad_accumulation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"learning rate must be a positive number, got {self.lr!r}")
        if self.clip_norm is not None and not (np.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip norm must be a positive number, got {self.clip_norm!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation fraction must lie in [0, 1), got "
                             f"{self.validation_fraction!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) \
                or self.warmup_steps < 0:
            raise ValueError(f"warmup steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"learning-rate schedule must be 'constant' or 'cosine', got "
                             f"{self.lr_schedule!r}")
        if self.patience is not None:
            if isinstance(self.patience, bool) or not isinstance(self.patience, int) \
                    or self.patience < 1:
                raise ValueError(f"patience must be an integer >= 1, got {self.patience!r}")
            if self.validation_fraction == 0:
                raise ValueError("patience needs validation data: early stopping watches the "
                                 "validation loss, and the validation fraction is 0")

    def lr_at(self, step, total_steps):
        """Learning rate of optimizer step ``step`` (1-based) of a run of ``total_steps``."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.lr_schedule == "constant" or total_steps <= self.warmup_steps:
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / (total_steps - self.warmup_steps))
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_stages():
    return [Stage("pretrain", str(bundled_data_path("pretrain"))),
            Stage("instruction", str(bundled_data_path("chat")))]


@dataclasses.dataclass
class TrainResult:
    network: object
    tokenizer: Tokenizer
    history: list             # one dict per measured point, see Trainer._record
    untrained_val_loss: dict  # stage name -> validation loss before any training
    checkpoint_path: Path
    plot_path: Path = None


def pad_batch(pairs):
    """``(ids, targets, lengths)`` arrays for a list of (inputs, targets) int lists."""
    lengths = np.array([len(inputs) for inputs, _ in pairs], dtype=np.int64)
    ids = np.zeros((len(pairs), lengths.max()), dtype=np.int64)
    targets = np.zeros_like(ids)
    for row, (inputs, outputs) in enumerate(pairs):
        ids[row, :len(inputs)] = inputs
        targets[row, :len(outputs)] = outputs
    return ids, targets, lengths


def split_validation(count, fraction, seed, stage_index):
    """Indices (train, validation) of a stage's examples; fixed by the seed alone."""
    order = _stream(seed, _SPLIT_STREAM, stage_index).permutation(count)
    if count < 2 or fraction == 0:
        held_out = 0
    else:   # at least one example on each side
        held_out = min(max(1, round(count * fraction)), count - 1)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def evaluate(network, pairs, batch_size):
    """Mean loss over sequences (the SPEC loss of one big batch), in batches; None for no
    sequences (there is nothing to measure, and a NaN would look like a diverged model)."""
    if not pairs:
        return None
    total = 0.0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        ids, targets, lengths = pad_batch(chunk)
        total += network.loss(ids, targets, lengths) * len(chunk)
    return total / len(pairs)


BEST_FILENAME = "best.npz"
METRICS_FILENAME = "metrics.jsonl"
CONFIG_FILENAME = "config.json"


def _fmt(loss):
    return "n/a" if loss is None else f"{loss:.4f}"


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Progress:
    """Progress through one epoch's batches: a tqdm bar when tqdm is installed and the log is
    a terminal, otherwise a plain line every PROGRESS_INTERVAL_S seconds with the ETA."""

    def __init__(self, label, total, done, log, enabled):
        self.label, self.total, self.log, self.enabled = label, total, log, enabled
        self.started = self.last = time.perf_counter()
        self.first = done
        self.bar = None
        if enabled and getattr(log, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=done, desc=label, file=log,
                                unit="batch", leave=False, dynamic_ncols=True)

    def update(self, done, loss, tokens_per_s):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}",
                                 refresh=False)
            return
        now = time.perf_counter()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        rate = (done - self.first) / (now - self.started)
        eta = _duration((self.total - done) / rate) if rate > 0 else "?"
        print(f"{self.label} batch {done}/{self.total} loss {loss:.4f} tokens/s "
              f"{tokens_per_s:.0f} ETA {eta}", file=self.log, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """One training run; :func:`train` is the usual entry point."""

    def __init__(self, network, tokenizer, stages, settings, out_dir, log=None, comm=None,
                 token_cache=True):
        self.network = network
        self.token_cache = token_cache            # tokens memory-mapped from tokencache.py
        self.comm = comm                          # MPI communicator or None (distributed.py)
        self.rank = distributed.rank_of(comm)     # rank 0 alone prints and writes
        self.tokenizer = tokenizer
        self.stages = list(stages)
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_FILENAME
        self.best_path = self.out_dir / BEST_FILENAME
        self.log = log if log is not None else sys.stderr
        self.shuffle_rng = _stream(settings.seed, _SHUFFLE_STREAM)
        self.history = []
        # next epoch to run, steps so far, batches of the current epoch already done
        self.position = {"stage": 0, "epoch": 0, "step": 0, "batch": 0}
        self.partial = None        # sums of an interrupted epoch: loss_sum, tokens, seconds
        self.epoch_rng = None      # shuffling state at the start of the current epoch
        self.best = None           # {"stage", "epoch", "step", "val_loss"} of best.npz
        self.stale_epochs = 0      # epochs since the stage's best validation loss
        self.early_stopped = []    # names of the stages that patience ended
        self.untrained_val_loss = {}   # stage name -> validation loss of the initial model
        self.saved_any = False
        self.resumed = False
        self._data = {}

    # ------------------------------------------------------------------ state
    def training_state(self):
        return {
            "position": dict(self.position),
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "settings": dataclasses.asdict(self.settings),
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
            "epoch_rng": self.epoch_rng,
            "partial": self.partial,
            "best": self.best,
            "stale_epochs": self.stale_epochs,
            "early_stopped": self.early_stopped,
            "history": self.history,
            "untrained_val_loss": self.untrained_val_loss,
        }

    def restore(self, state):
        self.position = {"batch": 0, **state["position"]}
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self.epoch_rng = state.get("epoch_rng")
        self.partial = state.get("partial")
        self.best = state.get("best")
        self.stale_epochs = state.get("stale_epochs", 0)
        self.early_stopped = list(state.get("early_stopped", []))
        self.history = list(state["history"])
        self.untrained_val_loss = dict(state["untrained_val_loss"])
        self.saved_any = True
        self.resumed = True

    def _say(self, message):
        if self.rank != 0:
            return
        print(message, file=self.log, flush=True)

    def _record(self, stage, epoch, train_loss, val_loss, tokens=0, seconds=0.0, lr=None):
        """One point of the loss history; ``tokens`` trained on in ``seconds`` since the last."""
        self.history.append({"stage": stage.name, "epoch": epoch,
                             "step": self.position["step"], "train_loss": train_loss,
                             "val_loss": val_loss, "tokens": tokens, "seconds": seconds,
                             "lr": lr})
        if self.rank == 0:
            _write_text(self.out_dir / METRICS_FILENAME,
                        "".join(json.dumps(point) + "\n" for point in self.history))

    def _write_config(self):
        document = {
            "model": self.network.config.to_dict(),
            "vocab_size": len(self.tokenizer),
            "tokenizer": type(self.tokenizer).__name__,
            "backend": self.network.backend,
            "dtype": self.network.dtype.name,
            "parameters": self.network.parameters(),
            "settings": dataclasses.asdict(self.settings),
            "stages": [dataclasses.asdict(s) for s in self.stages],
        }
        _write_text(self.out_dir / CONFIG_FILENAME, json.dumps(document, indent=2) + "\n")

    def _save(self, path, state):
        if self.rank == 0:
            save_checkpoint(path, self.network, self.tokenizer, state)

    # ------------------------------------------------------------------ data
    def _stage_data(self, index, stage):
        """(train pairs, validation pairs, examples split into windows), made once."""
        if index in self._data:
            return self._data[index]
        label = f"[{stage.name}] {Path(stage.data_path).name}"
        if self.token_cache and self.rank == 0:
            tokens, offsets, said = tokencache.cached_tokens(
                stage.data_path, self.tokenizer, self.out_dir / tokencache.CACHE_DIRNAME,
                f"stage-{index}", label, self.log)
            self._say(said)
        else:   # other MPI ranks tokenise in memory: rank 0 alone writes in the run folder
            tokens, offsets = tokencache.tokenize_in_memory(
                stage.data_path, self.tokenizer, f"{label}: tokenizing",
                self.log if self.rank == 0 else None)
        train_idx, val_idx = split_validation(len(offsets) - 1,
                                              self.settings.validation_fraction,
                                              self.settings.seed, index)
        limit = self.network.max_seq_len
        train_pairs = TokenWindows(tokens, offsets, train_idx, limit)
        val_pairs = TokenWindows(tokens, offsets, val_idx, limit)
        if not len(train_pairs):
            raise ValueError(f"{stage.data_path}: no training sequences (every example is "
                             "a single token)")
        self._data[index] = (train_pairs, val_pairs,
                             train_pairs.split_count + val_pairs.split_count)
        return self._data[index]

    def _evaluate(self, pairs):
        if not pairs:
            return None
        if self.comm is None:
            return evaluate(self.network, pairs, self.settings.batch_size)
        return distributed.evaluate(self.comm, self.network, pairs, self.settings.batch_size,
                                    pad_batch)

    def _steps_per_epoch(self, train_pairs):
        per_step = self.settings.batch_size * self.settings.grad_accumulation
        return -(-len(train_pairs) // per_step)

    # ------------------------------------------------------------------ loop
    def run(self):
        self.network.allow_noncausal_training = self.settings.allow_noncausal
        self.out_dir.mkdir(parents=True, exist_ok=True)
        settings = self.settings
        if self.rank == 0:
            self._write_config()
        for index, stage in enumerate(self.stages):
            _, val_pairs, _ = self._stage_data(index, stage)
            if stage.name not in self.untrained_val_loss:
                # the yardstick for every stage: what the model scores before any training
                self.untrained_val_loss[stage.name] = self._evaluate(val_pairs)
        self.total_steps = sum(settings.epochs * self._steps_per_epoch(self._data[i][0])
                               for i in range(len(self.stages)))
        if self.resumed:
            p = self.position
            self._say(f"resuming from stage '{self.stages[p['stage']].name}' "
                      f"({p['stage'] + 1}/{len(self.stages)}), epoch {p['epoch'] + 1}, "
                      f"batch {p['batch']}, step {p['step']}")
        for index in range(self.position["stage"], len(self.stages)):
            stage = self.stages[index]
            if index > self.position["stage"]:
                self.position = {"stage": index, "epoch": 0, "step": self.position["step"],
                                 "batch": 0}
                self.best, self.stale_epochs = None, 0
            train_pairs, val_pairs, split = self._data[index]
            if split:
                self._say(f"[{stage.name}] {split} examples are longer than max_seq_len="
                          f"{self.network.max_seq_len} tokens and were split into windows")
            if self.position["epoch"] == 0 and self.position["batch"] == 0:
                val_loss = self._evaluate(val_pairs)
                if val_loss is None:
                    self._say(f"[{stage.name}] {len(train_pairs)} training sequences; no "
                              f"validation data (validation fraction "
                              f"{settings.validation_fraction}, or too few examples), so no "
                              f"validation loss and no {BEST_FILENAME}")
                else:
                    self._say(f"[{stage.name}] {len(train_pairs)} training / "
                              f"{len(val_pairs)} validation sequences; validation loss before "
                              f"this stage {val_loss:.4f} (untrained model: "
                              f"{self.untrained_val_loss[stage.name]:.4f})")
                self._record(stage, 0, None, val_loss)
            # The position stays on the last stage when it ends, so that a finished run can be
            # resumed with more epochs.
            while (self.position["epoch"] < settings.epochs
                   and stage.name not in self.early_stopped):
                try:
                    self._run_epoch(index, stage, train_pairs, val_pairs)
                except KeyboardInterrupt as exc:   # between two epochs
                    kept = (f"{self.checkpoint_path} holds the last completed epoch "
                            f"({self.position['epoch']}); 'hypermixer train --resume --out "
                            f"{self.out_dir}' continues from there" if self.saved_any
                            else "nothing had been saved yet")
                    what = "SIGTERM" if isinstance(exc, Terminated) else "interrupted"
                    raise TrainingInterrupted(
                        f"{what}: stopped in stage '{stage.name}' after step "
                        f"{self.position['step']}; {kept}",
                        143 if isinstance(exc, Terminated) else 130) from None
        return self.history

    def _step(self, pairs, lr):
        """One Adam step on ``pairs`` (one mini-batch per accumulation slot)."""
        settings = self.settings
        if settings.grad_accumulation == 1:
            ids, targets, lengths = pad_batch(pairs)
            return distributed.train_step(self.comm, self.network, ids, targets, lengths,
                                          lr=lr, clip_norm=settings.clip_norm)
        if distributed.size_of(self.comm) > 1:
            raise ValueError("gradient accumulation is not supported with MPI yet; use a "
                             "larger --batch-size, which is shared by the ranks")
        total, loss, tokens, grads = len(pairs), 0.0, 0, None
        for start in range(0, total, settings.batch_size):
            chunk = pairs[start:start + settings.batch_size]
            ids, targets, lengths = pad_batch(chunk)
            part_loss, part_grads = self.network.loss_and_gradients(ids, targets, lengths)
            weight = len(chunk) / total   # the loss is a mean over sequences
            loss += part_loss * weight
            tokens += int(lengths.sum())
            if grads is None:
                grads = [g * np.asarray(weight, g.dtype) for g in part_grads]
            else:
                for acc, g in zip(grads, part_grads):
                    acc += g * np.asarray(weight, g.dtype)
        norm = global_norm(grads)
        if not (np.isfinite(loss) and np.isfinite(norm)):
            return StepResult(loss, norm, tokens, applied=False)
        if settings.clip_norm is not None and norm > settings.clip_norm:
            scale = settings.clip_norm / norm
            for g in grads:
                g *= np.asarray(scale, g.dtype)
        self.network.apply_gradients(grads, lr)
        return StepResult(loss, norm, tokens, applied=True)

    def _run_epoch(self, index, stage, train_pairs, val_pairs):
        settings = self.settings
        epoch = self.position["epoch"] + 1
        partial = self.partial
        if partial is not None:
            # an interrupted epoch: the same order again, its first ``done`` steps skipped
            self.shuffle_rng.bit_generator.state = self.epoch_rng
            done = self.position["batch"]
        else:
            done = 0
            self.epoch_rng = self.shuffle_rng.bit_generator.state
        order = self.shuffle_rng.permutation(len(train_pairs))
        per_step = settings.batch_size * settings.grad_accumulation
        steps = [order[i:i + per_step] for i in range(0, len(order), per_step)]
        loss_sum = partial["loss_sum"] if partial else 0.0
        tokens = partial["tokens"] if partial else 0
        before = partial["seconds"] if partial else 0.0
        started = time.perf_counter()
        label = f"[{stage.name}] epoch {epoch}/{settings.epochs}"
        progress = _Progress(label, len(steps), done, self.log, self.rank == 0)
        lr = settings.lr_at(max(self.position["step"], 1), self.total_steps)
        try:
            for number in range(done + 1, len(steps) + 1):
                step = self.position["step"] + 1
                lr = settings.lr_at(step, self.total_steps)
                result = self._step([train_pairs[i] for i in steps[number - 1]], lr)
                if not result.applied:
                    kept = (f"the last good checkpoint {self.checkpoint_path} is kept"
                            if self.saved_any else "no checkpoint had been written yet")
                    raise TrainingDiverged(
                        f"training stopped: non-finite loss ({result.loss}) or gradient norm "
                        f"({result.grad_norm}) in stage '{stage.name}', epoch {epoch}, step "
                        f"{step}; {kept}. Try a lower --lr")
                self.position["step"] = step
                self.position["batch"] = number
                loss_sum += result.loss
                tokens += result.tokens
                seconds = before + time.perf_counter() - started
                progress.update(number, loss_sum / number, tokens / max(seconds, 1e-9))
            progress.close()
            elapsed = before + time.perf_counter() - started
            val_loss = self._evaluate(val_pairs)
        except KeyboardInterrupt as exc:
            progress.close()
            self.partial = {"loss_sum": loss_sum, "tokens": tokens,
                            "seconds": before + time.perf_counter() - started}
            self._save(self.checkpoint_path, self.training_state())
            what = "SIGTERM" if isinstance(exc, Terminated) else "interrupted"
            raise TrainingInterrupted(
                f"{what}: stopped in stage '{stage.name}', epoch {epoch}, after step "
                f"{self.position['step']} (batch {self.position['batch']}/{len(steps)}); saved "
                f"to {self.checkpoint_path}; 'hypermixer train --resume --out "
                f"{self.out_dir}' continues from there",
                143 if isinstance(exc, Terminated) else 130) from None
        with _signals_deferred():   # the epoch's files are written whole, or not at all
            self._end_epoch(index, stage, epoch, label, loss_sum / len(steps), val_loss,
                            tokens, elapsed, lr)

    def _end_epoch(self, index, stage, epoch, label, train_loss, val_loss, tokens, elapsed,
                   lr):
        settings = self.settings
        tokens_per_s = tokens / elapsed if elapsed > 0 else float("inf")
        self._say(f"{label} step {self.position['step']} train loss {train_loss:.4f} val loss "
                  f"{_fmt(val_loss)} lr {lr:.3g} tokens/s {tokens_per_s:.0f} "
                  f"({elapsed:.1f} s)")
        self.position["epoch"] = epoch
        self.position["batch"] = 0
        self.partial = None
        self._record(stage, epoch, train_loss, val_loss, tokens, elapsed, lr)
        if val_loss is not None:
            if self.best is None or val_loss < self.best["val_loss"]:
                self.best = {"stage": stage.name, "epoch": epoch,
                             "step": self.position["step"], "val_loss": val_loss}
                self.stale_epochs = 0
                self._save(self.best_path, {"best": self.best})
            else:
                self.stale_epochs += 1
                if settings.patience is not None and self.stale_epochs >= settings.patience:
                    self.early_stopped.append(stage.name)
                    self._say(f"[{stage.name}] early stop: no better validation loss for "
                              f"{self.stale_epochs} epochs (best {self.best['val_loss']:.4f} "
                              f"at epoch {self.best['epoch']}, kept in {self.best_path})")
        self._save(self.checkpoint_path, self.training_state())
        self.saved_any = True


@contextlib.contextmanager
def _signals_deferred():
    """Hold Ctrl-C and SIGTERM back while the block runs, then deliver them (the handlers
    in place before run again), so that bookkeeping is never cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {kind: signal.signal(kind, lambda number, frame: pending.append(number))
                for kind in kinds}
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)
        for number in dict.fromkeys(pending):
            signal.raise_signal(number)


def _write_text(path, text):
    """Replace ``path`` atomically (a crash leaves the old file or the new one)."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


@distributed.abort_on_error
@runlock.holds_run_lock   # one run per output folder (runlock.py)
def train(config, out_dir, stages=None, settings=None, backend="compiled", dtype=np.float32,
          resume=False, log=None, plot=True, comm=None, tokenizer=None, token_cache=True):
    """Train a model of ``config`` and leave ``checkpoint.npz`` (and a loss plot) in out_dir.

    With ``resume=True`` the model, vocabulary, stages, settings and position come from the
    checkpoint in ``out_dir`` (``config`` is ignored). Of ``settings``, only ``epochs`` (for
    the stages not yet finished) and ``allow_noncausal`` are taken from the caller.
    With an MPI communicator ``comm``, every rank calls this with the same arguments and
    trains on its shard of each batch (``distributed.py``); any number of ranks can resume
    any checkpoint. ``tokenizer`` (a new run only): options of :func:`make_tokenizer`.
    ``token_cache=False`` keeps the tokens in memory instead of the run's token cache
    (``tokencache.py``); the training is the same.
    """
    out_dir = Path(out_dir)
    if resume:
        checkpoint = load_checkpoint(out_dir, backend=backend, resume=True)
        state = checkpoint.training_state
        if not state:
            raise ValueError(f"{checkpoint.path}: this checkpoint has no training state to "
                             "resume from")
        saved_settings = TrainSettings(**state["settings"])
        if settings is not None:
            saved_settings = dataclasses.replace(saved_settings, epochs=settings.epochs,
                                                 allow_noncausal=settings.allow_noncausal)
        trainer = Trainer(checkpoint.network, checkpoint.tokenizer,
                          [Stage(**s) for s in state["stages"]], saved_settings, out_dir, log,
                          comm, token_cache)
        trainer.restore(state)
    else:
        settings = settings or TrainSettings()
        stages = list(stages) if stages is not None else default_stages()
        if not stages:
            raise ValueError("no training stages given")
        _refuse_noncausal(config, settings)
        # streamed: a plain-text corpus is never held whole in memory
        texts = (text for stage in stages for text, _ in iter_texts(stage.data_path))
        tokenizer = make_tokenizer(texts, **(tokenizer or {}))
        network = build_network(config, len(tokenizer), seed=settings.seed, dtype=dtype,
                                backend=backend)
        trainer = Trainer(network, tokenizer, stages, settings, out_dir, log, comm, token_cache)
    _refuse_noncausal(trainer.network.config, trainer.settings)
    distributed.check_same_start(comm, trainer.network, trainer.tokenizer)
    trainer._say(f"model: {trainer.network.config.architecture}, "
                 f"{trainer.network.parameters():,} parameters, vocabulary "
                 f"{len(trainer.tokenizer)}, backend {trainer.network.backend}")
    history = trainer.run()
    plot_path = None
    if plot and trainer.rank == 0:
        from .plot import plot_history
        plot_path = plot_history({trainer.network.config.architecture: history},
                                 out_dir / "loss", log=trainer.log)
    return TrainResult(trainer.network, trainer.tokenizer, history,
                       trainer.untrained_val_loss, trainer.checkpoint_path, plot_path)


def make_tokenizer(texts, kind="word", vocab_size=None, max_vocab=None, min_count=1):
    """The tokenizer of a new run, learnt from all its training text: ``"word"`` (optionally
    ``max_vocab`` most frequent words seen ``min_count`` times) or ``"bpe"`` (byte-level, of
    ``vocab_size`` tokens, default 4096)."""
    if kind == "word":
        if vocab_size is not None:
            raise ValueError("--vocab-size is for --tokenizer bpe; the word tokenizer takes "
                             "--max-vocab")
        return Tokenizer.from_texts(texts, min_count=min_count, max_vocab=max_vocab)
    if kind == "bpe":
        if max_vocab is not None or min_count != 1:
            raise ValueError("--max-vocab and --min-count are for --tokenizer word; BPE "
                             "takes --vocab-size")
        return BPETokenizer.from_texts(texts, vocab_size=4096 if vocab_size is None
                                       else vocab_size)
    raise ValueError(f"tokenizer must be 'word' or 'bpe', got {kind!r}")


def _refuse_noncausal(config, settings):
    if not config.causal and not settings.allow_noncausal:
        raise NonCausalTrainingError(
            "refusing to train a language model with causal=False: the bidirectional token "
            "mixing lets position t see the tokens after t, i.e. its own targets. Use a "
            "causal model, or pass --allow-noncausal (allow_noncausal=True) to do it anyway")
