"""Two-segment examples ``[CLS] A [SEP] B [SEP]`` for next-sentence and sentence-order prediction.

Each document is cut at sentence boundaries (clause boundaries for documents of one sentence) into
chunks of at most one block (a unit that would overflow starts the next chunk); each chunk of two
or more units is split at a random unit boundary into A and B, as in BERT's
``create_pretraining_data``. Half the examples are negatives, exactly (labels come in shuffled
pairs): for ``nsp`` B is replaced by a segment of a random other document (the units of the real B
go back to the document for the next chunk), for ``sop`` A and B are swapped. Label 0 means "B
follows A", 1 the negative, as in ``BertForPreTraining``.

A pair still longer than the block (long sentences) loses tokens at the start of A and the end of
B before any swap, so the junction the objective is about stays intact; shorter pairs are padded
(``attention_mask`` 0, ``token_type_ids`` 0). Documents with a single unit cannot form a pair
and are not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmvalue.data.annotate import TokenizedCorpus
from lmvalue.errors import DataError

PAIR_KINDS = ("nsp", "sop")


def _units(segment_start: np.ndarray, lo: int, hi: int) -> list[tuple[int, int]]:
    """Token ranges of a document's sentences, or of its clauses when it has a single sentence."""
    local = segment_start[lo:hi]
    for level in (2, 1):
        cuts = np.flatnonzero(local >= level)
        cuts = cuts[cuts > 0] + lo
        if len(cuts):
            bounds = [lo, *cuts.tolist(), hi]
            return list(zip(bounds[:-1], bounds[1:], strict=True))
    return [(lo, hi)] if hi > lo else []


def _indices(ranges: list[tuple[int, int]]) -> np.ndarray:
    return np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.zeros(0, dtype=np.int64)


