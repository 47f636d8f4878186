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
import time
import types
import typing
from pathlib import Path

from lmvalue.errors import ConfigError, LmvalueError

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
    "--test": "data.test",
    "--method": "method.name",
    "--train-size": "budget.train_size",
    "--per-class": "budget.per_class",
}
FLAGS = {
    "--resume": "train.resume",
    "--overwrite": "train.overwrite",
    "--no-progress": "train.progress",
    "--merge": "method.merge",
    "--strict": "budget.strict",
    "--from-scratch": "model.from_scratch",
}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "LIST"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return _type_name(args[0])
    return {int: "INT", float: "FLOAT", bool: "BOOL", str: "STR"}.get(tp, "VALUE")


def _leaf_fields(cls, prefix: str):
    """``(dotted name, field, type)`` of every option of a section, its sub-sections' included
    (``method.lora.r``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from _leaf_fields(tp, f"{prefix}.{f.name}")
        else:
            yield f"{prefix}.{f.name}", f, tp


def add_config_options(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--section.field`` option per config field, grouped by section, help from metadata."""
    hints = typing.get_type_hints(cls)
    known = set()  # the dotted fields of this command: a shortcut is offered only for those
    for section in dataclasses.fields(cls):
        sec_cls = hints[section.name]
        group = parser.add_argument_group(f"{section.name} options")
        for dotted, f, tp in _leaf_fields(sec_cls, section.name):
            known.add(dotted)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            names = [f"--{dotted}"]
            names += [a for a, target in ALIASES.items() if target == dotted]
            group.add_argument(
                *names,
                dest=dotted,
                default=argparse.SUPPRESS,
                metavar=_type_name(tp),
                help=f"{f.metadata.get('help', '')} (default: {default})",
            )
    flags = parser.add_argument_group("shortcuts")
    for flag, dotted in FLAGS.items():
        if dotted not in known:
            continue
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


