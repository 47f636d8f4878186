"""Using the unlabeled corpus through a teacher's pseudo-labels: self-training and distillation.

A value study's arm with the ``+self`` suffix (``embeddings+self``, ``nbsvm+self``,
``pretrained:mlm+self``) is a teacher–student pair:

1. the teacher is the arm's own model, trained on the cell's labeled budget and selected on the
   cell's gold dev split, exactly like the plain arm;
2. it labels the study's unlabeled pool (``unlabeled.txt``: the corpus without the test texts and their
   near duplicates, and without the cell's own labeled texts), and the most confident examples are
   kept with **per-class quotas that follow the labeled class prior** (:func:`select_pseudo`);
3. a student — the same arm, from the same start — is trained on the gold labels plus those
   pseudo-labels; a round's student is the next round's teacher.

Which share of the pool to keep and how many rounds to run (1–3) are chosen on the gold dev split
only (:func:`self_train`); the test split is scored once, with the winner. A ``distill:TEACHER`` arm
hands the (self-)trained teacher's pseudo-labels over the whole pool to the study's pretrained
transformer (see :mod:`lmvalue.value.study`).

This module holds the algorithm only: the caller passes ``fit(extra_examples) -> candidate``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("lmvalue")

__all__ = [
    "Candidate",
    "class_prior",
    "near_duplicate_mask",
    "select_pseudo",
    "self_train",
    "unlabeled_pool",
]


@dataclass
class Candidate:
    """One trained model of a self-training run and how it was made."""

    model: object  # a TaskModel (in memory)
    dev_score: float
    dev_loss: float
    round: int  # 0: the teacher trained on the gold labels alone
    fraction: float | None = None  # the share of the pool offered as pseudo-labels
    pseudo: int = 0  # pseudo-labelled examples it was trained on
    info: dict = field(default_factory=dict)  # the fit's metrics

    def key(self) -> tuple:
        # The dev split of a small budget has a handful of examples and ties are common: among equal
        # dev scores, prefer a student (the pseudo-labels are the point of the arm), then the lower
        # dev cross-entropy.
        return (round(self.dev_score, 9), self.round > 0, -self.dev_loss)

    def describe(self) -> dict:
        return {
            "round": self.round,
            "fraction": self.fraction,
            "pseudo_labels": self.pseudo,
            "dev_score": self.dev_score,
            "dev_loss": self.dev_loss,
        }


def class_prior(labels: list[str], classes: list[str]) -> np.ndarray:
    """The labeled class shares in ``classes`` order (a class absent from the labels gets 0)."""
    counts = Counter(labels)
    p = np.array([counts.get(c, 0) for c in classes], dtype=float)
    return p / p.sum()


def select_pseudo(
    texts: list[str],
    probs: np.ndarray,
    classes: list[str],
    prior: np.ndarray,
    fraction: float,
    *,
    soft: bool = False,
) -> list[dict]:
    """The teacher's most confident pseudo-labels, with per-class quotas that follow ``prior``.

    About ``fraction × len(texts)`` examples are kept: class c gets ``prior[c]`` of them, taken from the
    texts the teacher assigns to c (its argmax), most probable first. When the teacher assigns fewer
    texts to some class than its quota, every quota shrinks by the same factor, so the kept set still
    follows the prior (a teacher that over-predicts one class cannot flood the student with it).
    A class the teacher never predicts gets no pseudo-labels. Ties keep the earlier text.

    Returns:
        ``[{"text", "label", "confidence"}]``, grouped by class; with ``soft``, each also holds the
        teacher's whole distribution (``probs``, in ``classes`` order) for a student that learns from it.
    """
    if len(texts) == 0 or fraction <= 0:
        return []
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(axis=1)
    want = fraction * len(texts) * np.asarray(prior, dtype=float)
    available = np.bincount(pred, minlength=len(classes)).astype(float)
    active = (want > 0) & (available > 0)
    if not active.any():
        return []
    scale = min(1.0, float(np.min(available[active] / want[active])))
    out = []
    for c in np.flatnonzero(active):
        quota = int(np.floor(want[c] * scale + 1e-9))
        idx = np.flatnonzero(pred == c)
        order = idx[np.argsort(-probs[idx, c], kind="stable")][:quota]
        for i in order:
            ex = {"text": texts[i], "label": classes[c], "confidence": float(probs[i, c])}
            if soft:
                ex["probs"] = [float(p) for p in probs[i]]
            out.append(ex)
    return out


def self_train(
    fit: Callable[[list[dict]], Candidate],
    predict: Callable[[object, list[str]], np.ndarray],
    texts: list[str],
    classes: list[str],
    prior: np.ndarray,
    *,
    rounds: int = 3,
    fractions: tuple[float, ...] = (0.1, 0.3, 1.0),
    teacher: Candidate | None = None,
) -> tuple[Candidate, list[dict]]:
    """Teacher → students for up to ``rounds`` rounds; the winner is chosen on the dev split only.

    Each round labels ``texts`` with the previous round's best model and trains one student per
    fraction in ``fractions`` (:func:`select_pseudo`). The run stops early when a round's best student
    scores below the best model so far on dev. The teacher (round 0) stays a candidate: a pool the dev
    split says hurts is not forced on the arm.

    Args:
        fit: trains a model on the gold split plus the given pseudo-labelled examples; returns a
            :class:`Candidate` (its ``round``/``fraction`` are filled in here).
        predict: ``(model, texts) -> (N, C) probabilities`` in ``classes`` order.

    Returns:
        (winner, history): every candidate's round, fraction, pseudo-label count and dev scores.
    """
    best = teacher if teacher is not None else fit([])
    best.round, best.fraction, best.pseudo = 0, None, 0
    history = [best.describe()]
    current = best
    for r in range(1, rounds + 1):
        probs = predict(current.model, texts)
        round_best = None
        for f in fractions:
            pseudo = select_pseudo(texts, probs, classes, prior, f)
            if not pseudo:
                continue
            cand = fit(pseudo)
            cand.round, cand.fraction, cand.pseudo = r, f, len(pseudo)
            history.append(cand.describe())
            log.info(
                "  self-training round %d, %.0f%% of the pool (%d pseudo-labels): dev %.4f",
                r,
                100 * f,
                len(pseudo),
                cand.dev_score,
            )
            if round_best is None or cand.key() > round_best.key():
                round_best = cand
        if round_best is None:
            break
        improved = round_best.key() > best.key()
        if improved:
            best = round_best
        if round_best.dev_score < best.dev_score:
            break  # this round's students are worse than what we have: more rounds follow a worse teacher
        current = round_best
    return best, history


def near_duplicate_mask(
    corpus_texts: list[str], test_texts: list[str], *, threshold: float = 0.9, chunk: int = 4096
) -> np.ndarray:
    """True for every corpus text that equals a test text or is a near duplicate of one (the
    character-3-gram cosine of :mod:`lmvalue.value.overlap`, ≥ ``threshold``)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    from lmvalue.value.overlap import normalize

    test_norm = [normalize(t) for t in test_texts]
    exact = set(test_norm)
    vec = HashingVectorizer(
        analyzer="char", ngram_range=(3, 3), n_features=2**20, alternate_sign=False, norm="l2"
    )
    test_m = vec.transform(test_norm)
    mask = np.zeros(len(corpus_texts), dtype=bool)
    for start in range(0, len(corpus_texts), chunk):
        norm = [normalize(t) for t in corpus_texts[start : start + chunk]]
        block = vec.transform(norm)
        sims = (block @ test_m.T).max(axis=1).toarray().ravel() if test_texts else np.zeros(len(norm))
        for j, t in enumerate(norm):
            mask[start + j] = sims[j] >= threshold or t in exact
    return mask


def unlabeled_pool(
    corpus_path: Path, test_texts: list[str], out_path: Path, *, max_texts: int, seed: int = 0
) -> dict:
    """Write the texts a teacher may pseudo-label: the corpus without the test texts and their near
    duplicates, at most ``max_texts`` of them (a seeded sample, in corpus order). Returns counts."""
    from lmvalue.data.lines import read_lines
    from lmvalue.files import write_text_atomic

    corpus = [t for t in read_lines(corpus_path) if t.strip()]
    drop = near_duplicate_mask(corpus, test_texts)
    keep = [t for t, d in zip(corpus, drop, strict=True) if not d]
    unique = list(dict.fromkeys(keep))
    if len(unique) > max_texts:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(unique), size=max_texts, replace=False))
        unique = [unique[i] for i in chosen]
    write_text_atomic(out_path, "\n".join(unique) + "\n")
    return {
        "corpus_texts": len(corpus),
        "dropped_test_duplicates": int(drop.sum()),
        "pool_texts": len(unique),
    }
