"""The ``hypermixer`` command: train, generate, chat, info, compare, bench.

User mistakes (a missing file, a bad option value, a corrupt checkpoint) print one line on
stderr and exit with status 2, without a traceback.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

from .datasets import DataError
from .model import ModelConfig, backend_available, build_network, expected_parameter_count

DEFAULT_OUT = "hypermixer-model"
SEEDS_VOCAB_SIZE = 533   # the vocabulary of the seeds' reference numbers (SPEC section 6)


class UsageError(Exception):
    """Reported as ``hypermixer: error: ...`` with exit status 2."""


def _say(message):
    print(message, file=sys.stderr, flush=True)


def _resolve_backend(name):
    if name == "compiled" and not backend_available("compiled"):
        _say("note: the compiled language-model layers are not available in this build; "
             "using the NumPy reference layers (much slower)")
        return "reference"
    return name


# ---------------------------------------------------------------------------------- options
def _add_model_options(parser, architecture=True):
    group = parser.add_argument_group("model")
    if architecture:
        group.add_argument("--architecture", choices=("hypermixer", "transformer", "hypermixing"),
                           default="hypermixer")
    else:   # compare trains all three: accepted only to refuse it with a clear message
        group.add_argument("--architecture", default=None, help=argparse.SUPPRESS)
    defaults = ModelConfig()
    group.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim)
    group.add_argument("--hidden-dim", type=int, default=defaults.hidden_dim)
    group.add_argument("--num-layers", type=int, default=defaults.num_layers)
    group.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    group.add_argument("--hypernetwork-hidden-dim", type=int, default=None,
                       help="default: embedding-dim / 4 (hypermixer only)")
    group.add_argument("--token-mixing-hidden-dim", type=int, default=None,
                       help="default: embedding-dim / 2 (hypermixer only)")
    group.add_argument("--heads", type=int, default=None,
                       help="HyperMixing heads (hypermixing only; default 32, at least 4 "
                            "wide)")
    group.add_argument("--untied", action="store_true",
                       help="two weight generators, one for W1 and one for W2 (hypermixing "
                            "only; default: one for both)")
    group.add_argument("--share-hypernetwork", action="store_true",
                       help="one hypernetwork for all blocks (hypermixer only)")
    group.add_argument("--non-causal", action="store_true",
                       help="bidirectional token mixing; such a model sees its own targets, "
                            "so training it also needs --allow-noncausal")


def _add_training_options(parser, default_out):
    from .train import TrainSettings
    defaults = TrainSettings()
    parser.add_argument("--data", action="append", metavar="FILE",
                        help="training data (JSON array of strings, or one example per line); "
                             "repeat for several stages. Default: the bundled pretrain.json, "
                             "then chat.json")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs per stage (default {defaults.epochs})")
    parser.add_argument("--out", default=default_out, metavar="DIR",
                        help=f"output directory (default {default_out})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="initial parameters, validation split and shuffling (default "
                             "%(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="sequences per Adam step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr,
                        help="Adam learning rate (default %(default)s)")
    parser.add_argument("--clip-norm", type=float, default=defaults.clip_norm,
                        help="global gradient-norm limit, 0 for none (default %(default)s)")
    parser.add_argument("--validation-fraction", type=float,
                        default=defaults.validation_fraction,
                        help="share of each stage's examples held out (default %(default)s)")
    parser.add_argument("--tokenizer", choices=("word", "bpe"), default="word",
                        help="word: one token per lower-cased word (default); bpe: byte-level "
                             "BPE learnt on the data, exact for any text (pip install "
                             "'hypermixer[bpe]')")
    parser.add_argument("--vocab-size", type=int, default=None, metavar="N",
                        help="BPE vocabulary size (default 4096)")
    parser.add_argument("--max-vocab", type=int, default=None, metavar="N",
                        help="word tokenizer: keep the N most frequent words")
    parser.add_argument("--min-count", type=int, default=1, metavar="N",
                        help="word tokenizer: leave out words seen fewer than N times")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps,
                        help="learning rate rises linearly over these optimizer steps "
                             "(default %(default)s)")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"),
                        default=defaults.lr_schedule,
                        help="after the warmup: constant, or a cosine down to 0 at the last "
                             "step (default %(default)s)")
    parser.add_argument("--grad-accumulation", type=int, default=defaults.grad_accumulation,
                        metavar="N", help="sum the gradients of N batches into one Adam step "
                                          "(default %(default)s)")
    parser.add_argument("--patience", type=int, default=None, metavar="N",
                        help="end a stage after N epochs without a better validation loss")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished or interrupted run in --out")
    parser.add_argument("--backend", choices=("compiled", "reference"), default="compiled")
    parser.add_argument("--allow-noncausal", action="store_true",
                        help="train a --non-causal model anyway")


def _add_generation_options(parser):
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a directory written by 'hypermixer train', its checkpoint.npz or "
                             "best.npz, or a .safetensors export")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (the default) is greedy decoding")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample among the K most likely tokens; 0 (or absent): no limit")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample among the most likely tokens whose probabilities reach P "
                             "(0 < P <= 1)")
    parser.add_argument("--seed", type=int, default=None, help="for sampling")
    parser.add_argument("--backend", choices=("compiled", "reference"), default="compiled")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="hypermixer", description="HyperMixer and Transformer language models.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train a language model")
    _add_model_options(train)
    _add_training_options(train, DEFAULT_OUT)
    train.add_argument("--resume", action="store_true",
                       help="continue the run whose checkpoint is in --out, with its saved "
                            "model, data and settings (only --epochs may be changed)")

    generate = commands.add_parser("generate", help="continue a prompt")
    _add_generation_options(generate)
    generate.add_argument("prompt")

    chat = commands.add_parser("chat", help="answer lines from stdin until EOF or 'quit'")
    _add_generation_options(chat)

    info = commands.add_parser("info", help="parameter counts of the models (SPEC section 6)")
    info.add_argument("--vocab-size", type=int, default=SEEDS_VOCAB_SIZE)

    compare = commands.add_parser(
        "compare", help="train both architectures on the same data and seed")
    _add_model_options(compare, architecture=False)
    _add_training_options(compare, "hypermixer-compare")

    evaluate = commands.add_parser("evaluate", help="loss and perplexity of a model on a "
                                                     "data file")
    evaluate.add_argument("--model", required=True, metavar="DIR",
                          help="a run folder, checkpoint .npz or .safetensors export")
    evaluate.add_argument("--data", required=True, metavar="FILE")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--backend", choices=("compiled", "reference"), default="compiled")

    export = commands.add_parser("export", help="write a model's weights, configuration and "
                                                 "tokenizer as one .safetensors file")
    export.add_argument("--model", required=True, metavar="DIR")
    export.add_argument("--out", required=True, metavar="FILE.safetensors")
    export.add_argument("--backend", choices=("compiled", "reference"), default="compiled")

    # "bench" is dispatched in main() before parsing; listed here for --help
    commands.add_parser("bench", help="benchmarks (hypermixer.bench); options are its own")
    commands.add_parser("check", help="compiled kernels vs the NumPy reference on this "
                        "machine (hypermixer.check); options are its own")
    return parser


def _refuse_flags(flags, only_to):
    """Refuse (rather than silently drop) the flags of ``[(flag, given)]`` that were given:
    they apply ``only_to`` another architecture."""
    ignored = [flag for flag, given in flags if given]
    if ignored:
        raise UsageError(f"{', '.join(ignored)} {'applies' if len(ignored) == 1 else 'apply'}"
                         f" only to {only_to}")


def _model_config(args, architecture=None):
    if architecture is None and args.architecture == "transformer":
        _refuse_flags([("--share-hypernetwork", args.share_hypernetwork),
                       ("--hypernetwork-hidden-dim", args.hypernetwork_hidden_dim is not None),
                       ("--token-mixing-hidden-dim", args.token_mixing_hidden_dim is not None),
                       ("--non-causal", args.non_causal)],
                      "--architecture hypermixer; the transformer has no hypernetwork and is "
                      "always causal")
    if architecture is None and args.architecture == "hypermixing":
        # its mixer generates weights per token from the token information, with no
        # hypernetwork of the seeds' kind to size or share
        _refuse_flags([("--share-hypernetwork", args.share_hypernetwork),
                       ("--hypernetwork-hidden-dim", args.hypernetwork_hidden_dim is not None)],
                      "--architecture hypermixer; the hypermixing LM's weight generators are "
                      "sized by --token-mixing-hidden-dim and --heads")
    if architecture is None and args.architecture != "hypermixing":
        _refuse_flags([("--heads", getattr(args, "heads", None) is not None),
                       ("--untied", getattr(args, "untied", False))],
                      "--architecture hypermixing")
    architecture = architecture or args.architecture
    fields = dict(architecture=architecture, embedding_dim=args.embedding_dim,
                  hidden_dim=args.hidden_dim, num_layers=args.num_layers,
                  max_seq_len=args.max_seq_len)
    if architecture == "hypermixer":
        fields.update(hypernetwork_hidden_dim=args.hypernetwork_hidden_dim,
                      token_mixing_hidden_dim=args.token_mixing_hidden_dim,
                      share_hypernetwork=args.share_hypernetwork, causal=not args.non_causal)
    if architecture == "hypermixing":
        fields.update(token_mixing_hidden_dim=args.token_mixing_hidden_dim,
                      heads=getattr(args, "heads", None),
                      tied=False if getattr(args, "untied", False) else None,
                      causal=not args.non_causal)
    try:
        return ModelConfig(**fields)
    except TypeError as exc:
        raise UsageError(str(exc)) from None


def _settings(args):
    from .train import TrainSettings
    fields = dict(batch_size=args.batch_size, lr=args.lr,
                  clip_norm=None if args.clip_norm == 0 else args.clip_norm,   # -1, nan refused
                  validation_fraction=args.validation_fraction, seed=args.seed,
                  allow_noncausal=args.allow_noncausal, warmup_steps=args.warmup_steps,
                  lr_schedule=args.lr_schedule, grad_accumulation=args.grad_accumulation,
                  patience=args.patience)
    if args.epochs is not None:
        fields["epochs"] = args.epochs
    return TrainSettings(**fields)


def _stages(args):
    """One stage per --data file, in order, named after the file; default: the bundled two."""
    from .train import Stage, default_stages
    if not args.data:
        return default_stages()
    if len(args.data) == 1:
        return [Stage(Path(args.data[0]).stem, args.data[0])]
    return [Stage(f"{n}-{Path(p).stem}", p) for n, p in enumerate(args.data, start=1)]


# ---------------------------------------------------------------------------------- commands
def cmd_train(args):
    from .distributed import rank_of, world_from_environment
    from .train import train
    comm = world_from_environment()   # under mpiexec -n K (K > 1): data-parallel training
    settings = _settings(args)
    backend = _resolve_backend(args.backend)
    _keep_freed_memory()
    if args.resume:
        defaults = vars(build_parser().parse_args(["train"]))
        fixed = ("data", "seed", "batch_size", "lr", "clip_norm", "validation_fraction",
                 "architecture", "embedding_dim", "hidden_dim", "num_layers", "max_seq_len",
                 "hypernetwork_hidden_dim", "token_mixing_hidden_dim", "share_hypernetwork",
                 "non_causal", "warmup_steps", "lr_schedule", "grad_accumulation",
                 "patience", "overwrite", "tokenizer", "vocab_size", "max_vocab",
                 "min_count")
        changed = ["--" + name.replace("_", "-") for name in fixed
                   if getattr(args, name) != defaults[name]]
        if changed:
            raise UsageError(f"--resume continues the saved run with its own model, data and "
                             f"settings; drop {', '.join(changed)}")
        result = train(None, args.out, settings=settings if args.epochs else None,
                       backend=backend, resume=True, comm=comm)
    else:
        _refuse_to_replace(Path(args.out), args.overwrite)
        result = train(_model_config(args), args.out, stages=_stages(args), settings=settings,
                       backend=backend, comm=comm, tokenizer=_tokenizer_options(args))
    if rank_of(comm) == 0:
        _report_run(result)
    return 0


def _tokenizer_options(args):
    return dict(kind=args.tokenizer, vocab_size=args.vocab_size, max_vocab=args.max_vocab,
                min_count=args.min_count)


def _refuse_to_replace(out, overwrite):
    """A run folder with a checkpoint is somebody's finished (or interrupted) run."""
    from .checkpoint import CHECKPOINT_FILENAME
    for directory in (out, out / "hypermixer", out / "transformer"):
        if (directory / CHECKPOINT_FILENAME).exists() and not overwrite:
            raise UsageError(f"{directory} already holds a trained model "
                             f"({CHECKPOINT_FILENAME}); pass --resume to continue it, "
                             f"--overwrite to replace it, or choose another --out")