def add_flat_options(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--field-name`` option per field of a flat config (``StudyConfig``, ``ContinualConfig``),
    typed and documented from the dataclass; ``flag`` / ``short`` / ``choices`` / ``required`` in a
    field's metadata rename it, add a short spelling, restrict it or make it required; ``flag=None``
    leaves the field to the YAML file or the Python API."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or ("flag" in meta and meta["flag"] is None):
            continue
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        base = inner[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        names = [meta.get("flag") or "--" + f.name.replace("_", "-")] + (
            [meta["short"]] if "short" in meta else []
        )
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS}
        if base is bool:
            kw.update(action="store_const", const=True)
            shown = ""
        elif typing.get_origin(base) is list:
            item = typing.get_args(base)[0]
            kw.update(nargs="+", type=item, metavar=_type_name(item))
            shown = " ".join(map(str, default)) if default else "none"
        elif base is dict or typing.get_origin(base) is dict:
            kw.update(nargs="*", metavar="KEY=VALUE")
            shown = "none"
        else:
            kw.update(type=base, metavar=_type_name(base))
            shown = default
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        if meta.get("required"):
            kw["required"] = True
        text = meta["help"]
        if shown != "" and not meta.get("required") and "default" not in text:
            text += f" (default: {shown})"
        parser.add_argument(*names, help=text, **kw)


def flat_config_from_args(cls, args: argparse.Namespace) -> dict:
    """The fields given on the command line (``KEY=VALUE`` lists parsed into dicts)."""
    given = {}
    for f in dataclasses.fields(cls):
        if f.name not in vars(args):
            continue
        value = getattr(args, f.name)
        if f.type in ("dict", dict):
            value = _study_overrides(value, f.metadata.get("flag") or "--" + f.name.replace("_", "-"))
        given[f.name] = value
    return given


def config_from_args(cls, args: argparse.Namespace, checks=()):
    """The command's config from its flags, ``--config`` and dotted overrides; ``checks``: more
    ``cfg -> problems`` functions (the plug-in registries')."""
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
        validate(cfg, checks)
        return cfg
    return build_config(cls, yaml_path=yaml_path, overrides=overrides, checks=checks)


# --- verbs -------------------------------------------------------------------------------------


def cmd_pretrain(args):
    from lmvalue.config import PretrainConfig
    from lmvalue.pretraining import pretrain

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


def _study_overrides(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise LmvalueError(f"{flag} {item!r}: write it as section.field=VALUE, e.g. {flag} train.lr=1e-3")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def _print_study(summary: dict) -> None:
    print()
    print("verdict: " + summary["verdict"])
    print(f"report: {summary['report_html']} (and {Path(summary['report_md']).name})")


def cmd_value(args):
    from lmvalue.config import StudyConfig
    from lmvalue.value.study import run_study

    given = flat_config_from_args(StudyConfig, args)
    if given.get("pretrain_steps") and "pretrain_minutes" not in given:
        given["pretrain_minutes"] = None  # steps alone decide: the same models on every machine
    _print_study(run_study(StudyConfig(**given)))


def cmd_report(args):
    from lmvalue.value.study import write_study_report

    _print_study(write_study_report(args.study))


def cmd_demo(args):
    from lmvalue.value.study import DEMO_PRETRAIN_STEPS, DEMO_QUICK_STEPS, demo_config, run_study

    t0 = time.perf_counter()
    cfg = demo_config(
        args.output,
        resume=args.resume,
        overwrite=args.overwrite,
        pretrain_steps=DEMO_QUICK_STEPS if args.quick else DEMO_PRETRAIN_STEPS,
    )
    print(
        f"lmvalue demo: are the unlabeled reviews of demo:zh-reviews worth labels? "
        f"arms {', '.join(cfg.arms)}; {cfg.seeds} seeds; budgets {cfg.budgets}; "
        f"{cfg.pretrain_steps:,} steps of pretraining"
    )
    summary = run_study(cfg)
    _print_study(summary)
    print(f"wall time: {(time.perf_counter() - t0) / 60:.1f} minutes")


def cmd_generate(args):
    from lmvalue.generate import generate

    texts = generate(
        args.model,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_samples=args.num_samples,
        seed=args.seed,
    )
    for text in texts:
        print(args.prompt + text)


def cmd_finetune(args):
    from lmvalue.config import FinetuneConfig
    from lmvalue.finetuning import finetune
    from lmvalue.methods import config_problems

    cfg = config_from_args(FinetuneConfig, args, checks=[config_problems])
    m = finetune(cfg)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    metric = m["metric"]
    print(
        f"{m['method']} on {m['examples']['train']} train / {m['examples']['dev']} dev examples: "
        f"{m['trainable_params']:,} trainable of {m['total_params']:,} parameters; "
        f"dev {metric} {_num(m['dev_score'])}, test {metric} {_num(m['test_score'])} "
        f"(accuracy {_num(m['test'].get('accuracy', m['test'].get('token_accuracy')))}, "
        f"{m['examples']['test']} test examples), {m['wall_seconds']:.0f}s"
    )
    for key in ("model_dir", "merged_dir"):
        if m.get(key):
            print(f"{'merged model' if key == 'merged_dir' else 'model'} saved to {m[key]}")
    print(f"metrics: {os.path.join(cfg.train.output_dir, 'metrics.json')}")


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def cmd_evaluate(args):
    import math

    from lmvalue.inference import evaluate_model, loss_note

    result = evaluate_model(
        args.model,
        args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        text_pair_column=args.text_pair_column,
        unknown_labels=args.unknown_labels,
        out_dir=args.output,
        trust_pickle=args.trust_pickle,
        encoding=args.encoding,
        errors=args.errors,
    )
    if result.get("report_text"):
        print(result["report_text"])
    keys = (
        "accuracy",
        "macro_f1",
        "token_accuracy",
        "entity_precision",
        "entity_recall",
        "entity_f1",
        "loss",
        "loss_known",
    )
    shown = [k for k in keys if isinstance(result.get(k), int | float) and math.isfinite(result[k])]
    print(", ".join(f"{k} {result[k]:.4f}" for k in shown) + f" on {result['examples']} examples")
    note = loss_note(result, tagging=result["task"] == "tagging")
    if note:
        print(note)
    if args.output:
        print(f"metrics, report and confusion matrix written to {args.output}")


def cmd_predict(args):
    from lmvalue.inference import load_task_model, predict_rows, prediction_format, read_inputs, write_rows

    prediction_format(args.output)  # a suffix with no format fails before the model is loaded
    if args.output:
        from lmvalue.files import check_output_file

        check_output_file(args.output, flag="--output")
    task = load_task_model(args.model, batch_size=args.batch_size, trust_pickle=args.trust_pickle)
    inputs = read_inputs(
        args.input, task.spec, text_column=args.text_column, encoding=args.encoding, errors=args.errors
    )
    rows = predict_rows(task, inputs)
    write_rows(rows, task.spec, args.output)
    if args.output:
        print(f"{len(rows)} predictions written to {args.output}", file=sys.stderr)


def cmd_continual(args):
    from lmvalue.config import ContinualConfig
    from lmvalue.continual import run_continual

    overrides = flat_config_from_args(ContinualConfig, args)
    cfg = ContinualConfig.load(args.config, overrides)
    # --encoding / --errors decode every stage's files (they win over pretrain.data.* of the YAML)
    for key in ("encoding", "errors"):
        if getattr(args, key) is not None:
            cfg.pretrain = {**cfg.pretrain, f"data.{key}": getattr(args, key)}
    r = run_continual(cfg)
    width = max(len(c) for c in r["corpora"])
    print("held-out LM loss (lower is better):")
    print(" " * 34 + "  ".join(c.rjust(max(8, width)) for c in r["corpora"]))
    for label, row in zip(r["rows"], r["held_out_loss"], strict=True):
        cells = "  ".join(("-" if v is None else f"{v:.4f}").rjust(max(8, width)) for v in row)
        print(f"{label[:32]:32s}  {cells}")
    for corpus, delta in r["forgetting"].items():
        print(f"forgetting on {corpus}: loss {delta:+.4f} since it was learned")
    if r["bwt"] is not None:
        print(
            f"BWT {r['bwt']:+.4f} (negative: forgetting)"
            + (f", FWT {r['fwt']:+.4f}" if r["fwt"] is not None else "")
        )
    print(
        f"metrics: {Path(cfg.output_dir) / 'metrics.json'}; plot: {Path(cfg.output_dir) / 'forgetting.png'}"
    )


def cmd_drift(args):
    from lmvalue.drift import DriftSettings, measure_drift

    settings = DriftSettings(max_docs=args.max_docs, permutations=args.permutations, seed=args.seed)
    r = measure_drift(args.model, args.new, args.reference, args.output, settings, task_model=args.task_model)
    print(r["verdict"])
    print(f"details: {Path(args.output) / 'drift.json'}")


def _key_values(pairs: list[str] | None, flag: str) -> dict:
    out = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE settings (e.g. {flag} train.lr=3e-4), got {item!r}")
        out[key.strip()] = value
    return out


def cmd_refresh(args):
    from lmvalue.refresh import RefreshSettings, run_refresh

    settings = RefreshSettings(
        model=args.model,
        new=args.new,
        output=args.output,
        pretrain_run=args.pretrain_run,
        old_corpus=args.old_corpus,
        data=args.data,
        new_labels=args.new_labels,
        new_test=args.new_test,
        steps=args.steps,
        minutes=args.minutes,
        replay=args.replay,
        tolerance=args.tolerance,
        confidence=args.confidence,
        seed=args.seed,
        registry=args.registry,
        pretrain=_key_values(args.pretrain, "--pretrain"),
        finetune=_key_values(args.finetune, "--finetune"),
        overwrite=args.overwrite,
    )
    r = run_refresh(settings)
    metric = r["metric"]
    for name, key in (("original test split", "original_test"), ("new domain", "new_domain")):
        c = r[key]
        if c:
            print(
                f"{name}: {metric} {c['old']:.2f} -> {c['new']:.2f} ({c['difference']:+.2f}, "
                f"{c['level']:.0%} CI {c['low']:+.2f} to {c['high']:+.2f}; {c['examples']} examples)"
            )
    comp = r["compute"]
    print(
        f"compute: {comp['pretrain_steps']} pretraining steps in {comp['pretrain_seconds']:.0f} s, "
        f"fine-tuning {comp['finetune_seconds']:.0f} s, {comp['total_seconds']:.0f} s in all"
    )
    print(r["verdict"])
    print(f"details: {Path(args.output) / 'refresh.json'}")


def cmd_registry(args):
    from lmvalue import versions

    if args.action == "add":
        if not args.model:
            raise ConfigError("lmvalue registry add needs --model RUN (a fine-tuning run or model folder)")
        name = versions.add_version(
            args.registry, args.model, note=args.note or "", make_current=not args.no_current
        )
        print(f"{args.model} is {name} of {args.registry}" + ("" if args.no_current else " (current)"))
    elif args.action == "rollback":
        before, now = versions.rollback(args.registry, args.to)
        print(f"current: {before} -> {now}")
    elif args.action == "set":
        if not args.to:
            raise ConfigError("lmvalue registry set needs --to vN")
        versions.set_current(args.registry, args.to)
        print(f"current: {args.to}")
    else:
        for v in versions.list_versions(args.registry):
            m = v.get("metrics") or {}
            score = ""
            if m.get("test_score") is not None:
                score = f"{m.get('metric', 'score')} {m['test_score']:.4f}"
            elif m.get("new_domain"):
                score = (
                    f"new domain {m['new_domain']['new']:.2f}, original test {m['original_test']['new']:.2f}"
                )
            mark = "*" if v["current"] else " "
            parents = ",".join(v.get("parents") or []) or "-"
            print(
                f"{mark} {v['version']:5s} {v['created']}  parents {parents:8s} {score}  {v.get('note', '')}"
            )


def cmd_serve(args):
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LmvalueError(
            "lmvalue serve needs FastAPI and uvicorn: pip install 'lmvalue[serve]' (or pip install fastapi uvicorn)"
        ) from None
    from lmvalue.inference import load_task_model
    from lmvalue.serve import ServeSettings, serve

    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_inputs=args.max_inputs,
        max_chars=args.max_chars,
        max_queue=args.max_queue,
        log_inputs=args.log_inputs,
        trust_pickle=args.trust_pickle,
        threads=args.threads,
    )
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    for name in ("max_batch", "max_inputs", "max_chars", "max_queue"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if settings.max_wait_ms < 0:
        raise ConfigError("--max-wait-ms must be >= 0")
    from lmvalue.versions import resolve_model

    model = str(resolve_model(args.model))  # a registry: its current version, now and for /info
    task = load_task_model(model, trust_pickle=args.trust_pickle)  # a bad folder fails before binding
    if args.log_inputs:
        from lmvalue.files import check_output_file

        check_output_file(args.log_inputs, flag="--log-inputs")
    serve(model, host=args.host, port=args.port, settings=settings, access_log=args.access_log, task=task)


def cmd_prompt(args):
    from lmvalue.prompting import PromptSpec, evaluate_zero_shot, parse_verbalizer

    if args.prompt:
        spec = PromptSpec.load(args.prompt)
    else:
        if not args.template or not args.verbalizer:
            raise ConfigError(
                "give --template and --verbalizer (e.g. --template '{text}总之很{mask}。' "
                "--verbalizer 'pos=好,neg=差'), or --prompt FILE.yaml"
            )
        spec = PromptSpec.from_dict(
            {"templates": args.template, "verbalizer": parse_verbalizer(args.verbalizer)}
        )
    result = evaluate_zero_shot(
        args.model,
        args.data,
        spec,
        test=args.test,
        test_size=args.test_size,
        text_column=args.text_column,
        label_column=args.label_column,
        max_length=args.max_length,
        out_dir=args.output,
        calibrate=not args.no_calibrate,
        encoding=args.encoding,
        errors=args.errors,
    )
    print(result["report_text"])
    print(
        f"zero-shot cloze: accuracy {result['accuracy']:.4f}, macro_f1 {result['macro_f1']:.4f} on "
        f"{result['examples']} test examples ({len(spec.templates)} template(s), {result['seconds']:.0f}s)"
    )
    if args.output:
        print(f"metrics and predictions written to {args.output}")


def add_encoding_options(p: argparse.ArgumentParser, *, default: str | None = "utf-8") -> None:
    """--encoding and --errors; ``default=None`` leaves both unset unless given (a YAML decides)."""
    p.add_argument(
        "--encoding", default=default, help="encoding of the input files, e.g. gb18030 (default utf-8)"
    )
    p.add_argument(
        "--errors",
        default="strict" if default else None,
        choices=("strict", "replace", "ignore"),
        help="undecodable bytes: stop with an error (default), replace with U+FFFD, or drop them",
    )


def add_trust_pickle_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also load a pickled scikit-learn model (tfidf.joblib, lmvalue <= 0.3): it can run any code it "
        "contains, so only for folders you trust",
    )


def _add_pretrain_command(sub) -> None:
    from lmvalue.config import PretrainConfig

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining on unlabeled text",
        description="Self-supervised pretraining (masked LM, ...) on unlabeled text.",
    )
    add_config_options(p, PretrainConfig)
    p.set_defaults(func=cmd_pretrain)


