"""Using a task model: load any fine-tuned folder, predict, and score labeled examples.

:func:`load_task_model` reads what :func:`lmvalue.finetuning.finetune` writes (full models,
parameter-efficient adapters with their ``base/``, TF-IDF pipelines) and also plain Hugging Face
``*ForSequenceClassification`` / ``*ForTokenClassification`` folders and peft adapter folders
made elsewhere. ``lmvalue evaluate`` and ``lmvalue predict`` are thin layers over this module.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmvalue.errors import CheckpointError, ConfigError, DataError, with_option
from lmvalue.tasks import TASK_FILE, TaskSpec, example_labels, list_some
from lmvalue.tasks.encode import encode, predict_logits, word_predictions
from lmvalue.tasks.metrics import confusion_png, spans, summary, task_scores
from lmvalue.tasks.pooling import POOLING_KEY, set_pooling
from lmvalue.weights import from_pretrained

log = logging.getLogger("lmvalue")

METHOD_FILE = "lmvalue_method.json"


@dataclass
class TaskModel:
    """A trained task model with what it needs to read raw examples."""

    spec: TaskSpec
    model: torch.nn.Module | None = None  # a network ...
    tokenizer: object = None
    pipeline: object = None  # ... or a TF-IDF pipeline
    cloze: object = None  # ... or a cloze prompt of a masked LM (lmvalue.prompting.ClozeScorer)
    max_length: int = 128
    batch_size: int = 64

    def outputs(self, examples: list[dict]) -> list[np.ndarray]:
        """Per example: class probabilities (C,), or per-word probabilities (words, C) for tagging
        with NaN rows for words the model cannot see (truncated, or no sub-word piece)."""
        if self.pipeline is not None:
            from lmvalue.methods import tfidf

            return list(tfidf.probabilities(self.pipeline, examples, self.spec.labels))
        if self.cloze is not None:
            return list(self.cloze.probabilities(examples))
        items = encode(examples, self.spec, self.tokenizer, self.max_length, with_labels=False)
        logits = predict_logits(self.model, items, self.tokenizer.pad_token_id, batch_size=self.batch_size)
        out = []
        for item, lg in zip(items, logits, strict=True):
            probs = torch.softmax(torch.from_numpy(lg), dim=-1).numpy()
            if self.spec.level == "token":
                words = word_predictions(probs, item["word_ids"], item["n_words"])
                probs = np.stack(
                    [w if w is not None else np.full(len(self.spec.labels), np.nan) for w in words]
                )
            out.append(probs)
        return out

    def predict(self, examples: list[dict], outputs: list[np.ndarray] | None = None) -> list[dict]:
        """``{"label", "probs"}`` per example, or ``{"tags", "spans"}`` for tagging; ``outputs``: the
        examples' :meth:`outputs` when the caller has them already (one forward pass, not two)."""
        labels = self.spec.labels
        preds = []
        outputs = self.outputs(examples) if outputs is None else outputs
        for ex, probs in zip(examples, outputs, strict=True):
            if self.spec.level == "token":
                tags = [
                    labels[int(np.argmax(p))] if not np.isnan(p[0]) else self.spec.fallback_label
                    for p in probs
                ]
                pred = {"tags": tags}
                if self.spec.entity_tags:
                    pred["spans"] = spans(ex["tokens"], tags, joiner="" if self.spec.char_tokens else " ")
            else:
                pred = {
                    "label": labels[int(np.argmax(probs))],
                    "probs": dict(zip(labels, map(float, probs), strict=True)),
                }
            preds.append(pred)
        return preds


