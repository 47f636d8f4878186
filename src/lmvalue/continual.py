"""`lmvalue continual`: keep a language model current by pretraining it on new text, stage after
stage, and measure what it forgets.

Each stage is a normal `lmvalue pretrain` run (its own folder, checkpoints and ``--resume``) that
starts from the previous stage's model. Two counter-measures against forgetting can be switched on:

* **replay** (``replay: 0.2``): that share of every batch is drawn from the training blocks of the
  corpora seen before (their held-out documents are never trained on);
* **regularization** towards the weights the stage started from: ``l2sp`` (Li et al. 2018,
  ``reg_weight/2 · Σ (θ - θ₀)²``) or ``ewc`` (Kirkpatrick et al. 2017, each weight's squared
  distance scaled by its diagonal Fisher information, estimated on the earlier corpora and
  normalized to mean 1 so that ``reg_weight`` means the same as for ``l2sp``).

Forgetting is measured, not assumed: before the first stage and after every stage, the model's
held-out masked-LM (or causal-LM) loss on every corpus of the sequence, with fixed masks. The rows
of that matrix, backward transfer (BWT) and forward transfer (FWT) as defined by Lopez-Paz &
Ranzato (2017) are written to ``metrics.json`` and plotted in ``forgetting.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmvalue.checkpoint import write_json_atomic
from lmvalue.config import REGULARIZERS, ContinualConfig, PretrainConfig, Stage, build_config  # noqa: F401
from lmvalue.data.packing import MixedBatches  # noqa: F401  (its home is the data layer)
from lmvalue.errors import ConfigError
from lmvalue.weights import from_pretrained

log = logging.getLogger("lmvalue")

# --- metrics -------------------------------------------------------------------------------------


def transfer_metrics(matrix: list[list[float | None]], *, higher_is_better: bool) -> dict:
    """Backward and forward transfer of a (stages + 1) × corpora score matrix.

    Row 0 scores the starting model, row ``i`` the model after stage ``i``; column ``j`` is corpus
    ``j``. Corpus ``j`` (0-based) is trained on in stage ``j - p + 1`` where ``p`` is the number of
    corpora seen before the first stage (``p`` = columns - stages); earlier corpora count as learned
    in row 0. As in Lopez-Paz & Ranzato (2017), with scores oriented so that higher is better:

    * BWT = mean over the corpora learned before the last row of (final score - score right after
      the corpus was learned): negative means forgetting;
    * FWT = mean over the corpora learned in stages 2.. of (score just before the stage - score of
      the starting model): positive means earlier stages helped.

    Losses are passed with ``higher_is_better=False`` and negated first, so the signs keep their
    meaning. Returns ``{"bwt", "fwt", "forgetting"}`` (``forgetting``: per corpus, final minus
    learned, in the matrix's own units) with None where undefined.
    """
    r = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    sign = 1.0 if higher_is_better else -1.0
    s = sign * r
    n_rows, n_cols = r.shape
    stages = n_rows - 1
    before = n_cols - stages  # corpora learned before the first stage
    if before < 0:
        raise ValueError(f"{n_cols} corpora for {stages} stages: every stage needs its corpus")
    learned_row = [0 if j < before else j - before + 1 for j in range(n_cols)]
    final = n_rows - 1
    bwt_terms = [s[final, j] - s[learned_row[j], j] for j in range(n_cols) if learned_row[j] < final]
    fwt_terms = [s[learned_row[j] - 1, j] - s[0, j] for j in range(n_cols) if learned_row[j] >= 2]
    forgetting = {
        j: float(r[final, j] - r[learned_row[j], j]) for j in range(n_cols) if learned_row[j] < final
    }

    def mean(xs):
        xs = [x for x in xs if not np.isnan(x)]
        return float(np.mean(xs)) if xs else None

    return {"bwt": mean(bwt_terms), "fwt": mean(fwt_terms), "forgetting": forgetting}


# --- corpora -------------------------------------------------------------------------------------


@dataclass
class CorpusBlocks:
    source: str
    train: np.ndarray  # packed blocks of the training documents
    held_out: np.ndarray  # the first eval_max_blocks packed blocks of the held-out documents


def corpus_blocks(source: str, tokenizer, pcfg: PretrainConfig, max_blocks: int) -> CorpusBlocks:
    """One corpus packed the way `lmvalue pretrain` packs it with the same settings and seed: the
    same documents are held out, so a stage never trains on another stage's held-out text."""
    from lmvalue.data.packing import pack_blocks, split_documents
    from lmvalue.data.shards import cached_blocks, cached_tokens
    from lmvalue.data.sources import iter_texts
    from lmvalue.pretraining import source_kwargs

    kwargs = source_kwargs(dataclasses.replace(pcfg, data=dataclasses.replace(pcfg.data, source=source)))
    entry, _ = cached_tokens(lambda: iter_texts(source, **kwargs), tokenizer, cache_dir=pcfg.data.cache_dir)
    n_docs = len(entry.offsets) - 1
    train_docs, eval_docs = split_documents(n_docs, pcfg.data.eval_fraction, pcfg.train.seed)
    sep, cls = _separators(tokenizer)
    bs = pcfg.data.block_size
    covered = np.cumsum(entry.offsets[eval_docs + 1] - entry.offsets[eval_docs] + 1)
    eval_docs = eval_docs[: int(np.searchsorted(covered, (max_blocks + 1) * bs)) + 1]
    held = pack_blocks(np.asarray(entry.ids), entry.offsets, eval_docs, bs, sep_id=sep, cls_id=cls)[
        :max_blocks
    ]
    train = cached_blocks(entry, train_docs, bs, sep_id=sep, cls_id=cls, cache_dir=pcfg.data.cache_dir)
    return CorpusBlocks(source=source, train=train, held_out=held)


def _separators(tokenizer) -> tuple[int, int | None]:
    if tokenizer.cls_token_id is None:  # a decoder
        return tokenizer.eos_token_id, None
    return tokenizer.sep_token_id, tokenizer.cls_token_id


def _lm_objective(tokenizer, pcfg: PretrainConfig):
    from lmvalue.objectives import ObjectiveSet
    from lmvalue.objectives.clm import CausalLM
    from lmvalue.objectives.mlm import MaskedLM

    if tokenizer.cls_token_id is None:
        return ObjectiveSet([CausalLM.from_config(tokenizer, pcfg.objective)], [1.0]), "clm"
    return ObjectiveSet([MaskedLM.from_config(tokenizer, pcfg.objective)], [1.0]), "mlm"


def held_out_loss(model, tokenizer, blocks: np.ndarray, pcfg: PretrainConfig) -> float:
    """Mean held-out LM loss with masks fixed by the seed (the same for every model)."""
    from lmvalue.data.packing import eval_batches

    objective, name = _lm_objective(tokenizer, pcfg)
    device = next(model.parameters()).device
    batches = eval_batches(blocks, pcfg.train.batch_size, objective.prepare, seed=pcfg.train.seed)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    with torch.no_grad():
        return float(objective.evaluate(model, batches)[f"eval_{name}_loss"])


def load_lm(path: str):
    """A pretrained language model (masked or causal, by its config) from a run, folder or hub name, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from lmvalue.weights import resolve_checkpoint

    path = resolve_checkpoint(path)
    config = AutoConfig.from_pretrained(path)
    auto = (
        AutoModelForCausalLM
        if getattr(config, "is_decoder", False)
        or config.model_type
        in (
            "gpt2",
            "llama",
        )
        else AutoModelForMaskedLM
    )
    return from_pretrained(auto, path).eval()


# --- regularizers --------------------------------------------------------------------------------


def make_penalty(kind: str, weight: float, model, fisher: dict[str, torch.Tensor] | None = None):
    """``penalty(model) -> scalar``: ``weight/2 · Σ F (θ - θ₀)²`` over the weights the model has
    now (θ₀: a copy taken here; F = 1 for l2sp, the Fisher estimate for ewc)."""
    anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if kind == "ewc" and fisher is None:
        raise ValueError("ewc needs a Fisher estimate")

    def penalty(m) -> torch.Tensor:
        total = None
        for n, p in m.named_parameters():
            if n not in anchor:
                continue
            d = (p - anchor[n]).pow(2)
            if fisher is not None:
                d = d * fisher[n]
            term = d.sum()
            total = term if total is None else total + term
        return 0.5 * weight * total

    return penalty


def estimate_fisher(model, tokenizer, blocks: np.ndarray, pcfg: PretrainConfig, n_batches: int) -> dict:
    """Diagonal empirical Fisher of the LM loss on ``blocks`` (squared batch gradients, averaged over
    ``n_batches`` batches), normalized to mean 1 over all weights."""
    from lmvalue.data.packing import eval_batches

    objective, name = _lm_objective(tokenizer, pcfg)
    rows = np.random.default_rng(pcfg.train.seed).permutation(len(blocks))[
        : n_batches * pcfg.train.batch_size
    ]
    batches = eval_batches(
        np.asarray(blocks[np.sort(rows)]), pcfg.train.batch_size, objective.prepare, seed=pcfg.train.seed + 1
    )
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout noise in the estimate
    for batch in batches:
        model.zero_grad(set_to_none=True)
        objective.losses(model, batch)["loss"].backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().pow(2) / len(batches)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    mean = torch.cat([f.flatten() for f in fisher.values()]).mean().clamp_min(1e-30)
    return {n: f / mean for n, f in fisher.items()}


# --- the run -------------------------------------------------------------------------------------


def run_continual(cfg: ContinualConfig) -> dict:
    """Run every stage in order (finished stages are kept, an interrupted one resumes with
    ``resume``); return and write the forgetting matrix and transfer metrics."""
    from lmvalue.checkpoint import RunDir
    from lmvalue.pretraining import pretrain
    from lmvalue.tokenizer import load_tokenizer

    out = Path(cfg.output_dir)
    base = build_config(PretrainConfig, overrides=_flat(cfg.pretrain))
    _prepare_folder(out, cfg)
    save_yaml_dict(cfg.to_dict(), out / "continual.yaml")
    corpora = list(cfg.previous) + [s.source for s in cfg.stages]
    matrix: list[list[float | None]] = []
    rows: list[str] = []
    stage_metrics = []
    start_model = base.model.init_from
    blocks_cache: dict[str, CorpusBlocks] = {}
    t0 = time.perf_counter()

    def blocks_of(source: str, tokenizer) -> CorpusBlocks:
        if source not in blocks_cache:
            blocks_cache[source] = corpus_blocks(source, tokenizer, base, cfg.eval_max_blocks)
        return blocks_cache[source]

    def evaluate_row(model_dir: str, label: str):
        tokenizer = load_tokenizer(model_dir)
        model = load_lm(model_dir)
        losses = [held_out_loss(model, tokenizer, blocks_of(c, tokenizer).held_out, base) for c in corpora]
        matrix.append(losses)
        rows.append(label)
        log.info(
            "held-out loss %s: %s",
            label,
            ", ".join(f"{c} {v:.4f}" for c, v in zip(corpora, losses, strict=True)),
        )
        return tokenizer

    tokenizer = None
    if start_model:
        tokenizer = evaluate_row(start_model, "start")
    elif cfg.previous:
        raise ConfigError(
            "continual: previous corpora are given but no starting model (pretrain.model.init_from)"
        )
    prev_model = start_model
    for i, stage in enumerate(cfg.stages):
        seen = corpora[: len(cfg.previous) + i]
        stage_dir = out / f"stage{i + 1}-{stage.slug}"
        scfg = copy.deepcopy(base)
        scfg.data.source = stage.source
        scfg.train.output_dir = str(stage_dir)
        if stage.max_minutes is not None:
            scfg.train.max_minutes = stage.max_minutes
        if stage.max_steps is not None:
            scfg.train.max_steps = stage.max_steps
        if prev_model:
            scfg.model.init_from = prev_model
            scfg.model.tokenizer = None
        run = RunDir(stage_dir)
        if run.status() == "finished":
            import json

            metrics = json.loads((stage_dir / "metrics.json").read_text())
            log.info("stage %d (%s) already finished", i + 1, stage.source)
        else:
            if run.latest_checkpoint() is not None:
                scfg.train.resume = True
            else:
                scfg.train.overwrite = True
            replay = penalty_factory = old_blocks = None
            if seen and (cfg.replay > 0 or cfg.regularizer == "ewc"):
                tokenizer = tokenizer or load_tokenizer(prev_model)
                old = [blocks_of(c, tokenizer).train for c in seen]
                old_blocks = np.concatenate([np.asarray(b) for b in old]) if len(old) > 1 else old[0]
                if cfg.replay > 0:
                    replay = {"blocks": old_blocks, "share": cfg.replay}
            if seen and cfg.regularizer != "none":

                def penalty_factory(
                    model, tok, _old=old_blocks if cfg.regularizer == "ewc" else None, _cfg=scfg
                ):
                    fisher = None
                    if _old is not None:
                        log.info(
                            "estimating the Fisher information on %d batches of earlier text",
                            cfg.fisher_batches,
                        )
                        fisher = estimate_fisher(model, tok, _old, _cfg, cfg.fisher_batches)
                    return make_penalty(cfg.regularizer, cfg.reg_weight, model, fisher)

            log.info(
                "stage %d/%d: %s%s%s",
                i + 1,
                len(cfg.stages),
                stage.source,
                f", replay {cfg.replay:.0%} of {', '.join(seen)}" if replay else "",
                f", {cfg.regularizer} (weight {cfg.reg_weight:g})" if penalty_factory else "",
            )
            metrics = pretrain(scfg, replay=replay, regularizer=penalty_factory)
        stage_metrics.append(
            {
                "stage": i + 1,
                "source": stage.source,
                "steps": metrics.get("steps"),
                "tokens": metrics.get("tokens"),
                "train_seconds": metrics.get("train_seconds"),
                "model_dir": str(stage_dir / "model"),
            }
        )
        prev_model = str(stage_dir / "model")
        tokenizer = evaluate_row(prev_model, f"after stage {i + 1} ({stage.source})")
    transfer = transfer_metrics(
        matrix if start_model else [[None] * len(corpora)] + matrix, higher_is_better=False
    )
    result = {
        "corpora": corpora,
        "rows": rows if start_model else ["start (none)"] + rows,
        "held_out_loss": matrix if start_model else [[None] * len(corpora)] + matrix,
        "bwt": transfer["bwt"],
        "fwt": transfer["fwt"],
        "forgetting": {corpora[j]: v for j, v in transfer["forgetting"].items()},
        "replay": cfg.replay,
        "regularizer": cfg.regularizer,
        "reg_weight": cfg.reg_weight,
        "stages": stage_metrics,
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(out / "metrics.json", result)
    _plot(result, out / "forgetting.png")
    return result


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def save_yaml_dict(d: dict, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(d, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _prepare_folder(out: Path, cfg: ContinualConfig) -> None:
    import shutil

    from lmvalue.files import prepare_output_dir

    prepare_output_dir(out, create=False)
    if cfg.resume and not (out.exists() and any(out.iterdir())):
        raise ConfigError(
            f"cannot resume: {out} holds no run; nothing was changed. Drop --resume to start one"
        )
    if out.exists() and any(out.iterdir()):
        if cfg.overwrite:
            shutil.rmtree(out)
        elif not cfg.resume and _failed_start(out):
            # a start that failed before any checkpoint (bad data, ...): the same command reruns here
            for p in out.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        elif not cfg.resume:
            raise ConfigError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
    out.mkdir(parents=True, exist_ok=True)


def _failed_start(out: Path) -> bool:
    """Whether ``out`` holds only what a run that failed before its first checkpoint writes:
    continual.yaml and stage folders with no checkpoint and no model."""
    for p in out.iterdir():
        if p.name == "continual.yaml":
            continue
        ckpts = p / "checkpoints"
        if (
            p.is_dir()
            and re.match(r"stage\d+-", p.name)
            and not (p / "model").exists()
            and not (ckpts.is_dir() and any(ckpts.iterdir()))
        ):
            continue
        return False
    return True


def _plot(result: dict, path: Path) -> None:
    from lmvalue.plotting import figure_fonts

    m = np.array([[np.nan if v is None else v for v in row] for row in result["held_out_loss"]], dtype=float)
    with figure_fonts() as plt:
        fig, ax = plt.subplots(figsize=(max(6.0, 3.0 + 1.8 * m.shape[1]), 1.6 + 0.6 * m.shape[0]))
        im = ax.imshow(m, cmap="viridis_r", aspect="auto")
        ax.set_xticks(range(m.shape[1]), [c[-28:] for c in result["corpora"]], rotation=20, ha="right")
        ax.set_yticks(range(m.shape[0]), result["rows"])
        finite = m[~np.isnan(m)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for r in range(m.shape[0]):
            for c in range(m.shape[1]):
                if not np.isnan(m[r, c]):
                    color = "black" if m[r, c] < middle else "white"  # light cells (low loss) get dark text
                    ax.text(c, r, f"{m[r, c]:.3f}", ha="center", va="center", color=color, fontsize=9)
        bwt = result["bwt"]
        title = "held-out LM loss (lower is better)"
        if bwt is not None:
            title += f"\nBWT {bwt:+.3f} (negative: forgetting)"
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


__all__ = [
    "ContinualConfig",
    "MixedBatches",
    "Stage",
    "estimate_fisher",
    "make_penalty",
    "run_continual",
    "transfer_metrics",
]
