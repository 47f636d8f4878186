"""Prompts as fine-tuning methods: zero-shot and PET (trained on the budget) with a masked LM,
in-context with a causal LM; the fine-tuning recipe calls :func:`fit_prompt`."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch

from lmvalue.errors import ConfigError
from lmvalue.prompting.incontext import InContextScorer
from lmvalue.prompting.scorer import (
    DEMOS_FILE,
    PROMPT_FILE,
    ClozeScorer,
    masked_lm_weights,
    resolve_prompt,
)

log = logging.getLogger("lmvalue")


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

    from lmvalue.tokenizer import load_tokenizer
    from lmvalue.weights import resolve_checkpoint

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


def _start_causal_lm(mcfg):
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from lmvalue.tokenizer import load_tokenizer
    from lmvalue.weights import from_pretrained, load_config, resolve_checkpoint

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
    result dict :func:`lmvalue.finetuning.finetune` expects."""

    from lmvalue.inference import TaskModel, score
    from lmvalue.models import count_parameters, forward_parameters
    from lmvalue.transfer import save_task_folder

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
                calibrate=cfg.method.prompting.calibrate,
            )
            return model, scorer
        model, tokenizer = _start_mlm(cfg.model, cfg.train.seed)
        return model, ClozeScorer(
            model,
            tokenizer,
            prompt,
            max_length=cfg.data.max_length,
            batch_size=eval_batch,
            calibrate=cfg.method.prompting.calibrate
            and cfg.method.name == "zero-shot",  # PET learns its biases
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
    result["task_model"] = task
    result["test_scores"] = (
        score(task, data.test, out_dir=run.path if main else None, name="test") if data.test else {}
    )
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
            save_task_folder(folder, cfg, task_spec, cfg.method.name, scorer.tokenizer)

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
    import time

    import torch.nn.functional as F

    from lmvalue.checkpoint import weights_checkpoint
    from lmvalue.loop import train_loop
    from lmvalue.tasks.metrics import classification_scores
    from lmvalue.transfer import run_steps

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
