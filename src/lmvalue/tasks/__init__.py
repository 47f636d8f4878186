"""Downstream tasks as data: a :class:`TaskSpec` says what is predicted and how it is scored.

Three kinds share one code path per level:

* ``classification`` (one text -> one label) and ``pair`` (text + text_pair -> one label) are
  *sequence-level*: a ``*ForSequenceClassification`` head, scored by accuracy and macro-F1;
* ``tagging`` (tokens -> one tag per token; NER with BIO/BIOES tags, or POS) is *token-level*:
  a ``*ForTokenClassification`` head on the first sub-word piece of every word, scored by
  entity-level F1 (seqeval) when the tags are BIO/BIOES, by token accuracy otherwise.

The spec is saved next to every fine-tuned model (``lmvalue_task.json``), so ``evaluate`` and
``predict`` know the task without being told.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from lmvalue.errors import DataError, setting

TASK_FILE = "lmvalue_task.json"

# kind -> (level, metrics reported, default headline metric); the tagging default depends on the tags.
KINDS: dict[str, dict] = {
    "classification": {"level": "sequence", "metrics": ("accuracy", "macro_f1"), "metric": "macro_f1"},
    "pair": {"level": "sequence", "metrics": ("accuracy", "macro_f1"), "metric": "macro_f1"},
    "tagging": {"level": "token", "metrics": ("token_accuracy", "entity_f1"), "metric": None},
}

_ENTITY_TAG = re.compile(r"^(O|[BIESLU]-.+)$")
_CONLL_SUFFIXES = (".conll", ".conllu", ".bio", ".bmes", ".iob", ".bioes", ".iobes")


@dataclass(frozen=True)
class TaskSpec:
    """What a task model predicts and how it is scored.

    Attributes:
        kind: ``classification``, ``pair`` or ``tagging``.
        labels: the label (or tag) set; its order is the order of the model's outputs.
        metric: the headline score, used for model selection on the dev split.
        char_tokens: tagging only: the tokens are single characters, so ``predict`` splits raw
            text into characters (else on whitespace).
    """

    kind: str
    labels: tuple[str, ...]
    metric: str
    char_tokens: bool = False

    @property
    def level(self) -> str:
        return KINDS[self.kind]["level"]

    @property
    def entity_tags(self) -> bool:
        return is_entity_scheme(self.labels)

    @property
    def fallback_label(self) -> str:
        """The tag given to words the model cannot see (truncated, or no sub-word piece)."""
        return "O" if "O" in self.labels else self.labels[0]

    def to_dict(self) -> dict:
        return {**asdict(self), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: dict) -> TaskSpec:
        return cls(
            kind=data["kind"],
            labels=tuple(data["labels"]),
            metric=data["metric"],
            char_tokens=bool(data.get("char_tokens", False)),
        )

    def save(self, folder: Path) -> None:
        (Path(folder) / TASK_FILE).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2))

    @classmethod
    def load(cls, folder: Path) -> TaskSpec:
        return cls.from_dict(json.loads((Path(folder) / TASK_FILE).read_text(encoding="utf-8")))


def is_entity_scheme(labels) -> bool:
    """BIO/BIOES-style tags (``O``, ``B-PER``, ``I-PER``, ``E-``, ``S-``...) with at least one entity."""
    labels = list(labels)
    return bool(labels) and all(_ENTITY_TAG.match(t) for t in labels) and any(t != "O" for t in labels)


def infer_kind(kind: str, source, text_pair_column: str | None) -> str:
    """``auto`` -> tagging for CoNLL files, ``demo:zh-news:*`` and JSON Lines of ``{"tokens": [...],
    "tags": [...]}``, pair with a second text column, else classification."""
    if kind != "auto":
        return kind
    text = str(source[0] if isinstance(source, list | tuple) else source)
    if text.startswith("demo:zh-news") or text.lower().endswith(_CONLL_SUFFIXES):
        return "tagging"
    if text.lower().endswith((".jsonl", ".ndjson")) and _token_records(text):
        return "tagging"
    return "pair" if text_pair_column else "classification"


def _token_records(path: str) -> bool:
    """Whether a JSON Lines file's first record is a tagged sentence (``tokens`` and ``tags`` lists)."""
    import json
    import os

    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                return False
            return (
                isinstance(rec, dict)
                and isinstance(rec.get("tokens"), list)
                and isinstance(rec.get("tags"), list)
            )
    return False


def example_labels(example: dict) -> list[str]:
    """Every label an example carries (one for classification, one per token for tagging)."""
    return list(example["tags"]) if "tags" in example else [example["label"]]


def check_classes(counts: Counter, where: str = "the training data") -> None:
    """A classifier needs two labels at least: one is a data error, named before anything trains."""
    if len(counts) == 1:
        (label, n), *_ = counts.items()
        raise DataError(
            f"{where} has one label only ({label!r}, {n} examples): a classifier needs at least two. "
            f"Check the label column ({setting('data.label_column')}) or add examples of the other classes"
        )


def build_spec(kind: str, examples: list[dict], *, labels=None, metric: str = "auto") -> TaskSpec:
    """The spec of a task from its training pool.

    Args:
        kind: classification, pair or tagging.
        examples: the labeled pool the budgets are drawn from (never the test set).
        labels: an explicit label set (its order is kept); the pool may not use others.
        metric: ``auto`` or one of the kind's metrics.

    Raises:
        DataError: the pool has labels outside ``labels``, or a metric that does not fit the kind.
    """
    if kind not in KINDS:
        raise DataError(f"unknown task kind {kind!r}; choose one of {', '.join(KINDS)}")
    seen = Counter(label for ex in examples for label in example_labels(ex))
    if labels:
        extra = sorted(set(seen) - set(labels))
        if extra:
            raise DataError(
                f"the training data has labels that task.labels does not list: {list_some(extra)} "
                f"({sum(seen[x] for x in extra)} occurrences); add them to task.labels or remove those examples"
            )
        labels = tuple(labels)
    else:
        labels = tuple(sorted(seen))
        if kind != "tagging":
            check_classes(seen)
    if metric == "auto":
        metric = KINDS[kind]["metric"] or ("entity_f1" if is_entity_scheme(labels) else "token_accuracy")
    if metric not in KINDS[kind]["metrics"]:
        raise DataError(
            f"task.metric={metric!r} does not fit a {kind} task; use one of {', '.join(KINDS[kind]['metrics'])}"
        )
    if metric == "entity_f1" and not is_entity_scheme(labels):
        raise DataError(
            f"task.metric=entity_f1 needs BIO/BIOES tags (O, B-X, I-X, ...); the tags are {list_some(labels)}. "
            "Use task.metric=token_accuracy"
        )
    char_tokens = False
    if kind == "tagging":
        lengths = [len(t) for ex in examples[:2000] for t in ex["tokens"]]
        char_tokens = bool(lengths) and sum(n == 1 for n in lengths) >= 0.95 * len(lengths)
    return TaskSpec(kind=kind, labels=labels, metric=metric, char_tokens=char_tokens)


def list_some(items, n: int = 10) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")
