"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), for BERT-style encoders.

An adapter wraps an output projection of a transformer layer: ``h = dense(x)`` becomes
``h + up(gelu(down(h)))`` with a narrow ``down`` (hidden -> ``adapter_size``). ``up`` starts at
zero, so a freshly inserted adapter leaves the model unchanged.

* ``houlsby``: after the attention output projection and after the feed-forward output projection
  of every layer; the layer norms are trained too (as in the paper).
* ``pfeiffer``: after the feed-forward output projection only.

The base weights stay frozen; the adapters and the task head are trained and saved. Adapters are
non-linear, so they cannot be merged into the base weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmvalue.errors import LmvalueError
from lmvalue.methods.state import head_names, is_head, load_trainable, save_trainable

# BERT-style names (bert, roberta, electra, xlm-roberta, ...): layer.N.attention.output.dense and
# layer.N.output.dense (the feed-forward output).
_ATTENTION_OUT = re.compile(r"(^|\.)layer\.\d+\.attention\.output\.dense$")
_FFN_OUT = re.compile(r"(^|\.)layer\.\d+\.output\.dense$")


class Bottleneck(nn.Module):
    """``base(x) + up(gelu(down(base(x))))``; ``up`` is zero at the start."""

    def __init__(self, base: nn.Linear, size: int):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.out_features, size)
        self.up = nn.Linear(size, base.out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)  # (B, T, H)
        return h + self.up(F.gelu(self.down(h)))


def targets(model: nn.Module, kind: str) -> list[str]:
    patterns = [_FFN_OUT] if kind == "pfeiffer" else [_ATTENTION_OUT, _FFN_OUT]
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(p.search(name) for p in patterns)
    ]


def apply(model, cfg, ctx=None):
    """Insert adapters in place and freeze everything but adapters, head (and norms for Houlsby).

    Raises:
        LmvalueError: the model has no BERT-style layer outputs to put adapters on.
    """
    names = targets(model, cfg.adapter.kind)
    if not names:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise LmvalueError(
            f"method adapter supports BERT-style encoders (layer.N.attention.output.dense / layer.N.output.dense); "
            f"the {kind} model has none. Use method.name=lora, which supports most architectures"
        )
    heads = head_names(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapped = Bottleneck(getattr(parent, child), cfg.adapter.size)
        setattr(parent, child, wrapped)
        for p in (*wrapped.down.parameters(), *wrapped.up.parameters()):
            p.requires_grad_(True)
    for name, p in model.named_parameters():
        if is_head(name, heads) or (cfg.adapter.kind == "houlsby" and "LayerNorm" in name):
            p.requires_grad_(True)
    return model


def save(model, folder: Path) -> None:
    save_trainable(model, folder)


def load(base, folder: Path, cfg):
    return load_trainable(apply(base, cfg), folder)
