"""`lmvalue refresh`: bring a deployed fine-tuned model up to date with new text, and promote the
result only when it is measurably better.

1. **Continue pretraining** the model's pretrained encoder on the new unlabeled text, with replay of
   the corpus it was pretrained on (``lmvalue continual``: its held-out loss on both corpora before
   and after is measured).
2. **Re-fine-tune** with the deployed run's own recipe (its ``config.yaml``: method, budget, seed,
   learning rate) and labels, plus the new labels if given (added to the training split; the dev
   split stays the original one).
3. **Compare** the deployed and the refreshed model on the original test split and on the labeled
   new-domain sample, with paired bootstrap intervals of the difference.
4. **Promote only if** the refreshed model is better on the new domain (the lower end of the
   interval above 0) and not worse on the old one beyond ``tolerance`` points (the lower end above
   ``-tolerance``). Otherwise the deployed model stays and the reasons are printed. With a registry,
   a promoted model becomes its next version and ``current``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmvalue.checkpoint import read_json, write_json_atomic
from lmvalue.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger("lmvalue")

# pretraining settings of the original run that the continued pretraining keeps
KEPT_PRETRAIN = (
    "objective",
    "data.block_size",
    "data.eval_fraction",
    "data.eval_max_blocks",
    "data.text_column",
    "data.paragraphs",
    "train.batch_size",
    "train.lr",
    "train.weight_decay",
    "train.warmup",
    "train.scheduler",
    "train.precision",
    "train.grad_clip",
)


@dataclass
class RefreshSettings:
    model: str  # the deployed fine-tuning run (or a registry: its current version)
    new: str  # new unlabeled text
    output: str
    pretrain_run: str | None = None  # default: the run's model.init_from
    old_corpus: str | None = None  # default: the pretraining run's data.source
    data: str | None = None  # the original labeled data, if it moved
    new_labels: str | None = None
    new_test: str | None = None
    steps: int | None = 300
    minutes: float | None = None
    replay: float = 0.2
    tolerance: float = 1.0  # points of the task metric (x100)
    confidence: float = 0.95
    seed: int = 0
    registry: str | None = None
    pretrain: dict = field(default_factory=dict)  # dotted overrides for the continued pretraining
    finetune: dict = field(default_factory=dict)  # dotted overrides for the re-fine-tuning
    overwrite: bool = False


# --- statistics ----------------------------------------------------------------------------------


def metric_values(metric: str, labels: list[str], truth: list[str], predicted: list[str]):
    """``f(indices) -> score`` of the task metric over a resample of the examples (accuracy or
    macro-F1 over ``labels``), vectorised for a paired bootstrap."""
    index = {label: i for i, label in enumerate(labels)}
    t = np.array([index.get(x, -1) for x in truth])
    p = np.array([index.get(x, -2) for x in predicted])
    k = len(labels)

    if metric == "accuracy":
        correct = (t == p).astype(float)
        return lambda idx: float(correct[idx].mean())
    if metric == "macro_f1":

        def f1(idx):
            ti, pi = t[idx], p[idx]
            tp = np.bincount(ti[ti == pi], minlength=k)[:k] if np.any(ti == pi) else np.zeros(k)
            true_n = np.bincount(ti[ti >= 0], minlength=k)[:k]
            pred_n = np.bincount(pi[pi >= 0], minlength=k)[:k]
            denom = true_n + pred_n
            return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))

        return f1
    raise ConfigError(f"refresh compares classification models by accuracy or macro_f1, not {metric!r}")


def paired_bootstrap(
    old: callable, new: callable, n: int, *, level: float, seed: int, n_boot: int = 2000
) -> dict:
    """new - old on the same examples, in points, with a two-sided percentile interval at ``level``."""
    rng = np.random.default_rng(seed)
    full = np.arange(n)
    diff = new(full) - old(full)
    draws = rng.integers(0, n, size=(n_boot, n))
    diffs = np.array([new(i) - old(i) for i in draws])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return {
        "old": round(100 * old(full), 2),
        "new": round(100 * new(full), 2),
        "difference": round(100 * diff, 2),
        "low": round(100 * float(lo), 2),
        "high": round(100 * float(hi), 2),
        "level": level,
        "examples": n,
    }


def decide(old_domain: dict | None, new_domain: dict | None, tolerance: float) -> tuple[bool, list[str]]:
    """The promotion rule: better on the new domain (interval above 0) and not worse on the old one
    beyond ``tolerance`` points (interval's lower end above ``-tolerance``). Returns (promote, reasons)."""
    reasons = []
    ok = True
    if new_domain is None:
        ok = False
        reasons.append(
            "no labeled new-domain sample (--new-test): nothing shows the refresh pays where the text "
            "changed; label a few hundred new texts and pass them with --new-test"
        )
    elif new_domain["low"] > 0:
        reasons.append(
            f"new domain: {new_domain['difference']:+.2f} points ({new_domain['low']:+.2f} to "
            f"{new_domain['high']:+.2f}): better"
        )
    else:
        ok = False
        reasons.append(
            f"new domain: {new_domain['difference']:+.2f} points ({new_domain['low']:+.2f} to "
            f"{new_domain['high']:+.2f}): not better beyond the noise"
        )
    if old_domain is not None:
        if old_domain["low"] > -tolerance:
            reasons.append(
                f"original test split: {old_domain['difference']:+.2f} points ({old_domain['low']:+.2f} to "
                f"{old_domain['high']:+.2f}): not worse beyond the tolerance of {tolerance:g} points"
            )
        else:
            ok = False
            reasons.append(
                f"original test split: {old_domain['difference']:+.2f} points ({old_domain['low']:+.2f} to "
                f"{old_domain['high']:+.2f}): may be worse by more than the tolerance of {tolerance:g}"
            )
    return ok, reasons


# --- the refresh ---------------------------------------------------------------------------------


def _run_folder(model: str) -> tuple[Path, str | None]:
    """The deployed run folder and, when ``model`` is a registry, its current version."""
    from lmvalue.versions import current_version, is_registry, resolve_model

    folder = resolve_model(model)
    version = current_version(model) if is_registry(model) else None
    if not (folder / "config.yaml").is_file():
        raise CheckpointError(
            f"{folder} has no config.yaml: refresh needs the fine-tuning run folder (the -o of lmvalue "
            "finetune), whose recipe it repeats"
        )
    if not (folder / "model").is_dir():
        raise CheckpointError(f"{folder} holds no model/ folder: it is not a finished fine-tuning run")
    import yaml

    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CheckpointError(f"{folder / 'config.yaml'} cannot be read: {e}") from None
    if isinstance(saved, dict) and "objective" in saved:
        raise ConfigError(
            f"{folder} is a pretraining run; --model takes the deployed fine-tuning run (the -o of lmvalue "
            "finetune), and its encoder is found from it (or give it with --pretrain-run)"
        )
    return folder, version


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _pretrain_settings(start: str, s: RefreshSettings) -> dict:
    """The continued pretraining's settings: the original pretraining run's objective, sequence,
    batch and optimizer (when its config.yaml is found), the refresh's seed and budget, overrides."""
    import yaml

    kept: dict = {}
    for folder in (Path(start), Path(start).parent):
        cfg = folder / "config.yaml"
        if cfg.is_file():
            flat = _flat(yaml.safe_load(cfg.read_text(encoding="utf-8")) or {})
            kept = {
                k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in KEPT_PRETRAIN)
            }
            break
    return {
        **kept,
        "model.init_from": start,
        "train.seed": s.seed,
        "train.max_steps": s.steps if s.steps is not None else 10**9,
        "train.max_minutes": s.minutes,
        **s.pretrain,
    }


