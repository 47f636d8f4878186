"""One pass of the language model over a batch, shared by every objective of that batch.

``mlm + sop`` or ``mlm + tags`` read the same hidden states: the body (encoder or decoder stack)
runs once, and each objective applies its own head where its loss is. For the architectures
lmvalue builds (BERT, GPT-2, Llama; RoBERTa-style checkpoints too) the LM head is split off, so
the vocabulary projection runs only at the positions that are predicted; for other architectures
the model runs whole and the logits are indexed.
"""

from __future__ import annotations

import torch

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def body_and_lm_head(model) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
    """Split a transformers LM into (body returning hidden states, head mapping them to logits).

    Returns (None, None) for architectures we do not know; callers then run the whole model.
    """
    if hasattr(model, "cls") and hasattr(model, "bert"):  # BERT
        return model.bert, model.cls
    if hasattr(model, "lm_head") and hasattr(model, "roberta"):  # RoBERTa / XLM-R
        return model.roberta, model.lm_head
    if hasattr(model, "lm_head") and hasattr(model, "transformer"):  # GPT-2
        return model.transformer, model.lm_head
    if hasattr(model, "lm_head") and type(getattr(model, "model", None)).__name__.endswith("Model"):  # Llama
        return model.model, model.lm_head
    return None, None


class Encoded:
    """The hidden states of one batch (computed on first use) and, on request, LM logits at chosen positions.

    Attributes:
        model: the language model (objective heads are attached to it).
        hidden: (B, T, H) last hidden states.
        pooled: (B, H) BERT's pooler output when the model has a pooler (sentence-pair heads), else None.
    """

    def __init__(self, model, batch: dict, *, sparse_head: bool = True):
        self.model = model
        self.sparse_head = sparse_head
        self._batch = batch
        self._head = None
        self._logits = None
        self._hidden = None
        self._pooled = None

    def _run(self) -> None:
        """The forward pass, on first use: an objective that runs its own passes (``rtd``) costs none."""
        if self._hidden is not None:
            return
        inputs = {k: self._batch[k] for k in MODEL_INPUTS if k in self._batch}
        body, head = body_and_lm_head(self.model)
        self._head = head
        if body is not None:
            out = body(**inputs)
            self._hidden = out.last_hidden_state  # (B, T, H)
            self._pooled = getattr(out, "pooler_output", None)
        else:
            out = self.model(**inputs, output_hidden_states=True)
            self._hidden = out.hidden_states[-1]
            self._logits = out.logits  # (B, T, V)

    @property
    def hidden(self) -> torch.Tensor:
        self._run()
        return self._hidden

    @property
    def pooled(self) -> torch.Tensor | None:
        self._run()
        return self._pooled

    def lm_logits(self, selected: torch.Tensor) -> torch.Tensor:
        """(N, V) LM logits at the (B, T) ``selected`` positions."""
        self._run()
        if self._logits is not None:
            return self._logits[selected]
        if self.sparse_head:
            return self._head(self.hidden[selected])  # the projection only where the loss is
        return self._head(self.hidden)[selected]