def _add_tokenizer_command(sub) -> None:
    from lmvalue.config import TOKENIZER_KINDS

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


def _add_demo_command(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole value study on built-in data (demo:zh-reviews), in about 15 minutes on 2 CPU cores",
        description="Are the unlabeled demo reviews worth labels? scratch vs pretrained:mlm (4,000 steps of "
        "masked LM) vs word vectors, against the label-only baselines tfidf and nbsvm, over 4 label budgets "
        "and 3 seeds; prints the verdict (its first line names what paid) and the report's path.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="1,000 steps of pretraining instead of 4,000 (about 5 minutes less; so short a pretraining "
        "does not pay on this data)",
    )
    p.add_argument("--output", "-o", default="runs/demo", help="study folder (default runs/demo)")
    p.add_argument(
        "--resume", action="store_true", help="finish an interrupted demo (finished cells are kept)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo")
    p.set_defaults(func=cmd_demo)


def _add_value_command(sub) -> None:
    from lmvalue.config import StudyConfig

    p = sub.add_parser(
        "value",
        help="learning curves: how many labels is pretraining on your text worth?",
        description="Run a value study: arms (scratch, pretrained:<objectives>, checkpoint:<path>, "
        "continued:<path>, tfidf; add /METHOD for lora etc.) x label budgets x seeds, a SQLite registry "
        "of every cell, statistics and an HTML/Markdown report.",
    )
    add_flat_options(p, StudyConfig)
    p.set_defaults(func=cmd_value)


def _add_report_command(sub) -> None:
    p = sub.add_parser(
        "report",
        help="(re)write a study's HTML/Markdown report",
        description="Write "
        "report.html and report.md of a study folder from its registry (also while it runs).",
    )
    p.add_argument("study", help="study folder")
    p.set_defaults(func=cmd_report)


def _add_generate_command(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="sample continuations from a causal LM (pretrained with objective clm)",
        description="Sample continuations of a prompt from a causal LM run or model folder.",
    )
    p.add_argument("--model", "-m", required=True, help="run folder (its model/), checkpoint or model folder")
    p.add_argument("--prompt", "-p", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default 50)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature; 0: greedy (default 1)"
    )
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens (default 50)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability mass (default 1.0)")
    p.add_argument("--num-samples", "-n", type=int, default=1, help="continuations to sample (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_generate)


def _add_finetune_command(sub) -> None:
    from lmvalue.config import FinetuneConfig

    p = sub.add_parser(
        "finetune",
        help="fine-tune on a label budget and score the test split",
        description="Fine-tune a pretrained (or from-scratch) model, or fit the TF-IDF baseline, on a "
        "seeded label budget; select on a dev split carved from it; score the test split once.",
    )
    add_config_options(p, FinetuneConfig)
    p.set_defaults(func=cmd_finetune)


def _add_evaluate_command(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a fine-tuned model on a labeled file",
        description="Score any fine-tuned model folder (or task checkpoint) on labeled data.",
    )
    p.add_argument(
        "--model", "-m", required=True, help="model folder (a fine-tuning run's model/ or merged/)"
    )
    p.add_argument("--data", required=True, help="labeled data: csv/tsv/jsonl/parquet, CoNLL, hf: or demo:")
    p.add_argument("--text-column", default="text", help="text (tagging: tokens) column (default text)")
    p.add_argument("--label-column", default="label", help="label (tagging: tags) column (default label)")
    p.add_argument("--text-pair-column", default=None, help="second text column of pair tasks")
    p.add_argument(
        "--unknown-labels",
        default="error",
        choices=("error", "keep"),
        help="labels the model does not know: stop (default) or score them as errors",
    )
    p.add_argument("--output", "-o", default=None, help="folder for metrics.json, report and confusion PNG")
    add_trust_pickle_option(p)
    add_encoding_options(p)
    p.set_defaults(func=cmd_evaluate)


def _add_predict_command(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="label texts with a fine-tuned model",
        description="Batched prediction; writes JSON Lines (default), CSV or TSV, one row per input line, in order.",
    )
    p.add_argument(
        "--model", "-m", required=True, help="model folder (a fine-tuning run's model/ or merged/)"
    )
    p.add_argument(
        "--input", "-i", required=True, help="a .txt (one input per line), .jsonl, .csv file, or - for stdin"
    )
    p.add_argument(
        "--output",
        "-o",
        default=None,
        help="out.jsonl / out.json (JSON Lines), out.csv or out.tsv: the suffix picks the format "
        "(default: JSON Lines on stdout)",
    )
    p.add_argument(
        "--text-column", default="text", help="text column/field of .csv/.jsonl inputs (default text)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="inputs per batch (default 64)")
    add_trust_pickle_option(p)
    add_encoding_options(p)
    p.set_defaults(func=cmd_predict)


def _add_continual_command(sub) -> None:
    from lmvalue.config import ContinualConfig

    p = sub.add_parser(
        "continual",
        help="continued pretraining on new text, stage by stage, measuring forgetting",
        description="Pretrain a model on a sequence of corpora (each stage starts from the previous one), "
        "optionally with replay of earlier text or L2-SP/EWC regularization, and measure the held-out "
        "loss on every corpus before and after each stage (BWT/FWT). See docs/continual.md.",
    )
    p.add_argument(
        "--config", "-c", required=True, help="YAML: stages, previous, replay, regularizer, pretrain"
    )
    add_flat_options(p, ContinualConfig)
    add_encoding_options(p, default=None)
    p.set_defaults(func=cmd_continual)


def _add_drift_command(sub) -> None:
    p = sub.add_parser(
        "drift",
        help="how far new unlabeled text is from what a model was pretrained on",
        description="Compare new text with the reference text (by default the corpus an lmvalue pretraining "
        "run was trained on): the model's LM loss on each (bootstrap 95%% CI of the difference), unknown-token "
        "and unseen-word rates, and a classifier two-sample test in the encoder's representation space "
        "(cross-validated AUC, permutation p-value). Prints a verdict and writes drift.json. See docs/continual.md.",
    )
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="pretrained LM: an lmvalue pretraining run, a model folder or hub name",
    )
    p.add_argument("--new", required=True, help="the new unlabeled text (a file, folder or any text source)")
    p.add_argument(
        "--reference",
        default=None,
        help="the text the model knows (default: the run's data.source from its config.yaml)",
    )
    p.add_argument(
        "--task-model",
        default=None,
        help="a fine-tuned classifier: also compare its predicted-label distribution on the reference with the "
        "new text's (the logged predictions when --new is a `lmvalue serve --log-inputs` file)",
    )
    p.add_argument(
        "--max-docs", type=int, default=500, help="documents sampled from each side (default: 500)"
    )
    p.add_argument(
        "--permutations", type=int, default=100, help="shuffles for the two-sample p-value (default: 100)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", default="runs/drift", help="folder for drift.json (default: runs/drift)")
    p.set_defaults(func=cmd_drift)


def _add_prompt_command(sub) -> None:
    p = sub.add_parser(
        "prompt",
        help="zero-shot cloze prompting of a masked LM",
        description="Ask a masked LM the task as a fill-in-the-blank question (no labeled training data) "
        "and score it on the test split lmvalue finetune uses. See docs/prompting.md.",
    )
    p.add_argument(
        "--model", "-m", required=True, help="masked-LM checkpoint: lmvalue run, HF folder or hub name"
    )
    p.add_argument(
        "--data", default="demo:zh-reviews", help="labeled data (the test split is carved from it)"
    )
    p.add_argument("--test", default=None, help="a labeled test file instead of a carved split")
    p.add_argument("--test-size", type=float, default=2000, help="carved test examples (default 2000)")
    p.add_argument(
        "--template", action="append", help="template with {text} and one {mask} slot; repeat to ensemble"
    )
    p.add_argument("--verbalizer", help="label words: 'pos=好|棒,neg=差' (several words: |)")
    p.add_argument("--prompt", help="YAML with templates: [...] and verbalizer: {label: [words]}")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-length", type=int, default=256, help="longest prompt in tokens (inputs are cut)")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="do not subtract the label words' scores on an empty input (contextual calibration)",
    )
    p.add_argument("--output", "-o", default=None, help="folder for metrics.json and predictions.jsonl")
    add_encoding_options(p)
    p.set_defaults(func=cmd_prompt)


