"""Masked language modelling (BERT): predict a share of tokens from their context.

Masking is vectorised and runs in the data-loader workers (``prepare``); the loss runs in the
training process (``losses``). With ``sparse_head`` the output projection (hidden -> vocab, the
most expensive matmul of a small model with a large vocabulary) is computed only at the masked
positions, where the loss is; the loss is identical to the dense computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def encoder_and_head(model):
    """Split a masked-LM model into (encoder, head) so the head can run on selected rows only.

    Returns (None, None) for architectures we do not know; callers then use the dense path.
    """
    if hasattr(model, "cls") and hasattr(model, "bert"):  # BERT
        return model.bert, model.cls
    if hasattr(model, "lm_head") and hasattr(model, "roberta"):  # RoBERTa / XLM-R
        return model.roberta, model.lm_head
    return None, None


def masked_lm_losses(model, batch: dict, *, sparse_head: bool = True, prefix: str = "mlm") -> dict:
    """Cross-entropy at labelled positions, plus the count and accuracy for evaluation.

    Args:
        batch: input_ids (B, T), labels (B, T) with -100 where nothing is predicted, optional
            attention_mask and token_type_ids.
    Returns:
        {f"{prefix}_loss", f"{prefix}_correct", f"{prefix}_count"}; the loss is the mean over
        labelled positions.
    """
    labels = batch["labels"]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    encoder, head = encoder_and_head(model)
    selected = labels != IGNORE  # (B, T)
    target = labels[selected]  # (N,)
    if sparse_head and encoder is not None:
        hidden = encoder(**inputs).last_hidden_state  # (B, T, H)
        logits = head(hidden[selected])  # (N, V): the projection only where the loss is
    else:
        logits = model(**inputs).logits[selected]  # (N, V)
    loss = F.cross_entropy(logits.float(), target) if target.numel() else logits.sum() * 0.0
    with torch.no_grad():
        correct = (logits.argmax(-1) == target).sum()
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_correct": correct,
        f"{prefix}_count": torch.tensor(target.numel(), device=target.device),
    }


class MaskedLM:
    """Objective ``mlm``: random token masking with exact per-sequence rate and 80/10/10 corruption."""

    name = "mlm"

    def __init__(
        self, tokenizer, *, mask_rate=0.15, mask_token_share=0.8, random_token_share=0.1, sparse_head=True
    ):
        if tokenizer.mask_token_id is None:
            from lmvalue.errors import ConfigError

            raise ConfigError(
                "objective mlm needs a tokenizer with a mask token; this one has none "
                "(train a wordpiece/unigram tokenizer, or pick objective clm for decoders)"
            )
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.mask_rate = mask_rate
        self.mask_token_share = mask_token_share
        self.random_token_share = random_token_share
        self.sparse_head = sparse_head

    def candidates(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        ok = ~torch.isin(ids, self.special_ids)
        if "attention_mask" in batch:
            ok &= batch["attention_mask"].bool()
        return ok

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        chosen = select_exact(self.candidates(batch), self.mask_rate, generator)
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

    def losses(self, model, batch: dict) -> dict:
        return masked_lm_losses(model, batch, sparse_head=self.sparse_head)
