"""Masked language modelling (BERT): predict a share of tokens from their context.

Masking is vectorised and runs in the data-loader workers (``prepare``); the loss runs in the
training process (``losses``). With ``objective.sparse_head`` the output projection (hidden ->
vocab, the most expensive matmul of a small model with a large vocabulary) is computed only at the
masked positions, where the loss is; the loss is identical to the dense computation.

Whole-word (``wwm``) and span (``span``) masking differ from ``mlm`` only in which positions they
choose; they reuse the corruption and the loss here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmvalue.errors import ConfigError
from lmvalue.models import is_decoder
from lmvalue.objectives.base import Objective
from lmvalue.objectives.forward import Encoded

IGNORE = -100


def select_exact(candidates: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Choose exactly ``round(rate * n)`` of the ``n`` candidate positions of each row, uniformly.

    Exact counts (rather than an independent coin per token) make the realised rate equal the
    configured one in every batch, not just on average.

    Args:
        candidates: (B, T) bool, positions that may be chosen.
    Returns:
        (B, T) bool, the chosen positions.
    """
    scores = torch.rand(candidates.shape, generator=generator)  # (B, T)
    scores = scores.masked_fill(~candidates, 2.0)  # non-candidates sort last
    ranks = scores.argsort(dim=1).argsort(dim=1)  # rank of each position within its row
    k = (candidates.sum(dim=1, keepdim=True).float() * rate).round().long()  # (B, 1)
    k = torch.where(candidates.any(dim=1, keepdim=True), k.clamp(min=1), k)
    return ranks < k


def apply_masking(
    input_ids: torch.Tensor,
    chosen: torch.Tensor,
    generator: torch.Generator,
    *,
    mask_token_id: int,
    vocab_size: int,
    mask_token_share: float = 0.8,
    random_token_share: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption of the ``chosen`` positions.

    Returns:
        (corrupted input_ids, labels) where labels are the original ids at chosen positions and
        -100 elsewhere.
    """
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    r = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (r < mask_token_share)
    to_random = chosen & (r >= mask_token_share) & (r < mask_token_share + random_token_share)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


def masked_lm_loss(encoded: Encoded, labels: torch.Tensor, prefix: str = "mlm") -> dict:
    """Cross-entropy at labelled positions, plus the count and accuracy for evaluation.

    Args:
        encoded: the batch's shared forward pass.
        labels: (B, T) original ids where something is predicted, -100 elsewhere.
    Returns:
        {f"{prefix}_loss", f"{prefix}_correct", f"{prefix}_count"}; the loss is the mean over
        labelled positions.
    """
    selected = labels != IGNORE  # (B, T)
    target = labels[selected]  # (N,)
    logits = encoded.lm_logits(selected)  # (N, V)
    loss = F.cross_entropy(logits.float(), target) if target.numel() else logits.sum() * 0.0
    with torch.no_grad():
        correct = (logits.argmax(-1) == target).sum()
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_correct": correct,
        f"{prefix}_count": torch.tensor(target.numel(), device=target.device),
    }


def check_encoder(name: str, model) -> None:
    """Masked-LM objectives need a bidirectional encoder; a decoder cannot see the token it predicts."""
    if model is not None and is_decoder(model.config):
        raise ConfigError(
            f"objective {name} needs an encoder (model.arch=bert or a BERT-like model.init_from); "
            f"{model.config.model_type} is a decoder: use objective clm"
        )


def never_masked(tokenizer) -> set[int]:
    """Ids never chosen for prediction: the special tokens except [UNK].

    [UNK] stands for real text, so it is masked like any token (as in BERT): whole-word masking
    would otherwise cut a word in two around it. Where one token plays [UNK] and another role
    (GPT-2's ``<|endoftext|>``), it is kept out.
    """
    ids = set(tokenizer.all_special_ids)
    unk = tokenizer.unk_token_id
    roles = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id)
    if unk is not None and unk not in roles + (tokenizer.bos_token_id, tokenizer.eos_token_id):
        ids.discard(unk)
    return ids


class MaskedLM(Objective):
    """Objective ``mlm``: random token masking with exact per-sequence rate and 80/10/10 corruption."""

    name = "mlm"
    predicts_tokens = True
    architecture = "encoder"
    perplexity = True
    needs: frozenset[str] = frozenset()

    def __init__(self, tokenizer, *, mask_rate=0.15, mask_token_share=0.8, random_token_share=0.1):
        if tokenizer.mask_token_id is None:
            raise ConfigError(
                f"objective {self.name} needs a tokenizer with a mask token; this one has none "
                "(train a wordpiece/unigram tokenizer, or pick objective clm for decoders)"
            )
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special_ids = torch.tensor(sorted(never_masked(tokenizer)))
        self.mask_rate = mask_rate
        self.mask_token_share = mask_token_share
        self.random_token_share = random_token_share

    @classmethod
    def from_config(cls, tokenizer, cfg, *, model=None, **_):
        check_encoder(cls.name, model)
        return cls(
            tokenizer,
            mask_rate=cfg.mask_rate,
            mask_token_share=cfg.mask_token_share,
            random_token_share=cfg.random_token_share,
        )

    def candidates(self, batch: dict) -> torch.Tensor:
        """(B, T) bool: positions that may be masked (not special tokens, not padding)."""
        ids = batch["input_ids"]
        ok = ~torch.isin(ids, self.special_ids)
        if "attention_mask" in batch:
            ok &= batch["attention_mask"].bool()
        return ok

    def choose(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """(B, T) bool: the positions to predict."""
        return select_exact(self.candidates(batch), self.mask_rate, generator)

    def corrupt(self, batch: dict, chosen: torch.Tensor, generator: torch.Generator) -> dict:
        """80/10/10 corruption of the ``chosen`` positions; sets ``input_ids`` and ``labels``."""
        batch["input_ids"], batch["labels"] = apply_masking(
            batch["input_ids"],
            chosen,
            generator,
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
            mask_token_share=self.mask_token_share,
            random_token_share=self.random_token_share,
        )
        return batch

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        return self.corrupt(batch, self.choose(batch, generator), generator)

    def losses(self, encoded: Encoded, batch: dict) -> dict:
        return masked_lm_loss(encoded, batch["labels"], self.name)
