"""Scores: accuracy / macro-F1 / classification report for labels; entity-level P/R/F1 (seqeval)
and token accuracy for tags; a confusion matrix drawn as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmvalue.tasks import TaskSpec


def classification_scores(y_true: list[str], y_pred: list[str], labels) -> dict:
    """Accuracy, macro-F1 over the label set, and scikit-learn's report (dict and text).

    Test labels outside ``labels`` (kept with ``task.unknown_labels=keep``) count as errors.
    """
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    names = list(labels) + sorted(set(y_true) - set(labels))
    top = max((y_pred.count(c) for c in set(y_pred)), default=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # A model that says the same label for everything learned nothing, whatever its accuracy.
        "predicted_classes": len(set(y_pred)),
        "top_prediction_share": top / max(1, len(y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=names, average="macro", zero_division=0)),
        "report": classification_report(y_true, y_pred, labels=names, output_dict=True, zero_division=0),
        "report_text": classification_report(y_true, y_pred, labels=names, digits=4, zero_division=0),
    }


def tagging_scores(true_seqs: list[list[str]], pred_seqs: list[list[str]], *, entities: bool) -> dict:
    """Token accuracy; with BIO/BIOES tags also entity-level precision, recall and F1 (seqeval,
    micro-averaged over entities: an entity counts only when its type and both ends are right)."""
    flat_true = [t for s in true_seqs for t in s]
    flat_pred = [p for s in pred_seqs for p in s]
    correct = sum(t == p for t, p in zip(flat_true, flat_pred, strict=True))
    out = {"token_accuracy": correct / max(1, len(flat_true))}
    if entities:
        from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

        out.update(
            entity_precision=float(precision_score(true_seqs, pred_seqs, zero_division=0)),
            entity_recall=float(recall_score(true_seqs, pred_seqs, zero_division=0)),
            entity_f1=float(f1_score(true_seqs, pred_seqs, zero_division=0)),
            report=classification_report(true_seqs, pred_seqs, output_dict=True, zero_division=0),
            report_text=classification_report(true_seqs, pred_seqs, digits=4, zero_division=0),
        )
    return out


def task_scores(spec: TaskSpec, truth: list, predicted: list) -> dict:
    """All scores of the task's kind; ``truth``/``predicted`` are labels, or tag lists for tagging."""
    if spec.level == "token":
        return tagging_scores(truth, predicted, entities=spec.entity_tags)
    return classification_scores(truth, predicted, spec.labels)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.integer | np.floating):
        return value.item()
    return value


def summary(scores: dict) -> dict:
    """The numbers of ``scores`` (everything but the text report), JSON-ready."""
    return _jsonable({k: v for k, v in scores.items() if k != "report_text"})


def confusion_png(truth: list[str], predicted: list[str], labels, path: Path, title: str = "") -> Path:
    """Draw the confusion matrix (rows: true label, columns: predicted; counts) as a PNG."""
    from sklearn.metrics import confusion_matrix

    from lmvalue.plotting import figure_fonts

    names = list(labels) + sorted(set(truth) - set(labels))
    cm = confusion_matrix(truth, predicted, labels=names)
    size = max(4.0, 0.35 * len(names) + 2)
    with figure_fonts() as plt:
        fig, ax = plt.subplots(figsize=(size + 1, size))
        im = ax.imshow(np.log1p(cm), cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 6 else 0, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title or "confusion matrix")
        if len(names) <= 12:
            top = cm.max() or 1
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        color="white" if cm[i, j] > top / 2 else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="log(1 + count)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return Path(path)


def spans(tokens: list[str], tags: list[str], *, joiner: str = "") -> list[dict]:
    """Entities of a BIO/BIOES tag sequence: ``{"type", "start", "end" (exclusive), "text"}``."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [
        {"type": kind, "start": start, "end": end + 1, "text": joiner.join(tokens[start : end + 1])}
        for kind, start, end in get_entities(list(tags))
    ]
