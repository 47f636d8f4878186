"""The classical baseline: TF-IDF n-grams + logistic regression (scikit-learn).

Character n-grams when most letters are CJK (Chinese has no spaces to split words on), word
n-grams otherwise. The regularization strength is chosen on the dev split of the same budget,
exactly as the networks choose their best evaluation, and the test split is scored once.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lmvalue.errors import DataError
from lmvalue.methods import plainstate

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def cjk_share(texts: list[str]) -> float:
    """Share of letters that are CJK ideographs, kana or hangul."""
    sample = "".join(texts[:2000])
    letters = sum(ch.isalpha() for ch in sample)
    return len(_CJK.findall(sample)) / letters if letters else 0.0


def classifier_inputs(examples: list[dict]) -> list[str]:
    # A pair is read as one text with a separator the vectorizer cannot mistake for a word.
    return [
        ex["text"] if not ex.get("text_pair") else f"{ex['text']} \x1f {ex['text_pair']}" for ex in examples
    ]


def build(texts: list[str], cfg, c: float, seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    analyzer = cfg.ngrams.analyzer
    if analyzer == "auto":
        analyzer = "char" if cjk_share(texts) > 0.5 else "word"
    ngrams = tuple(cfg.ngrams.range or (1, 2))
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=1)
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
    return Pipeline([("tfidf", vectorizer), ("logreg", clf)])


def choose_c(fit, dev: list[dict], cfg, score) -> tuple[object, dict]:
    """``fit(C)`` for every C of ``cfg.logreg.c`` (only C=1 without a dev split); keep the best by
    ``score(model, dev)`` = (metric, tie-breaker), the first of equals. Returns (model, dev score by C)."""
    grid = list(cfg.logreg.c) if dev else [1.0]
    best, best_score, scores = None, (-np.inf,), {}
    for c in grid:
        model = fit(c)
        s = score(model, dev) if dev else (0.0,)
        scores[str(c)] = s[0]
        if s > best_score:
            best, best_score = model, s
    return best, scores


def train(train: list[dict], dev: list[dict], spec, cfg, seed: int, score) -> tuple[object, dict]:
    """Fit one pipeline per ``cfg.logreg.c`` on ``train``, keep the best on ``dev``.

    Args:
        score: ``(pipeline, examples) -> (dev score, tie-breaker)`` (higher is better).

    Returns:
        (pipeline, info) with the C chosen and every dev score.
    """
    if spec.level == "token":
        raise DataError("method tfidf supports classification and pair tasks, not tagging")
    texts = classifier_inputs(train)
    labels = [ex["label"] for ex in train]
    best, scores = choose_c(lambda c: build(texts, cfg, c, seed).fit(texts, labels), dev, cfg, score)
    vec = best.named_steps["tfidf"]
    info = {
        "C": best.named_steps["logreg"].C,
        "dev_scores_by_C": scores,
        "analyzer": vec.analyzer,
        "ngram_range": list(vec.ngram_range),
        "features": len(vec.vocabulary_),
    }
    return best, info


def probabilities(pipe, examples: list[dict], labels) -> np.ndarray:
    """(N, len(labels)) class probabilities in the task's label order."""
    proba = pipe.predict_proba(classifier_inputs(examples))
    out = np.zeros((len(examples), len(labels)))
    index = {label: i for i, label in enumerate(labels)}
    for j, cls in enumerate(pipe.classes_):
        out[:, index[cls]] = proba[:, j]
    return out


def n_parameters(pipe) -> int:
    clf = pipe.named_steps["logreg"]
    return int(clf.coef_.size + clf.intercept_.size)


def save(pipe, folder: Path) -> None:
    """The fitted pipeline as plain data (:mod:`lmvalue.methods.plainstate`): no pickle."""
    plainstate.save(pipe, folder)


def load(folder: Path, *, trust_pickle: bool = False):
    return plainstate.load(folder, trust_pickle=trust_pickle)


def prepare(cfg) -> dict:
    """Extra arguments of :func:`train`, checked before anything is written: none."""
    return {}


def describe(info: dict) -> str:
    return f"{info['analyzer']} n-grams {info['ngram_range']}, {info['features']} features, C={info['C']:g}"