def _read_labeled(source: str, cfg, spec, what: str, flag: str) -> list[dict]:
    from lmvalue.data.sources import load_labeled
    from lmvalue.inference import check_labels

    examples = load_labeled(
        source,
        task="classification",
        text_column=cfg.data.text_column,
        label_column=cfg.data.label_column,
        text_pair_column=cfg.data.text_pair_column if spec.kind == "pair" else None,
        encoding=cfg.data.encoding,
        errors=cfg.data.errors,
    )
    if not examples:
        raise DataError(f"{what} {source} ({flag}) holds no examples")
    check_labels(
        spec, examples, where=f"{what} {source} ({flag})", unknown="error", owner="the deployed model"
    )
    return examples


def run_refresh(s: RefreshSettings) -> dict:
    """Continue pretraining, re-fine-tune, compare and decide; write ``refresh.json`` in the output
    folder; with a registry, add the refreshed model as a version and make it current if promoted."""
    from lmvalue.config import ContinualConfig, PretrainConfig, Stage, build_config
    from lmvalue.continual import run_continual
    from lmvalue.data.budget import input_key
    from lmvalue.data.sources import iter_texts
    from lmvalue.drift import reference_source
    from lmvalue.files import prepare_output_dir
    from lmvalue.finetuning import finetune, finetune_config, load_task_data
    from lmvalue.inference import load_task_model
    from lmvalue.methods import get_method
    from lmvalue.versions import add_version, current_version, fingerprint, init_registry, is_registry

    t0 = time.perf_counter()
    # -- everything that can be refused is refused before anything runs or is written -----------
    if not 0 < s.confidence < 1:
        raise ConfigError(f"--confidence {s.confidence} must be in (0, 1), e.g. 0.95")
    if s.tolerance < 0:
        raise ConfigError(f"--tolerance {s.tolerance} must be >= 0 (points the old test split may lose)")
    if not 0 <= s.replay < 1:
        raise ConfigError(f"--replay {s.replay} must be a share in [0, 1)")
    if s.steps is None and s.minutes is None:
        raise ConfigError("give the continued pretraining a budget: --steps N and/or --minutes M")
    folder, version = _run_folder(s.model)
    cfg = finetune_config(folder / "config.yaml", overrides={"data.source": s.data} if s.data else None)
    method = get_method(cfg.method.name)
    start = s.pretrain_run or cfg.model.init_from
    if not method.uses_model or cfg.model.from_scratch or not start:
        raise ConfigError(
            f"{folder} was not fine-tuned from a pretrained model (method {cfg.method.name}, "
            f"init_from {cfg.model.init_from}): there is no language model to refresh"
        )
    old_corpus = s.old_corpus or reference_source(start)
    if old_corpus is None and s.replay > 0:
        log.warning(
            "the corpus %s was pretrained on is unknown, so it cannot be replayed; give --old-corpus", start
        )
    for source, flag in ((s.new, "--new"), (old_corpus, "--old-corpus")):
        if source and not any(t.strip() for t in iter_texts(source, max_docs=20)):
            raise DataError(f"{source} ({flag}) holds no text")
    data = load_task_data(cfg)  # the original splits: the same seed draws the same budget and test
    if data.spec.level == "token":
        raise ConfigError("refresh compares classification models; token tagging is not supported yet")
    new_train = (
        _read_labeled(s.new_labels, cfg, data.spec, "new labels", "--new-labels") if s.new_labels else []
    )
    new_test = _read_labeled(s.new_test, cfg, data.spec, "new test", "--new-test") if s.new_test else None
    if new_test is not None and new_train:
        test_keys = {input_key(ex) for ex in new_test}
        overlap = sum(input_key(ex) in test_keys for ex in new_train)
        if overlap:
            raise DataError(
                f"{overlap} of the {len(new_train)} examples of --new-labels are also in --new-test: the "
                "comparison would score examples the refreshed model was trained on; make the files disjoint"
            )
    # the re-fine-tuning's settings are checked now (its encoder is filled in after pretraining)
    over = {**_flat(dataclasses.asdict(cfg)), **s.finetune}
    over.update(
        {
            "model.init_from": start,
            "model.tokenizer": None,
            "train.output_dir": str(Path(s.output) / "finetune"),
            "train.resume": False,
            "train.overwrite": True,
        }
    )
    cfg2 = finetune_config(overrides=over)
    if s.registry and not is_registry(s.registry):
        init_registry(s.registry)  # refuses a non-empty folder that is not a registry
    ccfg = ContinualConfig(
        output_dir=str(Path(s.output) / "pretrain"),
        stages=[Stage(source=s.new, name="new", max_steps=s.steps, max_minutes=s.minutes)],
        previous=[old_corpus] if old_corpus else [],
        replay=s.replay if old_corpus else 0.0,
        pretrain=_pretrain_settings(start, s),
    )
    build_config(PretrainConfig, overrides=_flat(ccfg.pretrain))  # bad --pretrain settings fail here
    out = prepare_output_dir(s.output, create=False)
    if out.exists() and any(out.iterdir()):
        if not s.overwrite:
            raise ConfigError(f"{out} is not empty; choose another -o or pass --overwrite")
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    # -- 1. continued pretraining with replay -----------------------------------------------------
    log.info("refresh 1/3: continued pretraining of %s on %s", start, s.new)
    continual = run_continual(ccfg)
    new_lm = continual["stages"][-1]["model_dir"]

    # -- 2. re-fine-tuning with the same recipe ---------------------------------------------------
    log.info("refresh 2/3: fine-tuning the refreshed encoder with %s's recipe", folder)
    cfg2.model.init_from = new_lm
    ft = finetune(cfg2, extra_train=new_train or None)

    # -- 3. compare on the same examples ----------------------------------------------------------
    log.info("refresh 3/3: comparing the deployed and the refreshed model")
    old_model = load_task_model(folder)
    new_model = load_task_model(out / "finetune")
    spec = old_model.spec
    labels = list(spec.labels)

    def compare(examples: list[dict], seed: int) -> dict:
        truth = [ex["label"] for ex in examples]
        preds = [[labels[int(np.argmax(p))] for p in m.outputs(examples)] for m in (old_model, new_model)]
        f_old, f_new = (metric_values(spec.metric, labels, truth, p) for p in preds)
        return paired_bootstrap(f_old, f_new, len(examples), level=s.confidence, seed=seed)

    old_domain = compare(data.test, s.seed)
    new_domain = compare(new_test, s.seed + 1) if new_test else None
    promote, reasons = decide(old_domain, new_domain, s.tolerance)

    # -- the decision -----------------------------------------------------------------------------
    lineage = {
        "refreshed_from": str(folder),
        "pretrained_from": start,
        "new_text": fingerprint(s.new),
        "old_corpus": fingerprint(old_corpus) if old_corpus else None,
        "labels": fingerprint(cfg.data.source),
        "new_labels": fingerprint(s.new_labels) if s.new_labels else None,
        "new_test": fingerprint(s.new_test) if s.new_test else None,
    }
    registered = None
    if s.registry:
        reg = s.registry
        parent = version if version is not None and Path(s.model).resolve() == Path(reg).resolve() else None
        if parent is None:
            parent = current_version(reg)
        if parent is None:  # an empty registry: the deployed model becomes v1 first
            parent = add_version(reg, folder, parents=[], note="the deployed model, registered by refresh")
        if promote:
            registered = add_version(
                reg,
                out / "finetune",
                parents=[parent],
                lineage=lineage,
                metrics={"metric": spec.metric, "original_test": old_domain, "new_domain": new_domain},
                note="refreshed and promoted by lmvalue refresh",
            )
    compute = {
        "pretrain_seconds": round(sum(st.get("train_seconds") or 0 for st in continual["stages"]), 1),
        "pretrain_steps": sum(st.get("steps") or 0 for st in continual["stages"]),
        "finetune_seconds": ft.get("wall_seconds"),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    result = {
        "promoted": promote,
        "reasons": reasons,
        "verdict": _verdict(promote, reasons, registered, s.registry, out),
        "metric": spec.metric,
        "original_test": old_domain,
        "new_domain": new_domain,
        "tolerance": s.tolerance,
        "confidence": s.confidence,
        "held_out_lm_loss": {
            "corpora": continual["corpora"],
            "rows": continual["rows"],
            "loss": continual["held_out_loss"],
        },
        "refreshed_model": str(out / "finetune" / "model"),
        "registry": s.registry,
        "version": registered,
        "lineage": lineage,
        "compute": compute,
        "settings": {k: v for k, v in dataclasses.asdict(s).items()},
    }
    write_json_atomic(out / "refresh.json", result)
    return result


def _verdict(promote: bool, reasons: list[str], version: str | None, registry: str | None, out: Path) -> str:
    if promote:
        head = "PROMOTE: the refreshed model is better on the new domain and keeps the original test score"
        if version:
            head += f"; it is now {version}, the current version of {registry}"
        else:
            head += f"; it is in {out / 'finetune'} (pass --registry to version and switch to it)"
    else:
        head = "KEEP the deployed model: the refresh did not pay"
    return head + "\n" + "\n".join(f"  - {r}" for r in reasons)


def load_result(output: str | Path) -> dict:
    return read_json(Path(output) / "refresh.json")
