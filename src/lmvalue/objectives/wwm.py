"""Whole-word masking (``wwm``) and SpanBERT-style span masking (``span``).

Both predict whole words: every token of a chosen word, never part of one. Word boundaries come
from the batch's ``word_start`` (1 where a token begins a word; see
:mod:`lmvalue.data.annotate`: sub-word pieces for English, ``jieba`` words for Chinese). The
masking rate counts tokens, not words: words are added until each sequence has exactly
``round(mask_rate * candidates)`` masked tokens where the word lengths allow it (a word that would
overshoot the budget is skipped for a shorter one). The chosen tokens then get the same 80/10/10
corruption and the same loss as ``mlm``.

``span`` chooses runs of consecutive words instead of single words: a length in words drawn from
a geometric distribution ``p (1 - p)^(l - 1)`` truncated at ``span_max_words`` (SpanBERT: p=0.2,
max 10, mean 3.8 words), a start uniform over the places where a span of that length fits,
spans never touching each other, until the batch's token budget is reached (the last span is cut
short, at a word boundary, when the budget ends inside it; see :func:`select_spans`).
"""

from __future__ import annotations

import numpy as np
import torch

from lmvalue.errors import ConfigError
from lmvalue.objectives.base import Objective
from lmvalue.objectives.forward import Encoded
from lmvalue.objectives.mlm import MaskedLM, check_encoder, masked_lm_loss


def word_units(word_start: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B, T) index of the whole word each position belongs to, counted from 0 in each row.

    A word never extends over a position that cannot be masked ([CLS], [SEP], padding): those
    are units of their own, and the token after one starts a new unit.
    """
    starts = word_start.bool() | ~candidates
    starts[:, 1:] |= ~candidates[:, :-1]
    return starts.long().cumsum(dim=1) - 1


def _budgets(candidates: torch.Tensor, rate: float) -> np.ndarray:
    n = candidates.sum(dim=1)
    k = (n.float() * rate).round().long()
    return torch.where(n > 0, k.clamp(min=1), k).numpy()  # as select_exact


def select_whole_words(
    word_start: torch.Tensor, candidates: torch.Tensor, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Whole words in random order until each row has ``round(rate * candidates)`` masked tokens.

    Returns:
        (B, T) bool, the chosen positions (always complete words).
    """
    unit = word_units(word_start, candidates)  # (B, T)
    scores = torch.rand(unit.shape, generator=generator).numpy()  # one random key per unit
    budgets = _budgets(candidates, rate)
    unit_np, cand_np = unit.numpy(), candidates.numpy()
    chosen = np.zeros(unit.shape, dtype=bool)
    for row in range(unit.shape[0]):
        lengths = np.bincount(unit_np[row][cand_np[row]], minlength=unit_np[row, -1] + 1)  # tokens per unit
        take = np.zeros(len(lengths), dtype=bool)
        remaining = int(budgets[row])
        for u in np.argsort(scores[row, : len(lengths)], kind="stable"):
            if remaining == 0:
                break
            if 0 < lengths[u] <= remaining:  # skip words that would overshoot the budget
                take[u] = True
                remaining -= int(lengths[u])
        chosen[row] = take[unit_np[row]] & cand_np[row]
    return torch.from_numpy(chosen)


def span_length_probs(p: float, max_words: int) -> np.ndarray:
    """P(length = 1..max_words) of the truncated geometric distribution."""
    lengths = np.arange(1, max_words + 1)
    probs = p * (1 - p) ** (lengths - 1)
    return probs / probs.sum()


