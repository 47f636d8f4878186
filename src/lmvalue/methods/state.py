"""Save and load just the trained weights of a model (our own parameter-efficient methods)."""

from __future__ import annotations

from pathlib import Path

import torch

from lmvalue.errors import CheckpointError

WEIGHTS_FILE = "method_weights.safetensors"
HEAD_NAMES = ("classifier", "score")  # the task head of transformers' *ForSequence/TokenClassification


HEAD_MODULES_KEY = "lmvalue_head_modules"  # model.config: modules trained with the head (see head_names)


def head_names(model) -> tuple[str, ...]:
    """The module names of the task head: transformers' ``classifier`` / ``score``, plus the modules the
    checkpoint did not provide (``model.config.lmvalue_head_modules``, set when the task model is built):
    a pooler that a masked-LM checkpoint lacks starts random, and a frozen random pooler would sit between
    the encoder and the head of every method that freezes the encoder, so it trains with the head."""
    config = getattr(model, "config", None)
    return HEAD_NAMES + tuple(getattr(config, HEAD_MODULES_KEY, None) or ())


def is_head(name: str, heads: tuple[str, ...] = HEAD_NAMES) -> bool:
    return any(part in heads for part in name.split("."))


def save_trainable(model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(Path(folder) / WEIGHTS_FILE))


def load_trainable(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """Load the saved trained weights into ``model`` (built the same way); every one must fit."""
    from lmvalue.weights import load_safetensors

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}: it is not a complete fine-tuned model folder")
    state = load_safetensors(path)
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False)
    return model