def score(task: TaskModel, examples: list[dict], *, out_dir: Path | None = None, name: str = "test") -> dict:
    """Predict ``examples`` and score them; with ``out_dir``, also write ``{name}_report.txt`` and
    ``{name}_confusion.png``.

    Returns:
        the task's scores (see :mod:`lmvalue.tasks.metrics`) plus ``examples`` and the mean
        cross-entropy of the true labels: ``loss`` when the model knows every label; otherwise
        (``unknown_labels=keep``) no ``loss`` but ``loss_known`` over the examples (tagging: tags)
        whose label it knows, their number ``loss_known_count`` and ``unknown_label_count`` (a label
        the model cannot predict has no probability, so no loss can include it).
    """
    spec = task.spec
    outputs = task.outputs(examples)
    labels = spec.labels
    index = {label: i for i, label in enumerate(labels)}
    losses = []
    if spec.level == "token":
        truth = [list(ex["tags"]) for ex in examples]
        predicted = []
        for probs in outputs:
            predicted.append(
                [labels[int(np.argmax(p))] if not np.isnan(p[0]) else spec.fallback_label for p in probs]
            )
        for ex, probs in zip(examples, outputs, strict=True):
            for tag, p in zip(ex["tags"], probs, strict=True):
                if tag in index and not np.isnan(p[0]):
                    losses.append(-np.log(max(p[index[tag]], 1e-12)))
    else:
        truth = [ex["label"] for ex in examples]
        predicted = [labels[int(np.argmax(p))] for p in outputs]
        losses = [-np.log(max(p[index[t]], 1e-12)) for t, p in zip(truth, outputs, strict=True) if t in index]
    scores = task_scores(spec, truth, predicted)
    flat_truth = [t for s in truth for t in s] if spec.level == "token" else truth
    unknown = sum(t not in index for t in flat_truth)
    if not unknown:
        scores["loss"] = float(np.mean(losses)) if losses else float("nan")
    else:
        if losses:
            scores["loss_known"] = float(np.mean(losses))
        scores["loss_known_count"] = len(losses)
        scores["unknown_label_count"] = unknown
    scores["examples"] = len(examples)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if "report_text" in scores:
            (out_dir / f"{name}_report.txt").write_text(scores["report_text"], encoding="utf-8")
        flat_true = [t for s in truth for t in s] if spec.level == "token" else truth
        flat_pred = [t for s in predicted for t in s] if spec.level == "token" else predicted
        confusion_png(flat_true, flat_pred, labels, out_dir / f"{name}_confusion.png", title=f"{name} split")
    return scores


def loss_note(scores: dict, *, tagging: bool = False) -> str | None:
    """What ``loss_known`` of :func:`score` is over, in words; None when every label was known."""
    if "loss_known_count" not in scores:
        return None
    unit = "tags" if tagging else "examples"
    known, unknown = scores["loss_known_count"], scores["unknown_label_count"]
    if not known:
        return f"no loss: none of the {unit} has a label the model knows ({unknown} unknown)"
    return (
        f"loss_known is over the {known} {unit} whose label the model knows; the {unknown} with "
        "labels it does not know have no loss (the model gives those labels no probability)"
    )


# --- loading -------------------------------------------------------------------------------------


