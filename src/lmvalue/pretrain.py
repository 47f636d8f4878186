"""`lmvalue pretrain`: a tokenizer (trained or given), a model (preset or checkpoint), packed
blocks of the unlabeled text, self-supervised objectives, and the shared training loop."""

from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lmvalue
from lmvalue.checkpoint import RunDir, read_json, write_json_atomic
from lmvalue.config import PretrainConfig, save_yaml
from lmvalue.data.packing import BlockBatches, eval_batches, pack_blocks, split_documents, tokenize_corpus
from lmvalue.data.sources import iter_texts, load_texts
from lmvalue.errors import DataError
from lmvalue.loop import make_accelerator, param_checksum, train_loop
from lmvalue.models import build_lm, count_parameters, is_decoder
from lmvalue.objectives import build_objectives
from lmvalue.tokenizer import load_tokenizer, train_tokenizer

log = logging.getLogger("lmvalue")


def run_info(cfg, status: str, **extra) -> dict:
    import transformers

    return {
        "lmvalue_version": lmvalue.__version__,
        "status": status,
        "seed": cfg.train.seed,
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "host": platform.node(),
        **extra,
    }


def save_hf(model, tokenizer, cfg):
    """A saver for checkpoint folders: weights + tokenizer + the run's config, loadable by transformers."""

    def save(m, folder: Path):
        m.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        save_yaml(cfg, folder / "lmvalue_config.yaml")

    return save


def load_hf_weights(model, folder: Path) -> None:
    """Load ``model.safetensors`` from a checkpoint folder into ``model`` (tied weights allowed missing)."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }
    real_missing = [k for k in missing if k not in tied and not k.endswith("decoder.bias")]
    if real_missing or unexpected:
        raise RuntimeError(
            f"checkpoint {folder} does not match the model: missing {real_missing}, unexpected {unexpected}"
        )


def get_tokenizer(cfg: PretrainConfig, run: RunDir, resume_from: Path | None, accelerator):
    """The run's tokenizer: given, the checkpoint's own, the resumed run's, or trained on the data."""
    if resume_from is not None:
        return load_tokenizer(resume_from)
    if cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer)
    if cfg.model.init_from:
        return load_tokenizer(cfg.model.init_from)
    target = run.path / "tokenizer"
    if accelerator.is_main_process:
        t0 = time.perf_counter()
        texts = iter_texts(cfg.data.source, **_source_kwargs(cfg))
        train_tokenizer(
            texts,
            target,
            kind=cfg.tokenizer.kind,
            vocab_size=cfg.tokenizer.vocab_size,
            lowercase=cfg.tokenizer.lowercase,
            max_docs=cfg.tokenizer.max_docs,
            min_frequency=cfg.tokenizer.min_frequency,
            model_max_length=cfg.model.max_position_embeddings,
        )
        log.info(
            "trained a %s tokenizer in %.1fs -> %s", cfg.tokenizer.kind, time.perf_counter() - t0, target
        )
    accelerator.wait_for_everyone()
    return load_tokenizer(target)


def _source_kwargs(cfg: PretrainConfig) -> dict:
    d = cfg.data
    return dict(
        text_column=d.text_column,
        encoding=d.encoding,
        errors=d.errors,
        paragraphs=d.paragraphs,
        max_docs=d.max_docs,
    )


def prepare_blocks(cfg: PretrainConfig, tokenizer) -> tuple[np.ndarray, np.ndarray, dict]:
    """Tokenize the corpus, hold out documents, and pack both parts into blocks."""
    t0 = time.perf_counter()
    texts = load_texts(cfg.data.source, **_source_kwargs(cfg))
    ids, offsets = tokenize_corpus(texts, tokenizer)
    n_chars = sum(len(t) for t in texts)
    del texts
    train_docs, eval_docs = split_documents(len(offsets) - 1, cfg.data.eval_fraction, cfg.train.seed)
    decoder = is_decoder(cfg.model.arch) if not cfg.model.init_from else tokenizer.cls_token_id is None
    sep = tokenizer.eos_token_id if decoder else tokenizer.sep_token_id
    cls = None if decoder else tokenizer.cls_token_id
    if sep is None:
        raise DataError("the tokenizer has no separator/end-of-text token to put between documents")
    bs = cfg.data.block_size
    train_blocks = pack_blocks(ids, offsets, train_docs, bs, sep_id=sep, cls_id=cls)
    held_out = pack_blocks(ids, offsets, eval_docs, bs, sep_id=sep, cls_id=cls)[: cfg.data.eval_max_blocks]
    if len(held_out) == 0:
        raise DataError(
            f"the held-out documents ({len(eval_docs)}) do not fill one block of {bs} tokens; "
            "raise data.eval_fraction or lower data.block_size"
        )
    stats = {
        "documents": int(len(offsets) - 1),
        "characters": int(n_chars),
        "tokens": int(len(ids)),
        "train_blocks": int(len(train_blocks)),
        "eval_blocks": int(len(held_out)),
        "tokenize_s": round(time.perf_counter() - t0, 2),
    }
    return train_blocks, held_out, stats