def _trim(a: np.ndarray, b: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit a pair into ``target`` tokens, the longer segment losing tokens first: A at its start and
    B at its end, so the junction between them (what the objective is about) stays intact."""
    if len(a) + len(b) <= target:
        return a, b
    lb = min(len(b), max(target - len(a), target // 2))
    la = min(len(a), target - lb)
    return a[len(a) - la :], b[:lb]


class PairBuilder:
    """Draws sentence pairs chunk by chunk of documents, with one random stream over all chunks.

    ``rows(corpus, docs)`` lays out the pairs of one chunk; a negative ``nsp`` segment comes from
    another document of the same chunk. :func:`build_pairs` and the streamed token cache
    (:func:`lmvalue.data.annotated.cached_pairs`) feed it the same chunks, so they draw the same
    pairs.
    """

    def __init__(
        self,
        block_size: int,
        *,
        kind: str,
        seed: int | Sequence[int],
        cls_id: int,
        sep_id: int,
        pad_id: int,
        carry: dict[str, int] | None = None,
    ):
        if kind not in PAIR_KINDS:
            raise ValueError(f"unknown pair kind {kind!r}; choose one of {PAIR_KINDS}")
        self.block_size, self.kind = block_size, kind
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.carry = carry or {}
        self.rng = np.random.default_rng(seed)
        self.labels_due: list[int] = []
        self.count = 0

    def _next_label(self) -> int:
        if not self.labels_due:
            first = int(self.rng.integers(2))
            self.labels_due.extend([1 - first, first])  # popped from the end: ``first`` comes first
        return self.labels_due.pop()

    def rows(self, corpus: TokenizedCorpus, docs: np.ndarray) -> dict[str, np.ndarray] | None:
        """The pair rows of the documents ``docs`` of ``corpus`` (None when they make no pair)."""
        rng, kind = self.rng, self.kind
        seg = corpus.fields["segment_start"]
        offsets = corpus.offsets
        target = self.block_size - 3  # [CLS] A [SEP] B [SEP]
        docs = np.asarray([d for d in docs if offsets[d + 1] > offsets[d]])
        examples: list[tuple[np.ndarray, np.ndarray, int]] = []

        def random_segment(exclude: int, length: int) -> list[tuple[int, int]]:
            other = exclude
            while other == exclude and len(docs) > 1:
                other = int(docs[rng.integers(len(docs))])
            units = _units(seg, int(offsets[other]), int(offsets[other + 1]))
            start = int(rng.integers(len(units)))
            out, total = [], 0
            for unit in units[start:]:
                out.append(unit)
                total += unit[1] - unit[0]
                if total >= length:
                    break
            return out

        for d in docs:
            units = _units(seg, int(offsets[d]), int(offsets[d + 1]))
            i, chunk, length = 0, [], 0
            while i < len(units):
                size = units[i][1] - units[i][0]
                if (
                    len(chunk) < 2 or length + size <= target
                ):  # a unit that would overflow starts the next chunk
                    chunk.append(units[i])
                    length += size
                    i += 1
                    if i < len(units) and length < target:
                        continue
                if len(chunk) >= 2:
                    a_end = int(rng.integers(1, len(chunk)))
                    a, b = chunk[:a_end], chunk[a_end:]
                    label = self._next_label()
                    if label and kind == "nsp":
                        b = random_segment(int(d), target - sum(e - s for s, e in a))
                        i -= len(chunk) - a_end  # the real B's units start the next chunk
                    a, b = _trim(_indices(a), _indices(b), target)
                    examples.append((b, a, label) if label and kind == "sop" else (a, b, label))
                chunk, length = [], 0
        self.count += len(examples)
        return self._layout(corpus, examples) if examples else None

    def _layout(self, corpus: TokenizedCorpus, examples) -> dict[str, np.ndarray]:
        n, block_size = len(examples), self.block_size
        cls_id, sep_id = self.cls_id, self.sep_id
        out = {
            "input_ids": np.full((n, block_size), self.pad_id, dtype=np.int32),
            "token_type_ids": np.zeros((n, block_size), dtype=np.int8),
            "attention_mask": np.zeros((n, block_size), dtype=np.int8),
            "pair_labels": np.array([label for _, _, label in examples], dtype=np.int64),
        }
        for name, fill in self.carry.items():
            out[name] = np.full((n, block_size), fill, dtype=corpus.fields[name].dtype)
        for row, (a, b, _) in enumerate(examples):
            la, lb = len(a), len(b)
            n_a = la + 2  # [CLS] A [SEP]
            total = n_a + lb + 1
            out["input_ids"][row, 0] = cls_id
            out["input_ids"][row, 1 : 1 + la] = corpus.ids[a]
            out["input_ids"][row, 1 + la] = sep_id
            out["input_ids"][row, n_a : n_a + lb] = corpus.ids[b]
            out["input_ids"][row, total - 1] = sep_id
            out["token_type_ids"][row, n_a:total] = 1
            out["attention_mask"][row, :total] = 1
            for name in self.carry:
                out[name][row, 1 : 1 + la] = corpus.fields[name][a]
                out[name][row, n_a : n_a + lb] = corpus.fields[name][b]
        return out

    def check(self) -> None:
        """Raise :class:`DataError` when no chunk made a pair."""
        if not self.count:
            raise DataError(
                f"no document has two sentences or clauses to build {self.kind} pairs from; "
                "sentence-pair objectives need multi-sentence documents"
            )


def build_pairs(
    corpus: TokenizedCorpus,
    docs: np.ndarray,
    block_size: int,
    *,
    kind: str,
    seed: int | Sequence[int],
    cls_id: int,
    sep_id: int,
    pad_id: int,
    carry: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Sentence-pair examples from the documents ``docs`` of ``corpus``.

    Args:
        corpus: tokenized documents with a ``segment_start`` annotation.
        kind: ``nsp`` (negative: B from another document of the same chunk of
            ``CHUNK_DOCS`` documents) or ``sop`` (negative: B before A).
        carry: other annotations of ``corpus`` to lay out like the tokens, each with the value
            it takes at [CLS], [SEP] and padding (e.g. ``{"word_start": 1}``).
    Returns:
        ``input_ids`` (N, block_size) int32, ``token_type_ids`` and ``attention_mask`` (N,
        block_size) int8, ``pair_labels`` (N,) int64 (0: in order, 1: negative), and each carried
        annotation (N, block_size).
    Raises:
        DataError: no document has two sentences or clauses.
    """
    from lmvalue.data.shards import CHUNK_DOCS

    builder = PairBuilder(
        block_size, kind=kind, seed=seed, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id, carry=carry
    )
    docs = np.asarray(docs, dtype=np.int64)
    parts = [builder.rows(corpus, docs[i : i + CHUNK_DOCS]) for i in range(0, len(docs), CHUNK_DOCS)]
    builder.check()
    parts = [p for p in parts if p is not None]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