def _auto_class(level: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if level == "token" else AutoModelForSequenceClassification


def head_labels(config) -> tuple[str, tuple[str, ...]] | None:
    """(level, labels) of the task head a checkpoint config describes, or None when it has none."""
    archs = getattr(config, "architectures", None) or []
    level = None
    if any(a.endswith("ForTokenClassification") for a in archs):
        level = "token"
    elif any(a.endswith("ForSequenceClassification") for a in archs):
        level = "sequence"
    if level is None:
        return None
    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    return level, tuple(id2label[i] for i in sorted(id2label))


def _spec_from_config(config, folder: Path) -> TaskSpec:
    head = head_labels(config)
    if head is None:
        raise CheckpointError(
            f"{folder} has no task head (its config.json lists {getattr(config, 'architectures', None)}): "
            "fine-tune it first with lmvalue finetune, or point to a *ForSequenceClassification / "
            "*ForTokenClassification folder"
        )
    level, labels = head
    kind = "tagging" if level == "token" else "classification"
    from lmvalue.tasks import is_entity_scheme

    metric = (
        "macro_f1"
        if kind == "classification"
        else ("entity_f1" if is_entity_scheme(labels) else "token_accuracy")
    )
    return TaskSpec(kind=kind, labels=labels, metric=metric)


def load_task_model(path: str | Path, *, batch_size: int = 64, trust_pickle: bool = False) -> TaskModel:
    """Load a fine-tuned model folder (or an lmvalue fine-tuning run folder) for prediction.

    No code from the folder runs: weights are safetensors, the scikit-learn methods' models plain data.
    ``trust_pickle`` also reads the pickled models of lmvalue <= 0.3 (``tfidf.joblib``), which can run
    any code they contain.

    Raises:
        CheckpointError: the folder is missing or holds no task model.
    """
    from lmvalue.checkpoint import read_json
    from lmvalue.tokenizer import load_tokenizer

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"batch size must be a positive number of inputs, got {batch_size!r}"
            + with_option("train.batch_size", "64")
        )
    torch.set_flush_denormal(True)  # see lmvalue.finetuning.finetune: subnormals are ~100x slower on CPU
    from lmvalue.versions import resolve_model

    folder = resolve_model(path)  # a model registry: its current version
    if (
        (folder / "model").is_dir()
        and not (folder / "config.json").is_file()
        and not (folder / TASK_FILE).is_file()
    ):
        folder = folder / "model"  # a run folder
    if not folder.is_dir():
        raise CheckpointError(f"model folder {path} does not exist")
    method_info = read_json(folder / METHOD_FILE) if (folder / METHOD_FILE).is_file() else {}
    name = method_info.get("name", "full")
    max_length = int(method_info.get("max_length", 128))
    from lmvalue.methods import get_method

    method = get_method(name)
    if method.family == "classical":
        return TaskModel(
            spec=TaskSpec.load(folder),
            pipeline=method.trainer.load(folder, trust_pickle=trust_pickle),
            batch_size=batch_size,
        )
    if method.family == "prompt":
        from lmvalue.prompting import load_scorer

        scorer = load_scorer(folder, name, method_info, max_length=max_length, batch_size=batch_size)
        return TaskModel(spec=TaskSpec.load(folder), cloze=scorer, batch_size=batch_size)

    if (folder / "adapter_config.json").is_file() and not (folder / "base").is_dir():
        # a peft adapter folder made elsewhere: the base is named in its config
        base_ref = read_json(folder / "adapter_config.json").get("base_model_name_or_path")
        if not base_ref:
            raise CheckpointError(
                f"{folder} is a peft adapter without base_model_name_or_path; cannot load it"
            )
        base_dir, method = base_ref, get_method("lora")
    else:
        base_dir = folder / "base" if method.keeps_base else folder
    if not (Path(base_dir) / "config.json").is_file() and Path(base_dir).exists():
        raise CheckpointError(
            f"{folder} is not a model folder (no config.json): point to the model/ folder of a fine-tuning run, "
            "or any Hugging Face checkpoint folder with a task head"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(base_dir))
    except OSError as e:
        raise CheckpointError(f"cannot load a model config from {base_dir}: {e}") from None
    spec = TaskSpec.load(folder) if (folder / TASK_FILE).is_file() else _spec_from_config(config, folder)
    max_length = min(max_length, getattr(config, "max_position_embeddings", None) or max_length)
    tokenizer_dir = (
        folder if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")) else base_dir
    )
    tokenizer = load_tokenizer(tokenizer_dir)
    _quiet_transformers()
    model = from_pretrained(_auto_class(spec.level), base_dir)
    set_pooling(model, getattr(model.config, POOLING_KEY, "cls"))  # model.pooling=mean, as trained
    if method.load is not None:  # the method's trained part, on top of the base
        from lmvalue.config import MethodConfig, from_dict

        mcfg = from_dict(MethodConfig, method_info.get("config", {"name": method.name}))
        model = method.load(model, folder, mcfg)
    model.eval()
    return TaskModel(
        spec=spec, model=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size
    )


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


# --- evaluate and predict ------------------------------------------------------------------------


def check_labels(
    spec: TaskSpec, examples: list[dict], *, where: str, unknown: str = "error", owner: str = "the model"
) -> int:
    """Examples whose labels the model does not know: error (say which and how many), or keep.

    Returns:
        the number of unknown label occurrences (kept when ``unknown="keep"``).
    """
    known = set(spec.labels)
    counts: dict[str, int] = {}
    for ex in examples:
        for label in example_labels(ex):
            if label not in known:
                counts[label] = counts.get(label, 0) + 1
    if not counts:
        return 0
    total = sum(counts.values())
    what = ", ".join(f"{k!r} ({v})" for k, v in sorted(counts.items(), key=lambda x: -x[1])[:10])
    msg = (
        f"{where} has {len(counts)} label(s) that {owner}'s labels {list_some(spec.labels)} lack, "
        f"{total} occurrence(s): {what}"
    )
    if unknown == "error":
        raise DataError(
            msg + ". Check the label column, train on data that has these labels, or score them as "
            "errors" + with_option("task.unknown_labels", "keep")
        )
    log.warning("%s; they are kept and scored as errors", msg)
    return total


