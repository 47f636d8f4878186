"""Token-tag prediction (``tags``): an auxiliary loss from word-level tags of the unlabeled corpus.

A corpus of ``word/TAG`` tokens (the People's Daily text of ``demo:zh-news`` carries POS tags)
gives every word a tag; the first token of each word is labelled with it and the other pieces are
-100 (``tag_labels``, see :mod:`lmvalue.data.annotate`), the usual token-classification
convention. A linear head over the final hidden states predicts the tag, next to a masking
objective (``[mlm, tags]``) on the same inputs.

The head is saved in the model folder as ``tag_head.*`` weights in ``model.safetensors`` and the
tag vocabulary (index order) as ``lmvalue_tag_labels`` in ``config.json``; transformers' own
classes ignore both when loading.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmvalue.errors import ConfigError
from lmvalue.objectives.base import Objective
from lmvalue.objectives.forward import Encoded
from lmvalue.objectives.mlm import IGNORE

HEAD_NAME = "tag_head"
LABELS_KEY = "lmvalue_tag_labels"


def attach_tag_head(model, labels: list[str]) -> torch.nn.Linear:
    """Give ``model`` a ``tag_head`` (hidden -> len(labels)) and record the labels in its config."""
    existing = getattr(model, HEAD_NAME, None)
    if existing is not None and getattr(model.config, LABELS_KEY, None) == list(labels):
        return existing  # continued pretraining of a model that has this head already
    hidden = model.get_input_embeddings().embedding_dim
    head = torch.nn.Linear(hidden, len(labels))
    torch.nn.init.normal_(head.weight, std=getattr(model.config, "initializer_range", 0.02))
    torch.nn.init.zeros_(head.bias)
    setattr(model, HEAD_NAME, head.to(next(model.parameters()).device))
    setattr(model.config, LABELS_KEY, list(labels))
    return head


class TagPrediction(Objective):
    """Objective ``tags``: predict each word's tag at its first token."""

    name = "tags"
    needs = frozenset({"tags"})

    def __init__(self, labels: list[str], model=None):
        self.labels = list(labels)
        self.head = attach_tag_head(model, self.labels) if model is not None else None

    @classmethod
    def from_config(cls, tokenizer, cfg, *, model=None, tag_labels=None, **_):
        if not tag_labels:
            raise ConfigError(
                "objective tags needs a tagged corpus (word/TAG tokens, e.g. data.source=demo:zh-news)"
            )
        return cls(tag_labels, model)

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        return batch  # the labels are built with the data

    def losses(self, encoded: Encoded, batch: dict) -> dict:
        labels = batch["tag_labels"]  # (B, T)
        selected = labels != IGNORE
        target = labels[selected]  # (N,)
        logits = self.head(encoded.hidden[selected])  # (N, n_tags)
        loss = F.cross_entropy(logits.float(), target) if target.numel() else logits.sum() * 0.0
        with torch.no_grad():
            correct = (logits.argmax(-1) == target).sum()
        return {
            "tags_loss": loss,
            "tags_correct": correct,
            "tags_count": torch.tensor(target.numel(), device=target.device),
        }