def _report_run(result):
    last = result.history[-1]
    where = (f"model saved to {result.checkpoint_path}"
             + (f", loss curve in {result.plot_path}" if result.plot_path else ""))
    if last["val_loss"] is None:
        trained = [p for p in result.history if p["train_loss"] is not None]
        _say(f"no validation data, so no validation loss; training loss on the "
             f"'{last['stage']}' data {trained[-1]['train_loss']:.4f} in the last epoch; "
             + where)
        return
    _say(f"validation loss on the '{last['stage']}' data: "
         f"{result.untrained_val_loss[last['stage']]:.4f} untrained, {last['val_loss']:.4f} "
         f"now; " + where)


def _load_model(args):
    from .export import load_model
    network, tokenizer = load_model(args.model, backend=_resolve_backend(args.backend))
    return argparse.Namespace(network=network, tokenizer=tokenizer)


def _generation_options(args):
    ignored = [flag for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p),
                                        ("--seed", args.seed)) if value is not None]
    if args.temperature == 0 and ignored:
        _say(f"note: {', '.join(ignored)} ignored: --temperature 0 (the default) is greedy "
             f"decoding; give a temperature > 0 to sample")
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, seed=args.seed, top_p=args.top_p)


def cmd_generate(args):
    from .generate import generate
    checkpoint = _load_model(args)
    text = generate(checkpoint.network, checkpoint.tokenizer, args.prompt,
                    **_generation_options(args))
    if not text:
        # an empty line with status 0 looks like success; say what happened instead
        _say("nothing was generated: the model ended the text right after the prompt "
             "(its first token was </s>); try sampling with --temperature")
        return 1
    print(text)
    return 0


