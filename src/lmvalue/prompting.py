"""Cloze prompting for masked LMs (PET-style): a task asked as a fill-in-the-blank question.

A template holds the input (``{text}``, and ``{text_pair}`` for pairs) and one mask slot
(``{mask}``, or the tokenizer's own mask token written out, e.g. ``[MASK]``); a verbalizer maps
each label to one or more words. A label word of k tokens is scored by filling k mask tokens into
the slot and averaging the log-probabilities of its tokens at those positions (all predicted at
once, as in PET); a label scores as its best word. Several templates are ensembled by averaging
their per-label log-softmax scores.

Everything here works on any ``AutoModelForMaskedLM`` checkpoint: an lmvalue pretraining run, a
Hugging Face folder or a hub name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import torch

from lmvalue.errors import ConfigError

MASK_SLOT = "{mask}"


@dataclasses.dataclass
class PromptSpec:
    """Templates and verbalizer of one task (``labels`` in the verbalizer's order)."""

    templates: list[str]
    verbalizer: dict[str, list[str]]

    @property
    def labels(self) -> list[str]:
        return list(self.verbalizer)

    @classmethod
    def from_dict(cls, d: dict) -> PromptSpec:
        templates = d.get("templates") or ([d["template"]] if d.get("template") else [])
        verbalizer = {
            str(k): [v] if isinstance(v, str) else [str(w) for w in v]
            for k, v in (d.get("verbalizer") or {}).items()
        }
        spec = cls(templates=[str(t) for t in templates], verbalizer=verbalizer)
        spec.check()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> PromptSpec:
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})

    def check(self, mask_token: str | None = None) -> None:
        problems = []
        if not self.templates:
            problems.append("no template: give at least one, e.g. '{text} It was {mask}.'")
        for t in self.templates:
            written = [mask_token] if mask_token else ["[MASK]", "<mask>"]
            slots = t.count(MASK_SLOT) + sum(t.count(m) for m in written)
            if "{text}" not in t:
                problems.append(f"template {t!r} has no {{text}} placeholder for the input")
            if slots != 1:
                problems.append(f"template {t!r} needs exactly one mask slot ({MASK_SLOT}); it has {slots}")
        if len(self.verbalizer) < 2:
            problems.append("the verbalizer needs at least two labels, e.g. {pos: [good], neg: [bad]}")
        for label, words in self.verbalizer.items():
            if not words or any(not w.strip() for w in words):
                problems.append(f"label {label!r} has an empty verbalizer word")
        if problems:
            raise ConfigError("prompt: " + "; ".join(problems))


def parse_verbalizer(text: str) -> dict[str, list[str]]:
    """``pos=好|棒,neg=差`` -> ``{"pos": ["好", "棒"], "neg": ["差"]}``."""
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ConfigError(f"verbalizer entry {part!r} is not LABEL=WORD[|WORD...]")
        label, words = part.split("=", 1)
        out[label.strip()] = [w.strip() for w in words.split("|") if w.strip()]
    return out


