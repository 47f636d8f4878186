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
import math
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
    from lmvalue.finetune import resolve_checkpoint
    from lmvalue.tokenizer import load_tokenizer

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
    calibrate: bool = True,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> dict:
    """Zero-shot cloze classification scored on the same test split `lmvalue finetune` carves
    (deduplicated pool, ``test_size`` examples, ``test_seed``), or on ``test`` when given.

    No label is used for anything but scoring. Returns the scores (accuracy, macro-F1, report)."""
    import json
    import time

    from lmvalue.data.budget import carve_test, dedupe
    from lmvalue.data.sources import load_labeled
    from lmvalue.errors import DataError
    from lmvalue.files import prepare_output_dir
    from lmvalue.tasks.metrics import classification_scores, summary

    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(
            f"{setting('data.max_length')} must be a positive number of tokens (e.g. 256), got {max_length!r}"
        )
    if out_dir:
        prepare_output_dir(out_dir, create=False)
    t0 = time.perf_counter()
    read = dict(text_column=text_column, label_column=label_column, encoding=encoding, errors=errors)
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
    scorer = ClozeScorer(
        model, tokenizer, spec, max_length=max_length, batch_size=batch_size, calibrate=calibrate
    )
    preds = scorer.predict(examples)
    scores = classification_scores([e["label"] for e in examples], [p["label"] for p in preds], spec.labels)
    result = {
        "model": model_ref,
        "templates": spec.templates,
        "verbalizer": spec.verbalizer,
        "calibrate": calibrate,
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


# --- prompts as fine-tuning methods: zero-shot and PET -------------------------------------------

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
    """The run's :class:`PromptSpec` (``method.prompt`` file, or ``method.templates`` +
    ``method.verbalizer``, or the built-in prompt of a demo source), its verbalizer put in the
    task's label order.

    Raises:
        ConfigError: no prompt given, or a label of the data without label words.
    """
    if method_cfg.prompt:
        path = Path(method_cfg.prompt).expanduser()
        if not path.is_file():
            raise ConfigError(f"method.prompt: {path} is not a file (a YAML with templates: and verbalizer:)")
        spec = PromptSpec.load(path)
    elif method_cfg.templates or method_cfg.verbalizer:
        if not (method_cfg.templates and method_cfg.verbalizer):
            raise ConfigError("give both method.templates and method.verbalizer (or method.prompt FILE.yaml)")
        spec = PromptSpec.from_dict(
            {"templates": method_cfg.templates, "verbalizer": parse_verbalizer(method_cfg.verbalizer)}
        )
    elif source in BUILTIN_PROMPTS:
        spec = PromptSpec.from_dict(BUILTIN_PROMPTS[source])
    else:
        raise ConfigError(
            f"method {method_cfg.name} needs a prompt: method.prompt FILE.yaml (templates: [...], "
            "verbalizer: {label: [words]}), or method.templates '{text} It was {mask}.' with "
            "method.verbalizer 'pos=great,neg=terrible'"
        )
    missing = [lab for lab in labels if lab not in spec.verbalizer]
    if missing:
        raise ConfigError(
            f"the data has labels {missing} that the verbalizer does not map to words (it maps "
            f"{spec.labels}); add them, e.g. '{missing[0]}=WORD'"
        )
    return PromptSpec(templates=spec.templates, verbalizer={lab: spec.verbalizer[lab] for lab in labels})


class PromptBatches(torch.utils.data.Dataset):
    """Cloze batches of labeled examples for one epoch and one process (see
    :class:`lmvalue.tasks.encode.LabeledBatches`, whose order and split it follows)."""

    def __init__(
        self, examples: list[dict], scorer: ClozeScorer, batch_size: int, *, seed, epoch, rank=0, world=1
    ):
        from lmvalue.data.packing import batch_generator

        self.examples, self.scorer, self.batch_size = examples, scorer, batch_size
        self.rank, self.world = rank, world
        self.order = torch.randperm(len(examples), generator=batch_generator(seed, epoch, 7)).numpy()
        per_step = batch_size * world
        self.n_batches = math.ceil(len(examples) / per_step) if world == 1 else len(examples) // per_step

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, i: int) -> dict:
        start = (i * self.world + self.rank) * self.batch_size
        return self.scorer.collate([self.examples[j] for j in self.order[start : start + self.batch_size]])


