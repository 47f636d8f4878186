"""`lmvalue finetune`: a task model from a starting point, a label budget and a method.

The recipe, top to bottom:

1. **data** (:func:`load_task_data`): labeled examples, repeated inputs dropped, a fixed test split
   (a file, or carved out with its own seed), the label set from the rest, a seeded stratified
   budget and a dev split carved out of it; every bad input is reported before anything is written;
2. **model** (:func:`build_task_model`): a ``*ForSequenceClassification`` /
   ``*ForTokenClassification`` model from a pretrained lmvalue run, a Hugging Face checkpoint,
   or a random init of the same architecture (the no-pretraining baseline);
3. **method** (:mod:`lmvalue.methods`): what is trained — everything, or adapters and the head;
4. **training**: the one training loop (:func:`lmvalue.loop.train_loop`), model selection on the dev
   split, then the test split scored once;
5. **output**: ``model/`` (and ``merged/`` with ``--merge``), ``metrics.json``, ``run.json``,
   ``config.yaml``, the test report and confusion matrix.

``finetune(cfg, train_examples=..., test_examples=...)`` takes examples already in memory, so a
value study can run hundreds of cells without reading the files again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmvalue.checkpoint import (
    RunDir,
    finish_run,
    mark_failed,
    run_info,
    weights_checkpoint,
    write_json_atomic,
)
from lmvalue.config import FinetuneConfig, FinetuneModelConfig, build_config, save_yaml, validate
from lmvalue.data.budget import carve_test, dedupe, draw_budget, input_key, label_counts, split_dev
from lmvalue.data.sources import load_labeled
from lmvalue.errors import CheckpointError, ConfigError, DataError
from lmvalue.inference import TaskModel, check_labels, head_labels, score
from lmvalue.loop import make_accelerator, resolve_precision, train_loop
from lmvalue.methods import Method, MethodContext, config_problems, get_method
from lmvalue.methods.state import HEAD_MODULES_KEY
from lmvalue.models import check_vocab, count_parameters, forward_parameters, preset_config
from lmvalue.prompting.scorer import check_masked_lm_start, resolve_prompt
from lmvalue.prompting.training import fit_prompt
from lmvalue.tasks import TaskSpec, build_spec, infer_kind, list_some
from lmvalue.tasks.encode import LabeledBatches, collate, encode, model_inputs, soft_cross_entropy
from lmvalue.tasks.metrics import summary
from lmvalue.tasks.pooling import reinit_top_layers, set_pooling
from lmvalue.transfer import run_steps, save_task_folder
from lmvalue.weights import from_pretrained, resolve_checkpoint

log = logging.getLogger("lmvalue")

FLOPS_FORMULA = (
    "(4·N + 2·N_trainable) × train_tokens: forward 2N, gradients of the activations 2N, gradients of the "
    "trained weights 2·N_trainable (= 6·N·tokens for full fine-tuning); N counts weights outside embeddings; "
    "attention-score FLOPs and evaluation are not included"
)


# --- data ----------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """The splits of one fine-tuning run and what was done to get them."""

    spec: TaskSpec
    train: list[dict]
    dev: list[dict]
    test: list[dict]
    info: dict = field(default_factory=dict)


def _read_options(cfg: FinetuneConfig, kind: str) -> dict:
    d = cfg.data
    return dict(
        task="tagging" if kind == "tagging" else "classification",
        text_column=d.text_column,
        label_column=d.label_column,
        text_pair_column=d.text_pair_column if kind == "pair" else None,
        encoding=d.encoding,
        errors=d.errors,
        max_docs=d.max_docs,
    )


def _check_examples(examples: list[dict], kind: str, where: str) -> None:
    need = {"tagging": ("tokens", "tags"), "pair": ("text", "text_pair", "label")}.get(
        kind, ("text", "label")
    )
    for n, ex in enumerate(examples):
        missing = [k for k in need if k not in ex]
        if missing:
            raise DataError(
                f"{where}: example {n} has no {', '.join(missing)} (a {kind} example needs {', '.join(need)}); "
                + ("set data.text_pair_column" if "text_pair" in missing else "check the task kind")
            )


def load_task_data(
    cfg: FinetuneConfig, *, train_examples: list[dict] | None = None, test_examples: list[dict] | None = None
) -> TaskData:
    """Read, dedupe and split the labeled data; check it. Nothing is written.

    Raises:
        DataError: unknown test labels, a single-class training split, a budget larger than the data
            with ``budget.strict``, bad files (with file and line), ...
    """
    d, b = cfg.data, cfg.budget
    kind = infer_kind(cfg.task.kind, d.source, d.text_pair_column)
    if kind == "pair" and train_examples is None and not d.text_pair_column:
        raise ConfigError("a pair task needs data.text_pair_column (the column of the second text)")
    read = _read_options(cfg, kind)
    warnings: list[str] = []
    examples = list(train_examples) if train_examples is not None else load_labeled(d.source, **read)
    where = "the training examples given" if train_examples is not None else d.source
    _check_examples(examples, kind, where)
    info: dict = {"source": where, "loaded": len(examples), "kind": kind}
    if d.dedupe:
        examples, dropped = dedupe(examples)
        info["duplicates_dropped"] = dropped["dropped"]
        if dropped["dropped"]:
            log.info(
                "dropped %d repeated inputs of %d (%d with conflicting labels: the first kept)",
                dropped["dropped"],
                info["loaded"],
                dropped["conflicting"],
            )
    if test_examples is not None or d.test:
        test = list(test_examples) if test_examples is not None else load_labeled(d.test, **read)
        _check_examples(test, kind, "the test examples given" if test_examples is not None else d.test)
        pool = examples
        info["test_source"] = d.test or "(in memory)"
    else:
        pool, test = carve_test(examples, d.test_size, d.test_seed)
        info["test_source"] = f"carved from {where} (seed {d.test_seed})"
    spec = build_spec(kind, pool, labels=cfg.task.labels, metric=cfg.task.metric)
    info["unknown_test_labels"] = check_labels(
        spec, test, where="the test set", unknown=cfg.task.unknown_labels, owner="the training data"
    )
    seed = b.seed if b.seed is not None else cfg.train.seed
    budget, budget_info = draw_budget(
        pool, train_size=b.train_size, per_class=b.per_class, seed=seed, strict=b.strict
    )
    if "shortfall" in budget_info:
        warnings.append(budget_info["shortfall"] + "; all of them were used")
    train, dev = split_dev(budget, b.dev_fraction, seed)
    counts = label_counts(train)
    if len(counts) < 2:
        what = "tag" if kind == "tagging" else "class"
        raise DataError(
            f"the training split has a single {what} ({list_some(counts)}; {len(train)} examples): there is "
            f"nothing to tell apart. Check data.label_column, or raise the budget so that more {what}es are drawn"
        )
    if not dev:
        warnings.append("no dev split (budget.dev_fraction=0 or too few examples): the last weights are kept")
    test_keys = {input_key(ex) for ex in test}
    overlap = sum(input_key(ex) in test_keys for ex in budget)
    if overlap:
        warnings.append(
            f"{overlap} of the {len(budget)} training/dev examples also appear in the test set, which "
            "inflates the test score; remove them from the test file"
        )
    for w in warnings:
        log.warning(w)
    info.update(
        pool=len(pool),
        budget=budget_info,
        budget_seed=seed,
        train=len(train),
        dev=len(dev),
        test=len(test),
        train_test_duplicates=overlap,
        warnings=warnings,
    )
    return TaskData(spec=spec, train=train, dev=dev, test=test, info=info)


# --- model ---------------------------------------------------------------------------------------


def _label_config(spec: TaskSpec) -> dict:
    return {
        "num_labels": len(spec.labels),
        "id2label": dict(enumerate(spec.labels)),
        "label2id": {label: i for i, label in enumerate(spec.labels)},
    }


def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()


def start_tokenizer(mcfg: FinetuneModelConfig):
    """The tokenizer of the starting point (or ``model.tokenizer``), with a padding token."""
    from lmvalue.tokenizer import load_padding_tokenizer

    return load_padding_tokenizer(mcfg.tokenizer or resolve_checkpoint(mcfg.init_from))


def fit_spec_to_checkpoint(spec: TaskSpec, mcfg: FinetuneModelConfig) -> tuple[TaskSpec, bool]:
    """Match the data's labels with a task head the checkpoint may already have.

    Returns:
        (spec, reuse_head): whether the checkpoint's own head is kept (it has one for the same
        labels, and ``model.new_head`` is off), with the spec then in the head's label order.

    Raises:
        CheckpointError: the checkpoint has a head for other labels and ``model.new_head`` is off.
    """
    if not mcfg.init_from or mcfg.from_scratch:
        return spec, False
    from transformers import AutoConfig

    ref = resolve_checkpoint(mcfg.init_from)
    try:
        config = AutoConfig.from_pretrained(ref)
    except OSError as e:
        raise CheckpointError(f"cannot load a model config from {mcfg.init_from!r}: {e}") from None
    head = head_labels(config)
    if head is None or mcfg.new_head:
        return spec, False
    level, labels = head
    if level != spec.level:
        log.info("%s has a %s-level head; a new %s-level head is trained", ref, level, spec.level)
        return spec, False
    if set(labels) == set(spec.labels):
        return dataclasses.replace(spec, labels=labels), True
    only_data = sorted(set(spec.labels) - set(labels))
    only_ckpt = sorted(set(labels) - set(spec.labels))
    raise CheckpointError(
        f"{mcfg.init_from} was fine-tuned for the labels {list_some(labels)}, but the data has {list_some(spec.labels)} "
        f"(only in the data: {list_some(only_data) or 'none'}; only in the checkpoint: {list_some(only_ckpt) or 'none'}). "
        "Pass model.new_head=true to train a new head on it, or check data.label_column"
    )


def build_task_model(
    mcfg: FinetuneModelConfig, spec: TaskSpec, tokenizer, *, seed: int, reuse_head: bool = False
):
    """A transformers task model for ``spec.labels``: the checkpoint's weights, or (``from_scratch``)
    a seeded random init of the checkpoint's (or the preset's) architecture.

    A new task head starts at zero, so every run starts from the same uninformative prediction
    (the first dev evaluation is the chance baseline) whatever the seed.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if spec.level == "token" else AutoModelForSequenceClassification
    labels = _label_config(spec)
    _quiet()
    torch.manual_seed(seed)  # a from-scratch model (and anything peft adds later) depends on the seed only
    if mcfg.init_from and not mcfg.from_scratch:
        ref = resolve_checkpoint(mcfg.init_from)
        check_vocab(tokenizer, AutoConfig.from_pretrained(ref), where=mcfg.init_from)
        model, loading = from_pretrained(
            auto, ref, ignore_mismatched_sizes=not reuse_head, output_loading_info=True, **labels
        )
        names = loading["missing_keys"]
    else:
        if mcfg.init_from:
            config = AutoConfig.from_pretrained(resolve_checkpoint(mcfg.init_from))
            check_vocab(tokenizer, config, where=mcfg.init_from)
        else:
            config = preset_config(mcfg, tokenizer)
        for key, value in labels.items():
            setattr(config, key, value)
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
        model = auto.from_config(config)
        names = [name for name, _ in model.named_parameters()]
    # A pooler the checkpoint did not provide starts random: methods that freeze the encoder train it
    # with the head (lmvalue.methods.state.head_names), and a reloaded model knows it from its config.
    setattr(
        model.config, HEAD_MODULES_KEY, ["pooler"] if any("pooler" in n.split(".") for n in names) else []
    )
    if not reuse_head:
        _zero_head(model)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if mcfg.reinit_layers:
        reinit_top_layers(model, mcfg.reinit_layers)  # seeded above
    if mcfg.pooling != "cls":
        if spec.level == "token":
            raise ConfigError(
                f"model.pooling={mcfg.pooling} is for sentence tasks; tagging reads every token"
            )
        set_pooling(model, mcfg.pooling)
    return model


