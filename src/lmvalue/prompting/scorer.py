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
import logging
import re
from pathlib import Path

import numpy as np
import torch

from lmvalue.errors import ConfigError, setting

log = logging.getLogger("lmvalue")


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
        from lmvalue.config import load_yaml

        return cls.from_dict(load_yaml(path, what="prompt file"))

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
            raise ConfigError(
                f"verbalizer entry {part!r} is not LABEL=WORD[|WORD...]: write it as --verbalizer "
                "'pos=好|棒,neg=差' (labels separated by commas, several words by |)"
            )
        label, words = part.split("=", 1)
        out[label.strip()] = [w.strip() for w in words.split("|") if w.strip()]
    return out


def fit_positions(model, max_length: int) -> int:
    """``max_length`` cut to the model's position embeddings (a 128-position model under the default 256)."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(max_length, positions) if isinstance(positions, int) and positions > 0 else max_length


class ClozeScorer:
    """Label scores of examples under a :class:`PromptSpec` with a masked LM."""

    def __init__(
        self,
        model,
        tokenizer,
        spec: PromptSpec,
        *,
        max_length: int = 256,
        batch_size: int = 32,
        calibrate: bool = False,
    ):
        if tokenizer.mask_token_id is None:
            raise ConfigError("cloze prompting needs a masked-LM tokenizer with a mask token")
        spec.check(tokenizer.mask_token)
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.max_length, self.batch_size = fit_positions(model, max_length), batch_size
        self.calibrate = calibrate
        self._bias: dict[int, torch.Tensor] = {}  # id(model) -> (templates, L) content-free scores
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
            raise ConfigError(
                f"the template alone is longer than {setting('data.max_length')} {self.max_length} tokens; "
                "raise it or shorten the template"
            )
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
    @property
    def views(self) -> list[tuple[int, int]]:
        """(template index, number of mask tokens): one forward pass per view and example."""
        return [(t, k) for t in range(len(self.spec.templates)) for k in self.lengths]

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """A batch of every view of ``examples``: ``v{j}_ids`` / ``v{j}_attn`` (B, T_j) and
        ``v{j}_pos`` (B, k) mask positions, plus ``attention_mask`` (all views side by side, for
        counting tokens) and ``labels`` (B,) when the examples carry one of the spec's labels."""
        pad = self.tokenizer.pad_token_id or 0
        batch: dict[str, torch.Tensor] = {}
        masks = []
        for j, (t, k) in enumerate(self.views):
            encoded = [self.encode(ex, self.spec.templates[t], k) for ex in examples]
            width = max(len(ids) for ids, _ in encoded)
            ids = torch.full((len(examples), width), pad, dtype=torch.long)
            attn = torch.zeros((len(examples), width), dtype=torch.long)
            for r, (seq, _) in enumerate(encoded):
                ids[r, : len(seq)] = torch.tensor(seq)
                attn[r, : len(seq)] = 1
            batch[f"v{j}_ids"], batch[f"v{j}_attn"] = ids, attn
            batch[f"v{j}_pos"] = torch.tensor([pos for _, pos in encoded], dtype=torch.long).reshape(-1, k)
            masks.append(attn)
        batch["attention_mask"] = torch.cat(masks, dim=1)
        index = {label: i for i, label in enumerate(self.spec.labels)}
        if examples and all(ex.get("label") in index for ex in examples):
            batch["labels"] = torch.tensor([index[ex["label"]] for ex in examples], dtype=torch.long)
        return batch

    def batch_scores(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L) label scores of a :meth:`collate` batch, differentiable (PET trains on them).

        Per template: each label's best word by the mean log-probability of its tokens at the mask
        positions (the vocabulary projection runs at those positions only), log-softmax over the
        labels; the templates are averaged. With ``calibrate``, each template's scores of an empty
        input are subtracted first."""
        raws = self._raw_scores(model, batch)
        if self.calibrate:
            bias = self.content_free_scores(model)
            raws = [raw - bias[t].to(raw.device) for t, raw in enumerate(raws)]
        total = None
        for raw in raws:
            part = raw - torch.logsumexp(raw, dim=1, keepdim=True)
            total = part if total is None else total + part
        return total / len(self.spec.templates)

    def content_free_scores(self, model) -> torch.Tensor:
        """(templates, L) raw label scores of an empty input: the label words' prior under each
        template, subtracted when ``calibrate`` is on (contextual calibration, Zhao et al. 2021)."""
        key = id(model)
        if key not in self._bias:
            with torch.no_grad():
                device = next(model.parameters()).device
                batch = {k: v.to(device) for k, v in self.collate([{"text": "", "text_pair": ""}]).items()}
                self._bias[key] = torch.stack([r[0] for r in self._raw_scores(model, batch)]).cpu()
        return self._bias[key]

    def _raw_scores(self, model, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per template: (B, L) each label's best word by mean token log-probability."""
        from lmvalue.objectives.forward import Encoded

        labels = self.spec.labels
        n = batch["v0_ids"].shape[0]
        out = []
        for t in range(len(self.spec.templates)):
            per_label: list[list[torch.Tensor]] = [[] for _ in labels]  # (B,) scores of each word
            for j, (tj, k) in enumerate(self.views):
                if tj != t:
                    continue
                pos = batch[f"v{j}_pos"]  # (B, k)
                inputs = {"input_ids": batch[f"v{j}_ids"], "attention_mask": batch[f"v{j}_attn"]}
                encoded = Encoded(model, inputs)
                selected = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
                selected.scatter_(1, pos, True)
                # boolean selection is row-major: the k masks of a row come out in position order
                logp = torch.log_softmax(encoded.lm_logits(selected).float(), dim=-1).view(n, k, -1)
                steps = torch.arange(k, device=logp.device)
                for li, label in enumerate(labels):
                    for word in self.word_ids[label]:
                        if len(word) == k:
                            idx = torch.tensor(word, device=logp.device)
                            per_label[li].append(logp[:, steps, idx].mean(dim=1))
            out.append(torch.stack([torch.stack(words, 1).amax(1) for words in per_label], dim=1))  # (B, L)
        return out

    @torch.no_grad()
    def label_scores(self, examples: list[dict], model=None) -> np.ndarray:
        """(N, L) scores of :meth:`batch_scores` for raw examples (batched by length)."""
        model = model if model is not None else self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].get("text") or ""))
        out = np.zeros((len(examples), len(self.spec.labels)))
        try:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.collate([examples[i] for i in rows])
                batch = {k: v.to(device) for k, v in batch.items()}
                out[rows] = self.batch_scores(model, batch).cpu().numpy()
        finally:
            model.train(was_training)
        return out

    def probabilities(self, examples: list[dict], model=None) -> np.ndarray:
        """(N, L) label probabilities (softmax of the scores)."""
        scores = self.label_scores(examples, model)
        return np.exp(scores - np.logaddexp.reduce(scores, axis=1, keepdims=True))

    def predict(self, examples: list[dict]) -> list[dict]:
        probs = self.probabilities(examples)
        labels = self.spec.labels
        return [
            {
                "label": labels[int(np.argmax(p))],
                "probs": {lab: float(x) for lab, x in zip(labels, p, strict=True)},
            }
            for p in probs
        ]


