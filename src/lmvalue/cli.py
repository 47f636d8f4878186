"""The ``lmvalue`` command. Each verb is a plain function over a config dataclass.

Options are generated from the config dataclasses: every field ``section.name`` is
``--section.name VALUE`` on the command line, ``section.name=VALUE`` as a bare override, and
``section: {name: VALUE}`` in a YAML file given with ``--config``. A few common options also have
short spellings (``-o``, ``--max-steps``, ``--resume``...). Precedence: defaults < YAML <
command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing

from lmvalue.errors import LmvalueError

# short spelling -> dotted field
ALIASES = {
    "-o": "train.output_dir",
    "--output": "train.output_dir",
    "--data": "data.source",
    "--preset": "model.preset",
    "--arch": "model.arch",
    "--init-from": "model.init_from",
    "--tokenizer": "model.tokenizer",
    "--objectives": "objective.names",
    "--max-steps": "train.max_steps",
    "--max-minutes": "train.max_minutes",
    "--seed": "train.seed",
    "--lr": "train.lr",
    "--batch-size": "train.batch_size",
}
FLAGS = {"--resume": "train.resume", "--overwrite": "train.overwrite", "--no-progress": "train.progress"}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "LIST"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return _type_name(args[0])
    return {int: "INT", float: "FLOAT", bool: "BOOL", str: "STR"}.get(tp, "VALUE")


def add_config_options(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--section.field`` option per config field, grouped by section, help from metadata."""
    hints = typing.get_type_hints(cls)
    for section in dataclasses.fields(cls):
        sec_cls = hints[section.name]
        group = parser.add_argument_group(f"{section.name} options")
        sec_hints = typing.get_type_hints(sec_cls)
        for f in dataclasses.fields(sec_cls):
            dotted = f"{section.name}.{f.name}"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            names = [f"--{dotted}"]
            names += [a for a, target in ALIASES.items() if target == dotted]
            group.add_argument(
                *names,
                dest=dotted,
                default=argparse.SUPPRESS,
                metavar=_type_name(sec_hints[f.name]),
                help=f"{f.metadata.get('help', '')} (default: {default})",
            )
    flags = parser.add_argument_group("shortcuts")
    for flag, dotted in FLAGS.items():
        value = flag != "--no-progress"
        flags.add_argument(
            flag,
            dest=dotted,
            action="store_const",
            const=value,
            default=argparse.SUPPRESS,
            help=f"same as {dotted}={str(value).lower()}",
        )
    parser.add_argument("--config", "-c", help="YAML config file (sections as in --help)")
    parser.add_argument("overrides", nargs="*", metavar="section.field=VALUE", help="dotted overrides")


def config_from_args(cls, args: argparse.Namespace):
    from lmvalue.config import build_config, load_yaml

    overrides = {k: v for k, v in vars(args).items() if "." in k}
    for item in args.overrides:
        if "=" not in item:
            raise LmvalueError(
                f"cannot read override {item!r}: write it as section.field=VALUE, e.g. train.lr=1e-3"
            )
        key, value = item.split("=", 1)
        overrides[key] = value
    yaml_path = args.config
    # Resuming: the run's own saved config is the base, so `--resume -o runs/x` is enough.
    resume = str(overrides.get("train.resume", "")).lower() in ("true", "1", "yes")
    out = overrides.get("train.output_dir")
    if resume and out and not yaml_path and os.path.isfile(os.path.join(out, "config.yaml")):
        saved = load_yaml(os.path.join(out, "config.yaml"))
        saved.get("train", {}).pop("overwrite", None)
        from lmvalue.config import set_dotted

        for key, value in overrides.items():
            set_dotted(saved, key, value)
        from lmvalue.config import from_dict, validate

        cfg = from_dict(cls, saved)
        validate(cfg)
        return cfg
    return build_config(cls, yaml_path=yaml_path, overrides=overrides)


# --- verbs -------------------------------------------------------------------------------------


