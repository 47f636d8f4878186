"""Causal language modelling (``clm``): predict every next token, for decoders (GPT-2, Llama).

Labels are the inputs shifted left by one, made explicit in ``prepare`` (``labels[:, t] =
input_ids[:, t + 1]``; the last position and any padding are -100), so the loss is a plain
cross-entropy at labelled positions, the same function masked LM uses. Packed blocks have no
padding; documents are separated by the end-of-text token, which the model learns to predict.
Evaluation reports the loss, next-token accuracy and perplexity.
"""

from __future__ import annotations

import torch

from lmvalue.errors import ConfigError
from lmvalue.models import is_decoder
from lmvalue.objectives.base import Objective
from lmvalue.objectives.forward import Encoded
from lmvalue.objectives.mlm import IGNORE, masked_lm_loss


def shifted_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) next-token labels: ``input_ids[:, t + 1]`` at position t; -100 at the end and on padding."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        labels[:, :-1].masked_fill_(attention_mask[:, 1:] == 0, IGNORE)  # the next token is padding
        labels.masked_fill_(attention_mask == 0, IGNORE)  # padding predicts nothing
    return labels


class CausalLM(Objective):
    """Objective ``clm``: next-token prediction."""

    name = "clm"
    predicts_tokens = True
    architecture = "decoder"
    perplexity = True
    needs: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, tokenizer, cfg, *, model=None, **_):
        if model is not None and not is_decoder(model.config):
            raise ConfigError(
                f"objective clm needs a decoder (model.arch=gpt2 or llama); {model.config.model_type} is an "
                "encoder: use objective mlm, wwm or span"
            )
        return cls()

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        batch["labels"] = shifted_labels(batch["input_ids"], batch.get("attention_mask"))
        return batch

    def losses(self, encoded: Encoded, batch: dict) -> dict:
        return masked_lm_loss(encoded, batch["labels"], self.name)