def load_masked_lm(ref: str):
    """(model, tokenizer) of a masked-LM checkpoint: an lmvalue run folder, a HF folder or hub name.

    Raises:
        CheckpointError: the checkpoint has no trained masked-LM head (see :func:`masked_lm_weights`).
    """
    from lmvalue.tokenizer import load_tokenizer
    from lmvalue.weights import resolve_checkpoint

    path = resolve_checkpoint(ref)
    return masked_lm_weights(path, ref=ref), load_tokenizer(path)


def masked_lm_weights(path: str, *, ref: str | None = None):
    """``AutoModelForMaskedLM`` of checkpoint ``path`` (a folder or hub name), refusing one whose
    weights lack the masked-LM head.

    Prompting reads its answer off the MLM head. transformers fills head weights a checkpoint lacks
    with fresh random values and goes on, so a fine-tuned classifier (a task head, no MLM head) would
    be "prompted" through an untrained head and score at chance without a word. The weights the
    checkpoint lacks outside the encoder (``missing_keys`` of the load, outside the
    ``base_model_prefix``) are that head; any of them is an error.

    Raises:
        CheckpointError: no masked-LM architecture for the config, or no trained MLM head.
    """
    from transformers import AutoModelForMaskedLM

    from lmvalue.errors import CheckpointError

    where = ref or path
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

    from lmvalue.weights import from_pretrained, load_config

    config = load_config(path)
    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:  # a causal LM, ...
        raise CheckpointError(
            f"{where} is not a masked LM ({config.model_type}), which cloze prompting needs; use a masked-LM "
            "pretraining run (objective mlm) or a *ForMaskedLM checkpoint"
        )
    model, info = from_pretrained(AutoModelForMaskedLM, path, output_loading_info=True)
    prefix = f"{model.base_model_prefix}."
    head = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix))
    if head:
        archs = getattr(model.config, "architectures", None) or []
        origin = _fine_tuned_from(Path(path))
        raise CheckpointError(
            f"{where} has no trained masked-LM head: its weights lack {', '.join(head[:4])}"
            + (f" and {len(head) - 4} more" if len(head) > 4 else "")
            + (f" (its config.json lists {', '.join(archs)})" if archs else "")
            + ". Prompting reads the answer off that head, and a freshly initialised one scores at "
            "chance. Use a masked-LM checkpoint instead: "
            + (f"{origin}, the one this model was fine-tuned from, or " if origin else "")
            + "a pretraining run (its folder or its model/), or any *ForMaskedLM / *ForPreTraining "
            "folder or hub name"
        )
    return model


