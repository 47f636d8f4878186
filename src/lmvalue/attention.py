"""Attention for CPU training (``train.fast_attention``, on by default).

With attention-probability dropout (BERT's ``attention_probs_dropout_prob``, GPT-2's ``attn_pdrop``),
PyTorch's CPU SDPA leaves its fused kernel for the reference "math" path and draws one Bernoulli
number per attention weight. This implementation computes the same thing (softmax(QKᵀ·scale + mask)·V, dropout on the probabilities)
with plain matmuls and the cheaper dropout mask of :mod:`lmvalue.dropout`. Forward and backward of
one attention of shape (32, 4, 128, 64) on this machine's 2 cores: SDPA 43 ms (bf16 or fp32, dropout
0.1) against 21 ms here in bf16; without dropout, SDPA's fused CPU kernel takes 34 ms in bf16 against
12 ms here, but 23 ms in fp32 against 26 ms here.

So this path is taken for CPU training with dropout, or in bf16/fp16 (autocast) without it. It is
registered with transformers' attention and mask interfaces under :data:`NAME`; it takes the same
masks as ``"sdpa"`` and hands every other case (evaluation, GPUs, fp32 without dropout, grouped-query
heads, position biases, soft-capping, cached keys) to transformers' own SDPA function. The name is not
saved in ``config.json`` (transformers does not save the attention implementation), so saved
checkpoints are unchanged. What it gains on a whole pretraining step is measured by
``benchmarks/bench_pretrain.py`` (see docs/performance.md).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from lmvalue.dropout import FastDropoutFunction

NAME = "lmvalue_cpu"


def cpu_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; (B, H, T, D) inputs, (B, T, H, D) output."""
    if (
        query.device.type != "cpu"
        or not module.training
        or not 0 <= dropout < 1
        or (
            dropout == 0 and query.dtype == torch.float32
        )  # fp32 without dropout: SDPA's fused kernel is faster
        or getattr(module, "num_key_value_groups", 1) > 1
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or key.shape[-2] != query.shape[-2]  # cached keys: leave cropping and alignment to SDPA
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    q_length = query.shape[2]
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    # The same causality rule as transformers' SDPA function: a causal module without a mask.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = q_length > 1 and attention_mask is None and causal
    # Scaling the queries (T×D) costs less than scaling the scores (T×T) when D < T.
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask.to(scores.dtype)
    elif causal:
        future = torch.ones(q_length, q_length, dtype=torch.bool, device=query.device).triu_(1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0:
        probs = FastDropoutFunction.apply(probs, dropout)
    out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, cpu_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_cpu_attention(model: torch.nn.Module) -> int:
    """Switch every sub-model of ``model`` that uses ``"sdpa"`` to :data:`NAME`; return how many configs."""
    switched = 0
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in seen or not hasattr(config, "_attn_implementation"):
            continue
        seen.add(id(config))
        if config._attn_implementation == "sdpa":
            config._attn_implementation = NAME
            switched += 1
    return switched
