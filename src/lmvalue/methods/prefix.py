"""Prefix tuning (Li & Liang 2021): learned keys and values in front of every attention layer.

Each layer attends to ``num_virtual_tokens`` extra key/value pairs that are trained while the
model stays frozen (the task head is trained too). The prefixes enter through the model's own
key/value cache, so the attention code is untouched; position ids are passed explicitly so the
real tokens keep positions 0..T-1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmvalue.methods.state import head_names, is_head, load_trainable, save_trainable


class PrefixTuned(nn.Module):
    """A frozen transformers model with trained key/value prefixes in every layer."""

    def __init__(self, model: nn.Module, num_virtual_tokens: int):
        super().__init__()
        self.model = model
        c = model.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        # (layers, key|value, heads, P, head_dim); small, so a new prefix barely changes the model
        self.prefix = nn.Parameter(
            torch.randn(c.num_hidden_layers, 2, heads, num_virtual_tokens, head_dim) * 0.02
        )

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        from transformers import DynamicCache

        B, T = input_ids.shape
        P = self.prefix.shape[3]
        cache = DynamicCache(config=self.model.config)
        for layer in range(self.prefix.shape[0]):
            k = self.prefix[layer, 0].unsqueeze(0).expand(B, -1, -1, -1)  # (B, heads, P, head_dim)
            v = self.prefix[layer, 1].unsqueeze(0).expand(B, -1, -1, -1)
            cache.update(k, v, layer)
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.long, device=input_ids.device)
        mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)  # (B, P + T)
        positions = torch.arange(T, device=input_ids.device).unsqueeze(0).expand(B, -1)
        return self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, **kwargs
        )


def apply(model, cfg, ctx=None):
    heads = head_names(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, p in model.named_parameters():
        if is_head(name, heads):
            p.requires_grad_(True)
    return PrefixTuned(model, cfg.prefix.num_virtual_tokens)


def save(model, folder: Path) -> None:
    save_trainable(model, folder)


def load(base, folder: Path, cfg):
    return load_trainable(apply(base, cfg), folder)
