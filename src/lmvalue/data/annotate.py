"""Token-level annotations computed while tokenizing, carried through packing next to the ids.

Some objectives need more than token ids, and what they need is only known from the raw text:

* ``word_start`` (uint8): 1 where a token begins a whole word. Whole-word and span masking
  choose whole words through it. A token continues the word before it when it is a sub-word
  piece of the same pre-tokenized word (English: ``play ##ing``), or when it lies inside one
  ``jieba`` word of Chinese text (the wordpiece tokenizer splits Chinese into characters, so the
  unit must come from a segmenter, as in Chinese-BERT-wwm). A unit is never smaller than either
  definition of a word. When the corpus is segmented already (``word/TAG`` text), its own words
  replace ``jieba``.
* ``segment_start`` (uint8): 2 where a sentence begins (after 。！？!?；;… or ". "), 1 where a
  clause begins (after ，,、：:), else 0. Sentence-pair objectives cut documents there.
* ``tag_labels`` (int16): for ``word/TAG`` corpora, the tag id of each word on its first token
  and -100 on the other pieces (the usual token-classification convention).

The work is vectorised over batches of documents; only the tokenizer and ``jieba`` loop in Python.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

IGNORE = -100
FIELDS = ("word_start", "segment_start", "tag_labels")

# A sentence ends after a run of terminators (and closing quotes/brackets), or at ". " / newline.
_SENTENCE_END = re.compile(r"[。！？!?；;…]+[”’\"'）)」』】]*|\.(?=\s)|\n")
_CLAUSE_END = re.compile(r"[，,、：:]")


@dataclass
class TokenizedCorpus:
    """Token ids of every document, concatenated, with optional parallel annotations."""

    ids: np.ndarray  # int32 (N,)
    offsets: np.ndarray  # int64 (D + 1,): document d is ids[offsets[d]:offsets[d + 1]]
    fields: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,), parallel to ids


_CJK = re.compile("[\u2e80-\U0010ffff]")  # CJK scripts, full-width forms and beyond


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def join_words(words: Sequence[str]) -> tuple[str, np.ndarray]:
    """Join segmented words into text (a space only between two non-CJK words).

    Returns:
        (text, starts): ``starts[k]`` is the character offset of word ``k`` in ``text``.
    """
    parts: list[str] = []
    starts = np.zeros(len(words), dtype=np.int64)
    pos = 0
    prev = ""
    for k, word in enumerate(words):
        if prev and word and ord(prev[-1]) < 0x2E80 and ord(word[0]) < 0x2E80:
            parts.append(" ")
            pos += 1
        starts[k] = pos
        parts.append(word)
        pos += len(word)
        prev = word or prev
    return "".join(parts), starts


@dataclass(frozen=True)
class Segmenter:
    """How Chinese text is cut into whole words (``jieba``), part of the token cache's key.

    Args:
        hmm: let jieba's HMM find words that are not in its dictionary (jieba's default).
        user_dict: a jieba user dictionary (one ``word [frequency] [tag]`` per line) with the
            domain's words, so that product names or jargon are masked as one unit.
    """

    hmm: bool = True
    user_dict: str | None = None

    def fingerprint(self) -> str:
        """Everything that decides the words: jieba's version, the settings, the dictionary's bytes."""
        import hashlib

        import jieba

        h = hashlib.blake2b(digest_size=16)
        h.update(f"jieba {jieba.__version__} hmm={self.hmm}".encode())
        if self.user_dict:
            with open(self.user_dict, "rb") as f:
                h.update(f.read())
        return h.hexdigest()


_JIEBA: dict[str | None, object] = {}  # user dictionary -> its jieba.Tokenizer (loaded once per process)


def _jieba(user_dict: str | None):
    import jieba

    if user_dict not in _JIEBA:
        jieba.setLogLevel(logging.WARNING)
        if user_dict is None:
            jieba.initialize()
            _JIEBA[None] = jieba.dt
        else:
            tok = jieba.Tokenizer()
            tok.initialize()
            tok.load_userdict(user_dict)
            _JIEBA[user_dict] = tok
    return _JIEBA[user_dict]


def _jieba_lengths(text: str, segmenter: Segmenter = Segmenter()) -> np.ndarray:
    cut = _jieba(segmenter.user_dict).cut(text, HMM=segmenter.hmm)
    return np.fromiter(map(len, cut), dtype=np.int32)


def segment_words(
    texts: list[str], *, processes: int | None = None, segmenter: Segmenter | None = None
) -> list[np.ndarray | None]:
    """Character offsets where each ``jieba`` word begins, per document (None without CJK text).

    ``jieba`` is pure Python (~3 s per million characters), so large corpora are segmented by
    several processes (forked after the dictionary is loaded, so it is not loaded again);
    ``processes=1`` keeps it in this process. A document's words do not depend on the others.
    """
    segmenter = segmenter or Segmenter()
    _jieba(segmenter.user_dict)
    docs = [d for d, text in enumerate(texts) if has_cjk(text)]
    n_chars = sum(len(texts[d]) for d in docs)
    workers = min(processes or os.cpu_count() or 1, 8) if n_chars > 300_000 and sys.platform == "linux" else 1
    groups = [g for g in np.array_split(np.asarray(docs, dtype=np.int64), 4 * workers) if len(g)]
    joined = ["\n".join(texts[d] for d in group) for group in groups]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            lengths = pool.starmap(_jieba_lengths, [(text, segmenter) for text in joined])
    else:
        lengths = [_jieba_lengths(text, segmenter) for text in joined]
    out: list[np.ndarray | None] = [None] * len(texts)
    for group, word_lengths in zip(groups, lengths, strict=True):
        starts = np.concatenate([[0], np.cumsum(word_lengths, dtype=np.int64)[:-1]])
        base = np.concatenate([[0], np.cumsum([len(texts[d]) + 1 for d in group[:-1]], dtype=np.int64)])
        cut = np.searchsorted(starts, base)
        for j, d in enumerate(group):
            end = cut[j + 1] if j + 1 < len(group) else len(starts)
            out[d] = starts[cut[j] : end] - base[j]
    return out


def _boundary_positions(pattern: re.Pattern, text: str) -> np.ndarray:
    return np.fromiter((m.end() for m in pattern.finditer(text)), dtype=np.int64)


def _starts_of_runs(index: np.ndarray, first: np.ndarray) -> np.ndarray:
    """True where ``index`` changes from the previous token, or at a document's first token."""
    out = first.copy()
    out[1:] |= index[1:] != index[:-1]
    return out


