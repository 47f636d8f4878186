"""In-context (few-shot) prompting of a causal LM: labeled demonstrations in the prompt."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from lmvalue.errors import ConfigError
from lmvalue.prompting.scorer import MASK_SLOT, PromptSpec, fit_positions

log = logging.getLogger("lmvalue")


class InContextScorer:
    """Few-shot prompting of a causal LM: K labeled demonstrations in the prompt, then the input.

    Each demonstration is its template filled with its text and its label's first word, one per
    line; the query is the template up to the mask slot. A label word scores by the log-likelihood
    of its tokens and of the rest of the template after the slot, given the prompt, divided by the
    word's number of tokens; a label scores as its best word; templates are averaged after a
    log-softmax over labels (as :class:`ClozeScorer`). Demonstrations are cut from their end, all
    alike, when the prompt would not fit ``max_length``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        spec: PromptSpec,
        demos: list[dict],
        *,
        max_length: int = 512,
        batch_size: int = 16,
        seed: int = 0,
        calibrate: bool = False,
    ):
        spec.check()
        self.calibrate = calibrate
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.max_length, self.batch_size = fit_positions(model, max_length), batch_size
        order = np.random.default_rng(seed).permutation(len(demos))
        self.demos = [demos[i] for i in order]
        self.word_ids = {
            label: [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
            for label, words in spec.verbalizer.items()
        }
        for label, ids in self.word_ids.items():
            if any(not t for t in ids):
                raise ConfigError(f"a verbalizer word of label {label!r} has no tokens")
        self.newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    def _ids(self, s: str) -> list[int]:
        return self.tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

    def _split(self, template: str, example: dict) -> tuple[list[int], list[int]]:
        """(ids before the slot, ids after it) of a template filled with ``example``."""
        t = template.replace(self.tokenizer.mask_token, MASK_SLOT) if self.tokenizer.mask_token else template
        before, _, after = t.partition(MASK_SLOT)

        def fill(part):
            return part.replace("{text}", example.get("text") or "").replace(
                "{text_pair}", example.get("text_pair") or ""
            )

        return self._ids(fill(before)), self._ids(fill(after))

    def context(self, example: dict, template: str, room: int) -> list[int]:
        """The prompt before the query's slot: demonstrations, then the query's prefix."""
        demos = []
        for d in self.demos:
            b, a = self._split(template, d)
            demos.append((b, self.word_ids[d["label"]][0] + a + self.newline))
        query, _ = self._split(template, example)
        need = len(self.bos) + len(query) + sum(len(b) + len(w) for b, w in demos)
        cut = max(0, need - room)
        if cut and demos:  # trim every demonstration's input text by the same number of tokens
            per = math.ceil(cut / len(demos))
            demos = [(b[: max(0, len(b) - per)], w) for b, w in demos]
        ids = list(self.bos)
        for b, w in demos:
            ids += b + w
        ids += query
        ids = ids[-room:] if len(ids) > room else ids
        return ids or (self.newline or [self.tokenizer.eos_token_id or 0])  # something to predict from

    @torch.no_grad()
    def label_scores(self, examples: list[dict]) -> np.ndarray:
        """(N, L) scores; with ``calibrate``, each template's scores of an empty query (with the
        same demonstrations) are subtracted before the log-softmax (Zhao et al. 2021)."""
        n = len(examples)
        if self.calibrate:
            examples = [*examples, {"text": "", "text_pair": ""}]
        labels = self.spec.labels
        device = next(self.model.parameters()).device
        self.model.eval()
        total = np.zeros((n, len(labels)))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for template in self.spec.templates:
            raw = np.full((len(examples), len(labels)), -np.inf)
            jobs = []  # (example, label index, ids, first scored position, n word tokens)
            for e, ex in enumerate(examples):
                _, after = self._split(template, ex)
                after = after[: self.max_length // 2]  # an input after the slot is cut from its end
                longest = max(len(w) for ws in self.word_ids.values() for w in ws) + len(after)
                ctx = self.context(ex, template, self.max_length - longest)
                for li, label in enumerate(labels):
                    for word in self.word_ids[label]:
                        jobs.append((e, li, ctx + word + after, len(ctx), len(word)))
            for s in range(0, len(jobs), self.batch_size):
                chunk = jobs[s : s + self.batch_size]
                width = max(len(j[2]) for j in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                attn = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, j in enumerate(chunk):
                    ids[r, : len(j[2])] = torch.tensor(j[2])
                    attn[r, : len(j[2])] = 1
                logp = torch.log_softmax(
                    self.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float(), -1
                ).cpu()
                for r, (e, li, seq, start, n_word) in enumerate(chunk):
                    # token t is predicted at position t - 1
                    targets = torch.tensor(seq[start:])
                    lp = logp[r, start - 1 : len(seq) - 1].gather(1, targets[:, None]).sum().item()
                    raw[e, li] = max(raw[e, li], lp / n_word)
            if self.calibrate:
                raw = raw[:n] - raw[n]
            total += raw - np.logaddexp.reduce(raw, axis=1, keepdims=True)
        return total / len(self.spec.templates)

    def probabilities(self, examples: list[dict]) -> np.ndarray:
        scores = self.label_scores(examples)
        return np.exp(scores - np.logaddexp.reduce(scores, axis=1, keepdims=True))