def _start_mlm(mcfg, seed: int):
    """(masked LM, tokenizer) to prompt: the checkpoint, or its architecture freshly initialised."""
    from transformers import AutoModelForMaskedLM

    from lmvalue.finetune import resolve_checkpoint
    from lmvalue.tokenizer import load_tokenizer

    if not mcfg.init_from:
        raise ConfigError("prompting needs a masked-LM checkpoint: set model.init_from")
    path = resolve_checkpoint(mcfg.init_from)
    if mcfg.from_scratch:
        from transformers import AutoConfig

        torch.manual_seed(seed)
        model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(path))
    else:
        model = masked_lm_weights(path, ref=mcfg.init_from)
    return model, load_tokenizer(path)


def check_masked_lm_start(method: str, mcfg) -> None:
    """Before a cloze method (zero-shot, pet) writes anything: ``model.init_from`` must carry a
    trained masked-LM head (:func:`masked_lm_weights`), unless ``model.from_scratch`` asks for fresh
    weights anyway.

    Raises:
        CheckpointError: the checkpoint has no trained MLM head.
    """
    from lmvalue.finetune import resolve_checkpoint

    if method in ("zero-shot", "pet") and mcfg.init_from and not mcfg.from_scratch:
        masked_lm_weights(resolve_checkpoint(mcfg.init_from), ref=mcfg.init_from)


def _start_causal_lm(mcfg):
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from lmvalue.finetune import resolve_checkpoint
    from lmvalue.tokenizer import load_tokenizer
    from lmvalue.weights import from_pretrained, load_config

    if not mcfg.init_from:
        raise ConfigError("in-context prompting needs a causal-LM checkpoint: set model.init_from")
    path = resolve_checkpoint(mcfg.init_from)
    config = load_config(path)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(
            f"method in-context needs a causal LM (e.g. --model.arch gpt2 pretraining); {path} is a "
            f"{config.model_type} model without one"
        )
    return from_pretrained(AutoModelForCausalLM, path).eval(), load_tokenizer(path)


def fit_prompt(cfg, data, run, accelerator) -> dict:
    """``method.name`` ``zero-shot`` (no training), ``pet`` (the cloze scores trained with
    cross-entropy on the budget's train split, the best dev evaluation kept; PET, Schick & Schütze
    2021) or ``in-context`` (a causal LM with the train split as demonstrations, no training): the
    result dict :func:`lmvalue.finetune.finetune` expects."""
    import dataclasses

    from lmvalue.finetune import _save_common, forward_parameters
    from lmvalue.inference import TaskModel, score
    from lmvalue.models import count_parameters

    task_spec = data.spec
    if task_spec.kind == "tagging":
        raise ConfigError(
            f"method {cfg.method.name} classifies whole inputs; tagging tasks need another method"
        )
    prompt = resolve_prompt(cfg.method, cfg.data.source, task_spec.labels)
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    eval_batch = max(64, cfg.train.batch_size)

    def fresh():
        if cfg.method.name == "in-context":
            model, tokenizer = _start_causal_lm(cfg.model)
            demos = [{k: e[k] for k in ("text", "text_pair", "label") if k in e} for e in data.train]
            scorer = InContextScorer(
                model,
                tokenizer,
                prompt,
                demos,
                max_length=cfg.data.max_length,
                seed=cfg.train.seed,
                calibrate=cfg.method.calibrate,
            )
            return model, scorer
        model, tokenizer = _start_mlm(cfg.model, cfg.train.seed)
        return model, ClozeScorer(
            model,
            tokenizer,
            prompt,
            max_length=cfg.data.max_length,
            batch_size=eval_batch,
            calibrate=cfg.method.calibrate and cfg.method.name == "zero-shot",  # PET learns its biases
        )

    def view(scorer):
        return TaskModel(spec=task_spec, cloze=scorer, batch_size=eval_batch)

    model, scorer = fresh()
    trainable, total = count_parameters(model)
    n_fwd, _ = forward_parameters(model)
    result = {
        "lr": None,
        "trainable_params": 0,
        "total_params": total,
        "train_flops": 0.0,
        "train_seconds": 0.0,
        "train_cpu_seconds": 0.0,
        "steps": 0,
        "train_tokens": 0,
        "prompt": dataclasses.asdict(prompt),
        "model_dir": None,
        "merged_dir": None,
    }
    if cfg.method.name == "pet":
        if not data.train:
            raise ConfigError("pet trains on labeled examples: the budget left none for training")
        rates = cfg.train.lr_search or [cfg.train.lr]
        tried, best = [], None
        for i, lr in enumerate(rates):
            if i > 0:
                model, scorer = fresh()
            sub = run if len(rates) == 1 else _sub_run(run, lr)
            trained = _train_pet(cfg, data, scorer, model, lr, sub, accelerator, rank, world)
            dev = trained["dev_score"]
            tried.append({"lr": lr, "dev_score": dev, "best_step": trained["best_step"]})
            if len(rates) > 1:
                log.info("lr_search: lr=%g -> dev %s %.4f", lr, task_spec.metric, dev)
            if best is None or dev > best[0]:
                best = (dev, lr, trained, model, scorer)
        _, lr, trained, model, scorer = best
        model = accelerator.unwrap_model(trained["model"], keep_fp32_wrapper=False)
        scorer.model = model
        state = trained["state"]
        result.update(
            lr=lr,
            trainable_params=trainable,
            train_flops=float(6 * n_fwd * state.tokens),
            train_seconds=round(state.elapsed, 3),
            train_cpu_seconds=round(trained["cpu_s"], 3),
            steps=state.step,
            train_tokens=state.tokens,
            stop_reason=state.stop_reason,
            best_step=state.best_step,
            evals=state.evals,
        )
        if len(rates) > 1:
            result["lr_search"] = tried
    task = view(scorer)
    result["dev_scores"] = score(task, data.dev) if data.dev else {}
    result["test_scores"] = score(task, data.test, out_dir=run.path if main else None, name="test")
    if cfg.train.save_model and main:

        def write(folder: Path):
            model.save_pretrained(folder, safe_serialization=True)
            import yaml

            (folder / PROMPT_FILE).write_text(
                yaml.safe_dump(dataclasses.asdict(prompt), allow_unicode=True, sort_keys=False),
                encoding="utf-8",
            )
            if isinstance(scorer, InContextScorer):
                import json

                with open(folder / DEMOS_FILE, "w", encoding="utf-8") as f:
                    for d in scorer.demos:
                        f.write(json.dumps(d, ensure_ascii=False) + "\n")
            _save_common(folder, cfg, task_spec, cfg.method.name, scorer.tokenizer)

        result["model_dir"] = str(run.write_dir_atomic("model", write))
    accelerator.wait_for_everyone()
    return result


