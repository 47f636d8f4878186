"""What every objective declares about itself, so that nothing outside its own file names it.

An objective class sets ``name`` and ``needs`` and, where they differ from these defaults, the
traits below; :func:`lmvalue.objectives.check_objectives`, the pretraining data layout and the
evaluation read them instead of lists of names.
"""

from __future__ import annotations


class Objective:
    """Defaults for the traits of an objective (see :mod:`lmvalue.objectives` for the methods)."""

    name: str = ""
    needs: frozenset[str] = frozenset()
    #: corrupts the input to predict tokens (masking, causal LM, replaced tokens): one per run
    predicts_tokens: bool = False
    #: ``nsp`` / ``sop``: the data is laid out as ``[CLS] A [SEP] B [SEP]`` pairs of this kind
    #: (built by :func:`lmvalue.data.pairs.build_pairs`): one per run
    pair_kind: str | None = None
    #: ``encoder`` (model.arch=bert), ``decoder`` (gpt2 / llama) or ``any``
    architecture: str = "any"
    #: its loss is a token cross-entropy whose exponent is a perplexity
    perplexity: bool = False
    #: the run may also be scored by plain random-token MLM on the held-out blocks
    #: (False where the model's MLM head is not the encoder's own, e.g. RTD's generator)
    reference_mlm: bool = True
