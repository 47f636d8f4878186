"""Word vectors from the unlabeled text *and* the labeled text's own n-grams, in one classifier.

The two cheap views of a text are complementary: averaged word2vec vectors (learned from the unlabeled
corpus, see :mod:`lmvalue.methods.embeddings`) know that words the labels never showed resemble words
they did, while TF-IDF n-grams (:mod:`lmvalue.methods.tfidf`) read the exact cues of the labeled
texts. Concatenating them for one logistic regression is the classic way to combine them (cf. Mesnil et
al. 2014, who combine NB-SVM with paragraph vectors on IMDb). Both halves are L2-normalized rows, so
neither dominates by scale; C is chosen on the dev split with the same tie-break as the other
classical methods.
"""

from __future__ import annotations

from lmvalue.errors import DataError
from lmvalue.methods.embeddings import MeanVectors, is_cjk, resolve_vectors

# fitted pipelines are scikit-learn ones, saved and loaded like TF-IDF's
from lmvalue.methods.tfidf import choose_c, classifier_inputs, load, prepare, save  # noqa: F401


def ngram_vectorizer(cfg, cjk: bool):
    """The labeled texts' TF-IDF n-grams (``method.ngrams.*``): characters for Chinese, words otherwise."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyzer = cfg.ngrams.analyzer
    if analyzer == "auto":
        analyzer = "char" if cjk else "word"
    ngrams = tuple(cfg.ngrams.range or (1, 2))
    return TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=1)


def build(texts: list[str], kv, cjk: bool, cfg, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion([("vectors", MeanVectors(kv, cjk)), ("tfidf", ngram_vectorizer(cfg, cjk))])
    clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced", random_state=seed)
    return Pipeline([("features", features), ("logreg", clf)])


def train(train_set: list[dict], dev: list[dict], spec, cfg, seed: int, score) -> tuple[object, dict]:
    """Fit one pipeline per ``cfg.logreg.c``, keep the best on ``dev`` (see :mod:`lmvalue.methods.tfidf`)."""
    if spec.level == "token":
        raise DataError("method hybrid supports classification and pair tasks, not tagging")
    texts = classifier_inputs(train_set)
    cjk = is_cjk(texts)
    kv, info = resolve_vectors(cfg, seed, cjk)
    labels = [ex["label"] for ex in train_set]
    best, scores = choose_c(lambda c: build(texts, kv, cjk, cfg, c, seed).fit(texts, labels), dev, cfg, score)
    vec = best.named_steps["features"].transformer_list[1][1]
    info.update(
        C=best.named_steps["logreg"].C,
        dev_scores_by_C=scores,
        dim=kv.vector_size,
        words=len(kv),
        analyzer=vec.analyzer,
        ngram_range=list(vec.ngram_range),
        ngram_features=len(vec.vocabulary_),
    )
    return best, info


def describe(info: dict) -> str:
    return (
        f"{info['words']} word vectors x {info['dim']} dims + {info['ngram_features']} {info['analyzer']} "
        f"n-grams {info['ngram_range']}, C={info['C']:g}"
    )