def evaluate_model(
    model_dir: str | Path,
    source: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    unknown_labels: str = "error",
    out_dir: str | Path | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    trust_pickle: bool = False,
) -> dict:
    """Score a task model on a labeled file; with ``out_dir`` write metrics, report and confusion PNG.

    ``encoding`` / ``errors``: how local files are decoded (e.g. ``gb18030``; ``replace``)."""
    from lmvalue.checkpoint import write_json_atomic
    from lmvalue.data.sources import load_labeled
    from lmvalue.files import prepare_output_dir

    if out_dir is not None:
        prepare_output_dir(out_dir, create=False)  # before the model and data are read
    task = load_task_model(model_dir, trust_pickle=trust_pickle)
    spec = task.spec
    if spec.kind == "pair" and not text_pair_column:
        text_pair_column = "text_pair"
    examples = load_labeled(
        source,
        task="tagging" if spec.level == "token" else "classification",
        text_column=text_column,
        label_column=label_column,
        text_pair_column=text_pair_column if spec.kind == "pair" else None,
        encoding=encoding,
        errors=errors,
    )
    check_labels(spec, examples, where=str(source), unknown=unknown_labels)
    if out_dir is not None:
        prepare_output_dir(out_dir)
    scores = score(task, examples, out_dir=Path(out_dir) if out_dir else None, name="eval")
    result = {"model": str(model_dir), "data": str(source), "task": spec.kind, "metric": spec.metric}
    result.update(summary(scores))
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / "metrics.json", result)
    result["report_text"] = scores.get("report_text", "")
    return result


def read_inputs(
    source: str, spec: TaskSpec, *, text_column: str = "text", encoding: str = "utf-8", errors: str = "strict"
) -> list[dict | None]:
    """Raw inputs of ``predict``, one per line/row, in order; None for empty lines.

    ``-`` or a ``.txt`` file: one input per ``\n`` line (``text<TAB>text_pair`` for pair tasks; for
    tagging, whitespace-separated tokens, or characters when the model was trained on characters).
    ``.jsonl``: objects with ``text`` (``text_pair``) or ``tokens``. ``.csv``/``.tsv``: a text column.
    Lines are cut at ``\n`` only: U+0085, U+2028 and U+2029 inside a line stay in it.
    """
    from lmvalue.data.lines import read_lines

    if source != "-":
        path = Path(source)
        if not path.exists():
            raise DataError(f"input file {source} does not exist: check the path (--input)")
        if path.is_dir():
            raise DataError(f"input {source} is a folder: give a .txt, .jsonl or .csv file (--input)")
    suffix = Path(source).suffix.lower() if source != "-" else ".txt"
    if suffix in (".jsonl", ".ndjson"):
        out = []
        for n, line in enumerate(read_lines(source, encoding=encoding, errors=errors), 1):
            if not line.strip():
                out.append(None)
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{source} line {n}: not valid JSON ({e.msg})") from None
            if isinstance(rec, str):
                out.append(_from_line(rec, spec))
            elif not isinstance(rec, dict):
                raise DataError(
                    f"{source} line {n}: expected a JSON object with a {text_column!r} field (or a string), "
                    f"got {type(rec).__name__}"
                )
            elif "tokens" in rec:
                tokens = rec["tokens"]
                if not isinstance(tokens, list):
                    raise DataError(f"{source} line {n}: 'tokens' must be a list of strings")
                out.append({"tokens": [str(t) for t in tokens]} if tokens else None)
            elif text_column in rec:
                text = str(rec[text_column] or "")
                out.append(
                    _from_line(text, spec) if spec.kind != "pair" else _pair(text, rec.get("text_pair"))
                )
            else:
                raise DataError(
                    f"{source} line {n}: no {text_column!r} (or 'tokens') field; it has {sorted(rec)}. "
                    "Name the field with --text-column"
                )
        return out
    if suffix in (".csv", ".tsv"):
        import io

        text = "\n".join(read_lines(source, encoding=encoding, errors=errors))
        try:
            rows = list(
                csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
            )
        except csv.Error as e:
            raise DataError(f"{source}: not a valid {suffix[1:].upper()} file ({e})") from None
        if rows and text_column not in rows[0]:
            raise DataError(
                f"{source} has no column {text_column!r}; it has {list(rows[0])}. Name the column with "
                "--text-column"
            )
        return [
            _from_line(r[text_column] or "", spec)
            if spec.kind != "pair"
            else _pair(r[text_column], r.get("text_pair"))
            for r in rows
        ]
    return [_from_line(line, spec) for line in read_lines(source, encoding=encoding, errors=errors)]