def task_head(model) -> torch.nn.Linear:
    """The output layer of a ``*ForSequenceClassification`` model (``classifier`` or ``score``)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("classifier", "score") and isinstance(module, torch.nn.Linear):
            return module
    raise ConfigError(f"{type(model).__name__} has no linear task head (classifier/score) to fit")


def fit_probe_head(
    model, items: list[dict], labels: list[int], n_classes: int, pad_id: int, seed: int
) -> dict:
    """LP-FT's first stage (Kumar et al. 2022): fit the task head as a logistic regression on the frozen
    features it reads (its input, captured in eval mode: the pooled sentence vector), and copy it in.

    Fine-tuning then starts from a head that already reads what pretraining learned, instead of a zero
    head whose first gradients rewrite the encoder. A binary regression ``w·x + b`` becomes the logits
    ``±(w·x + b)/2`` (their softmax is the regression's sigmoid); a class absent from the labels keeps a
    zero row and the lowest bias.

    Returns:
        {"train_accuracy", "features"}: how well the fitted head fits its training split.
    """
    from sklearn.linear_model import LogisticRegression

    head = task_head(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(items), 64):  # in order: row i is item i
                batch = collate(items[start : start + 64], pad_id)
                model(**model_inputs(batch))
    finally:
        hook.remove()
        model.train(was_training)
    x = torch.cat(captured).numpy()
    y = np.asarray(labels)
    clf = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced", random_state=seed).fit(x, y)
    weight = np.zeros((n_classes, x.shape[1]))
    bias = np.zeros(n_classes)
    classes = [int(c) for c in clf.classes_]
    if len(classes) == 2:
        weight[classes[1]], bias[classes[1]] = clf.coef_[0] / 2, clf.intercept_[0] / 2
        weight[classes[0]], bias[classes[0]] = -clf.coef_[0] / 2, -clf.intercept_[0] / 2
    else:
        for row, c in enumerate(classes):
            weight[c], bias[c] = clf.coef_[row], clf.intercept_[row]
    absent = [c for c in range(n_classes) if c not in classes]
    if absent:
        bias[absent] = bias[classes].min() - 1.0
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    return {"train_accuracy": float(clf.score(x, y)), "features": int(x.shape[1])}


def _zero_head(model) -> None:
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("classifier", "score") and isinstance(module, torch.nn.Linear):
            torch.nn.init.zeros_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


# --- the recipe ----------------------------------------------------------------------------------


_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
_EMBEDDING = re.compile(r"embed|\.wte\.|\.wpe\.")


def llrd_groups(model: torch.nn.Module, decay: float, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups for layer-wise learning-rate decay (Howard & Ruder 2018; Sun et al.
    2019): with L transformer layers, layer i trains at ``decay^(L - i)`` times the rate (``lr_scale``),
    the embeddings at ``decay^(L + 1)``, everything above the layers (pooler, head, adapters outside
    layers) at 1. Biases and norms get no weight decay, as in :func:`lmvalue.loop.build_optimizer`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths = [int(m.group(1)) for n, _ in named if (m := _LAYER.search(n))]
    n_layers = max(depths) + 1 if depths else 0
    groups: dict[tuple[float, bool], list] = {}
    for name, p in named:
        m = _LAYER.search(name)
        if m:
            scale = decay ** (n_layers - int(m.group(1)))
        elif _EMBEDDING.search(name):
            scale = decay ** (n_layers + 1)
        else:
            scale = 1.0
        no_decay = p.ndim < 2 or "norm" in name.lower()
        groups.setdefault((scale, no_decay), []).append(p)
    return [
        {"params": ps, "lr_scale": scale, "weight_decay": 0.0 if nd else weight_decay}
        for (scale, nd), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ]


def finetune_config(yaml_path=None, overrides: dict | None = None) -> FinetuneConfig:
    """A :class:`~lmvalue.config.FinetuneConfig` from defaults, a YAML file and dotted overrides, checked
    against the method registry too: every problem is reported at once.

    Raises:
        ConfigError: listing every problem.
    """
    return build_config(FinetuneConfig, yaml_path=yaml_path, overrides=overrides, checks=[config_problems])


def finetune(
    cfg: FinetuneConfig,
    *,
    train_examples: list[dict] | None = None,
    test_examples: list[dict] | None = None,
    extra_train: list[dict] | None = None,
    score_test: bool = True,
    keep_model: bool = False,
) -> dict:
    """Fine-tune (or fit the TF-IDF baseline) as configured; score the test split once; save.

    Args:
        cfg: the run's configuration (:class:`lmvalue.config.FinetuneConfig`).
        train_examples: labeled examples in memory instead of ``data.source`` (the pool the test split
            is carved from, unless ``test_examples`` or ``data.test`` is given).
        test_examples: a test split in memory instead of ``data.test`` / the carved one.
        extra_train: examples added to the training split after the budget and its dev split are
            drawn (pseudo-labels of a teacher, for self-training): the dev split stays gold.
        score_test: ``False`` leaves the test split unscored (``test`` is empty): a candidate that
            a recipe may discard is selected on its dev split alone.
        keep_model: also return the trained model in memory (``task_model``, an
            :class:`~lmvalue.inference.TaskModel`) and the split (``task_data``); neither is saved.

    Returns:
        the metrics also written to ``metrics.json``: ``test_score`` / ``dev_score`` (the task's
        ``metric``), ``test`` / ``dev`` (every score), ``labels``, ``examples`` (pool/train/dev/test
        counts), ``trainable_params`` / ``total_params``, ``train_flops`` (see ``flops_formula``),
        ``wall_seconds`` / ``cpu_seconds`` (the whole call) and ``train_seconds`` /
        ``train_cpu_seconds`` (the training loop), ``steps``, ``train_tokens``, ``evals``,
        ``warnings``, ``model_dir`` / ``merged_dir``.
    """
    wall0, cpu0 = time.perf_counter(), time.process_time()
    # A model that collapses (e.g. from scratch with a high learning rate) fills with subnormal
    # floats, which x86 CPUs compute ~100x slower: one such run took 20+ minutes instead of 3.
    torch.set_flush_denormal(True)
    validate(cfg, [config_problems])  # however cfg was built: nothing runs with an impossible method
    method = get_method(cfg.method.name)
    data = load_task_data(cfg, train_examples=train_examples, test_examples=test_examples)
    if extra_train:
        _check_examples(extra_train, data.spec.kind, "the extra training examples given")
        data.train = data.train + list(extra_train)
        data.info["extra_train"] = len(extra_train)
    if not score_test:
        data.test = []
    if cfg.train.lr_search and method.apply is not None and not data.dev:
        raise ConfigError(
            "train.lr_search picks the learning rate on the dev split, but the budget left none; raise "
            "budget.dev_fraction or the budget, or set train.lr instead"
        )
    # Everything that can fail on bad input (data, checkpoint, labels) fails before anything is written.
    prompted = method.family == "prompt"
    if prompted:
        resolve_prompt(cfg.method, cfg.data.source, data.spec.labels)  # a bad prompt fails before any write
        check_masked_lm_start(cfg.method.name, cfg.model)  # so does a checkpoint without an MLM head
    start = prepare_network(cfg, data) if method.family == "network" else None
    # a classical method's own starting point (the probe's encoder) fails here, before any write
    classical_start = method.trainer.prepare(cfg) if method.family == "classical" else None
    accelerator = make_accelerator(cfg.train) if method.family != "classical" else None
    main = accelerator is None or accelerator.is_main_process
    run = RunDir(cfg.train.output_dir)
    resume_from = run.prepare(resume=cfg.train.resume, overwrite=cfg.train.overwrite) if main else None
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if main:
        save_yaml(cfg, run.path / "config.yaml")
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomic(run.path / "run.json", run_info(cfg, "running", started=started))
    try:
        if prompted:
            result = fit_prompt(cfg, data, run, accelerator)
        elif method.family == "classical":
            result = _fit_classical(cfg, data, run, method, classical_start)
        elif cfg.train.lr_search:
            result = _search_lr(cfg, data, method, run, start, accelerator)
        else:
            trained = _train_network(cfg, data, method, run, start, accelerator, resume_from)
            result = _finish_network(cfg, data, method, run, trained, accelerator)
    except BaseException as e:
        if main:
            mark_failed(run, e)
        raise
    spec = data.spec
    task_model = result.pop("task_model")
    test, dev = result.pop("test_scores"), result.pop("dev_scores")
    metrics = {
        "task": spec.kind,
        "metric": spec.metric,
        "labels": list(spec.labels),
        "method": method.name,
        "start": (cfg.model.init_from or f"preset:{cfg.model.preset}") if method.uses_model else "none",
        "from_scratch": method.uses_model and bool(cfg.model.from_scratch),
        "seed": cfg.train.seed,
        "precision": resolve_precision(cfg.train.precision) if accelerator is not None else None,
        "budget_seed": data.info["budget_seed"],
        "test_score": test.get(spec.metric),
        "dev_score": dev.get(spec.metric),
        "test": summary(test),
        "dev": summary(dev),
        "examples": {k: data.info[k] for k in ("pool", "train", "dev", "test")},
        **result,
        "flops_formula": FLOPS_FORMULA if start is not None else ("6·N × train_tokens" if prompted else None),
        "wall_seconds": round(time.perf_counter() - wall0, 3),
        "cpu_seconds": round(time.process_time() - cpu0, 3),
        "data": data.info,
        "warnings": data.info["warnings"],
    }
    if main:
        finish_run(run, metrics, [d for d in (metrics.get("model_dir"), metrics.get("merged_dir")) if d])
    if keep_model:
        metrics.update(task_model=task_model, task_data=data)
    return metrics


def _fit_classical(cfg, data: TaskData, run: RunDir, method: Method, extra: dict) -> dict:
    """A ``classical`` method (tfidf, embeddings, probe): features + logistic regression, C chosen on
    the dev split, fitted by the method's ``trainer``."""
    from lmvalue.methods import tfidf

    trainer, name = method.trainer, method.name
    spec = data.spec

    def dev_score(pipe, examples):
        # (metric, -cross-entropy): on a dev split of a few examples, a strongly regularized model that
        # predicts the majority class often ties with one that learned; the likelihood breaks the tie
        scores = score(TaskModel(spec=spec, pipeline=pipe), examples)
        return scores[spec.metric], -scores["loss"]

    t0, c0 = time.perf_counter(), time.process_time()
    pipe, fit_info = trainer.train(data.train, data.dev, spec, cfg.method, cfg.train.seed, dev_score, **extra)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    task = TaskModel(spec=spec, pipeline=pipe)
    dev_scores = score(task, data.dev) if data.dev else {}
    # the one look at the test set
    test_scores = score(task, data.test, out_dir=run.path, name="test") if data.test else {}
    n = tfidf.n_parameters(pipe)
    log.info("%s: %s", name, trainer.describe(fit_info))
    result = {
        "task_model": task,
        "test_scores": test_scores,
        "dev_scores": dev_scores,
        "trainable_params": n,
        "total_params": n,
        "train_flops": None,
        "train_seconds": round(train_s, 3),
        "train_cpu_seconds": round(train_cpu, 3),
        name: fit_info,
        "model_dir": None,
    }
    if cfg.train.save_model:

        def write(folder: Path):
            trainer.save(pipe, folder)
            save_task_folder(folder, cfg, spec, name)

        result["model_dir"] = str(run.write_dir_atomic("model", write))
    return result


def prepare_network(cfg: FinetuneConfig, data: TaskData) -> dict:
    """The tokenizer and the task model (``data.spec`` follows the label order of a checkpoint head)."""
    spec, reuse_head = fit_spec_to_checkpoint(data.spec, cfg.model)
    data.spec = spec
    tokenizer = start_tokenizer(cfg.model)
    model = build_task_model(cfg.model, spec, tokenizer, seed=cfg.train.seed, reuse_head=reuse_head)
    return {"tokenizer": tokenizer, "model": model}


def _train_network(
    cfg: FinetuneConfig,
    data: TaskData,
    method: Method,
    run: RunDir,
    start: dict,
    accelerator,
    resume_from: Path | None,
) -> dict:
    """Train with the shared loop, select on dev, score the test split once, save."""
    spec = data.spec
    tokenizer, model = start["tokenizer"], start["model"]
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    max_length = cfg.data.max_length
    train_items = encode(data.train, spec, tokenizer, max_length)
    steps, eval_every = run_steps(cfg, len(train_items), world)
    loop_cfg = dataclasses.replace(cfg.train, max_steps=steps, eval_every=eval_every)
    hf_config = model.config
    base_dir = run.path / ".base"
    if method.keeps_base and cfg.train.save_model and main and not base_dir.is_dir():
        # The untouched base (with its untrained head) goes beside the adapter at the end.
        model.save_pretrained(base_dir, safe_serialization=True)
        tokenizer.save_pretrained(base_dir)
    probe_info = None
    if cfg.model.head_init == "probe":
        if spec.level == "token":
            raise ConfigError("model.head_init=probe is for sentence tasks; tagging reads every token")
        probe_info = fit_probe_head(
            model,
            train_items,
            [it["labels"] for it in train_items],
            len(spec.labels),
            tokenizer.pad_token_id,
            cfg.train.seed,
        )
        if main:
            log.info(
                "LP-FT: head fitted on frozen features (train accuracy %.3f)", probe_info["train_accuracy"]
            )
    model = method.apply(model, cfg.method, MethodContext(level=spec.level, total_steps=steps))
    trainable, total = count_parameters(model)
    n_fwd, n_fwd_trainable = forward_parameters(model)
    if main:
        log.info(
            "%s on %s: %s trainable of %s parameters (%.2f%%); %d train / %d dev / %d test examples, %d steps",
            method.name,
            cfg.model.init_from or f"preset {cfg.model.preset}",
            f"{trainable:,}",
            f"{total:,}",
            100 * trainable / max(1, total),
            len(data.train),
            len(data.dev),
            len(data.test),
            steps,
        )
    dev_view = TaskModel(
        spec=spec, tokenizer=tokenizer, max_length=max_length, batch_size=max(64, cfg.train.batch_size)
    )

    def evaluate(m) -> dict:
        if not data.dev:
            return {}
        scores = score(dataclasses.replace(dev_view, model=m), data.dev)
        return {f"eval_{k}": v for k, v in scores.items() if isinstance(v, int | float) and k != "examples"}

    uda = (
        _consistency_setup(cfg, data, tokenizer, steps * cfg.train.grad_accum)
        if cfg.consistency.unlabeled
        else None
    )

    def loss_fn(m, batch) -> dict:
        if uda is not None:
            return _consistency_loss(m, batch, uda, cfg.consistency, len(spec.labels))
        if method.prepends_tokens and spec.level == "token":
            # peft's prompt tuning returns logits for the virtual tokens too: score the last T only
            labels = batch["labels"]
            logits = m(**model_inputs(batch)).logits[:, -labels.shape[1] :]  # (B, T, C)
            return {"loss": F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)}
        if "soft_targets" in batch:  # a distilled student: the teacher's distributions as targets
            out = m(**model_inputs(batch))
            return {"loss": soft_cross_entropy(out.logits, batch["soft_targets"])}
        return {"loss": m(**batch).loss}  # the model's own loss (AdaLoRA adds its regularizer here)

    def epoch_batches(epoch: int):
        return LabeledBatches(
            train_items,
            cfg.train.batch_size,
            seed=cfg.train.seed,
            epoch=epoch,
            pad_id=tokenizer.pad_token_id,
            rank=rank,
            world=world,
            group_by_length=cfg.train.group_by_length,
        )

    save_checkpoint, load_checkpoint = weights_checkpoint(hf_config)
    on_step = (lambda m, state: method.on_step(m, state.step)) if method.on_step else None
    cpu0 = time.process_time()
    state = train_loop(
        model=model,
        loss_fn=loss_fn,
        epoch_batches=epoch_batches,
        evaluate=evaluate,
        cfg=loop_cfg,
        run=run,
        accelerator=accelerator,
        save_model=save_checkpoint,
        load_model=load_checkpoint,
        resume_from=resume_from,
        monitor=f"eval_{spec.metric}",
        mode="max",
        on_step=on_step,
        param_groups=llrd_groups(model, cfg.train.llrd, cfg.train.weight_decay) if cfg.train.llrd else None,
    )
    train_cpu = time.process_time() - cpu0
    final = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if method.finalize:
        method.finalize(final)
    task = dataclasses.replace(dev_view, model=final)
    dev_scores = score(task, data.dev) if data.dev else {}
    result = {
        "dev_scores": dev_scores,
        "lr": cfg.train.lr,
        "trainable_params": trainable,
        "total_params": total,
        "train_flops": float((4 * n_fwd + 2 * n_fwd_trainable) * state.tokens),
        "forward_params": n_fwd,
        "forward_params_trainable": n_fwd_trainable,
        "train_seconds": round(state.elapsed, 3),
        "train_cpu_seconds": round(train_cpu, 3),
        "steps": state.step,
        "epochs": round(
            state.step * cfg.train.batch_size * world * cfg.train.grad_accum / max(1, len(train_items)), 2
        ),
        "train_tokens": state.tokens,
        "head_probe": probe_info,
        "consistency": uda["info"] if uda else None,
        "stop_reason": state.stop_reason,
        "best_step": state.best_step,
        "evals": state.evals,
        "model_dir": None,
        "merged_dir": None,
    }
    return {"result": result, "final": final, "task": task, "tokenizer": tokenizer, "base_dir": base_dir}


