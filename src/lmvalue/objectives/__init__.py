"""Self-supervised objectives, chosen by name (``objective.names=[mlm, sop]``).

An objective is a small class with

* ``name`` and ``needs``: the token annotations its data must carry (``word_start`` for whole
  words, ``pairs`` for two-segment inputs, ``tags`` for word tags; see :mod:`lmvalue.data.annotate`),
* ``from_config(tokenizer, cfg, *, model=None, **context)``: builds it; heads it trains are
  attached to ``model`` (so the optimizer, checkpoints and ``save_pretrained`` carry them),
* ``prepare(batch, generator) -> batch``: runs in the data-loader workers on a batch whose
  ``input_ids`` is (B, T); adds what it needs (masked inputs, ``labels``, ...). It must be a
  deterministic function of the batch and the generator, so that a resumed run sees exactly the
  masks an uninterrupted one would.
* ``losses(encoded, batch) -> dict``: runs in the training process on the batch's shared forward
  pass (:class:`~lmvalue.objectives.forward.Encoded`) and returns named tensors:
  ``<name>_loss`` (a scalar) plus optional ``<name>_correct`` / ``<name>_count`` for accuracy.

:class:`ObjectiveSet` runs the model once per batch, sums the weighted ``*_loss`` entries into
``loss`` and keeps the parts for logging (MLM and SOP are logged apart).
"""

from __future__ import annotations

import math

import torch

from lmvalue.config import ObjectiveConfig
from lmvalue.errors import ConfigError
from lmvalue.objectives.clm import CausalLM
from lmvalue.objectives.forward import Encoded
from lmvalue.objectives.mlm import MaskedLM
from lmvalue.objectives.rtd import ReplacedTokenDetection
from lmvalue.objectives.sentence_pair import NextSentencePrediction, SentenceOrderPrediction
from lmvalue.objectives.simcse import SimCSE
from lmvalue.objectives.tags import TagPrediction
from lmvalue.objectives.wwm import SpanMasking, WholeWordMasking

# name -> objective class (its traits: lmvalue.objectives.base.Objective). Adding an objective
# means one new file and one line here.
OBJECTIVES = {
    "mlm": MaskedLM,
    "wwm": WholeWordMasking,
    "span": SpanMasking,
    "nsp": NextSentencePrediction,
    "sop": SentenceOrderPrediction,
    "clm": CausalLM,
    "tags": TagPrediction,
    "simcse": SimCSE,
    "rtd": ReplacedTokenDetection,
}


def check_objectives(names: list[str], arch: str | None = None) -> None:
    """Reject unknown names and combinations that cannot train together, before any work is done.

    Args:
        arch: ``model.arch`` of a preset model (None for ``model.init_from``: checked on the model).
    Raises:
        ConfigError: listing every problem.
    """
    problems = []
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        problems.append(
            f"unknown objective(s) {', '.join(map(repr, unknown))}; known objectives: {', '.join(OBJECTIVES)}"
        )
    if len(set(names)) != len(names):
        problems.append(f"objective.names={names} names an objective twice")
    known = [OBJECTIVES[n] for n in names if n in OBJECTIVES]
    predicting = [o.name for o in known if o.predicts_tokens]
    if len(predicting) > 1:
        choices = ", ".join(n for n, o in OBJECTIVES.items() if o.predicts_tokens)
        problems.append(f"objectives {' and '.join(predicting)} both predict tokens; pick one of {choices}")
    pairs = [o.name for o in known if o.pair_kind]
    if len(pairs) > 1:
        problems.append(f"objectives {' and '.join(pairs)} both build the sentence pairs; pick one")
    if arch is not None:
        needed = "decoder" if arch in ("gpt2", "llama") else "encoder"
        wrong = [o.name for o in known if o.architecture not in ("any", needed)]
        if wrong and needed == "decoder":
            problems.append(
                f"objective(s) {', '.join(wrong)} need an encoder (model.arch=bert); "
                f"model.arch={arch} is a decoder: use objective clm"
            )
        elif wrong:
            problems.append(
                f"objective {' and '.join(wrong)} needs a decoder (model.arch=gpt2 or llama), "
                f"not model.arch={arch}"
            )
    if problems:
        raise ConfigError("\n".join(problems))