def tokenize_annotated(
    texts: Iterable[str],
    tokenizer,
    *,
    fields: Iterable[str] = (),
    word_tags: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
    batch_docs: int = 1000,
    segmenter: Segmenter | None = None,
    processes: int | None = None,
) -> TokenizedCorpus:
    """Tokenize documents (without special tokens) and compute the requested annotations.

    Args:
        texts: one string per document.
        fields: any of ``word_start``, ``segment_start``, ``tag_labels``.
        word_tags: per document, (character start of each word, tag id of each word); given for
            segmented, tagged corpora (see :func:`join_words`). Needed for ``tag_labels``; when
            given, its words are also the whole words of ``word_start``.
        segmenter: the jieba settings for ``word_start`` of Chinese text (default: jieba's own).
        processes: jieba processes (None: one per core for large inputs; 1: this process only).
    Returns:
        A :class:`TokenizedCorpus` whose ``fields`` hold the requested annotations.
    """
    fields = tuple(fields)
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown token annotation(s) {sorted(unknown)}; known: {FIELDS}")
    if "tag_labels" in fields and word_tags is None:
        raise ValueError("tag_labels need word_tags (a segmented, tagged corpus)")
    # The Rust tokenizer directly: no per-call Python overhead and no max-length warnings
    # (documents are packed afterwards, so their length does not matter here).
    from lmvalue.data.shards import whole_document_backend

    backend = whole_document_backend(tokenizer)
    words = None  # per document: where its words begin (None: the tokenizer's own words)
    if word_tags is not None:
        word_tags = list(word_tags)
        words = [starts for starts, _ in word_tags]
    elif "word_start" in fields:
        texts = list(texts)
        words = segment_words(texts, processes=processes, segmenter=segmenter)
    chunks: dict[str, list[np.ndarray]] = {"ids": [], **{f: [] for f in fields}}
    lengths: list[int] = []
    batch: list[str] = []

    def flush():
        done = len(lengths)  # documents before this batch
        tagged = word_tags[done : done + len(batch)] if word_tags is not None else None
        word_starts = words[done : done + len(batch)] if words is not None else [None] * len(batch)
        if backend is not None:
            encodings = backend.encode_batch(batch, add_special_tokens=False)
            ids = [e.ids for e in encodings]
        else:  # a slow tokenizer: ids only (annotations need the fast tokenizer's offsets)
            encodings = None
            ids = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)[
                "input_ids"
            ]
        for doc_ids in ids:
            chunks["ids"].append(np.asarray(doc_ids, dtype=np.int32))
            lengths.append(len(doc_ids))
        if fields:
            if encodings is None:
                raise ValueError("token annotations need a fast (Rust) tokenizer")
            for name, values in _annotate_batch(batch, encodings, fields, word_starts, tagged).items():
                chunks[name].append(values)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_docs:
            flush()
    if batch:
        flush()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(chunks["ids"]) if chunks["ids"] else np.zeros(0, dtype=np.int32)
    dtypes = {"word_start": np.uint8, "segment_start": np.uint8, "tag_labels": np.int16}
    out = {f: np.concatenate(chunks[f]) if chunks[f] else np.zeros(0, dtype=dtypes[f]) for f in fields}
    return TokenizedCorpus(ids, offsets, out)


