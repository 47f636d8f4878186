"""Sentence-pair objectives: next-sentence (``nsp``) and sentence-order (``sop``) prediction.

The inputs are ``[CLS] A [SEP] B [SEP]`` examples built by :func:`lmvalue.data.pairs.build_pairs`
(``pair_labels``: 0 when B follows A, 1 for the negative: a random other document's segment for
NSP, the two segments swapped for SOP). The head is BERT's own: the pooler (dense + tanh on [CLS])
and ``cls.seq_relationship`` (hidden -> 2), attached to the masked-LM model under the names
``BertForPreTraining`` uses. The saved model therefore still loads as ``AutoModelForMaskedLM``
(which ignores the extra weights), loads whole as ``AutoModelForPreTraining``, and hands its
trained pooler to ``AutoModelForSequenceClassification``.

Combine with a masking objective (``[mlm, sop]``): the masks are applied to the pair inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmvalue.errors import ConfigError
from lmvalue.objectives.base import Objective
from lmvalue.objectives.forward import Encoded


def attach_pair_head(model, name: str) -> torch.nn.Linear:
    """Give a BERT masked-LM model a pooler and ``cls.seq_relationship``; return the classifier."""
    if not (hasattr(model, "bert") and hasattr(model, "cls")):
        raise ConfigError(
            f"objective {name} is implemented for BERT models (model.arch=bert, or a BERT model.init_from); "
            f"this model is {type(model).__name__}"
        )
    from transformers.models.bert.modeling_bert import BertPooler

    config = model.config
    if model.bert.pooler is None:
        model.bert.pooler = BertPooler(config)
        _init_linear(model.bert.pooler.dense, config.initializer_range)
    if not hasattr(model.cls, "seq_relationship"):
        model.cls.seq_relationship = torch.nn.Linear(config.hidden_size, 2)
        _init_linear(model.cls.seq_relationship, config.initializer_range)
    device = next(model.parameters()).device
    model.bert.pooler.to(device)
    return model.cls.seq_relationship.to(device)


def _init_linear(layer: torch.nn.Linear, std: float) -> None:
    torch.nn.init.normal_(layer.weight, std=std)
    torch.nn.init.zeros_(layer.bias)


def pair_losses(classifier: torch.nn.Module, encoded: Encoded, batch: dict, name: str) -> dict:
    if encoded.pooled is None:
        raise ConfigError(f"objective {name} needs the model's pooler output; the model has no pooler")
    logits = classifier(encoded.pooled)  # (B, 2)
    target = batch["pair_labels"]  # (B,)
    loss = F.cross_entropy(logits.float(), target)
    with torch.no_grad():
        correct = (logits.argmax(-1) == target).sum()
    return {
        f"{name}_loss": loss,
        f"{name}_correct": correct,
        f"{name}_count": torch.tensor(target.numel(), device=target.device),
    }


class SentencePairPrediction(Objective):
    """A two-way classifier on the pooled ``[CLS]`` of a pair; subclasses name the kind of pairs."""

    needs = frozenset({"pairs"})
    architecture = "encoder"

    def __init__(self, model=None):
        self.classifier = attach_pair_head(model, self.name) if model is not None else None

    @classmethod
    def from_config(cls, tokenizer, cfg, *, model=None, **_):
        return cls(model)

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        return batch  # the pairs and their labels are built with the data (``pair_kind``)

    def losses(self, encoded: Encoded, batch: dict) -> dict:
        return pair_losses(self.classifier, encoded, batch, self.name)


class NextSentencePrediction(SentencePairPrediction):
    """Objective ``nsp``: does B follow A in the same document, or come from another one?"""

    name = pair_kind = "nsp"


class SentenceOrderPrediction(SentencePairPrediction):
    """Objective ``sop``: are two consecutive segments of a document in their order, or swapped?"""

    name = pair_kind = "sop"
