"""Training a language model in stages, with checkpoints that a later run can resume.

The default run has two stages, as the seeds: pre-training on the bundled ``pretrain.json``,
then instruction tuning on ``chat.json``. The vocabulary is built from the data of all stages
before training starts, so it does not change between them.

Per stage: the examples are split once into training and validation sets (seeded, the same on
every run with the same seed); each epoch shuffles the training sequences with one run-wide
generator, cuts them into mini-batches padded to their longest sequence (with ``lengths``),
and takes one Adam step per batch on the next-token loss, after clipping the gradients to a
global norm. The validation loss is measured before the first epoch and after every epoch.

After every epoch a checkpoint is written (atomically) holding the parameters, Adam state,
shuffling generator, position (stage, epoch, step), settings and loss history; ``resume``
continues from it exactly where the run stopped, so a resumed run ends with the same model as
an uninterrupted one. A non-finite loss stops training with a message naming the stage,
epoch and step; the checkpoint of the last completed epoch is left as it was.
"""

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from . import distributed, runlock
from .checkpoint import CHECKPOINT_FILENAME, load_checkpoint, save_checkpoint
from .datasets import bundled_data_path, load_texts, make_sequences
from .model import NonCausalTrainingError, build_network
from .tokenizer import Tokenizer

PROGRESS_INTERVAL_S = 10.0
# Independent random streams derived from the one seed (spawn keys, so none of them repeats
# the stream that initialises the parameters): the validation split of each stage, and the
# shuffling of batches (whose state is saved in checkpoints).
_SPLIT_STREAM, _SHUFFLE_STREAM = 1, 2