def pair_kind(names: list[str]) -> str | None:
    """``nsp`` / ``sop`` when one of these objectives trains on sentence pairs, else None."""
    return next((OBJECTIVES[n].pair_kind for n in names if OBJECTIVES[n].pair_kind), None)


def reference_mlm_applies(names: list[str]) -> bool:
    """Whether the encoder trained by these objectives may be scored by plain random-token MLM."""
    return all(OBJECTIVES[n].reference_mlm for n in names)


def objective_needs(names: list[str]) -> set[str]:
    """The token annotations the data must carry for these objectives."""
    check_objectives(names)
    return set().union(*(OBJECTIVES[n].needs for n in names))


def trim_padding(batch: dict) -> dict:
    """Drop the padding columns no row of the batch uses (pair examples are padded to the block)."""
    mask = batch.get("attention_mask")
    if mask is None:
        return batch
    width = int(mask.sum(dim=1).max())
    T = mask.shape[1]
    if width == T:
        return batch
    return {
        k: v[:, :width] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == T else v
        for k, v in batch.items()
    }


class ObjectiveSet:
    """Several objectives applied to the same batch; their weighted losses are summed."""

    def __init__(self, objectives: list, weights: list[float], *, sparse_head: bool = True):
        self.objectives = objectives
        self.weights = weights
        self.sparse_head = sparse_head

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def needs(self) -> set[str]:
        return set().union(*(o.needs for o in self.objectives))

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        batch = trim_padding(batch)
        for objective in self.objectives:
            batch = objective.prepare(batch, generator)
        return batch

    def losses(self, model, batch: dict) -> dict:
        encoded = Encoded(model, batch, sparse_head=self.sparse_head)  # one forward for all objectives
        out: dict = {}
        total = 0.0
        for objective, weight in zip(self.objectives, self.weights, strict=True):
            parts = objective.losses(encoded, batch)
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
                for k, v in parts.items():  # an objective's sub-losses (rtd: generator, discriminator)
                    if k.startswith(f"{n}_") and k.endswith("_loss") and k != f"{n}_loss":
                        sums[k[:-5]] = sums.get(k[:-5], 0.0) + float(v) * count
                        weights[k[:-5]] = weights.get(k[:-5], 0.0) + count
        model.train(was_training)
        metrics = {}
        total = 0.0
        for objective, weight in zip(self.objectives, self.weights, strict=True):
            n = objective.name
            mean = sums.get(n, float("nan")) / max(weights.get(n, 0.0), 1e-9)
            metrics[f"eval_{n}_loss"] = mean
            if n in correct:
                metrics[f"eval_{n}_accuracy"] = correct[n] / max(weights[n], 1e-9)
            if objective.perplexity:
                metrics[f"eval_{n}_perplexity"] = math.exp(min(mean, 50.0))
            total += weight * mean
        for k in sorted(sums):
            if k not in OBJECTIVES:
                metrics[f"eval_{k}_loss"] = sums[k] / max(weights[k], 1e-9)
        metrics["eval_loss"] = total
        return metrics


class ObjectiveModule(torch.nn.Module):
    """The language model as one module whose ``forward(batch)`` returns the objectives' losses.

    Training calls this module rather than the language model, so that under
    DistributedDataParallel the body and every objective head run inside the one wrapped forward.
    The heads live on ``lm`` itself (attached by the objectives), so ``lm`` is what gets saved.
    """

    def __init__(self, lm: torch.nn.Module, objectives: ObjectiveSet):
        super().__init__()
        self.lm = lm
        self.objectives = objectives

    def forward(self, batch: dict) -> dict:
        return self.objectives.losses(self.lm, batch)


def build_objectives(cfg: ObjectiveConfig, tokenizer, **context) -> ObjectiveSet:
    """The configured objectives; ``context`` passes ``model`` (heads are attached to it) and
    ``tag_labels`` (the tag vocabulary of a tagged corpus) to the builders that use them."""
    check_objectives(cfg.names)
    objectives = [OBJECTIVES[n].from_config(tokenizer, cfg, **context) for n in cfg.names]
    weights = list(cfg.weights) if cfg.weights is not None else [1.0] * len(objectives)
    return ObjectiveSet(objectives, weights, sparse_head=cfg.sparse_head)