def _consistency_setup(cfg: FinetuneConfig, data: TaskData, tokenizer, micro_steps: int) -> dict:
    """The unlabeled stream of consistency training: as many texts as the run will see (at most), the
    labeled and test texts left out, encoded once."""
    import random

    from lmvalue.data.sources import load_texts
    from lmvalue.tasks.consistency import UnlabeledStream

    ccfg = cfg.consistency
    if data.spec.kind != "classification":
        raise ConfigError(
            f"consistency.unlabeled: consistency training is for single-text classification, not {data.spec.kind} "
            "tasks; drop consistency.unlabeled"
        )
    texts = load_texts(ccfg.unlabeled)
    seen = {ex["text"] for ex in (*data.train, *data.dev, *data.test)}  # never train on a test text
    texts = [t for t in dict.fromkeys(texts) if t not in seen]
    if not texts:
        raise DataError(
            f"consistency.unlabeled={ccfg.unlabeled}: no unlabeled text left after removing the labeled ones"
        )
    batch = cfg.train.batch_size * ccfg.ratio
    need = micro_steps * batch
    random.Random(cfg.train.seed).shuffle(texts)
    texts = texts[:need]
    ids = tokenizer(texts, truncation=True, max_length=cfg.data.max_length)["input_ids"]
    special = set(tokenizer.all_special_ids)
    return {
        "stream": UnlabeledStream(ids, batch, tokenizer.pad_token_id, cfg.train.seed),
        "generator": torch.Generator().manual_seed(cfg.train.seed + 1),
        "special": special,
        "mask_id": tokenizer.mask_token_id,
        "vocab": len(tokenizer),
        "pad": tokenizer.pad_token_id,
        "calls": 0,
        "total": max(1, micro_steps),
        "info": {"unlabeled_texts": len(texts), "unlabeled_batch": batch, "kept_share": []},
    }