def _sub_run(run, lr: float):
    from lmvalue.checkpoint import RunDir

    sub = RunDir(run.path / "lr_search" / f"lr-{lr:g}")
    sub.path.mkdir(parents=True, exist_ok=True)
    return sub


def _train_pet(cfg, data, scorer, model, lr, run, accelerator, rank, world) -> dict:
    """One PET run at learning rate ``lr`` with the shared loop; the best dev evaluation is kept."""
    import dataclasses
    import time

    import torch.nn.functional as F

    from lmvalue.finetune import run_steps, weights_checkpoint
    from lmvalue.loop import train_loop
    from lmvalue.tasks.metrics import classification_scores

    steps, eval_every = run_steps(cfg, len(data.train), world)
    loop_cfg = dataclasses.replace(cfg.train, max_steps=steps, eval_every=eval_every, lr=lr)
    labels = list(scorer.spec.labels)
    metric = data.spec.metric

    def evaluate(m) -> dict:
        if not data.dev:
            return {}
        probs = scorer.probabilities(data.dev, m)
        scores = classification_scores(
            [e["label"] for e in data.dev], [labels[int(i)] for i in probs.argmax(1)], labels
        )
        return {f"eval_{k}": v for k, v in scores.items() if isinstance(v, int | float) and k != "examples"}

    def loss_fn(m, batch) -> dict:
        return {"loss": F.cross_entropy(scorer.batch_scores(m, batch), batch["labels"])}

    def epoch_batches(epoch: int):
        return PromptBatches(
            data.train, scorer, cfg.train.batch_size, seed=cfg.train.seed, epoch=epoch, rank=rank, world=world
        )

    save_checkpoint, load_checkpoint = weights_checkpoint(model.config)
    cpu0 = time.process_time()
    state = train_loop(
        model=model,
        loss_fn=loss_fn,
        epoch_batches=epoch_batches,
        evaluate=evaluate,
        cfg=loop_cfg,
        run=run,
        accelerator=accelerator,
        save_model=save_checkpoint,
        load_model=load_checkpoint,
        monitor=f"eval_{metric}",
        mode="max",
    )
    dev = state.best if state.best is not None else float("-inf")
    return {
        "model": model,
        "state": state,
        "dev_score": dev,
        "best_step": state.best_step,
        "cpu_s": time.process_time() - cpu0,
    }


# --- in-context few-shot for causal LMs ----------------------------------------------------------


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
