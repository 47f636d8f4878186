"""Model presets and builders.

Everything lmvalue trains is a plain ``transformers`` model (BERT for encoders, GPT-2 or Llama for
decoders), so every checkpoint it saves loads with ``AutoModelForMaskedLM`` /
``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` without lmvalue installed.
"""

from __future__ import annotations

import logging
import warnings

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from lmvalue.config import ModelConfig
from lmvalue.errors import LmvalueError
from lmvalue.weights import from_pretrained, load_config, resolve_checkpoint

DECODER_ARCHS = ("gpt2", "llama")


def is_decoder(arch_or_config) -> bool:
    if isinstance(arch_or_config, str):
        return arch_or_config in DECODER_ARCHS
    return getattr(arch_or_config, "model_type", "") in ("gpt2", "llama", "mistral", "qwen2", "gpt_neox")


def preset_config(cfg: ModelConfig, tokenizer) -> PretrainedConfig:
    """A fresh ``transformers`` config for ``cfg.preset`` sized to ``tokenizer``."""
    d = cfg.dims()
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id)
    if cfg.arch == "bert":
        return BertConfig(
            hidden_size=d["hidden"],
            num_hidden_layers=d["num_layers"],
            num_attention_heads=d["heads"],
            intermediate_size=d["ffn"],
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            max_position_embeddings=cfg.max_position_embeddings,
            type_vocab_size=2,
            **common,
        )
    if cfg.arch == "gpt2":
        return GPT2Config(
            n_embd=d["hidden"],
            n_layer=d["num_layers"],
            n_head=d["heads"],
            n_inner=d["ffn"],
            n_positions=cfg.max_position_embeddings,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **common,
        )
    if cfg.arch == "llama":
        return LlamaConfig(
            hidden_size=d["hidden"],
            num_hidden_layers=d["num_layers"],
            num_attention_heads=d["heads"],
            num_key_value_heads=d["heads"],
            intermediate_size=d["ffn"],
            max_position_embeddings=cfg.max_position_embeddings,
            attention_dropout=cfg.dropout,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
            **common,
        )
    raise LmvalueError(f"unknown model.arch {cfg.arch!r}")


def _checkpoint_config(path: str) -> PretrainedConfig:
    """The config of a model folder, an lmvalue run, a ``pkg:`` package or a hub name (one clear
    CheckpointError when it is none of them)."""
    return load_config(resolve_checkpoint(path))


def build_lm(cfg: ModelConfig, tokenizer, *, seed: int = 0) -> PreTrainedModel:
    """A language model with an LM head: a fresh preset, or ``cfg.init_from`` (weights only).

    Raises:
        LmvalueError: when the tokenizer does not fit the checkpoint's embeddings.
    """
    if cfg.init_from:
        config = _checkpoint_config(cfg.init_from)
        check_vocab(tokenizer, config, where=cfg.init_from)
        auto = AutoModelForCausalLM if is_decoder(config) else AutoModelForMaskedLM
        # A sentence-transformers checkpoint has no LM head: transformers initialises it and
        # warns at length; one line of our own is enough.
        torch.manual_seed(seed)  # a head the checkpoint lacks is initialised reproducibly
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
            model, loading = from_pretrained(auto, cfg.init_from, output_loading_info=True)
        new = sorted(
            {k.split(".")[0] for k in loading["missing_keys"] if k.split(".")[0] in ("cls", "lm_head")}
        )
        if new:
            logging.getLogger("lmvalue").info(
                "%s has no language-model head (e.g. a sentence-transformers folder): a fresh one is "
                "initialised (seed %d), its output layer tied to the word embeddings",
                cfg.init_from,
                seed,
            )
        return model
    torch.manual_seed(seed)
    config = preset_config(cfg, tokenizer)
    if cfg.arch == "bert":
        return BertForMaskedLM(config)
    if cfg.arch == "gpt2":
        return GPT2LMHeadModel(config)
    return LlamaForCausalLM(config)


def check_vocab(tokenizer, model_config, *, where: str = "the model") -> None:
    if len(tokenizer) > model_config.vocab_size:
        raise LmvalueError(
            f"the tokenizer has {len(tokenizer)} tokens but {where} has only {model_config.vocab_size} "
            "embedding rows: use the tokenizer that was trained with this model (model.tokenizer=...), "
            "or leave model.tokenizer unset to use the checkpoint's own"
        )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def forward_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(N, N_trainable): weights outside embedding tables, each counted once (for the FLOPs estimate)."""
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    seen: set[int] = set()
    n = n_trainable = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in embedding:
            continue
        seen.add(id(p))
        n += p.numel()
        n_trainable += p.numel() if p.requires_grad else 0
    return n, n_trainable