def _consistency_loss(m, batch: dict, uda: dict, ccfg, n_classes: int) -> dict:
    """Labeled cross-entropy with training-signal annealing + weight x KL(target || augmented)."""
    from lmvalue.tasks.consistency import annealed_cross_entropy, augment_ids, consistency_kl, tsa_threshold

    progress = uda["calls"] / uda["total"]
    uda["calls"] += 1
    logits = m(**model_inputs(batch)).logits  # (B, K)
    labeled, _ = annealed_cross_entropy(logits, batch["labels"], tsa_threshold(ccfg.tsa, progress, n_classes))
    u = uda["stream"].next()
    aug_ids, aug_mask = augment_ids(
        u["input_ids"],
        u["attention_mask"],
        kind=ccfg.augment,
        rate=ccfg.rate,
        generator=uda["generator"],
        special_ids=uda["special"],
        mask_id=uda["mask_id"],
        vocab_size=uda["vocab"],
        pad_id=uda["pad"],
    )
    device = logits.device
    with torch.no_grad():
        target = m(input_ids=u["input_ids"].to(device), attention_mask=u["attention_mask"].to(device)).logits
    augmented = m(input_ids=aug_ids.to(device), attention_mask=aug_mask.to(device)).logits
    kl, kept = consistency_kl(target, augmented, temperature=ccfg.temperature, threshold=ccfg.threshold)
    if uda["calls"] % 20 == 0:
        uda["info"]["kept_share"].append(round(kept, 3))
    return {
        "loss": labeled + ccfg.weight * kl,
        "labeled_loss": labeled.detach(),
        "consistency_loss": kl.detach(),
    }


