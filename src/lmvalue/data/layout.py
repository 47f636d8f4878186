"""Rows of training examples from a tokenized corpus: packed blocks or sentence pairs.

Every objective reads the same rows: ``input_ids`` plus the token annotations the objectives asked
for (laid out exactly like the tokens), and for sentence pairs ``token_type_ids``,
``attention_mask`` and ``pair_labels``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmvalue.data.annotate import IGNORE, TokenizedCorpus
from lmvalue.data.packing import pack_blocks
from lmvalue.data.pairs import build_pairs

# The value a token annotation takes at [CLS], [SEP] and padding: a word of its own, no tag.
ANNOTATION_FILL = {"word_start": 1, "tag_labels": IGNORE}


def layout_rows(
    corpus: TokenizedCorpus,
    docs: np.ndarray,
    block_size: int,
    *,
    sep_id: int,
    cls_id: int | None,
    pad_id: int | None = None,
    pair_kind: str | None = None,
    seed: int | Sequence[int] = 0,
) -> dict[str, np.ndarray]:
    """The documents ``docs`` as rows of ``block_size`` tokens.

    Args:
        pair_kind: ``nsp`` / ``sop`` for ``[CLS] A [SEP] B [SEP]`` pairs (drawn with ``seed``);
            None for packed blocks (documents concatenated with separators, no padding).
    Returns:
        name -> array with one row per example: ``input_ids`` (n, block_size), each annotation of
        ``corpus`` that has a fill value, and the pair arrays for pairs.
    """
    carry = {k: v for k, v in ANNOTATION_FILL.items() if k in corpus.fields}
    if pair_kind:
        return build_pairs(
            corpus,
            docs,
            block_size,
            kind=pair_kind,
            seed=seed,
            cls_id=cls_id,
            sep_id=sep_id,
            pad_id=pad_id,
            carry=carry,
        )
    rows = {
        "input_ids": pack_blocks(corpus.ids, corpus.offsets, docs, block_size, sep_id=sep_id, cls_id=cls_id)
    }
    for name, fill in carry.items():
        rows[name] = pack_blocks(
            corpus.fields[name],
            corpus.offsets,
            docs,
            block_size,
            sep_id=fill,
            cls_id=None if cls_id is None else fill,
        )
    return rows
