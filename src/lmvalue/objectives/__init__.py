"""Self-supervised objectives, chosen by name.

An objective has two halves:

* ``prepare(batch, generator) -> batch``: runs in the data-loader workers on a batch of packed
  blocks (``input_ids`` (B, T)); adds what it needs (masked inputs, ``labels``, ...). It must be
  a deterministic function of the batch and the generator, so that a resumed run sees exactly
  the masks an uninterrupted one would.
* ``losses(model, batch) -> dict``: runs in the training process and returns named tensors:
  ``<name>_loss`` (a scalar) plus optional ``<name>_correct`` / ``<name>_count`` for accuracy.

:class:`ObjectiveSet` sums the weighted ``*_loss`` entries into ``loss`` and keeps the parts
for logging (MLM and SOP are logged apart).
"""

from __future__ import annotations

import math

import torch

from lmvalue.config import ObjectiveConfig
from lmvalue.errors import ConfigError
from lmvalue.objectives.mlm import MaskedLM


def _mlm(tokenizer, cfg: ObjectiveConfig, **_):
    return MaskedLM(
        tokenizer,
        mask_rate=cfg.mask_rate,
        mask_token_share=cfg.mask_token_share,
        random_token_share=cfg.random_token_share,
        sparse_head=cfg.sparse_head,
    )


# name -> builder(tokenizer, cfg, **context). Adding an objective means adding one line here.
OBJECTIVES = {
    "mlm": _mlm,
}


class ObjectiveSet:
    """Several objectives applied to the same batch; their weighted losses are summed."""

    def __init__(self, objectives: list, weights: list[float]):
        self.objectives = objectives
        self.weights = weights

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        for objective in self.objectives:
            batch = objective.prepare(batch, generator)
        return batch

    def losses(self, model, batch: dict) -> dict:
        out: dict = {}
        total = 0.0
        for objective, weight in zip(self.objectives, self.weights, strict=True):
            parts = objective.losses(model, batch)
            total = total + weight * parts[f"{objective.name}_loss"]
            out.update(parts)
        out["loss"] = total
        return out

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict:
        """Mean losses (token-weighted where counts exist), accuracies and perplexities."""
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        correct: dict[str, float] = {}
        for batch in batches:
            parts = self.losses(model, batch)
            for objective in self.objectives:
                n = objective.name
                count = float(parts.get(f"{n}_count", 1))
                sums[n] = sums.get(n, 0.0) + float(parts[f"{n}_loss"]) * count
                weights[n] = weights.get(n, 0.0) + count
                if f"{n}_correct" in parts:
                    correct[n] = correct.get(n, 0.0) + float(parts[f"{n}_correct"])
        model.train(was_training)
        metrics = {}
        total = 0.0
        for objective, weight in zip(self.objectives, self.weights, strict=True):
            n = objective.name
            mean = sums.get(n, float("nan")) / max(weights.get(n, 0.0), 1e-9)
            metrics[f"eval_{n}_loss"] = mean
            if n in correct:
                metrics[f"eval_{n}_accuracy"] = correct[n] / max(weights[n], 1e-9)
            if n in ("mlm", "wwm", "span", "clm"):
                metrics[f"eval_{n}_perplexity"] = math.exp(min(mean, 50.0))
            total += weight * mean
        metrics["eval_loss"] = total
        return metrics


def build_objectives(cfg: ObjectiveConfig, tokenizer, **context) -> ObjectiveSet:
    unknown = [n for n in cfg.names if n not in OBJECTIVES]
    if unknown:
        raise ConfigError(
            f"unknown objective(s) {', '.join(map(repr, unknown))}; known objectives: {', '.join(OBJECTIVES)}"
        )
    objectives = [OBJECTIVES[n](tokenizer, cfg, **context) for n in cfg.names]
    weights = list(cfg.weights) if cfg.weights is not None else [1.0] * len(objectives)
    return ObjectiveSet(objectives, weights)
