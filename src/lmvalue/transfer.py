"""Building blocks every fine-tuning recipe shares (``lmvalue finetune`` and the prompt methods):
the step schedule and the files of a task model folder."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from lmvalue.checkpoint import write_json_atomic
from lmvalue.config import FinetuneConfig, save_yaml
from lmvalue.inference import METHOD_FILE
from lmvalue.tasks import TaskSpec

__all__ = ["run_steps", "save_task_folder"]


def run_steps(cfg: FinetuneConfig, n_train: int, world: int) -> tuple[int, int]:
    """(optimizer steps, evaluate every N steps) for a training split of ``n_train`` examples."""
    t = cfg.train
    per_epoch = max(1, math.ceil(n_train / (t.batch_size * world * t.grad_accum)))
    steps = (
        t.max_steps
        if t.epochs is None
        else min(t.max_steps, max(t.min_steps, math.ceil(t.epochs * per_epoch)))
    )
    eval_every = max(1, math.ceil(steps / t.evals)) if t.evals else t.eval_every
    return steps, eval_every


def save_task_folder(folder: Path, cfg: FinetuneConfig, spec: TaskSpec, name: str, tokenizer=None) -> None:
    """The files that make ``folder`` a task model: tokenizer, task spec, method and config."""
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    spec.save(folder)
    write_json_atomic(
        folder / METHOD_FILE,
        {"name": name, "config": dataclasses.asdict(cfg.method), "max_length": cfg.data.max_length},
    )
    save_yaml(cfg, folder / "lmvalue_config.yaml")