def _annotate_batch(
    texts: list[str],
    encodings,
    fields: tuple[str, ...],
    word_starts: list[np.ndarray | None],
    tagged: list[tuple[np.ndarray, np.ndarray]] | None,
) -> dict[str, np.ndarray]:
    """Annotations of one batch of documents, computed on the documents joined by newlines.

    ``word_starts``: per document, the character offsets where its words begin (None: the
    tokenizer's words only); ``tagged``: per document, (word starts, tag ids).
    """
    joined = "\n".join(texts)
    base = np.zeros(len(texts), dtype=np.int64)  # character offset of each document in ``joined``
    np.cumsum([len(t) + 1 for t in texts[:-1]], out=base[1:])
    n_tok = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    doc_of = np.repeat(np.arange(len(texts)), n_tok)  # (N,)
    spans = np.array([s for e in encodings for s in e.offsets], dtype=np.int64).reshape(-1, 2)
    start = spans[:, 0] + base[doc_of]  # (N,) character offset of each token in ``joined``
    end = spans[:, 1] + base[doc_of]
    first = np.zeros(len(start), dtype=bool)  # first token of its document
    first[(np.cumsum(n_tok) - n_tok)[n_tok > 0]] = True
    out: dict[str, np.ndarray] = {}

    if tagged is not None:
        word_pos = np.concatenate([s + base[d] for d, (s, _) in enumerate(tagged)])  # sorted
        word_tag = np.concatenate([t for _, t in tagged])
        word_of = np.searchsorted(word_pos, start, side="right") - 1  # (N,) word of each token
        head = _starts_of_runs(word_of, first)  # first token of its word
    if "tag_labels" in fields:
        out["tag_labels"] = np.where(head, word_tag[word_of], IGNORE).astype(np.int16)

    if "word_start" in fields:
        # Where a word may begin: everywhere in documents without segmentation (their tokenizer
        # words decide), only at the segmenter's word starts in the others.
        boundary = np.ones(len(joined) + 1, dtype=bool)
        for d, starts_d in enumerate(word_starts):
            if starts_d is not None:
                boundary[base[d] : base[d] + len(texts[d])] = False
                boundary[base[d] + starts_d] = True
        word_ids = np.array([-1 if w is None else w for e in encodings for w in e.word_ids], dtype=np.int64)
        new_word = _starts_of_runs(word_ids, first)
        codepoints = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        cjk = codepoints[np.clip(start, 0, max(len(codepoints) - 1, 0))] >= 0x2E80 if len(start) else first
        starts = boundary[start] & (new_word | cjk)
        # A token starting inside the previous one (byte pieces of one character) never starts a word.
        starts[1:] &= start[1:] >= end[:-1]
        out["word_start"] = (starts | first).astype(np.uint8)

    if "segment_start" in fields:
        strong = _boundary_positions(_SENTENCE_END, joined)
        weak = np.union1d(strong, _boundary_positions(_CLAUSE_END, joined))
        sentence = _starts_of_runs(np.searchsorted(strong, start, side="right"), first)
        clause = _starts_of_runs(np.searchsorted(weak, start, side="right"), first)
        out["segment_start"] = np.where(sentence, 2, np.where(clause, 1, 0)).astype(np.uint8)
    return out
