"""Sentence pooling and top-layer re-initialisation for small models with few labels.

A masked-LM pretrained BERT has no trained pooler: its ``[CLS]`` state was never asked to summarise
the sentence. Two options of ``lmvalue finetune`` address that:

* ``model.pooling=mean``: the classifier reads the mean of the last hidden states over the real
  tokens instead of the ``[CLS]`` state. The pooler's weights (``dense`` + ``tanh``) stay where
  transformers expects them, so the folder loads in plain transformers — but plain transformers
  pools the ``[CLS]`` state; lmvalue (``predict``, ``evaluate``, ``serve``) reads
  ``lmvalue_pooling: mean`` from ``config.json`` and pools the mean.
* ``model.reinit_layers=N`` (method ``full``): the top N encoder layers (and the pooler) start from a
  fresh seeded init (normal(0, initializer_range) weights, zero biases, unit LayerNorms), as in Zhang et al. 2021 ("Revisiting few-sample BERT fine-tuning"): the top layers of a
  pretrained model are the most specialised to the pretraining task.
"""

from __future__ import annotations

import torch

from lmvalue.errors import ConfigError

POOLING_KEY = "lmvalue_pooling"
POOLINGS = ("cls", "mean")


class MeanPooler(torch.nn.Module):
    """BERT's pooler (``dense`` + ``tanh``) on the masked mean of the hidden states, not on ``[CLS]``.

    The attention mask of the current forward pass is captured by a pre-hook on the encoder (a
    transformers pooler only receives the hidden states).
    """

    def __init__(self, pooler: torch.nn.Module):
        super().__init__()
        self.dense = pooler.dense
        self.activation = pooler.activation
        self.mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        T = hidden_states.shape[1]
        if mask is None:
            mean = hidden_states.mean(dim=1)
        else:
            mask = mask[:, -T:] if mask.shape[1] > T else mask  # prefix tuning prepends virtual tokens
            mask = mask.to(hidden_states.dtype).unsqueeze(-1)  # (B, T, 1)
            mean = (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.activation(self.dense(mean))


def _encoder_with_pooler(model) -> torch.nn.Module | None:
    base = getattr(model, "base_model", model)
    base = getattr(base, "model", base) if not hasattr(base, "pooler") else base  # peft wrappers
    return base if getattr(base, "pooler", None) is not None else None


def set_pooling(model, pooling: str) -> None:
    """Make ``model`` (a ``*ForSequenceClassification`` with a BERT-style pooler) pool by ``pooling``.

    Raises:
        ConfigError: an unknown pooling, or ``mean`` on a model without a pooler to replace.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"model.pooling={pooling!r} must be one of {', '.join(POOLINGS)}")
    if pooling == "cls":
        if hasattr(
            model.config, POOLING_KEY
        ):  # a checkpoint fine-tuned with mean pooling, now trained on [CLS]
            delattr(model.config, POOLING_KEY)
        return
    encoder = _encoder_with_pooler(model)
    if encoder is None:
        raise ConfigError(
            f"model.pooling=mean needs a BERT-style sentence classifier with a pooler; "
            f"{type(model).__name__} has none (use model.pooling=cls)"
        )
    if isinstance(encoder.pooler, MeanPooler):
        return
    pooler = MeanPooler(encoder.pooler)
    encoder.pooler = pooler

    def capture(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        pooler.mask = mask

    encoder.register_forward_pre_hook(capture, with_kwargs=True)
    model.config.__setattr__(POOLING_KEY, pooling)


def reinit_top_layers(model, n: int) -> int:
    """Re-initialise the top ``n`` encoder layers and the pooler (BERT's init scheme).

    Returns:
        the number of layers re-initialised.
    Raises:
        ConfigError: n is negative or exceeds the model's layers, or the model's layers are not found.
    """
    if n == 0:
        return 0
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or n < 0 or n > len(layers):
        found = "no encoder layers found" if layers is None else f"it has {len(layers)} layers"
        raise ConfigError(f"model.reinit_layers={n} cannot apply to {type(model).__name__}: {found}")
    modules = list(layers[len(layers) - n :])
    if getattr(base, "pooler", None) is not None:
        modules.append(base.pooler)
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():  # directly: transformers' _init_weights skips weights loaded from a checkpoint
        for block in modules:
            for module in block.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, torch.nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
    return n