def _stream(seed, *key):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where."""


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

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
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
    """Mean loss over sequences (the SPEC loss of one big batch), in batches."""
    if not pairs:
        return float("nan")
    total = 0.0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        ids, targets, lengths = pad_batch(chunk)
        total += network.loss(ids, targets, lengths) * len(chunk)
    return total / len(pairs)


class Trainer:
    """One training run; :func:`train` is the usual entry point."""

    def __init__(self, network, tokenizer, stages, settings, out_dir, log=None, comm=None):
        self.network = network
        self.comm = comm                          # MPI communicator or None (distributed.py)
        self.rank = distributed.rank_of(comm)     # rank 0 alone prints and writes
        self.tokenizer = tokenizer
        self.stages = list(stages)
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_FILENAME
        self.log = log if log is not None else sys.stderr
        self.shuffle_rng = _stream(settings.seed, _SHUFFLE_STREAM)
        self.history = []
        self.position = {"stage": 0, "epoch": 0, "step": 0}   # next epoch to run, steps so far
        self.untrained_val_loss = {}   # stage name -> validation loss of the initial model
        self.saved_any = False

    # ------------------------------------------------------------------ state
    def training_state(self):
        return {
            "position": dict(self.position),
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "settings": dataclasses.asdict(self.settings),
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
            "history": self.history,
            "untrained_val_loss": self.untrained_val_loss,
        }

    def restore(self, state):
        self.position = dict(state["position"])
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self.history = list(state["history"])
        self.untrained_val_loss = dict(state["untrained_val_loss"])
        self.saved_any = True

    def _say(self, message):
        if self.rank != 0:
            return
        print(message, file=self.log, flush=True)

    def _record(self, stage, epoch, train_loss, val_loss, tokens=0, seconds=0.0):
        """One point of the loss history; ``tokens`` trained on in ``seconds`` since the last."""
        self.history.append({"stage": stage.name, "epoch": epoch,
                             "step": self.position["step"], "train_loss": train_loss,
                             "val_loss": val_loss, "tokens": tokens, "seconds": seconds})

    # ------------------------------------------------------------------ data
    def _stage_data(self, index, stage, quiet=False):
        texts = load_texts(stage.data_path)
        train_idx, val_idx = split_validation(len(texts), self.settings.validation_fraction,
                                              self.settings.seed, index)
        limit = self.network.max_seq_len
        train_pairs, split_train = make_sequences(
            [self.tokenizer.encode(texts[i]) for i in train_idx], limit)
        val_pairs, split_val = make_sequences(
            [self.tokenizer.encode(texts[i]) for i in val_idx], limit)
        if (split_train or split_val) and not quiet:
            self._say(f"[{stage.name}] {split_train + split_val} examples are longer than "
                      f"max_seq_len={limit} tokens and were split into windows")
        if not train_pairs:
            raise ValueError(f"{stage.data_path}: no training sequences (every example is "
                             "a single token)")
        return train_pairs, val_pairs

    def _evaluate(self, pairs):
        if self.comm is None:
            return evaluate(self.network, pairs, self.settings.batch_size)
        return distributed.evaluate(self.comm, self.network, pairs, self.settings.batch_size,
                                    pad_batch)

    # ------------------------------------------------------------------ loop
    def run(self):
        self.network.allow_noncausal_training = self.settings.allow_noncausal
        self.out_dir.mkdir(parents=True, exist_ok=True)
        settings = self.settings
        if not self.untrained_val_loss:
            # the yardstick for every stage: what the model scores before any training
            for index, stage in enumerate(self.stages):
                _, val_pairs = self._stage_data(index, stage, quiet=True)
                self.untrained_val_loss[stage.name] = self._evaluate(val_pairs)
        for index in range(self.position["stage"], len(self.stages)):
            stage = self.stages[index]
            if index > self.position["stage"]:
                self.position = {"stage": index, "epoch": 0, "step": self.position["step"]}
            train_pairs, val_pairs = self._stage_data(index, stage)
            if self.position["epoch"] == 0:
                val_loss = self._evaluate(val_pairs)
                self._say(f"[{stage.name}] {len(train_pairs)} training / {len(val_pairs)} "
                          f"validation sequences; validation loss before this stage "
                          f"{val_loss:.4f} (untrained model: "
                          f"{self.untrained_val_loss[stage.name]:.4f})")
                self._record(stage, 0, None, val_loss)
            # The position stays on the last stage when it ends, so that a finished run can be
            # resumed with more epochs.
            while self.position["epoch"] < settings.epochs:
                self._run_epoch(stage, train_pairs, val_pairs)
        return self.history

    def _run_epoch(self, stage, train_pairs, val_pairs):
        settings = self.settings
        epoch = self.position["epoch"] + 1
        order = self.shuffle_rng.permutation(len(train_pairs))
        batches = [order[i:i + settings.batch_size]
                   for i in range(0, len(order), settings.batch_size)]
        started = last_report = time.perf_counter()
        loss_sum = 0.0
        tokens = 0
        for batch_number, batch in enumerate(batches, start=1):
            ids, targets, lengths = pad_batch([train_pairs[i] for i in batch])
            step = self.position["step"] + 1
            result = distributed.train_step(self.comm, self.network, ids, targets, lengths,
                                            lr=settings.lr, clip_norm=settings.clip_norm)
            if not result.applied:
                kept = (f"the last good checkpoint {self.checkpoint_path} is kept"
                        if self.saved_any else "no checkpoint had been written yet")
                raise TrainingDiverged(
                    f"training stopped: non-finite loss ({result.loss}) or gradient norm "
                    f"({result.grad_norm}) in stage '{stage.name}', epoch {epoch}, step "
                    f"{step}; {kept}. Try a lower --lr")
            self.position["step"] = step
            loss_sum += result.loss
            tokens += result.tokens
            now = time.perf_counter()
            if now - last_report >= PROGRESS_INTERVAL_S:
                last_report = now
                self._say(f"[{stage.name}] epoch {epoch}/{settings.epochs} batch "
                          f"{batch_number}/{len(batches)} loss {loss_sum / batch_number:.4f} "
                          f"tokens/s {tokens / (now - started):.0f}")
        elapsed = time.perf_counter() - started
        train_loss = loss_sum / len(batches)
        val_loss = self._evaluate(val_pairs)
        tokens_per_s = tokens / elapsed if elapsed > 0 else float("inf")
        self._say(f"[{stage.name}] epoch {epoch}/{settings.epochs} step "
                  f"{self.position['step']} train loss {train_loss:.4f} val loss "
                  f"{val_loss:.4f} tokens/s {tokens_per_s:.0f} ({elapsed:.1f} s)")
        self.position["epoch"] = epoch
        self._record(stage, epoch, train_loss, val_loss, tokens, elapsed)
        if self.rank == 0:
            save_checkpoint(self.checkpoint_path, self.network, self.tokenizer,
                            self.training_state())
        self.saved_any = True


@distributed.abort_on_error
@runlock.holds_run_lock   # one run per output folder (runlock.py)
def train(config, out_dir, stages=None, settings=None, backend="compiled", dtype=np.float32,
          resume=False, log=None, plot=True, comm=None):
    """Train a model of ``config`` and leave ``checkpoint.npz`` (and a loss plot) in out_dir.

    With ``resume=True`` the model, vocabulary, stages, settings and position come from the
    checkpoint in ``out_dir`` (``config`` is ignored). Of ``settings``, only ``epochs`` (for
    the stages not yet finished) and ``allow_noncausal`` are taken from the caller.
    With an MPI communicator ``comm``, every rank calls this with the same arguments and
    trains on its shard of each batch (``distributed.py``); any number of ranks can resume
    any checkpoint.
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
                          comm)
        trainer.restore(state)
    else:
        settings = settings or TrainSettings()
        stages = list(stages) if stages is not None else default_stages()
        if not stages:
            raise ValueError("no training stages given")
        _refuse_noncausal(config, settings)
        texts = [text for stage in stages for text in load_texts(stage.data_path)]
        tokenizer = Tokenizer.from_texts(texts)
        network = build_network(config, len(tokenizer), seed=settings.seed, dtype=dtype,
                                backend=backend)
        trainer = Trainer(network, tokenizer, stages, settings, out_dir, log, comm)
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


def _refuse_noncausal(config, settings):
    if not config.causal and not settings.allow_noncausal:
        raise NonCausalTrainingError(
            "refusing to train a language model with causal=False: the bidirectional token "
            "mixing lets position t see the tokens after t, i.e. its own targets. Use a "
            "causal model, or pass --allow-noncausal (allow_noncausal=True) to do it anyway")