def _add_refresh_command(sub) -> None:
    p = sub.add_parser(
        "refresh",
        help="continue pretraining on new text, re-fine-tune, promote only if it pays",
        description="Refresh a deployed fine-tuned model: continue pretraining its encoder on new text "
        "(with replay of its old corpus), re-fine-tune with the run's own recipe (plus --new-labels), "
        "compare old and refreshed model with paired bootstrap CIs, and promote only if the refreshed one "
        "is better on the new domain and not worse beyond --tolerance on the original test split. "
        "See docs/refresh.md.",
    )
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="the deployed fine-tuning run folder, or a registry (its current version)",
    )
    p.add_argument("--new", required=True, help="new unlabeled text (any --data source of lmvalue pretrain)")
    p.add_argument(
        "--new-test", default=None, help="labeled new-domain sample to compare on (needed to promote)"
    )
    p.add_argument("--new-labels", default=None, help="new labeled examples added to the training split")
    p.add_argument(
        "--pretrain-run", default=None, help="the encoder to continue (default: the run's model.init_from)"
    )
    p.add_argument(
        "--old-corpus", default=None, help="corpus to replay (default: the pretraining run's data.source)"
    )
    p.add_argument(
        "--data", default=None, help="the run's labeled data, if it moved (default: its data.source)"
    )
    p.add_argument("--steps", type=int, default=300, help="continued pretraining steps (default 300)")
    p.add_argument("--minutes", type=float, default=None, help="and/or a time budget in minutes")
    p.add_argument(
        "--replay", type=float, default=0.2, help="share of every batch from the old corpus (default 0.2)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        help="points the original test score may lose (lower CI end), default 1.0",
    )
    p.add_argument(
        "--confidence", type=float, default=0.95, help="level of the paired bootstrap CIs (default 0.95)"
    )
    p.add_argument(
        "--registry", default=None, help="model registry folder: a promoted model becomes its next version"
    )
    p.add_argument("--pretrain", nargs="+", metavar="KEY=VALUE", help="settings of the continued pretraining")
    p.add_argument("--finetune", nargs="+", metavar="KEY=VALUE", help="settings of the re-fine-tuning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace what -o holds")
    p.add_argument(
        "--output", "-o", default="runs/refresh", help="folder for the refresh (default runs/refresh)"
    )
    p.set_defaults(func=cmd_refresh)


