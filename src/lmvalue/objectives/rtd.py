"""Replaced-token detection (``rtd``, ELECTRA; Clark et al. 2020): learn from every token, not 15%.

A small generator (a masked LM) fills in the masked positions with tokens sampled from its own
predictions; the model being pretrained, the *discriminator*, reads the result and says for every
token whether it is the original or a replacement. The discriminator's loss covers all positions,
so a small model learns more per step than from masked-LM's 15% of predicted tokens — ELECTRA's
result, strongest exactly for small models on small compute.

Layout (everything lives on the one saved model, as the other objectives' heads do):

* the generator shares the model's input word embeddings and its MLM head (``model.cls``, whose
  output matrix is tied to those embeddings, as in ELECTRA); its own part, ``rtd_generator``, is a
  projection into a narrow transformer (``objective.rtd_generator_hidden`` of the model's width,
  ELECTRA's 1/4; as deep as the model) and back;
* the discriminator is the model's encoder plus ``rtd_head`` (dense, GELU, one logit per token).

The loss is ``generator MLM loss + objective.rtd_weight * discriminator loss`` (ELECTRA's λ = 50);
the discriminator's input is built from samples of the generator (no gradient flows through the
sampling). The saved folder loads in plain transformers (``AutoModelForMaskedLM`` /
``AutoModelForSequenceClassification``, which ignore ``rtd_*`` weights); fine-tuning uses the
encoder, which is the discriminator. Its MLM head is the generator's, so cloze prompting
(``zero-shot``/``pet``) does not suit an ``rtd`` model. Reported accuracy: the discriminator's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmvalue.errors import ConfigError
from lmvalue.objectives.forward import MODEL_INPUTS, Encoded, body_and_lm_head
from lmvalue.objectives.mlm import IGNORE, MaskedLM, check_encoder

GENERATOR = "rtd_generator"
HEAD = "rtd_head"


class Generator(torch.nn.Module):
    """The generator's own weights: hidden -> narrow encoder -> hidden (the MLM head is the model's)."""

    def __init__(self, config, share: float):
        super().__init__()
        from transformers import BertConfig, BertModel

        hidden = config.hidden_size
        width = max(16, int(round(hidden * share / 16)) * 16)
        heads = max(1, width // 64)
        while width % heads:  # BERT needs the width to split evenly into heads
            heads -= 1
        small = BertConfig(
            vocab_size=1,  # never looked up: the input is the shared embeddings, projected
            pad_token_id=0,
            hidden_size=width,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=config.max_position_embeddings,
            type_vocab_size=getattr(config, "type_vocab_size", 2),
            hidden_dropout_prob=config.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_probs_dropout_prob,
            initializer_range=config.initializer_range,
        )
        small._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
        self.project_in = torch.nn.Linear(hidden, width)
        self.body = BertModel(small, add_pooling_layer=False)
        # never used (the input is the shared embeddings): frozen, so DDP sees no unused trainable weight
        self.body.embeddings.word_embeddings.weight.requires_grad_(False)
        self.project_out = torch.nn.Linear(width, hidden)
        self.width = width

    def forward(self, embeddings: torch.Tensor, **inputs) -> torch.Tensor:
        """(B, T, hidden) word embeddings of the masked input -> (B, T, hidden) states for the MLM head."""
        out = self.body(inputs_embeds=self.project_in(embeddings), **inputs).last_hidden_state
        return self.project_out(out)


def attach(model, share: float) -> tuple[Generator, torch.nn.Module]:
    """Give ``model`` an ``rtd_generator`` and an ``rtd_head`` (kept when it has them already)."""
    config = model.config
    generator = getattr(model, GENERATOR, None)
    if generator is None:
        generator = Generator(config, share)
        setattr(model, GENERATOR, generator)
    head = getattr(model, HEAD, None)
    if head is None:
        hidden = config.hidden_size
        head = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1)
        )
        for layer in (head[0], head[2]):
            torch.nn.init.normal_(layer.weight, std=config.initializer_range)
            torch.nn.init.zeros_(layer.bias)
        setattr(model, HEAD, head)
    device = next(model.parameters()).device
    return generator.to(device), head.to(device)


def replaced_labels(original: torch.Tensor, sampled: torch.Tensor, chosen: torch.Tensor) -> tuple:
    """(discriminator input, labels) from the (B, T) original ids, the (N,) sampled tokens and the
    (B, T) chosen positions (N of them): the samples at the chosen positions, the original
    elsewhere; label 1 where the result differs from the original (a sample equal to the original
    token counts as original, as in ELECTRA)."""
    disc_input = original.clone()
    disc_input[chosen] = sampled.to(original.dtype)
    return disc_input, (disc_input != original).float()


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from softmax(logits) (Gumbel-max; no gradient). ``generator``: a fixed one
    makes evaluation repeatable; training draws from the global (seeded, checkpointed) one."""
    with torch.no_grad():
        u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-9, 1.0)
        return (logits.float() - torch.log(-torch.log(u))).argmax(dim=-1)