def _pair(text, pair):
    return {"text": text, "text_pair": pair or ""} if (text or "").strip() else None


def _from_line(line: str, spec: TaskSpec) -> dict | None:
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if spec.level == "token":
        tokens = [ch for ch in line if not ch.isspace()] if spec.char_tokens else line.split()
        return {"tokens": tokens}
    if spec.kind == "pair":
        text, _, pair = line.partition("\t")
        return {"text": text, "text_pair": pair}
    return {"text": line}


def predict_rows(task: TaskModel, inputs: list[dict | None]) -> list[dict]:
    """One output row per input, in input order; empty inputs give a row with no prediction."""
    present = [i for i, x in enumerate(inputs) if x is not None]
    preds = task.predict([inputs[i] for i in present]) if present else []
    rows: list[dict] = [{"line": i + 1, "empty": True} for i in range(len(inputs))]
    for i, pred in zip(present, preds, strict=True):
        ex = inputs[i]
        row = {"line": i + 1}
        row.update({k: ex[k] for k in ("text", "text_pair", "tokens") if k in ex})
        row.update(pred)
        rows[i] = row
    return rows


PREDICTION_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def prediction_format(output: str | None) -> str:
    """``jsonl``, ``csv`` or ``tsv``: what ``predict`` writes to ``output``, from its suffix (JSON
    Lines on stdout when there is none). Called before the model is loaded.

    Raises:
        ConfigError: a suffix none of the formats has (``.xlsx``, ``.txt``, none...).
    """
    if not output:
        return "jsonl"
    suffix = Path(output).suffix.lower()
    if suffix not in PREDICTION_FORMATS:
        from lmvalue.errors import ConfigError

        raise ConfigError(
            f"--output {output}: cannot write predictions as {suffix or 'a file without a suffix'}; "
            "the suffix picks the format: .jsonl or .json (JSON Lines), .csv (CSV) or .tsv (tab-separated)"
        )
    return PREDICTION_FORMATS[suffix]


# Line separators that JSON allows raw inside strings but str.splitlines() (and some JSON Lines
# readers) treat as line ends: written escaped, so one row is always one line for every reader.
_LINE_SEPARATORS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(record: dict) -> str:
    text = json.dumps(record, ensure_ascii=False)
    for raw, escaped in _LINE_SEPARATORS.items():
        text = text.replace(raw, escaped)
    return text + "\n"


def write_rows(rows: list[dict], spec: TaskSpec, output: str | None) -> None:
    """JSON Lines (stdout when ``output`` is None), CSV or TSV, by ``output``'s suffix (see
    :func:`prediction_format`)."""
    fmt = prediction_format(output)
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        from lmvalue.files import open_atomic

        with open_atomic(output, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter=delimiter)
            if spec.level == "token":
                w.writerow(["line", "tokens", "tags", "spans"])
                for r in rows:
                    w.writerow(
                        [
                            r["line"],
                            " ".join(r.get("tokens", [])),
                            " ".join(r.get("tags", [])),
                            json.dumps(r.get("spans", []), ensure_ascii=False),
                        ]
                    )
            else:
                w.writerow(["line", "text", "label", *[f"p_{label}" for label in spec.labels]])
                for r in rows:
                    probs = r.get("probs", {})
                    w.writerow(
                        [r["line"], r.get("text", ""), r.get("label", "")]
                        + [f"{probs[label]:.6f}" if label in probs else "" for label in spec.labels]
                    )
        return
    text = "".join(json_line(r) for r in rows)
    if output:
        from lmvalue.files import write_text_atomic

        write_text_atomic(output, text)
    else:
        sys.stdout.write(text)