def pretrain(cfg: PretrainConfig) -> dict:
    """Run self-supervised pretraining as configured; return the final metrics.

    The final model is saved in ``<output_dir>/model`` and loads with
    ``transformers.AutoModelForMaskedLM`` (or ``AutoModelForCausalLM`` for decoders).
    """
    accelerator = make_accelerator(cfg.train)
    if not accelerator.is_main_process:  # one process speaks
        log.setLevel(logging.WARNING)
        cfg.train.progress = False
    run = RunDir(cfg.train.output_dir)
    resume_from = None
    if accelerator.is_main_process:
        resume_from = run.prepare(resume=cfg.train.resume, overwrite=cfg.train.overwrite)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process and cfg.train.resume:
        resume_from = run.latest_checkpoint()
    if accelerator.is_main_process:
        save_yaml(cfg, run.path / "config.yaml")
        previous = (
            read_json(run.path / "run.json") if resume_from and (run.path / "run.json").is_file() else {}
        )
        write_json_atomic(
            run.path / "run.json",
            run_info(
                cfg,
                "running",
                started=previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
                resumed_from=str(resume_from) if resume_from else None,
                processes=accelerator.num_processes,
            ),
        )

    tokenizer = get_tokenizer(cfg, run, resume_from, accelerator)
    train_blocks, held_out, data_stats = prepare_blocks(cfg, tokenizer)
    model = build_lm(cfg.model, tokenizer, seed=cfg.train.seed)
    objectives = build_objectives(cfg.objective, tokenizer, model=model)
    trainable, total = count_parameters(model)
    if accelerator.is_main_process:
        log.info(
            "data: %(documents)d documents, %(tokens)d tokens -> %(train_blocks)d train / %(eval_blocks)d held-out blocks",
            data_stats,
        )
        log.info(
            "model: %s, %.2fM parameters (%.2fM trainable)",
            type(model).__name__,
            total / 1e6,
            trainable / 1e6,
        )

    rank, world = accelerator.process_index, accelerator.num_processes

    def epoch_batches(epoch: int):
        return BlockBatches(
            train_blocks,
            cfg.train.batch_size,
            seed=cfg.train.seed,
            epoch=epoch,
            prepare=objectives.prepare,
            rank=rank,
            world=world,
        )

    eval_set = eval_batches(held_out, cfg.train.batch_size, objectives.prepare, seed=cfg.train.seed)

    def evaluate(m):
        return objectives.evaluate(m, [{k: v.to(accelerator.device) for k, v in b.items()} for b in eval_set])

    save = save_hf(model, tokenizer, cfg)
    t0 = time.perf_counter()
    state = train_loop(
        model=model,
        loss_fn=objectives.losses,
        epoch_batches=epoch_batches,
        evaluate=evaluate,
        cfg=cfg.train,
        run=run,
        accelerator=accelerator,
        save_model=save,
        load_model=load_hf_weights,
        resume_from=resume_from,
        num_workers=cfg.data.num_workers,
    )
    wall = time.perf_counter() - t0
    final = accelerator.unwrap_model(model)
    first_eval = state.evals[0] if state.evals else {}
    metrics = {
        "objectives": objectives.names,
        "steps": state.step,
        "tokens": state.tokens,
        "train_seconds": round(state.elapsed, 2),
        "tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
        "stop_reason": state.stop_reason,
        "best": state.best,
        "best_step": state.best_step,
        "final": state.evals[-1] if state.evals else {},
        "first_eval": first_eval,
        "evals": state.evals,
        "data": data_stats,
        "parameters": {"total": total, "trainable": trainable},
        "processes": world,
        "wall_seconds_this_session": round(wall, 2),
    }
    # Each process records what it saw and where it ended (checked by the multi-process test).
    metrics["model_dir"] = str(run.path / "model")
    rank_info = {
        "rank": rank,
        "param_checksum": param_checksum(final),
        "first_batch_blocks": epoch_batches(0).indices(0).tolist(),
    }
    (run.path / "ranks").mkdir(exist_ok=True)
    write_json_atomic(run.path / "ranks" / f"rank{rank}.json", rank_info)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model_dir = run.write_dir_atomic("model", lambda folder: save(final, folder))
        write_json_atomic(run.path / "metrics.json", metrics)
        info = read_json(run.path / "run.json")
        info.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json_atomic(run.path / "run.json", info)
        for name in ("metrics.json", "run.json"):
            (model_dir / f"lmvalue_{name}").write_text(
                (run.path / name).read_text(encoding="utf-8"), encoding="utf-8"
            )
    accelerator.wait_for_everyone()
    return metrics
