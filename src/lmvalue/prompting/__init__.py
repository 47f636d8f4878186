"""Cloze prompting for masked LMs (PET-style): a task asked as a fill-in-the-blank question.

A template holds the input (``{text}``, and ``{text_pair}`` for pairs) and one mask slot
(``{mask}``, or the tokenizer's own mask token written out, e.g. ``[MASK]``); a verbalizer maps
each label to one or more words. A label word of k tokens is scored by filling k mask tokens into
the slot and averaging the log-probabilities of its tokens at those positions (all predicted at
once, as in PET); a label scores as its best word. Several templates are ensembled by averaging
their per-label log-softmax scores.

Everything here works on any ``AutoModelForMaskedLM`` checkpoint: an lmvalue pretraining run, a
Hugging Face folder or a hub name.

The package: :mod:`~lmvalue.prompting.scorer` (templates, verbalizers, the cloze scorer),
:mod:`~lmvalue.prompting.incontext` (demonstrations for a causal LM) and
:mod:`~lmvalue.prompting.training` (the prompt methods of ``lmvalue finetune``: it needs the
fine-tuning building blocks, so it is imported from there, never from here).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmvalue.errors import ConfigError, setting
from lmvalue.prompting.incontext import InContextScorer
from lmvalue.prompting.scorer import (
    BUILTIN_PROMPTS,
    DEMOS_FILE,
    MASK_SLOT,
    PROMPT_FILE,
    PROMPT_METHODS,
    ClozeScorer,
    PromptSpec,
    check_masked_lm_start,
    fit_positions,
    load_masked_lm,
    masked_lm_weights,
    parse_verbalizer,
    resolve_prompt,
)

log = logging.getLogger("lmvalue")

__all__ = [
    "BUILTIN_PROMPTS",
    "DEMOS_FILE",
    "MASK_SLOT",
    "PROMPT_FILE",
    "PROMPT_METHODS",
    "ClozeScorer",
    "InContextScorer",
    "PromptSpec",
    "check_masked_lm_start",
    "evaluate_zero_shot",
    "fit_positions",
    "load_scorer",
    "load_masked_lm",
    "masked_lm_weights",
    "parse_verbalizer",
    "resolve_prompt",
]


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


def load_scorer(folder: Path, name: str, method_info: dict, *, max_length: int, batch_size: int):
    """The scorer saved in a prompt method's model folder (``zero-shot``, ``pet``, ``in-context``)."""
    import json

    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from lmvalue.tokenizer import load_tokenizer
    from lmvalue.weights import from_pretrained

    calibrate = bool(method_info.get("config", {}).get("calibrate", False))
    if name == "in-context":
        lines = (folder / DEMOS_FILE).read_text(encoding="utf-8").split("\n")
        demos = [json.loads(line) for line in lines if line.strip()]
        scorer = InContextScorer(
            from_pretrained(AutoModelForCausalLM, folder).eval(),
            load_tokenizer(folder),
            PromptSpec.load(folder / PROMPT_FILE),
            demos,
            max_length=max_length,
            calibrate=calibrate,
        )
        scorer.demos = demos  # saved in their prompt order
        return scorer
    return ClozeScorer(
        from_pretrained(AutoModelForMaskedLM, folder).eval(),
        load_tokenizer(folder),
        PromptSpec.load(folder / PROMPT_FILE),
        max_length=max_length,
        batch_size=batch_size,
        calibrate=name == "zero-shot" and calibrate,  # PET learns its own biases
    )
