"""LoRA, AdaLoRA, IA3 and prompt tuning: thin over ``peft``.

``peft`` adds the task head (``classifier``/``score``) to ``modules_to_save`` for sequence and
token classification, so the head is trained and saved with the adapter
(``adapter_config.json`` + ``adapter_model.safetensors``).
"""

from __future__ import annotations

from pathlib import Path

from lmvalue.methods.state import HEAD_NAMES, head_names


def _task_type(ctx):
    from peft import TaskType

    return TaskType.TOKEN_CLS if ctx.level == "token" else TaskType.SEQ_CLS


def _targets(cfg):
    return (
        list(cfg.lora.target_modules) if cfg.lora.target_modules else None
    )  # None: peft's default for the arch


def _lora(cfg, ctx):
    from peft import LoraConfig

    return LoraConfig(
        task_type=_task_type(ctx),
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=_targets(cfg),
    )


def _adalora(cfg, ctx):
    from peft import AdaLoraConfig

    total = max(1, ctx.total_steps)
    tinit = int(cfg.adalora.tinit * total)
    tfinal = int(cfg.adalora.tfinal * total)
    if tinit >= total - tfinal:  # too short a run for a budgeting phase: shrink the two ends
        tinit, tfinal = 0, 0
    return AdaLoraConfig(
        task_type=_task_type(ctx),
        init_r=cfg.adalora.init_r,
        target_r=cfg.adalora.target_r,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=cfg.adalora.delta_t,
        total_step=total,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=_targets(cfg),
    )


def _ia3(cfg, ctx):
    from peft import IA3Config

    targets = _targets(cfg)
    feedforward = [t for t in targets if "output" in t or "fc" in t or "mlp" in t] if targets else None
    return IA3Config(task_type=_task_type(ctx), target_modules=targets, feedforward_modules=feedforward)


def _prompt(cfg, ctx):
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type=_task_type(ctx), num_virtual_tokens=cfg.prefix.num_virtual_tokens)


PEFT_CONFIGS = {"lora": _lora, "adalora": _adalora, "ia3": _ia3, "prompt-tuning": _prompt}


def apply(model, cfg, ctx):
    """Wrap ``model`` in a ``PeftModel``: only the method's weights and the head stay trainable."""
    from peft import get_peft_model

    peft_config = PEFT_CONFIGS[cfg.name](cfg, ctx)
    extra = [h for h in head_names(model) if h not in HEAD_NAMES]  # e.g. a fresh pooler
    if extra:  # peft adds the classifier itself
        peft_config.modules_to_save = sorted(set(peft_config.modules_to_save or []) | set(extra))
    return get_peft_model(model, peft_config)


def save(model, folder: Path) -> None:
    model.save_pretrained(folder)


def load(base, folder: Path, cfg=None):
    from peft import PeftModel

    from lmvalue.weights import check_safetensors

    check_safetensors(Path(folder) / "adapter_model.safetensors")
    return PeftModel.from_pretrained(base, folder)


def merge(model):
    """A plain transformers model with the low-rank (or scaling) updates folded into the weights."""
    return model.merge_and_unload()


def adalora_step(model, step: int) -> None:
    """Reallocate AdaLoRA's rank budget; must run after ``optimizer.step()`` and before the
    gradients are cleared (it scores importance from them). Without it the ranks never change."""
    model.base_model.update_and_allocate(step)


def adalora_finalize(model) -> None:
    """Apply the final rank pattern to the weights in memory.

    peft saves AdaLoRA weights cut to the rank pattern; when the best dev evaluation came before the
    last reallocation, the weights in memory still have the rows that the saved files will lack.
    Masking them here makes the model that is scored the model that is saved.
    """
    config = model.peft_config[model.active_adapter]
    if config.rank_pattern:
        model.base_model.rankallocator.mask_using_rank_pattern(model.base_model.model, config.rank_pattern)
