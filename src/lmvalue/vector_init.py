"""Word-vector initialisation of a transformer's embeddings before pretraining (``model.init_vectors``).

A model pretrained for minutes on a CPU spends much of them on the "unigram plateau" of masked-LM
training (docs/value-recipes.md): before attention uses the context, the embeddings have to learn what
each piece means. word2vec learns that from the same corpus in about a minute. Here the vectors are
trained on the **tokenizer's own pieces** (the corpus tokenized exactly as the model will read it, so
characters for Chinese) with the model's hidden size, and copied into the input embedding matrix
(shared with the MLM output layer when tied) before the first step. Pieces word2vec never saw keep
their random init. One global factor rescales the vectors to the model's initialisation scale
(``initializer_range``), so that the embedding sum (word + position + segment) is not dominated by
them.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

log = logging.getLogger("lmvalue")

__all__ = ["init_embeddings", "piece_vectors"]


def piece_vectors(texts, tokenizer, *, dim: int, seed: int, epochs: int = 3, max_texts: int = 200_000):
    """word2vec skip-gram vectors of the tokenizer's pieces over ``texts`` (one worker: reproducible)."""
    from gensim.models import Word2Vec

    # gensim logs every epoch at INFO: keep it to warnings unless lmvalue runs verbose
    logging.getLogger("gensim").setLevel(
        logging.NOTSET if log.isEnabledFor(logging.DEBUG) else logging.WARNING
    )
    sentences = []
    for i, text in enumerate(texts):
        if i >= max_texts:
            break
        pieces = tokenizer.tokenize(text)
        if pieces:
            sentences.append(pieces)
    if not sentences:
        return None
    model = Word2Vec(
        sentences,
        vector_size=dim,
        window=5,
        min_count=1,
        sg=1,
        negative=5,
        epochs=epochs,
        workers=1,
        seed=seed,
    )
    return model.wv


def init_embeddings(model, tokenizer, texts, *, seed: int) -> dict:
    """Copy word2vec vectors of the tokenizer's pieces (trained on ``texts``) into ``model``'s input
    embeddings, scaled by one factor to the model's ``initializer_range``.

    Returns:
        {"pieces": rows replaced, "vocab": rows, "scale": the factor, "seconds": time taken}
    """
    t0 = time.perf_counter()
    emb = model.get_input_embeddings().weight
    kv = piece_vectors(texts, tokenizer, dim=emb.shape[1], seed=seed)
    if kv is None:
        return {"pieces": 0, "vocab": int(emb.shape[0]), "scale": None, "seconds": 0.0}
    vocab = tokenizer.get_vocab()
    rows = [
        (idx, piece) for piece, idx in sorted(vocab.items(), key=lambda x: x[1]) if piece in kv.key_to_index
    ]
    vectors = np.stack([kv[piece] for _, piece in rows]).astype(np.float64)
    target = float(getattr(model.config, "initializer_range", 0.02))
    scale = target / float(vectors.std())
    with torch.no_grad():
        index = torch.as_tensor([idx for idx, _ in rows])
        emb[index] = torch.as_tensor(vectors * scale, dtype=emb.dtype)
    info = {
        "pieces": len(rows),
        "vocab": int(emb.shape[0]),
        "scale": scale,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info(
        "init_vectors: word2vec vectors for %d of %d pieces copied into the embeddings (%.1fs)",
        info["pieces"],
        info["vocab"],
        info["seconds"],
    )
    return info