class ClozeScorer:
    """Label scores of examples under a :class:`PromptSpec` with a masked LM."""

    def __init__(self, model, tokenizer, spec: PromptSpec, *, max_length: int = 256, batch_size: int = 32):
        if tokenizer.mask_token_id is None:
            raise ConfigError("cloze prompting needs a masked-LM tokenizer with a mask token")
        spec.check(tokenizer.mask_token)
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.max_length, self.batch_size = max_length, batch_size
        # label -> [token ids of each verbalizer word]
        self.word_ids: dict[str, list[list[int]]] = {}
        for label, words in spec.verbalizer.items():
            ids = []
            for w in words:
                toks = tokenizer(w, add_special_tokens=False)["input_ids"]
                if not toks:
                    raise ConfigError(f"verbalizer word {w!r} of label {label!r} has no tokens")
                if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in toks:
                    raise ConfigError(
                        f"verbalizer word {w!r} of label {label!r} is unknown to the tokenizer "
                        f"({tokenizer.convert_ids_to_tokens(toks)}); pick a word it knows"
                    )
                ids.append(toks)
            self.word_ids[label] = ids
        self.lengths = sorted({len(t) for ids in self.word_ids.values() for t in ids})
        # The special tokens the tokenizer wraps one sequence in ([CLS] ... [SEP], <s> ... </s>),
        # read off an encoding (transformers 5 tokenizers have no build_inputs_with_special_tokens).
        probe = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        at = next(i for i in range(len(full)) if full[i : i + len(probe)] == probe)
        self.prefix, self.suffix = full[:at], full[at + len(probe) :]

    # -- building inputs --------------------------------------------------------------------
    def _pieces(self, template: str) -> list[str]:
        """The template split around its placeholders: literal text, '{text}', '{text_pair}', '{mask}'."""
        t = template
        if self.tokenizer.mask_token and self.tokenizer.mask_token in t:
            t = t.replace(self.tokenizer.mask_token, MASK_SLOT)
        return [p for p in re.split(r"(\{text\}|\{text_pair\}|\{mask\})", t) if p]

    def encode(self, example: dict, template: str, n_masks: int) -> tuple[list[int], list[int]]:
        """(input ids with special tokens, positions of the mask tokens); the input text is cut
        (from its end) so that the whole prompt fits ``max_length``."""
        tok = self.tokenizer
        parts: list[tuple[str, list[int]]] = []
        for piece in self._pieces(template):
            if piece == MASK_SLOT:
                parts.append(("mask", [tok.mask_token_id] * n_masks))
            elif piece in ("{text}", "{text_pair}"):
                value = example.get(piece[1:-1]) or ""
                parts.append(("input", tok(value, add_special_tokens=False)["input_ids"]))
            else:
                parts.append(("literal", tok(piece, add_special_tokens=False)["input_ids"]))
        specials = len(self.prefix) + len(self.suffix)
        budget = self.max_length - specials - sum(len(ids) for kind, ids in parts if kind != "input")
        if budget < 0:
            raise ConfigError(f"the template alone is longer than max_length={self.max_length} tokens")
        inputs = [i for i, (kind, _) in enumerate(parts) if kind == "input"]
        total = sum(len(parts[i][1]) for i in inputs)
        while total > budget:  # cut the longest input first
            i = max(inputs, key=lambda j: len(parts[j][1]))
            cut = min(total - budget, len(parts[i][1]))
            parts[i] = (parts[i][0], parts[i][1][: len(parts[i][1]) - cut])
            total -= cut
        body = [t for _, ids in parts for t in ids]
        ids = self.prefix + body + self.suffix
        positions = [k for k, t in enumerate(ids) if t == tok.mask_token_id]
        if len(positions) != n_masks:
            raise ConfigError(f"template {template!r}: the input itself contains the mask token")
        return ids, positions

    # -- scoring ----------------------------------------------------------------------------
    @torch.no_grad()
    def mask_log_probs(self, examples: list[dict], template: str, n_masks: int) -> list[torch.Tensor]:
        """Per example: log-probabilities (n_masks, vocab) at its mask positions."""
        self.model.eval()
        encoded = [self.encode(ex, template, n_masks) for ex in examples]
        out: list[torch.Tensor] = [None] * len(examples)  # type: ignore[list-item]
        order = sorted(range(len(examples)), key=lambda i: len(encoded[i][0]))
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(encoded[i][0]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attn = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                seq = encoded[i][0]
                ids[r, : len(seq)] = torch.tensor(seq)
                attn[r, : len(seq)] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(rows):
                out[i] = logp[r, encoded[i][1]].cpu()
        return out

    def label_scores(self, examples: list[dict]) -> np.ndarray:
        """(N, L) scores: per template, each label's best word by mean token log-probability,
        log-softmax over labels; averaged over templates."""
        labels = self.spec.labels
        total = np.zeros((len(examples), len(labels)))
        for template in self.spec.templates:
            raw = np.full((len(examples), len(labels)), -math.inf)
            for k in self.lengths:
                logps = self.mask_log_probs(examples, template, k)
                for j, label in enumerate(labels):
                    for word in self.word_ids[label]:
                        if len(word) != k:
                            continue
                        idx = torch.tensor(word)
                        s = np.array([lp[torch.arange(k), idx].mean().item() for lp in logps])
                        raw[:, j] = np.maximum(raw[:, j], s)
            total += raw - np.logaddexp.reduce(raw, axis=1, keepdims=True)
        return total / len(self.spec.templates)

    def predict(self, examples: list[dict]) -> list[dict]:
        scores = self.label_scores(examples)
        probs = np.exp(scores - np.logaddexp.reduce(scores, axis=1, keepdims=True))
        labels = self.spec.labels
        return [
            {
                "label": labels[int(np.argmax(p))],
                "probs": {lab: float(x) for lab, x in zip(labels, p, strict=True)},
            }
            for p in probs
        ]


def load_masked_lm(ref: str):
    """(model, tokenizer) of a masked-LM checkpoint: an lmvalue run folder, a HF folder or hub name."""
    from transformers import AutoModelForMaskedLM

    from lmvalue.finetune import resolve_checkpoint
    from lmvalue.tokenizer import load_tokenizer

    path = resolve_checkpoint(ref)
    model = AutoModelForMaskedLM.from_pretrained(path)
    return model, load_tokenizer(path)


def evaluate_zero_shot(
    model_ref: str,
    data: str,
    spec: PromptSpec,
    *,
    test: str | None = None,
    test_size: float = 2000,
    test_seed: int = 0,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 256,
    batch_size: int = 32,
    out_dir: str | Path | None = None,
) -> dict:
    """Zero-shot cloze classification scored on the same test split `lmvalue finetune` carves
    (deduplicated pool, ``test_size`` examples, ``test_seed``), or on ``test`` when given.

    No label is used for anything but scoring. Returns the scores (accuracy, macro-F1, report)."""
    import json
    import time

    from lmvalue.data.budget import carve_test, dedupe
    from lmvalue.data.sources import load_labeled
    from lmvalue.errors import DataError
    from lmvalue.tasks.metrics import classification_scores, summary

    t0 = time.perf_counter()
    read = dict(text_column=text_column, label_column=label_column)
    if test:
        examples = load_labeled(test, **read)
    else:
        pool, _ = dedupe(load_labeled(data, **read))
        _, examples = carve_test(pool, test_size, test_seed)
    found = sorted({e["label"] for e in examples})
    missing = [lab for lab in found if lab not in spec.verbalizer]
    if missing:
        raise DataError(
            f"the data has labels {missing} that the verbalizer does not map to words (it maps "
            f"{spec.labels}); add them, e.g. --verbalizer '{missing[0]}=WORD,...'"
        )
    model, tokenizer = load_masked_lm(model_ref)
    scorer = ClozeScorer(model, tokenizer, spec, max_length=max_length, batch_size=batch_size)
    preds = scorer.predict(examples)
    scores = classification_scores([e["label"] for e in examples], [p["label"] for p in preds], spec.labels)
    result = {
        "model": model_ref,
        "templates": spec.templates,
        "verbalizer": spec.verbalizer,
        "examples": len(examples),
        "seconds": round(time.perf_counter() - t0, 2),
        **summary(scores),
    }
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
        with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
            for ex, p in zip(examples, preds, strict=True):
                f.write(json.dumps({"text": ex["text"], "gold": ex["label"], **p}, ensure_ascii=False) + "\n")
    result["report_text"] = scores["report_text"]
    return result
