"""A linear probe: a frozen encoder's mean-pooled hidden states + logistic regression.

The encoder is not trained at all: each input is encoded once, its hidden states are averaged over
the tokens (padding left out), standardized with the training split's statistics, and a logistic
regression is fitted per ``method.tfidf_c``; the regularization strength is chosen on the dev split,
as for ``tfidf`` and ``embeddings``. With a few dozen labels this has far less variance than
fine-tuning every weight, which is what a small, briefly pretrained model needs (see
docs/value-recipes.md). ``method.probe.layers`` picks the states: ``all`` (the mean over the embedding
output and every layer) or ``last``. Texts longer than the window are cut to its first ``data.max_length`` tokens,
or, with ``method.probe.chunks=true``, read as consecutive windows whose tokens are all averaged.

``probe-hybrid`` (:data:`HYBRID`) puts the labeled texts' own TF-IDF n-grams (``method.ngrams.*``) next to
those features, in one class-balanced logistic regression: what :mod:`lmvalue.methods.hybrid` does with
averaged word vectors, with the pretrained encoder as the view of the unlabeled text. Both halves are
L2-normalized rows (the encoder's after standardization), so neither dominates by scale.

A saved probe is a folder with the pipeline (``model.json`` + ``model.safetensors``, as the other scikit-learn methods) and
the encoder it reads (``encoder/``, a Hugging Face folder), so ``predict``/``serve`` need nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lmvalue.errors import DataError
from lmvalue.weights import from_pretrained

log = logging.getLogger("lmvalue")
ENCODER_DIR = "encoder"
PAIR_SEP = " \x1f "  # lmvalue.methods.tfidf.classifier_inputs joins a pair with it


class EncoderFeatures:
    """scikit-learn transformer: mean-pooled hidden states of a frozen encoder (float32 array)."""

    MEMO_LIMIT = 100_000  # inputs remembered (a served probe sees an unbounded stream)

    def __init__(
        self,
        encoder: str,
        layers: str = "all",
        max_length: int = 128,
        batch_size: int = 64,
        tokenizer=None,
        chunks: bool = False,
    ):
        self.encoder, self.layers, self.max_length, self.batch_size = encoder, layers, max_length, batch_size
        # chunks: a text longer than the window is read as consecutive windows, and its features are the
        # mean over every window's tokens (not only the first window's)
        self.chunks = chunks
        self._model, self._tokenizer = None, tokenizer
        self._memo: dict[str, np.ndarray] = {}

    def __getstate__(self):  # the pickled pipeline names the encoder folder; weights live there
        state = dict(self.__dict__)
        state.update(_model=None, _tokenizer=None, _memo={})
        return state

    def fit(self, x, y=None):
        return self

    def _load(self):
        if self._model is None:
            from transformers import AutoModel

            if self._tokenizer is None:
                from lmvalue.tokenizer import load_tokenizer

                self._tokenizer = load_tokenizer(self.encoder)
                if self._tokenizer.pad_token_id is None and self._tokenizer.eos_token is not None:
                    self._tokenizer.pad_token = self._tokenizer.eos_token
            self._model = from_pretrained(AutoModel, self.encoder).eval()
            limit = getattr(self._model.config, "max_position_embeddings", None)
            if limit:
                self.max_length = min(self.max_length, limit)
        return self._model, self._tokenizer

    @property
    def model(self):
        return self._load()[0]

    def transform(self, texts: list[str]) -> np.ndarray:
        import torch

        todo = sorted({t for t in texts if t not in self._memo}, key=lambda t: (len(t), t))
        if len(self._memo) + len(todo) > self.MEMO_LIMIT:
            self._memo.clear()
        if todo:
            model, tok = self._load()
            for i in range(0, len(todo), self.batch_size):
                chunk = todo[i : i + self.batch_size]
                split = [t.split(PAIR_SEP, 1) for t in chunk]
                firsts = [s[0] for s in split]
                # pairs are encoded as pairs; in a batch that mixes them with single texts, a missing
                # second text is empty
                seconds = (
                    [s[1] if len(s) == 2 else "" for s in split] if any(len(s) == 2 for s in split) else None
                )
                windows = bool(getattr(self, "chunks", False)) and seconds is None  # pairs: first window
                enc = tok(
                    firsts,
                    seconds,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                    **({"return_overflowing_tokens": True} if windows else {}),
                )
                # window -> its text (one window per text unless chunked)
                owner = enc.pop("overflow_to_sample_mapping", None) if windows else None
                enc.pop("num_truncated_tokens", None)
                with torch.inference_mode():
                    out = model(**enc, output_hidden_states=True)
                states = out.hidden_states
                h = states[-1] if self.layers == "last" else torch.stack(states).mean(0)  # (W, T, C)
                mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (W, T, 1)
                sums, counts = (h * mask).sum(1), mask.sum(1)  # (W, C), (W, 1)
                if owner is not None:  # add the windows of each text up: the mean over all its tokens
                    index = owner.long()
                    sums = torch.zeros(len(chunk), h.shape[-1], dtype=h.dtype).index_add_(0, index, sums)
                    counts = torch.zeros(len(chunk), 1, dtype=h.dtype).index_add_(0, index, counts)
                pooled = sums / counts.clamp(min=1)
                for text, row in zip(chunk, pooled.float().numpy(), strict=True):
                    self._memo[text] = row
        return np.stack([self._memo[t] for t in texts]).astype(np.float32)


class ProbeClassifier:
    """Encoder features -> standardization -> logistic regression, with the pipeline interface that
    :func:`lmvalue.methods.tfidf.probabilities` and ``n_parameters`` read. With an ``ngrams`` step
    (``probe-hybrid``), the standardized features are L2-normalized and the n-grams' TF-IDF rows put
    next to them."""

    def __init__(self, features: EncoderFeatures, scaler, clf, ngrams=None):
        self.named_steps = {"features": features, "scale": scaler, "logreg": clf}
        if ngrams is not None:
            self.named_steps["ngrams"] = ngrams

    @property
    def classes_(self):
        return self.named_steps["logreg"].classes_

    def inputs(self, texts):
        return combine(
            self.named_steps["scale"].transform(self.named_steps["features"].transform(texts)),
            self.named_steps.get("ngrams"),
            texts,
        )

    def predict_proba(self, texts):
        return self.named_steps["logreg"].predict_proba(self.inputs(texts))


def combine(dense: np.ndarray, ngrams, texts):
    """The regression's inputs: the standardized encoder features alone, or (with a fitted n-gram
    vectorizer) their L2-normalized rows next to the TF-IDF rows, as one sparse matrix."""
    if ngrams is None:
        return dense
    from scipy import sparse
    from sklearn.preprocessing import normalize

    return sparse.hstack([sparse.csr_matrix(normalize(dense)), ngrams.transform(texts)], format="csr")


def train(
    train_set: list[dict],
    dev: list[dict],
    spec,
    cfg,
    seed: int,
    score,
    *,
    encoder: str,
    max_length: int,
    tokenizer=None,
    ngrams: bool = False,
) -> tuple[object, dict]:
    """Encode the training split once, fit one logistic regression per ``cfg.logreg.c``, keep the best on
    ``dev``. ``ngrams``: the encoder features next to the texts' TF-IDF n-grams (``probe-hybrid``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lmvalue.methods import hybrid
    from lmvalue.methods.embeddings import is_cjk
    from lmvalue.methods.tfidf import classifier_inputs

    name = "probe-hybrid" if ngrams else "probe"
    if spec.level == "token":
        raise DataError(f"method {name} supports classification and pair tasks, not tagging")
    features = EncoderFeatures(
        encoder, cfg.probe.layers, max_length, tokenizer=tokenizer, chunks=cfg.probe.chunks
    )
    texts = classifier_inputs(train_set)
    x = features.transform(texts)
    scaler = StandardScaler().fit(x)
    vectorizer = hybrid.ngram_vectorizer(cfg, is_cjk(texts)).fit(texts) if ngrams else None
    xs = combine(scaler.transform(x), vectorizer, texts)
    labels = [ex["label"] for ex in train_set]
    grid = list(cfg.logreg.c) if dev else [1.0]
    best, best_score, scores = None, (-np.inf,), {}
    # balanced like tfidf/hybrid when the n-grams take part, as the plain probe was measured without
    weight = "balanced" if ngrams else None
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed, class_weight=weight).fit(xs, labels)
        pipe = ProbeClassifier(features, scaler, clf, vectorizer)
        s = score(pipe, dev) if dev else (0.0,)  # (metric, tie-breaker)
        scores[str(c)] = s[0]
        if s > best_score:
            best, best_score = pipe, s
    info = {
        "C": best.named_steps["logreg"].C,
        "dev_scores_by_C": scores,
        "encoder": encoder,
        "layers": cfg.probe.layers,
        "chunks": cfg.probe.chunks,
        "dim": int(x.shape[1]),
    }
    if vectorizer is not None:
        info.update(
            analyzer=vectorizer.analyzer,
            ngram_range=list(vectorizer.ngram_range),
            ngram_features=len(vectorizer.vocabulary_),
        )
    return best, info