def cmd_chat(args):
    from .generate import Conversation
    model = _load_model(args)
    conversation = Conversation(model.network, model.tokenizer, **_generation_options(args))
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
        _say("Type a message and press Enter; 'quit' or Ctrl-D ends the chat. The "
             f"conversation is kept as context (the last {model.network.max_seq_len} tokens).")
    while True:
        try:
            line = input("User: ") if interactive else sys.stdin.readline()
        except EOFError:
            line = ""
        if not line or line.strip().lower() in ("quit", "exit"):
            if interactive:
                print(flush=True)   # end the prompt's line cleanly after Ctrl-D
            break
        if not line.strip():
            continue
        print(f"Assistant: {conversation.reply(line)}", flush=True)
    return 0


def cmd_info(args):
    vocab = args.vocab_size
    if vocab < 2:
        raise UsageError(f"--vocab-size must be >= 2, got {vocab}")
    backend = "compiled" if backend_available("compiled") else "reference"
    hypermixer = build_network(ModelConfig.hypermixer(), vocab, backend=backend)
    transformer = build_network(ModelConfig.transformer(), vocab, backend=backend)
    shared = build_network(ModelConfig.hypermixer(share_hypernetwork=True), vocab,
                           backend=backend)
    hypermixing = build_network(ModelConfig(architecture="hypermixing"), vocab, backend=backend)
    block = hypermixer.blocks[0]
    parts = {name: layer.parameters() for name, layer in block._children}
    config = hypermixer.config
    print(f"Parameters at vocab {vocab}, E={config.embedding_dim}, H={config.hidden_dim}, "
          f"{config.num_layers} layers, S={config.max_seq_len}, "
          f"Hh={config.resolved_hypernetwork_hidden_dim}, "
          f"Ht={config.resolved_token_mixing_hidden_dim} (built with the {backend} layers)")
    print()
    rows = [
        ("HyperMixerBlock", f"{block.parameters():,} (hypernetwork "
                            f"{parts['token_mixing']:,} + channel {parts['channel_mixing']:,} "
                            f"+ norms {parts['norm1'] + parts['norm2']:,})"),
        ("TransformerBlock", f"{transformer.blocks[0].parameters():,}"),
        ("HyperMixer LM", f"{hypermixer.parameters():,}"),
        ("Transformer LM", f"{transformer.parameters():,}"),
        ("HyperMixer LM, shared hypernetwork", f"{shared.parameters():,}"),
        (f"hypermixing LM ({hypermixing.config.resolved_heads} heads, "
         f"{'tied' if hypermixing.config.resolved_tied else 'untied'})",
         f"{hypermixing.parameters():,}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'model'.ljust(width)} | parameters |")
    print(f"| {'-' * width} | --- |")
    for name, count in rows:
        print(f"| {name.ljust(width)} | {count} |")
    for network in (hypermixer, transformer, shared, hypermixing):
        if network.parameters() != expected_parameter_count(network.config, vocab):
            raise RuntimeError(f"{network!r} disagrees with the SPEC parameter formulas")
    return 0


def _keep_freed_memory():
    """Training in this process (the command line's own): ask glibc to keep freed blocks up
    to 32 MB for reuse instead of returning them to the system. Otherwise every step's
    arrays come back as fresh pages: measured in a fresh process, B=16 L=80, 2 threads,
    650-750 page faults per step and a Transformer LM step of 13.5 ms instead of 12.2
    (hypermixing 16.9 instead of 15.9). Process-wide, so only the CLI does it, never the
    library; elsewhere (or for your own training loop) MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=268435456 in the environment does the same. Skipped where the C
    library is not glibc."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)    # M_MMAP_THRESHOLD (32 MB, glibc's upper limit)
    mallopt(-1, 256 << 20)   # M_TRIM_THRESHOLD


def cmd_compare(args):
    from .distributed import rank_of, world_from_environment
    from .plot import plot_history
    from .train import train
    if args.architecture is not None:
        raise UsageError("compare always trains every architecture (hypermixer, transformer "
                         "and hypermixing); drop --architecture, or use 'hypermixer train "
                         f"--architecture {args.architecture}' for one")
    comm = world_from_environment()   # under mpiexec: every training data-parallel
    settings = _settings(args)
    backend = _resolve_backend(args.backend)
    _keep_freed_memory()
    out = Path(args.out)
    _refuse_to_replace(out, args.overwrite)
    # every configuration first: a bad --heads used to surface after two models had trained
    configs = {architecture: _model_config(args, architecture)
               for architecture in ("hypermixer", "transformer", "hypermixing")}
    results = {}
    for architecture, config in configs.items():
        if rank_of(comm) == 0:
            _say(f"== training the {architecture} ==")
        results[architecture] = train(config, out / architecture,
                                      stages=_stages(args), settings=settings,
                                      backend=backend, plot=False, comm=comm,
                                      tokenizer=_tokenizer_options(args))
    if rank_of(comm) != 0:
        return 0
    plot_path = plot_history({name: r.history for name, r in results.items()},
                             out / "compare")
    # "best val loss" is the last stage's lowest, the model kept in best.npz: on a small corpus
    # the final epoch can be well past the point where a model starts to overfit
    header = ("model", "parameters", "final train loss", "final val loss",
              "best val loss (epoch)", "training tokens/s")
    rows = []
    for name, result in results.items():
        trained = [p for p in result.history if p["train_loss"] is not None]
        speed = sum(p["tokens"] for p in trained) / sum(p["seconds"] for p in trained)
        last = result.history[-1]
        scored = [p for p in result.history
                  if p["stage"] == last["stage"] and p["val_loss"] is not None]
        best = min(scored, key=lambda p: p["val_loss"]) if scored else None
        rows.append((name, f"{result.network.parameters():,}",
                     f"{trained[-1]['train_loss']:.4f}",
                     "-" if last["val_loss"] is None else f"{last['val_loss']:.4f}",
                     "-" if best is None else f"{best['val_loss']:.4f} ({best['epoch']})",
                     f"{speed:,.0f}"))
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    _say(f"same data, seed {settings.seed}, {settings.epochs} epochs per stage; loss curves "
         f"in {plot_path}")
    return 0


def cmd_evaluate(args):
    import math
    import numpy as np
    from .datasets import TokenWindows
    from .tokencache import tokenize_in_memory
    from .train import evaluate
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = _load_model(args)
    # token arrays, not lists: a large file fits; progress only on a terminal (stdout is
    # the result)
    tokens, offsets = tokenize_in_memory(args.data, model.tokenizer, f"tokenizing {args.data}",
                                         sys.stderr if sys.stderr.isatty() else None)
    pairs = TokenWindows(tokens, offsets, np.arange(len(offsets) - 1), model.network.max_seq_len)
    if not len(pairs):
        raise UsageError(f"{args.data}: no sequences to evaluate (every example is one token)")
    loss = evaluate(model.network, pairs, args.batch_size)
    tokens = pairs.target_count()
    print(f"loss {loss:.4f} perplexity {math.exp(min(loss, 700)):.2f} "
          f"({len(pairs)} sequences, {tokens} target tokens, {args.data})")
    return 0


def cmd_export(args):
    from .export import export_safetensors
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must name a .safetensors file, got {out}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name the file to write")
    model = _load_model(args)
    export_safetensors(model.network, model.tokenizer, out)
    _say(f"wrote {out} ({out.stat().st_size:,} bytes: {model.network.parameters():,} "
         f"parameters, configuration and tokenizer)")
    return 0


def cmd_bench(args):
    import importlib
    try:
        bench = importlib.import_module("hypermixer.bench")
    except ModuleNotFoundError as exc:
        if exc.name != "hypermixer.bench":
            raise   # the module exists but something it needs is missing: show that
        raise UsageError("the benchmarks (hypermixer.bench) are not part of this "
                         "installation") from None
    result = bench.main(args.bench_args)
    return 0 if result is None else int(result)


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "chat": cmd_chat, "info": cmd_info,
            "compare": cmd_compare, "bench": cmd_bench, "evaluate": cmd_evaluate,
            "export": cmd_export}


def _reader_went_away():
    """stdout's reader closed the pipe (``hypermixer info | head -1``): stop quietly with the
    status of a process ended by SIGPIPE, as other command-line tools do. stdout is pointed
    at /dev/null so that Python's final flush does not report the pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["check"]:
        from .check import main as check_main
        try:
            status = check_main(argv[1:])
            sys.stdout.flush()
            return status
        except BrokenPipeError:   # hypermixer check | head -1
            return _reader_went_away()
    if argv[:1] == ["bench"]:
        # everything after "bench" belongs to the benchmark's own parser
        args = argparse.Namespace(command="bench", bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .train import Terminated, TrainingDiverged, TrainingInterrupted
    previous = _terminate_like_interrupt(Terminated)
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()   # a closed pipe shows here, not at exit as "Exception ignored"
        return status
    except BrokenPipeError:
        return _reader_went_away()
    except TrainingInterrupted as exc:
        print(f"hypermixer {args.command}: {exc}", file=sys.stderr, flush=True)
        return exc.status
    except Terminated:
        print(f"hypermixer {args.command}: terminated (SIGTERM)", file=sys.stderr, flush=True)
        return 143
    except (UsageError, DataError, CheckpointError, TrainingDiverged, ValueError,
            RuntimeError, OSError) as exc:
        print(f"hypermixer {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except (MemoryError, OverflowError, RecursionError) as exc:
        # sizes the machine cannot hold (--embedding-dim 1000000): one line, not a traceback
        kind = {MemoryError: "out of memory"}.get(type(exc), "too large")
        print(f"hypermixer {args.command}: error: {kind}: {str(exc) or 'no details'}",
              file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"hypermixer {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_like_interrupt(exception):
    """SIGTERM (what batch schedulers send) raises ``exception``, a KeyboardInterrupt, so
    training saves and says where it stopped; returns the previous handler (None when this
    is not the main thread, where handlers cannot be set)."""
    def handler(signum, frame):
        raise exception()
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
