"""`lmvalue drift`: how far new unlabeled text is from the text a model was pretrained on.

Three pieces of evidence, each with a number a user can act on:

* **language-model loss**: the pretrained model's masked-LM (or causal-LM) loss on each document of the
  reference and of the new text, masks drawn from a fixed seed; the difference of the means with a
  bootstrap 95% interval (new text the model predicts worse is text it has not learned);
* **vocabulary**: the share of the new text's tokens that the tokenizer maps to ``[UNK]``, and the share of
  its words (characters for Chinese) never seen in the reference;
* **a classifier two-sample test** in the encoder's representation space (Lopez-Paz & Oquab 2017): a logistic
  regression tries to tell reference from new documents by their mean-pooled hidden states; its
  cross-validated AUC (0.5: indistinguishable) with a permutation p-value.

The verdict is "drift" when the two-sample test rejects (p < ``alpha``) with an AUC of at least
``min_auc`` (a difference large enough to matter, not only to detect); the loss and vocabulary numbers are
reported as the evidence. Everything is written to ``drift.json``.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lmvalue.errors import DataError

log = logging.getLogger("lmvalue")
_CJK = re.compile(r"[\u3400-\u9fff]")
_WORD = re.compile(r"[\u3400-\u9fff]|[^\W\d_]+", re.UNICODE)


@dataclass
class DriftSettings:
    max_docs: int = 500  # documents sampled from each side
    max_length: int = 128  # tokens read per document
    mask_rate: float = 0.15
    permutations: int = 100
    alpha: float = 0.01
    min_auc: float = 0.6
    seed: int = 0


def reference_source(model: str) -> str | None:
    """The corpus an lmvalue pretraining run was trained on (its config.yaml), when ``model`` is a run folder."""
    import yaml

    for folder in (Path(model), Path(model).parent):
        cfg = folder / "config.yaml"
        if cfg.is_file():
            try:
                source = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("data", {}).get("source")
            except yaml.YAMLError:
                return None
            if source:
                return str(source)
    return None


def sample_texts(source: str, n: int, seed: int, what: str) -> list[str]:
    from lmvalue.data.sources import load_texts

    texts = [t for t in dict.fromkeys(load_texts(source)) if t.strip()]
    if len(texts) < 10:
        raise DataError(f"{what} {source}: {len(texts)} documents; drift needs at least 10 on each side")
    random.Random(seed).shuffle(texts)
    return texts[:n]


def words(text: str) -> list[str]:
    """Characters for Chinese, lower-cased words otherwise."""
    return [w.lower() for w in _WORD.findall(text)]


def vocabulary_shift(reference: list[str], new: list[str], tokenizer) -> dict:
    seen = {w for t in reference for w in words(t)}
    new_words = [w for t in new for w in words(t)]
    unseen = sum(1 for w in new_words if w not in seen)

    def unk_rate(texts: list[str]) -> float:
        ids = [i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]]
        return sum(1 for i in ids if i == tokenizer.unk_token_id) / max(1, len(ids))

    return {
        "unk_rate_reference": unk_rate(reference),
        "unk_rate_new": unk_rate(new),
        "new_word_rate": unseen / max(1, len(new_words)),
        "new_word_types": len({w for w in new_words if w not in seen}),
    }


def document_losses(
    model, tokenizer, texts: list[str], s: DriftSettings, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Per-document LM loss (masked LM: a ``mask_rate`` share of the tokens masked, drawn document by document
    from a seeded generator; a decoder: next-token loss) and mean-pooled last hidden states, shape (N,) and
    (N, C). Documents run in padded batches; a document's masks do not depend on its batch."""
    import torch.nn.functional as F

    decoder = tokenizer.mask_token_id is None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    g = torch.Generator().manual_seed(s.seed)
    specials = set(tokenizer.all_special_ids)
    encoded = tokenizer(texts, truncation=True, max_length=s.max_length)["input_ids"]
    inputs, targets = (
        [],
        [],
    )  # per document: the ids the model reads, and the ids it must predict (-100: none)
    for ids in encoded:
        ids = torch.tensor(ids)
        if decoder:
            inputs.append(ids)
            targets.append(ids.clone())
            continue
        ordinary = torch.tensor([i not in specials for i in ids.tolist()])
        hit = (torch.rand(ids.shape, generator=g) < s.mask_rate) & ordinary
        if not hit.any() and ordinary.any():  # every document counts: at least one masked token
            hit[int(ordinary.nonzero()[0])] = True
        inputs.append(torch.where(hit, torch.full_like(ids, tokenizer.mask_token_id), ids))
        targets.append(torch.where(hit, ids, torch.full_like(ids, -100)))
    losses, feats = np.full(len(texts), np.nan), np.zeros((len(texts), model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = range(start, min(start + batch_size, len(texts)))
            width = max(len(inputs[i]) for i in rows)
            x = torch.full((len(rows), width), pad)  # (B, T)
            y = torch.full((len(rows), width), -100)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, i in enumerate(rows):
                n = len(inputs[i])
                x[b, :n], y[b, :n], mask[b, :n] = inputs[i], targets[i], 1
            out = model(input_ids=x, attention_mask=mask, output_hidden_states=True)
            logits = out.logits.float()  # (B, T, V)
            if decoder:  # predict token t+1 from the tokens up to t
                logits, y = logits[:, :-1], y[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            ce = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="none")  # (B, T')
            counted = (y != -100).sum(1)
            doc = ce.sum(1) / counted.clamp(min=1)
            h = out.hidden_states[-1].float()  # (B, T, C)
            pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            for b, i in enumerate(rows):
                losses[i] = float(doc[b]) if counted[b] > 0 else np.nan
                feats[i] = pooled[b].numpy()
    return losses, feats


def two_sample_test(ref_feats: np.ndarray, new_feats: np.ndarray, s: DriftSettings) -> dict:
    """Cross-validated AUC of a logistic regression telling the two samples apart, and its permutation
    p-value (the labels shuffled ``permutations`` times; p = (1 + #AUC_perm >= AUC) / (1 + permutations))."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([ref_feats, new_feats])
    y = np.array([0] * len(ref_feats) + [1] * len(new_feats))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=s.seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))

    def auc(labels: np.ndarray) -> float:
        p = cross_val_predict(clf, x, labels, cv=folds, method="predict_proba")[:, 1]
        return float(roc_auc_score(labels, p))

    observed = auc(y)
    rng = np.random.default_rng(s.seed)
    null = [auc(rng.permutation(y)) for _ in range(s.permutations)]
    p_value = (1 + sum(a >= observed for a in null)) / (1 + s.permutations)
    return {
        "auc": observed,
        "p_value": p_value,
        "permutations": s.permutations,
        "null_auc_95": float(np.quantile(null, 0.95)),
    }


def bootstrap_mean_difference(
    a: np.ndarray, b: np.ndarray, seed: int, n: int = 2000
) -> tuple[float, float, float]:
    """mean(b) - mean(a) with a percentile bootstrap 95% interval (independent samples)."""
    rng = np.random.default_rng(seed)
    diffs = [rng.choice(b, len(b)).mean() - rng.choice(a, len(a)).mean() for _ in range(n)]
    return float(b.mean() - a.mean()), float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def logged_predictions(source: str) -> dict[str, str]:
    """text -> top predicted label, from a ``lmvalue serve --log-inputs`` file (JSON Lines with ``text`` and
    ``prediction``); empty for any other source."""
    path = Path(source)
    if path.suffix != ".jsonl" or not path.is_file():
        return {}
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return {}
            pred = row.get("prediction") if isinstance(row, dict) else None
            if isinstance(pred, list) and pred and isinstance(pred[0], dict):
                pred = max(pred, key=lambda p: p.get("score", 0.0))
            if isinstance(pred, dict) and "label" in pred and isinstance(row.get("text"), str):
                out[row["text"]] = str(pred["label"])
    return out


def label_shift(task_model: str, reference: list[str], new: list[str], logged: dict[str, str]) -> dict:
    """The predicted-label distribution of the reference (by ``task_model``) against that of the new text
    (its logged predictions where a serve log has them, else ``task_model``'s): a chi-square test of the
    two count vectors and the total variation distance."""
    from scipy.stats import chi2_contingency

    from lmvalue.inference import load_task_model

    task = load_task_model(task_model)
    if task.spec.kind != "classification":
        raise DataError(
            f"--task-model {task_model}: label shift needs a text classifier, not a {task.spec.kind} model"
        )

    def predicted(texts: list[str]) -> list[str]:
        return [p["label"] for p in task.predict([{"text": t} for t in texts])] if texts else []

    todo = [t for t in new if t not in logged]
    fresh = dict(zip(todo, predicted(todo), strict=True))
    new_labels = [logged.get(t) or fresh[t] for t in new]
    ref_labels = predicted(reference)
    labels = sorted(set(ref_labels) | set(new_labels))
    table = np.array([[ref_labels.count(lab) for lab in labels], [new_labels.count(lab) for lab in labels]])
    p_value = float(chi2_contingency(table)[1]) if len(labels) > 1 else 1.0
    share = table / table.sum(1, keepdims=True)
    return {
        "labels": labels,
        "reference_share": dict(zip(labels, share[0].round(4).tolist(), strict=True)),
        "new_share": dict(zip(labels, share[1].round(4).tolist(), strict=True)),
        "total_variation": float(0.5 * np.abs(share[0] - share[1]).sum()),
        "p_value": p_value,
        "from_log": len(new) - len(todo),
    }


def measure_drift(
    model_path: str,
    new: str,
    reference: str | None,
    output_dir: str,
    s: DriftSettings,
    task_model: str | None = None,
) -> dict:
    from lmvalue.continual import load_lm
    from lmvalue.files import prepare_output_dir, write_text_atomic
    from lmvalue.tokenizer import load_tokenizer
    from lmvalue.weights import resolve_checkpoint

    if (1 + s.permutations) * s.alpha <= 1:
        from lmvalue.errors import ConfigError

        raise ConfigError(
            f"drift: with {s.permutations} permutations the smallest p-value is 1/{s.permutations + 1}, which can "
            f"never be below alpha={s.alpha}; use --permutations {int(1 / s.alpha)} or more"
        )
    from_config = reference is None
    reference = reference or reference_source(model_path)
    if not reference:
        raise DataError(
            f"drift: {model_path} does not say what it was pretrained on (no lmvalue config.yaml); give the "
            "reference text with --reference"
        )
    folder = resolve_checkpoint(model_path)
    tokenizer = load_tokenizer(folder)
    model = load_lm(folder)
    out = prepare_output_dir(output_dir)
    try:
        ref_texts = sample_texts(reference, s.max_docs, s.seed, "--reference")
    except DataError as e:
        if not from_config:
            raise
        raise DataError(
            f"drift: {model_path} was pretrained on {reference} (its config.yaml), which cannot be read from "
            f"here ({str(e).splitlines()[0][:160]}); give the reference text with --reference"
        ) from None
    new_texts = sample_texts(new, s.max_docs, s.seed + 1, "--new")
    log.info(
        "drift: %d reference and %d new documents through %s ...", len(ref_texts), len(new_texts), folder
    )
    ref_loss, ref_feats = document_losses(model, tokenizer, ref_texts, s)
    new_loss, new_feats = document_losses(model, tokenizer, new_texts, s)
    ref_loss, new_loss = ref_loss[~np.isnan(ref_loss)], new_loss[~np.isnan(new_loss)]
    diff = bootstrap_mean_difference(ref_loss, new_loss, s.seed)
    test = two_sample_test(ref_feats, new_feats, s)
    vocab = vocabulary_shift(ref_texts, new_texts, tokenizer)
    labels = label_shift(task_model, ref_texts, new_texts, logged_predictions(new)) if task_model else None
    drift = test["p_value"] < s.alpha and test["auc"] >= s.min_auc
    evidence = (
        f"a classifier tells the new text from the reference with AUC {test['auc']:.3f} "
        f"(permutation p = {test['p_value']:.3g}; chance: 0.5, 95% of shuffles below {test['null_auc_95']:.3f}); "
        f"LM loss {ref_loss.mean():.3f} -> {new_loss.mean():.3f} "
        f"({diff[0]:+.3f}, 95% CI {diff[1]:+.3f} to {diff[2]:+.3f}, perplexity {np.exp(ref_loss.mean()):.1f} -> "
        f"{np.exp(new_loss.mean()):.1f}); {vocab['new_word_rate']:.1%} of the new text's words are unseen in the "
        f"reference, [UNK] {vocab['unk_rate_reference']:.2%} -> {vocab['unk_rate_new']:.2%}"
    )
    if labels:
        shares = ", ".join(
            f"{lab} {labels['reference_share'][lab]:.0%} -> {labels['new_share'][lab]:.0%}"
            for lab in labels["labels"]
        )
        evidence += (
            f"; predicted labels {shares} (total variation {labels['total_variation']:.2f}, "
            f"chi-square p = {labels['p_value']:.3g})"
        )
    verdict = (
        ("DRIFT: " if drift else "no drift: ")
        + evidence
        + (
            ". Consider continued pretraining on the new text (lmvalue continual)."
            if drift and diff[1] > 0
            else "."
        )
    )
    result = {
        "drift": bool(drift),
        "verdict": verdict,
        "model": str(folder),
        "reference": reference,
        "new": new,
        "documents": {"reference": len(ref_texts), "new": len(new_texts)},
        "lm_loss": {
            "reference": float(ref_loss.mean()),
            "new": float(new_loss.mean()),
            "difference": diff[0],
            "ci95": [diff[1], diff[2]],
            "perplexity_reference": float(np.exp(ref_loss.mean())),
            "perplexity_new": float(np.exp(new_loss.mean())),
        },
        "two_sample": test,
        "vocabulary": vocab,
        "label_shift": labels,
        "settings": asdict(s),
    }
    write_text_atomic(Path(out) / "drift.json", json.dumps(result, indent=2, ensure_ascii=False))
    return result