class ReplacedTokenDetection(MaskedLM):
    """Objective ``rtd``: ELECTRA's generator + discriminator; the discriminator is the model kept."""

    name = "rtd"
    perplexity = False  # its loss mixes the generator's and the discriminator's
    reference_mlm = False  # its MLM head is the generator's
    needs: frozenset[str] = frozenset()

    def __init__(self, tokenizer, *, model=None, share=0.25, weight=50.0, **masking):
        super().__init__(tokenizer, **masking)
        self.weight = weight
        if model is not None:
            attach(model, share)

    @classmethod
    def from_config(cls, tokenizer, cfg, *, model=None, **_):
        check_encoder(cls.name, model)
        if model is not None and (
            body_and_lm_head(model)[0] is None or not hasattr(model.config, "hidden_dropout_prob")
        ):
            raise ConfigError(
                f"objective rtd knows BERT-style encoders; {type(model).__name__} is not one "
                "(use model.arch=bert, or objective mlm)"
            )
        return cls(
            tokenizer,
            model=model,
            share=cfg.rtd_generator_hidden,
            weight=cfg.rtd_weight,
            mask_rate=cfg.mask_rate,
            mask_token_share=cfg.mask_token_share,
            random_token_share=cfg.random_token_share,
        )

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        """Keep ``input_ids`` (the original); add the generator's masked input and its labels."""
        chosen = self.choose(batch, generator)
        batch["rtd_input_ids"], batch["rtd_labels"] = self.corrupt_ids(batch["input_ids"], chosen, generator)
        batch["rtd_scored"] = self.candidates(batch)  # real, non-special tokens: the discriminator's
        return batch

    def corrupt_ids(self, ids: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator):
        out = self.corrupt({"input_ids": ids}, chosen, generator)
        return out["input_ids"], out["labels"]

    def losses(self, encoded: Encoded, batch: dict) -> dict:
        model = encoded.model
        body, mlm_head = body_and_lm_head(model)
        generator, head = getattr(model, GENERATOR), getattr(model, HEAD)
        extra = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
        original = batch["input_ids"]
        labels = batch["rtd_labels"]
        chosen = labels != IGNORE  # (B, T)

        # Generator: a masked LM on the shared embeddings, scored at the chosen positions only.
        states = generator(body.embeddings.word_embeddings(batch["rtd_input_ids"]), **extra)
        logits = mlm_head(states[chosen])  # (N, V)
        target = labels[chosen]
        gen_loss = F.cross_entropy(logits.float(), target) if target.numel() else logits.sum() * 0.0

        # Discriminator: the model itself, on the generator's samples, every real token scored.
        # held-out scores use fixed draws, so that evaluations (and best-checkpoint choices) compare
        fixed = None if model.training else torch.Generator(device=logits.device).manual_seed(0)
        disc_input, is_replaced = replaced_labels(original, sample_tokens(logits, fixed), chosen)
        inputs = {k: v for k, v in {"input_ids": disc_input, **extra}.items() if k in MODEL_INPUTS}
        hidden = body(**inputs).last_hidden_state
        scored = batch["rtd_scored"]
        disc_logits = head(hidden[scored]).squeeze(-1)  # (M,)
        truth = is_replaced[scored]
        disc_loss = (
            F.binary_cross_entropy_with_logits(disc_logits.float(), truth)
            if truth.numel()
            else disc_logits.sum() * 0.0
        )
        with torch.no_grad():
            correct = ((disc_logits > 0).float() == truth).sum()
            gen_correct = (logits.argmax(-1) == target).sum()
        return {
            "rtd_loss": gen_loss + self.weight * disc_loss,
            "rtd_correct": correct,
            "rtd_count": torch.tensor(truth.numel(), device=truth.device),
            "rtd_generator_loss": gen_loss.detach(),
            "rtd_discriminator_loss": disc_loss.detach(),
            "rtd_generator_correct": gen_correct,
            "rtd_replaced": truth.sum(),
        }
