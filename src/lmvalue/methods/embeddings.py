"""The cheapest way unlabeled text can pay: static word vectors learned from it (word2vec skip-gram,
``gensim``), averaged over an input's words, + logistic regression.

Words are ``jieba`` words for Chinese (and other CJK) text, lower-cased word tokens otherwise. The
vectors are trained once per corpus and settings and cached (``$LMVALUE_CACHE/vectors``), so every
cell of a value study reuses them; a saved ``KeyedVectors`` file or a word2vec text/binary file can be
given instead. The regularization strength is chosen on the dev split, as for ``tfidf``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from pathlib import Path

import numpy as np

from lmvalue.errors import ConfigError, DataError

log = logging.getLogger("lmvalue")

_WORD = re.compile(r"\w+", re.UNICODE)
VECTOR_SUFFIXES = (".kv", ".bin", ".vec", ".w2v")


def words(text: str, cjk: bool) -> list[str]:
    return list(_words(text, cjk))


@functools.lru_cache(maxsize=200_000)
def _words(text: str, cjk: bool) -> tuple[str, ...]:
    # cached: self-training and every cell of a study read the same corpus texts again and again, and
    # jieba's segmentation is the slow part of featurizing them
    if cjk:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        return tuple(w for w in jieba.lcut(text) if w.strip())
    return tuple(_WORD.findall(text.lower()))


def quiet_gensim() -> None:
    """gensim logs every vocabulary scan, epoch and file save at INFO, which buries lmvalue's own
    lines: keep its logger to warnings, unless lmvalue runs verbose (``-v``: debug logging)."""
    logging.getLogger("gensim").setLevel(
        logging.NOTSET if log.isEnabledFor(logging.DEBUG) else logging.WARNING
    )


def is_cjk(texts: list[str]) -> bool:
    from lmvalue.methods.tfidf import cjk_share

    return cjk_share(texts) > 0.5


class MeanVectors:
    """scikit-learn transformer: the L2-normalized mean of the vectors of an input's known words
    (zeros when it has none). Pairs are the mean over both texts."""

    def __init__(self, vectors, cjk: bool):
        self.vectors, self.cjk = vectors, cjk

    def fit(self, x, y=None):
        return self

    def get_params(self, deep=True):
        return {"vectors": self.vectors, "cjk": self.cjk}

    def set_params(self, **params):
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def transform(self, texts):
        kv = self.vectors
        out = np.zeros((len(texts), kv.vector_size), dtype=np.float32)
        for i, t in enumerate(texts):
            known = [w for w in words(t, self.cjk) if w in kv.key_to_index]
            if known:
                v = kv[known].mean(axis=0)
                out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
        return out


def train_vectors(texts, *, cjk: bool, dim: int, epochs: int, min_count: int, seed: int, workers: int = 1):
    """word2vec skip-gram (window 5, negative sampling) on the segmented texts; returns KeyedVectors.

    One worker thread: gensim is only reproducible with one (with two, the same seed gives other
    vectors in every process), and every lmvalue run must be reproducible."""
    from gensim.models import Word2Vec

    quiet_gensim()
    sentences = [words(t, cjk) for t in texts]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise DataError("the corpus for the word vectors has no words")
    model = Word2Vec(
        sentences,
        vector_size=dim,
        window=5,
        min_count=min_count,
        sg=1,
        negative=5,
        epochs=epochs,
        workers=workers,
        seed=seed,
    )
    return model.wv


def resolve_vectors(cfg, seed: int, cjk_hint: bool):
    """KeyedVectors from ``method.vectors.source``: a vectors file, or a text source to train them on
    (cached by the corpus's content and the settings). Returns (vectors, info)."""
    from gensim.models import KeyedVectors

    quiet_gensim()
    ref = cfg.vectors.source
    if not ref:
        raise ConfigError(
            "method embeddings needs method.vectors.source: a text corpus to learn word vectors from (a file, "
            "folder or demo:NAME), or a saved vectors file (.kv, word2vec .bin/.vec)"
        )
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix in VECTOR_SUFFIXES:
        if path.suffix == ".kv":
            return KeyedVectors.load(str(path)), {"vectors": str(path)}
        return KeyedVectors.load_word2vec_format(str(path), binary=path.suffix == ".bin"), {
            "vectors": str(path)
        }
    from lmvalue.data.shards import cache_root
    from lmvalue.data.sources import load_texts

    texts = load_texts(ref)
    cjk = is_cjk(texts) if texts else cjk_hint
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        h.update(t.encode("utf-8") + b"\x00")
    settings = f"w2v-sg:{cfg.vectors.dim}:{cfg.vectors.epochs}:{cfg.vectors.min_count}:{cjk}:{seed}"
    h.update(settings.encode())
    folder = cache_root(None) / "vectors"
    target = folder / f"{h.hexdigest()}.kv"
    if target.is_file():
        log.info("word vectors from the cache: %s", target)
        return KeyedVectors.load(str(target)), {"vectors": str(target), "cached": True}
    t0 = time.perf_counter()
    kv = train_vectors(
        texts,
        cjk=cjk,
        dim=cfg.vectors.dim,
        epochs=cfg.vectors.epochs,
        min_count=cfg.vectors.min_count,
        seed=seed,
    )
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{target.name}"
    kv.save(str(tmp))
    for f in folder.glob(f".tmp-{target.name}*"):  # large arrays may go to side files
        f.rename(folder / f.name.replace(".tmp-", "", 1))
    log.info("trained %d word vectors on %d texts in %.1fs -> %s", len(kv), len(texts), seconds, target)
    return kv, {"vectors": str(target), "cached": False, "train_seconds": round(seconds, 2), "words": len(kv)}


class VectorClassifier:
    """Averaged word vectors + a fitted logistic regression, with the pipeline interface that
    :func:`lmvalue.methods.tfidf.probabilities` and ``n_parameters`` read."""

    def __init__(self, features: MeanVectors, clf):
        self.named_steps = {"vectors": features, "logreg": clf}

    @property
    def classes_(self):
        return self.named_steps["logreg"].classes_

    def predict_proba(self, texts):
        return self.named_steps["logreg"].predict_proba(self.named_steps["vectors"].transform(texts))


def train(train_set: list[dict], dev: list[dict], spec, cfg, seed: int, score) -> tuple[object, dict]:
    """Fit one pipeline per ``cfg.logreg.c`` on the averaged vectors, keep the best on ``dev``."""
    from sklearn.linear_model import LogisticRegression

    from lmvalue.methods.tfidf import choose_c, classifier_inputs

    if spec.level == "token":
        raise DataError("method embeddings supports classification and pair tasks, not tagging")
    texts = classifier_inputs(train_set)
    cjk = is_cjk(texts)
    kv, info = resolve_vectors(cfg, seed, cjk)
    labels = [ex["label"] for ex in train_set]
    features = MeanVectors(kv, cjk)
    x = features.transform(texts)

    def fit(c):
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
        return VectorClassifier(features, clf.fit(x, labels))

    best, scores = choose_c(fit, dev, cfg, score)
    info.update(
        C=best.named_steps["logreg"].C,
        dev_scores_by_C=scores,
        dim=kv.vector_size,
        words=len(kv),
        segmentation="jieba" if cjk else "words",
        coverage=float(np.mean([np.any(row) for row in x])),
    )
    return best, info


# the fitted pipeline is a scikit-learn one, saved and loaded like TF-IDF's
from lmvalue.methods.tfidf import load, prepare, save  # noqa: E402, F401


def describe(info: dict) -> str:
    return (
        f"{info['words']} words x {info['dim']} dims ({info['segmentation']}), "
        f"{100 * info['coverage']:.0f}% of training inputs covered, C={info['C']:g}"
    )
