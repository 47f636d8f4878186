"""Unsupervised SimCSE (``simcse``, Gao et al. 2021): a contrastive sentence objective whose only
augmentation is dropout noise.

Every row of the batch is encoded twice (the shared forward pass and a second one through the
encoder body, with fresh dropout); the two ``[CLS]`` vectors of a row are a positive pair and every
other row's second vector is a negative. The loss is the cross-entropy of the cosine similarities
divided by a temperature (0.05), so the ``[CLS]`` state becomes a sentence representation — which a
classifier fine-tuned on a handful of labels reads, whereas masked-LM pretraining alone leaves it
untrained. Combined with a masking objective (``[mlm, simcse]``) both views see the masked input.
Reported accuracy: how often a row's own second view is its nearest neighbour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmvalue.errors import ConfigError
from lmvalue.objectives.base import Objective
from lmvalue.objectives.forward import MODEL_INPUTS, Encoded, body_and_lm_head


def contrastive_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, correct): InfoNCE over the (B, B) cosine similarities of two views, positives on the diagonal."""
    sim = F.cosine_similarity(z1.float()[:, None, :], z2.float()[None, :, :], dim=-1) / temperature
    target = torch.arange(len(z1), device=z1.device)
    loss = F.cross_entropy(sim, target)
    with torch.no_grad():
        correct = (sim.argmax(dim=1) == target).sum()
    return loss, correct


class SimCSE(Objective):
    """Objective ``simcse``: contrast two dropout views of each row's ``[CLS]`` state."""

    name = "simcse"
    architecture = "encoder"
    needs: frozenset[str] = frozenset()

    def __init__(self, temperature: float = 0.05):
        self.temperature = temperature

    @classmethod
    def from_config(cls, tokenizer, cfg, *, model=None, **_):
        if tokenizer.cls_token_id is None:
            raise ConfigError("objective simcse needs an encoder with a [CLS] token (model.arch=bert)")
        if model is not None and body_and_lm_head(model)[0] is None:
            raise ConfigError(
                f"objective simcse does not know how to run the encoder of {type(model).__name__}"
            )
        return cls(cfg.simcse_temperature)

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        return batch

    def losses(self, encoded: Encoded, batch: dict) -> dict:
        body, _ = body_and_lm_head(encoded.model)
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        second = body(**inputs).last_hidden_state  # the same rows, fresh dropout
        loss, correct = contrastive_loss(encoded.hidden[:, 0], second[:, 0], self.temperature)
        return {
            "simcse_loss": loss,
            "simcse_correct": correct,
            "simcse_count": torch.tensor(len(second), device=second.device),
        }