def _finish_network(
    cfg: FinetuneConfig, data: TaskData, method: Method, run: RunDir, trained: dict, accelerator
) -> dict:
    """Score the test split once with the trained model; save it (and the merged model)."""
    spec, result, final, tokenizer = data.spec, trained["result"], trained["final"], trained["tokenizer"]
    main = accelerator.is_main_process
    base_dir = trained["base_dir"]
    result["task_model"] = trained["task"]
    result["test_scores"] = (
        score(trained["task"], data.test, out_dir=run.path if main else None, name="test")
        if data.test
        else {}
    )
    if cfg.train.save_model and main:

        def write(folder: Path):
            method.save(final, folder)
            if method.keeps_base:
                os.replace(base_dir, folder / "base")
            save_task_folder(folder, cfg, spec, method.name, tokenizer)

        result["model_dir"] = str(run.write_dir_atomic("model", write))
        if cfg.method.merge:
            merged = method.merge(final)  # after saving: peft folds the adapter in place

            def write_merged(folder: Path):
                merged.save_pretrained(folder, safe_serialization=True)
                save_task_folder(folder, cfg, spec, "full", tokenizer)

            result["merged_dir"] = str(run.write_dir_atomic("merged", write_merged))
    accelerator.wait_for_everyone()
    return result


