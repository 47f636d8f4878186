"""Consistency training on unlabeled text (UDA: Xie et al. 2019, "Unsupervised Data Augmentation").

Beside the labeled loss, each step takes a batch of unlabeled texts, predicts their classes (no
gradient: the target), makes an augmented copy of each (some tokens masked, replaced or dropped), and
adds the KL divergence between the target and the prediction on the copy. The model learns to give the
same answer to a text and its perturbed neighbour, which spreads what a few labels teach over the
unlabeled text. Three details of the paper are kept, each an option of :class:`ConsistencyConfig`:

* the target is sharpened (softmax at a temperature < 1) and texts whose target is not confident
  enough are left out (``threshold``): the term pushes towards confident, stable answers;
* training-signal annealing (``tsa``): a labeled example the model already predicts above a threshold
  that rises from 1/K to 1 over the run is left out of the labeled loss, so that 32 labels are not
  memorised in the first steps;
* the augmentation is cheap and keeps the label (token masking by default; UDA used back-translation
  and TF-IDF word replacement, which need models or statistics we do not assume).
"""

from __future__ import annotations

import math
import random

import torch


def consistency_kl(
    logits_target: torch.Tensor,
    logits_augmented: torch.Tensor,
    *,
    temperature: float = 1.0,
    threshold: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """Mean over the batch of KL(sharpened target || prediction on the augmented copy).

    Args:
        logits_target: (B, K) logits on the original texts; treated as constants (no gradient).
        logits_augmented: (B, K) logits on their augmented copies.
        temperature: the target is ``softmax(logits_target / temperature)``.
        threshold: texts whose (unsharpened) target's top probability is below it count zero.

    Returns:
        the loss (a scalar tensor) and the share of texts that passed the threshold.
    """
    target_logits = logits_target.detach().float()
    keep = (target_logits.softmax(-1).max(-1).values >= threshold).float()  # (B,)
    target = (target_logits / temperature).softmax(-1)  # (B, K)
    log_aug = logits_augmented.float().log_softmax(-1)  # (B, K)
    kl = (target * (target.clamp_min(1e-12).log() - log_aug)).sum(-1)  # (B,)
    return (kl * keep).mean(), float(keep.mean())


def tsa_threshold(kind: str, progress: float, n_classes: int) -> float:
    """UDA's training-signal annealing schedule: from 1/K at the start to 1 at the end of the run."""
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        alpha = progress
    elif kind == "log":
        alpha = 1 - math.exp(-progress * 5)
    elif kind == "exp":
        alpha = math.exp((progress - 1) * 5)
    else:  # none
        return 1.0
    return alpha * (1 - 1 / n_classes) + 1 / n_classes


def annealed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, float]:
    """Cross-entropy over the labeled examples whose correct-class probability is below ``threshold``
    (TSA); the mean is over the whole batch, as in UDA. Returns the loss and the share kept."""
    log_probs = logits.float().log_softmax(-1)
    nll = -log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B,)
    keep = (nll.detach().neg().exp() < threshold).float() if threshold < 1.0 else torch.ones_like(nll)
    return (nll * keep).sum() / max(1, len(nll)), float(keep.mean())


def augment_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    kind: str,
    rate: float,
    generator: torch.Generator,
    special_ids: set[int],
    mask_id: int | None,
    vocab_size: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An augmented copy of a padded batch (B, T): a ``rate`` share of the ordinary tokens masked
    (``mask``), replaced by random ordinary tokens (``random``) or deleted (``drop``, shifting the rest
    left). Special tokens ([CLS], [SEP], padding) are never touched."""
    ids = input_ids.clone()
    ordinary = attention_mask.bool().clone()
    for sid in special_ids:
        ordinary &= ids != sid
    hit = (torch.rand(ids.shape, generator=generator) < rate) & ordinary  # (B, T)
    if kind == "mask" and mask_id is not None:
        ids[hit] = mask_id
        return ids, attention_mask.clone()
    if kind in ("random", "mask"):  # a tokenizer without a mask token: random replacement
        drawn = torch.randint(0, vocab_size, ids.shape, generator=generator)
        for sid in special_ids:  # a special token drawn leaves the token as it was
            hit &= drawn != sid
        ids[hit] = drawn[hit]
        return ids, attention_mask.clone()
    # drop: keep the tokens not hit, left-aligned, padded again
    keep = attention_mask.bool() & ~hit
    rows = [ids[b][keep[b]] for b in range(ids.shape[0])]
    width = max(1, max(len(r) for r in rows))
    out = torch.full((ids.shape[0], width), pad_id, dtype=ids.dtype)
    mask = torch.zeros((ids.shape[0], width), dtype=attention_mask.dtype)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
        mask[b, : len(r)] = 1
    return out, mask


class UnlabeledStream:
    """Endless, seeded batches of encoded unlabeled texts: reshuffled on every pass, padded per batch."""

    def __init__(self, encoded: list[list[int]], batch_size: int, pad_id: int, seed: int):
        if not encoded:
            raise ValueError("no unlabeled texts")
        self.encoded, self.batch_size, self.pad_id = encoded, batch_size, pad_id
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next(self) -> dict:
        if len(self.order) < self.batch_size:
            more = list(range(len(self.encoded)))
            self.rng.shuffle(more)
            self.order += more
        take, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        rows = [self.encoded[i] for i in take]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}