def cmd_pretrain(args):
    from lmvalue.config import PretrainConfig
    from lmvalue.pretrain import pretrain

    cfg = config_from_args(PretrainConfig, args)
    metrics = pretrain(cfg)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    final = metrics.get("final", {})
    print(
        f"pretraining finished ({metrics['stop_reason']}): {metrics['steps']} steps, "
        f"{metrics['tokens']:,} tokens at {metrics['tokens_per_s']:,.0f} tokens/s; "
        f"held-out loss {metrics.get('first_eval', {}).get('eval_loss', float('nan')):.3f} (first eval) -> "
        f"{final.get('eval_loss', float('nan')):.3f}"
    )
    print(f"model saved to {metrics['model_dir']}")


def cmd_tokenizer(args):
    from lmvalue.data.sources import iter_texts
    from lmvalue.tokenizer import train_tokenizer

    texts = iter_texts(args.data, text_column=args.text_column, encoding=args.encoding, errors=args.errors)
    tok = train_tokenizer(
        texts,
        args.output,
        kind=args.kind,
        vocab_size=args.vocab_size,
        lowercase=not args.cased,
        max_docs=args.max_docs,
        overwrite=args.overwrite,
        show_progress=True,
    )
    print(f"trained a {args.kind} tokenizer with {len(tok)} tokens -> {args.output}")


def cmd_demo(args):
    from lmvalue.config import PretrainConfig, build_config
    from lmvalue.pretrain import pretrain

    overrides = {
        "data.source": "demo:zh-reviews",
        "model.preset": "mini",
        "tokenizer.vocab_size": 8000,
        "train.output_dir": args.output,
        "train.max_minutes": args.minutes,
        "train.max_steps": 100000,
        "train.eval_every": 100,
        "train.save_every": 200,
        "train.overwrite": args.overwrite,
    }
    cfg = build_config(PretrainConfig, overrides=overrides)
    print(f"lmvalue demo: tokenizer + {args.minutes:g} minutes of masked-LM pretraining on demo:zh-reviews")
    metrics = pretrain(cfg)
    print(
        f"held-out masked-LM loss {metrics['first_eval'].get('eval_loss', float('nan')):.3f} -> "
        f"{metrics['final'].get('eval_loss', float('nan')):.3f} after {metrics['steps']} steps "
        f"({metrics['tokens_per_s']:,.0f} tokens/s)"
    )
    print(f"model saved to {metrics['model_dir']}")


def build_parser() -> argparse.ArgumentParser:
    from lmvalue import __version__
    from lmvalue.config import TOKENIZER_KINDS, PretrainConfig

    parser = argparse.ArgumentParser(
        prog="lmvalue",
        description="Pretrain language models on your unlabeled text and measure what it was worth.",
    )
    parser.add_argument("--version", action="version", version=f"lmvalue {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining on unlabeled text",
        description="Self-supervised pretraining (masked LM, ...) on unlabeled text.",
    )
    add_config_options(p, PretrainConfig)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "tokenizer",
        help="train a tokenizer on text",
        description="Train a tokenizer that transformers.AutoTokenizer loads.",
    )
    p.add_argument("--data", default="demo:zh-reviews", help="text source (default: demo:zh-reviews)")
    p.add_argument("--output", "-o", required=True, help="folder to write the tokenizer to")
    p.add_argument(
        "--kind", default="wordpiece", choices=TOKENIZER_KINDS, help="tokenizer model (default wordpiece)"
    )
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size (default 8000)")
    p.add_argument("--cased", action="store_true", help="keep case (default: lower-case)")
    p.add_argument("--max-docs", type=int, default=None, help="use at most this many documents")
    p.add_argument("--text-column", default="text", help="text column of csv/jsonl/parquet sources")
    p.add_argument("--encoding", default="utf-8", help="file encoding (default utf-8)")
    p.add_argument(
        "--errors", default="strict", choices=("strict", "replace", "ignore"), help="undecodable bytes"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer in --output")
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser(
        "demo",
        help="the main job on built-in data (demo:zh-reviews)",
        description="Train a tokenizer and pretrain a mini BERT on demo:zh-reviews.",
    )
    p.add_argument("--output", "-o", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--minutes", type=float, default=3.0, help="pretraining time budget (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if not args.verbose else logging.DEBUG,
        format="%(message)s",
    )
    for noisy in ("transformers", "accelerate", "datasets", "jieba", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING if args.verbose else logging.ERROR)
    import transformers.utils.logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not args.command:
        parser.print_help()
        return 2
    try:
        args.func(args)
    except LmvalueError as e:
        print(f"lmvalue {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