def select_spans(
    word_start: torch.Tensor,
    candidates: torch.Tensor,
    rate: float,
    generator: torch.Generator,
    *,
    p: float = 0.2,
    max_words: int = 10,
) -> torch.Tensor:
    """Non-touching spans of whole words with geometric lengths until the batch's token budget.

    The budget is the sum of the rows' budgets (``round(rate * candidates)`` each): the batch's rate
    is exact and a row's varies around it. A budget per row would cut the last span of every row
    short, which on 128-token rows (about three spans each) skews the lengths far below the
    configured distribution; per batch only the last span of the batch is cut.

    Returns:
        (B, T) bool, the chosen positions.
    """
    unit = word_units(word_start, candidates)
    B, T = unit.shape
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    probs = span_length_probs(p, max_words)
    unit_np, cand_np = unit.numpy(), candidates.numpy()
    # The batch's maskable words on one line, each row's followed by a barrier no span crosses.
    row_words, sizes = [], []
    for row in range(B):
        lengths = np.bincount(unit_np[row][cand_np[row]], minlength=unit_np[row, -1] + 1)  # tokens per unit
        row_words.append(np.flatnonzero(lengths > 0))
        sizes += [lengths[row_words[-1]], [0]]
    size = np.concatenate(sizes).astype(np.int64)  # (n,) tokens per word, 0 at the barriers
    n = len(size)
    barrier = size == 0
    masked = np.zeros(n + 2, dtype=bool)  # padded by one on each side for the touch test
    remaining = int(_budgets(candidates, rate).sum())
    for _ in range(4 * n):  # spans drawn; the budget is met long before
        if remaining == 0:
            break
        length = min(int(rng.choice(max_words, p=probs)) + 1, n)
        # A free place for this length: redrawing the length instead would favour short spans.
        for start in rng.integers(0, n - length + 1, size=16):
            free = not masked[start : start + length + 2].any()  # neither overlaps nor touches a span
            if free and not barrier[start : start + length].any():
                break
        else:
            continue
        taken = 0  # words of the span that fit the remaining budget (all but at the budget's end)
        while taken < length and size[start + taken] <= remaining:
            remaining -= int(size[start + taken])
            taken += 1
        masked[start + 1 : start + 1 + taken] = True
    chosen = np.zeros((B, T), dtype=bool)
    offset = 1
    for row, words in enumerate(row_words):
        take = np.zeros(unit_np[row, -1] + 1, dtype=bool)
        take[words] = masked[offset : offset + len(words)]
        chosen[row] = take[unit_np[row]] & cand_np[row]
        offset += len(words) + 1
    return torch.from_numpy(chosen)


def _word_start(batch: dict, name: str) -> torch.Tensor:
    if "word_start" not in batch:
        raise ConfigError(f"objective {name} needs word boundaries (batch['word_start']); none were computed")
    return batch["word_start"]


class WholeWordMasking(Objective):
    """Objective ``wwm``: mask whole words (all their pieces) up to the token budget."""

    name = "wwm"
    predicts_tokens = True
    architecture = "encoder"
    perplexity = True
    needs = frozenset({"word_start"})

    def __init__(self, tokenizer, *, mask_rate=0.15, mask_token_share=0.8, random_token_share=0.1):
        # The token-level rules (candidates, 80/10/10) are those of plain masked LM.
        self.mlm = MaskedLM(
            tokenizer,
            mask_rate=mask_rate,
            mask_token_share=mask_token_share,
            random_token_share=random_token_share,
        )

    @classmethod
    def from_config(cls, tokenizer, cfg, *, model=None, **_):
        check_encoder(cls.name, model)
        return cls(
            tokenizer,
            mask_rate=cfg.mask_rate,
            mask_token_share=cfg.mask_token_share,
            random_token_share=cfg.random_token_share,
        )

    def choose(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        candidates = self.mlm.candidates(batch)
        return select_whole_words(_word_start(batch, self.name), candidates, self.mlm.mask_rate, generator)

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        return self.mlm.corrupt(batch, self.choose(batch, generator), generator)

    def losses(self, encoded: Encoded, batch: dict) -> dict:
        return masked_lm_loss(encoded, batch["labels"], self.name)


class SpanMasking(Objective):
    """Objective ``span``: mask spans of whole words with geometric lengths (SpanBERT)."""

    name = "span"
    predicts_tokens = True
    architecture = "encoder"
    perplexity = True
    needs = frozenset({"word_start"})

    def __init__(
        self,
        tokenizer,
        *,
        mask_rate=0.15,
        mask_token_share=0.8,
        random_token_share=0.1,
        span_p=0.2,
        span_max_words=10,
    ):
        self.mlm = MaskedLM(
            tokenizer,
            mask_rate=mask_rate,
            mask_token_share=mask_token_share,
            random_token_share=random_token_share,
        )
        self.span_p = span_p
        self.span_max_words = span_max_words

    @classmethod
    def from_config(cls, tokenizer, cfg, *, model=None, **_):
        check_encoder(cls.name, model)
        return cls(
            tokenizer,
            mask_rate=cfg.mask_rate,
            mask_token_share=cfg.mask_token_share,
            random_token_share=cfg.random_token_share,
            span_p=cfg.span_p,
            span_max_words=cfg.span_max_words,
        )

    def choose(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return select_spans(
            _word_start(batch, self.name),
            self.mlm.candidates(batch),
            self.mlm.mask_rate,
            generator,
            p=self.span_p,
            max_words=self.span_max_words,
        )

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        return self.mlm.corrupt(batch, self.choose(batch, generator), generator)

    def losses(self, encoded: Encoded, batch: dict) -> dict:
        return masked_lm_loss(encoded, batch["labels"], self.name)