def _search_lr(cfg: FinetuneConfig, data: TaskData, method: Method, run: RunDir, start: dict, accelerator):
    """``train.lr_search``: one run per learning rate from the same seed and split; the best dev
    score wins (ties: the earlier rate in the list); only the winner sees the test split."""
    best, tried = None, []
    for i, lr in enumerate(cfg.train.lr_search):
        cand_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=lr))
        if i > 0:  # a fresh start for every rate: the same initial weights (seeded), untouched by training
            start = prepare_network(cand_cfg, data)
        sub = RunDir(run.path / "lr_search" / f"lr-{lr:g}")
        sub.path.mkdir(parents=True, exist_ok=True)
        trained = _train_network(cand_cfg, data, method, sub, start, accelerator, None)
        dev = trained["result"]["dev_scores"].get(data.spec.metric, float("-inf"))
        tried.append({"lr": lr, "dev_score": dev, "best_step": trained["result"]["best_step"]})
        log.info("lr_search: lr=%g -> dev %s %.4f", lr, data.spec.metric, dev)
        if best is None or dev > best[0]:
            best = (dev, cand_cfg, trained)
        start = None
    _, win_cfg, trained = best
    log.info("lr_search: kept lr=%g", win_cfg.train.lr)
    result = _finish_network(win_cfg, data, method, run, trained, accelerator)
    result["lr_search"] = tried
    return result
