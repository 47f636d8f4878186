"""Does the unlabeled corpus contain the test texts? Exact and near-duplicate overlap.

Pretraining on the test texts themselves inflates what pretraining seems to be worth, so every
study states the overlap. Exact: equal after normalisation (case, whitespace and punctuation
removed). Near: cosine similarity of character 3-gram count vectors ≥ ``threshold`` (hashed, sparse;
2,000 test texts against 35,000 corpus texts take a few seconds).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

_STRIP = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    return _STRIP.sub("", unicodedata.normalize("NFKC", text).lower())


def text_overlap(
    test_texts: list[str], corpus_texts: list[str], *, threshold: float = 0.9, chunk: int = 4096
) -> dict:
    """Count test texts that appear in the corpus exactly or nearly.

    Returns:
        {"test": n, "exact": k, "near": m (including exact), "threshold": t, "examples": [...]}
    """
    from sklearn.feature_extraction.text import HashingVectorizer

    corpus_norm = {normalize(t) for t in corpus_texts}
    test_norm = [normalize(t) for t in test_texts]
    exact = [i for i, t in enumerate(test_norm) if t and t in corpus_norm]

    vec = HashingVectorizer(
        analyzer="char", ngram_range=(3, 3), n_features=2**20, alternate_sign=False, norm="l2"
    )
    test_m = vec.transform(test_norm)
    best = np.zeros(len(test_texts))
    for start in range(0, len(corpus_texts), chunk):
        block = vec.transform([normalize(t) for t in corpus_texts[start : start + chunk]])
        sims = (test_m @ block.T).max(axis=1).toarray().ravel()
        best = np.maximum(best, sims)
    near = sorted(set(np.flatnonzero(best >= threshold).tolist()) | set(exact))
    return {
        "test": len(test_texts),
        "exact": len(exact),
        "near": len(near),
        "threshold": threshold,
        "examples": [test_texts[i][:80] for i in near[:5]],
    }


def describe_overlap(o: dict) -> str:
    if o["test"] == 0:
        return "no test texts"
    return (
        f"{o['exact']} of {o['test']} test texts ({o['exact'] / o['test']:.1%}) appear verbatim in the unlabeled corpus, "
        f"{o['near']} ({o['near'] / o['test']:.1%}) as exact or near duplicates (char-3-gram cosine ≥ {o['threshold']})"
    )