def _add_registry_command(sub) -> None:
    p = sub.add_parser(
        "registry",
        help="model versions: list, add, roll back",
        description="A registry folder holds versions v1/, v2/, ... of a fine-tuned model, a current pointer "
        "that lmvalue serve --model REGISTRY serves, and each version's lineage. Every change is atomic. "
        "See docs/refresh.md.",
    )
    p.add_argument("action", choices=("list", "add", "rollback", "set"), help="what to do")
    p.add_argument("registry", help="the registry folder")
    p.add_argument("--model", "-m", default=None, help="add: the fine-tuning run (or model folder) to add")
    p.add_argument(
        "--to", default=None, help="rollback/set: the version to make current (rollback: default its parent)"
    )
    p.add_argument("--note", default=None, help="add: a note kept with the version")
    p.add_argument("--no-current", action="store_true", help="add: keep the current version as it is")
    p.set_defaults(func=cmd_registry)


def _add_serve_command(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a fine-tuned model over HTTP (FastAPI): POST /predict, a web page at /",
        description="Serve a fine-tuned model folder over HTTP: POST /predict (Hugging Face inference shape), "
        "GET /health, /info, /metrics (Prometheus), / (a page to try it), /docs. Concurrent requests are "
        "batched. See docs/serving.md.",
    )
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="model folder (a fine-tuning run, its model/ or merged/), or a model registry (its current version)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=32, help="inputs per model call (default 32)")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="wait this long to fill a batch (default 5)"
    )
    p.add_argument("--max-inputs", type=int, default=256, help="inputs per request; more: 413 (default 256)")
    p.add_argument(
        "--max-chars", type=int, default=10_000, help="characters per input; more: 413 (default 10000)"
    )
    p.add_argument("--max-queue", type=int, default=4096, help="inputs waiting; more: 429 (default 4096)")
    p.add_argument(
        "--log-inputs", default=None, help="append every input and its prediction to this JSON Lines file"
    )
    p.add_argument("--access-log", action="store_true", help="log one line per request (default off)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for inference (default: every core this process may use)",
    )
    add_trust_pickle_option(p)
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from lmvalue import __version__

    parser = argparse.ArgumentParser(
        prog="lmvalue",
        description="Pretrain language models on your unlabeled text and measure what it was worth.",
    )
    parser.add_argument("--version", action="version", version=f"lmvalue {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_pretrain_command(sub)
    _add_tokenizer_command(sub)
    _add_demo_command(sub)
    _add_value_command(sub)
    _add_report_command(sub)
    _add_generate_command(sub)
    _add_finetune_command(sub)
    _add_evaluate_command(sub)
    _add_predict_command(sub)
    _add_continual_command(sub)
    _add_drift_command(sub)
    _add_refresh_command(sub)
    _add_registry_command(sub)
    _add_prompt_command(sub)
    _add_serve_command(sub)
    return parser


def _is_override(item: str) -> bool:
    key, eq, _ = item.partition("=")
    return bool(eq) and "." in key and not key.startswith("-")


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


def option_spellings(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Dotted setting -> this command's flag for it, so error hints name flags the command has.

    Config commands spell ``data.encoding`` as ``--data.encoding``; hand-written ones (``predict``,
    ``value``...) as ``--encoding``: a bare dest also answers for ``data.<dest>``, ``task.<dest>``...
    """
    out: dict[str, str] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in ("help", argparse.SUPPRESS):
            continue
        flag = f"--{action.dest}" if f"--{action.dest}" in longs else longs[0]
        out.setdefault(action.dest, flag)
        if action.dest == "model":  # --model is the checkpoint a config command takes with --init-from
            out.setdefault("model.init_from", flag)
        if "." not in action.dest:
            for section in ("data", "task", "train", "method", "model", "budget", "tokenizer"):
                out.setdefault(f"{section}.{action.dest}", flag)
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Bare overrides (section.field=VALUE) may come after options too: argparse stops collecting the
    # positional list at the first option, so the later ones arrive here.
    stray = [x for x in extra if not (hasattr(args, "overrides") and _is_override(x))]
    if stray:
        parser.parse_args(argv)  # the usual usage message and exit 2 for what is really unknown
    if extra:
        args.overrides = list(args.overrides) + extra
    from lmvalue.errors import set_option_spellings

    if args.command:
        set_option_spellings(option_spellings(_subparser(parser, args.command)))
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
    except OSError as e:
        # The last line of defence for the environment's refusals (a full disk, a read-only folder,
        # a path that is a file): the places that open user paths explain their own errors first.
        print(f"lmvalue {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130
    finally:
        set_option_spellings(None)
    return 0


def describe_os_error(e: OSError) -> str:
    import errno

    where = f" {e.filename}" if e.filename else ""
    what = e.strerror or str(e)
    fix = {
        errno.ENOSPC: "free some disk space (or write to another disk) and run the command again",
        errno.EDQUOT: "free some disk space (or write to another disk) and run the command again",
        errno.EACCES: "check the permissions of that path, or choose another one",
        errno.EPERM: "check the permissions of that path, or choose another one",
        errno.EROFS: "the file system is read-only: choose another path",
        errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
        errno.EISDIR: "that path is a folder: give a file path",
        errno.ENOENT: "check the path",
    }.get(e.errno or -1, "check the path and the disk, then run the command again")
    return f"cannot use{where}: {what}; {fix}"


if __name__ == "__main__":
    sys.exit(main())