def _fine_tuned_from(folder: Path) -> str | None:
    """The ``model.init_from`` an lmvalue fine-tuned model folder records, if any."""
    import yaml

    saved = folder / "lmvalue_config.yaml"
    if not saved.is_file():
        return None
    try:
        cfg = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    return (model or {}).get("init_from") if isinstance(model, dict) else None


PROMPT_METHODS = ("zero-shot", "pet", "in-context")
DEMOS_FILE = "demonstrations.jsonl"
PROMPT_FILE = "prompt.yaml"

# Prompts for the built-in demo data, used when a run gives none.
BUILTIN_PROMPTS = {
    "demo:zh-reviews": {
        "templates": ["{text}总之，这个东西很{mask}。", "{mask}！{text}"],
        "verbalizer": {"pos": ["好", "不错"], "neg": ["差"]},
    },
}


def resolve_prompt(method_cfg, source: str | None, labels: list[str] | tuple[str, ...]) -> PromptSpec:
    """The run's :class:`PromptSpec` (``method.prompting.file``, or ``method.prompting.templates`` +
    ``method.prompting.verbalizer``, or the built-in prompt of a demo source), its verbalizer put in the
    task's label order.

    Raises:
        ConfigError: no prompt given, or a label of the data without label words.
    """
    if method_cfg.prompting.file:
        path = Path(method_cfg.prompting.file).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"method.prompting.file: {path} is not a file (a YAML with templates: and verbalizer:)"
            )
        spec = PromptSpec.load(path)
    elif method_cfg.prompting.templates or method_cfg.prompting.verbalizer:
        if not (method_cfg.prompting.templates and method_cfg.prompting.verbalizer):
            raise ConfigError(
                "give both method.prompting.templates and method.prompting.verbalizer (or method.prompting.file FILE.yaml)"
            )
        spec = PromptSpec.from_dict(
            {
                "templates": method_cfg.prompting.templates,
                "verbalizer": parse_verbalizer(method_cfg.prompting.verbalizer),
            }
        )
    elif source in BUILTIN_PROMPTS:
        spec = PromptSpec.from_dict(BUILTIN_PROMPTS[source])
    else:
        raise ConfigError(
            f"method {method_cfg.name} needs a prompt: method.prompting.file FILE.yaml (templates: [...], "
            "verbalizer: {label: [words]}), or method.prompting.templates '{text} It was {mask}.' with "
            "method.prompting.verbalizer 'pos=great,neg=terrible'"
        )
    missing = [lab for lab in labels if lab not in spec.verbalizer]
    if missing:
        raise ConfigError(
            f"the data has labels {missing} that the verbalizer does not map to words (it maps "
            f"{spec.labels}); add them, e.g. '{missing[0]}=WORD'"
        )
    return PromptSpec(templates=spec.templates, verbalizer={lab: spec.verbalizer[lab] for lab in labels})


def check_masked_lm_start(method: str, mcfg) -> None:
    """Before a cloze method (zero-shot, pet) writes anything: ``model.init_from`` must carry a
    trained masked-LM head (:func:`masked_lm_weights`), unless ``model.from_scratch`` asks for fresh
    weights anyway.

    Raises:
        CheckpointError: the checkpoint has no trained MLM head.
    """
    from lmvalue.weights import resolve_checkpoint

    if method in ("zero-shot", "pet") and mcfg.init_from and not mcfg.from_scratch:
        masked_lm_weights(resolve_checkpoint(mcfg.init_from), ref=mcfg.init_from)