def save(pipe: ProbeClassifier, folder: Path) -> None:
    """The pipeline plus a copy of its encoder (model and tokenizer) in ``folder/encoder``."""
    from lmvalue.methods import tfidf

    features = pipe.named_steps["features"]
    model, tok = features._load()
    model.save_pretrained(Path(folder) / ENCODER_DIR)
    tok.save_pretrained(Path(folder) / ENCODER_DIR)
    source = features.encoder
    features.encoder = ENCODER_DIR  # relative: the folder can be moved
    try:
        tfidf.save(pipe, folder)
    finally:
        features.encoder = source


def load(folder: Path, *, trust_pickle: bool = False) -> ProbeClassifier:
    from lmvalue.methods import tfidf

    pipe = tfidf.load(folder, trust_pickle=trust_pickle)
    features = pipe.named_steps["features"]
    features.encoder = str(Path(folder) / features.encoder)
    return pipe


def prepare(cfg) -> dict:
    """The encoder and its tokenizer, resolved before anything is written (a bad checkpoint fails here)."""
    from lmvalue.tokenizer import load_tokenizer
    from lmvalue.weights import resolve_checkpoint

    encoder = resolve_checkpoint(cfg.model.init_from)
    return {
        "encoder": encoder,
        "tokenizer": load_tokenizer(cfg.model.tokenizer or encoder),
        "max_length": cfg.data.max_length,
    }


def describe(info: dict) -> str:
    read = ", every window of long texts" if info.get("chunks") else ""
    grams = (
        f" + {info['ngram_features']} {info['analyzer']} n-grams {info['ngram_range']}"
        if "ngram_features" in info
        else ""
    )
    return (
        f"{info['dim']} features ({info['layers']} layers{read}) of {info['encoder']}{grams}, C={info['C']:g}"
    )


class _Hybrid:
    """The trainer of method ``probe-hybrid``: this module's, with the n-grams."""

    prepare = staticmethod(prepare)
    save = staticmethod(save)
    load = staticmethod(load)
    describe = staticmethod(describe)

    @staticmethod
    def train(*args, **kwargs):
        return train(*args, **kwargs, ngrams=True)


HYBRID = _Hybrid()
