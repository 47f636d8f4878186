"""NB-LR, the strong label-only baseline of Wang & Manning (2012, "Baselines and Bigrams"): binary
n-gram features scaled by their naive-Bayes log-count ratio, then a (class-balanced) logistic
regression. One binary model per class for more than two classes (one-vs-rest, each with its own
ratios), their scores normalised with a softmax.

Character n-grams when most letters are CJK, word uni- and bigrams otherwise (as :mod:`tfidf`); the
regularization strength is chosen on the dev split like TF-IDF's. It learns nothing from unlabeled
text: it is the baseline a practitioner would try before any pretraining.
"""

from __future__ import annotations

import numpy as np

from lmvalue.errors import DataError
from lmvalue.methods.tfidf import choose_c, cjk_share, classifier_inputs, load, prepare, save  # noqa: F401

ALPHA = 1.0  # smoothing of the naive-Bayes counts


class _Stacked:
    """The per-class logistic regressions, seen as one (``coef_``, ``intercept_``) for counting."""

    def __init__(self, clfs: list):
        self.clfs = clfs
        self.coef_ = np.vstack([c.coef_ for c in clfs])
        self.intercept_ = np.concatenate([c.intercept_ for c in clfs])
        self.C = clfs[0].C


class NBSVM:
    """Binary n-grams x log-count ratios -> logistic regression, with the pipeline interface that
    :func:`lmvalue.methods.tfidf.probabilities` and ``n_parameters`` read."""

    def __init__(self, vectorizer, ratios: np.ndarray, clfs: list, classes: list):
        self.named_steps = {"vectorizer": vectorizer, "logreg": _Stacked(clfs)}
        self.ratios, self.clfs, self.classes_ = ratios, clfs, np.asarray(classes)

    def predict_proba(self, texts) -> np.ndarray:
        x = self.named_steps["vectorizer"].transform(texts)
        if len(self.clfs) == 1:  # two classes: one model on one ratio vector
            return self.clfs[0].predict_proba(x.multiply(self.ratios[0]).tocsr())
        scores = np.column_stack(
            [
                clf.decision_function(x.multiply(r).tocsr())
                for clf, r in zip(self.clfs, self.ratios, strict=True)
            ]
        )
        scores -= scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)


def log_count_ratio(x, positive: np.ndarray) -> np.ndarray:
    """r = log((p / |p|_1) / (q / |q|_1)) with p, q the smoothed feature counts of the positive and
    the other examples (binary features)."""
    p = ALPHA + np.asarray(x[positive].sum(axis=0)).ravel()
    q = ALPHA + np.asarray(x[~positive].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum()))


def fit(texts: list[str], labels: list[str], cfg, c: float, seed: int) -> NBSVM:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    analyzer = cfg.ngrams.analyzer
    if analyzer == "auto":
        analyzer = "char" if cjk_share(texts) > 0.5 else "word"
    vectorizer = CountVectorizer(
        analyzer=analyzer, ngram_range=tuple(cfg.ngrams.range or (1, 2)), binary=True
    )
    x = vectorizer.fit_transform(texts).tocsr()
    y = np.asarray(labels)
    classes = sorted(set(labels))
    targets = classes[1:] if len(classes) == 2 else classes  # two classes: one model, for the second
    ratios, clfs = [], []
    for cls in targets:
        positive = y == cls
        r = log_count_ratio(x, positive)
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
        clf.fit(x.multiply(r).tocsr(), positive.astype(int) if len(targets) > 1 else y)
        ratios.append(r)
        clfs.append(clf)
    return NBSVM(vectorizer, np.vstack(ratios), clfs, classes)


def train(train: list[dict], dev: list[dict], spec, cfg, seed: int, score) -> tuple[object, dict]:
    """Fit one model per ``cfg.logreg.c`` on ``train``, keep the best on ``dev`` (C=1 without one)."""
    if spec.level == "token":
        raise DataError("method nbsvm supports classification and pair tasks, not tagging")
    texts = classifier_inputs(train)
    labels = [ex["label"] for ex in train]
    best, scores = choose_c(lambda c: fit(texts, labels, cfg, c, seed), dev, cfg, score)
    vec = best.named_steps["vectorizer"]
    info = {
        "C": best.named_steps["logreg"].C,
        "dev_scores_by_C": scores,
        "analyzer": vec.analyzer,
        "ngram_range": list(vec.ngram_range),
        "features": len(vec.vocabulary_),
    }
    return best, info


def describe(info: dict) -> str:
    return (
        f"binary {info['analyzer']} n-grams {info['ngram_range']} x NB log-count ratios, "
        f"{info['features']} features, C={info['C']:g}"
    )
