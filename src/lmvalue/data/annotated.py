"""The token cache with annotations: word starts, sentence starts and word tags, computed once.

``wwm`` and ``span`` need where whole words begin (jieba for Chinese), ``nsp`` and ``sop`` where
sentences begin, ``tags`` the tag of every word. They are computed once per (corpus, tokenizer,
annotations, segmenter settings) and stored beside the ids, as the plain token cache stores ids
(:mod:`lmvalue.data.shards`)::

    <cache>/tokens/<key>/ids.bin            token ids (uint16 / int32)
                        offsets.npy         int64 (D + 1,)
                        word_start.bin      uint8, one per token (1: the token begins a whole word)
                        segment_start.bin   uint8, one per token (2: sentence, 1: clause begins)
                        tag_labels.bin      int16, one per token (the word's tag id on its first token)
                        info.json           counts, dtypes, fields, tag vocabulary, segmenter

The corpus is streamed in chunks of documents; each chunk is segmented and tokenized on its own
(a document's annotations do not depend on the others), by worker processes when
``workers > 1``, and the chunks are written in order, so the entry is the same whatever the
number of workers. The entry is written into a temporary folder and renamed into place: a run
killed midway leaves no entry.

Training rows are then laid out chunk by chunk from plain reads of these files and written to the
cache too (packed blocks with their annotations; sentence pairs, drawn afresh each epoch), so a
run's resident memory stays flat as the corpus grows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from lmvalue.data.annotate import FIELDS, Segmenter, TokenizedCorpus, join_words, tokenize_annotated
from lmvalue.data.layout import ANNOTATION_FILL
from lmvalue.data.pairs import PairBuilder
from lmvalue.data.shards import (
    CHUNK_DOCS,
    FORMAT,
    BlockFile,
    cache_root,
    commit_entry,
    ids_dtype,
    tokenizer_fingerprint,
    whole_document_backend,
)
from lmvalue.errors import DataError

log = logging.getLogger("lmvalue")

ANNOTATED_FORMAT = 1  # bump when the annotations or their layout change
CHUNK_CHARS = 1_000_000  # characters per tokenizing chunk (a unit of work for one process)
FIELD_DTYPES = {"word_start": np.uint8, "segment_start": np.uint8, "tag_labels": np.int16}


class AnnotatedCache:
    """Token ids and their annotations of one corpus, memory-mapped from the cache."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.info = json.loads((folder / "info.json").read_text())
        self.ids = np.memmap(folder / "ids.bin", dtype=self.info["dtype"], mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        self.fields = {
            name: np.memmap(folder / f"{name}.bin", dtype=dtype, mode="r")
            for name, dtype in self.info["fields"].items()
        }

    @property
    def tag_labels(self) -> list[str] | None:
        return self.info.get("tag_labels")

    def corpus(self) -> TokenizedCorpus:
        return TokenizedCorpus(ids=self.ids, offsets=self.offsets, fields=dict(self.fields))

    def read_docs(self, lo: int, hi: int) -> TokenizedCorpus:
        """Documents ``lo`` to ``hi`` (exclusive) as an in-memory corpus, read with plain reads (pages
        of a memory map would stay in the resident memory)."""
        a, b = int(self.offsets[lo]), int(self.offsets[hi])

        def read(name: str, dtype) -> np.ndarray:
            dtype = np.dtype(dtype)
            with open(self.folder / name, "rb") as f:
                f.seek(a * dtype.itemsize)
                return np.frombuffer(f.read((b - a) * dtype.itemsize), dtype=dtype)

        return TokenizedCorpus(
            ids=read("ids.bin", self.info["dtype"]),
            offsets=self.offsets[lo : hi + 1] - a,
            fields={n: read(f"{n}.bin", d) for n, d in self.info["fields"].items()},
        )


# ---------------------------------------------------------------- reading the corpus


def _fingerprint(docs: Iterable) -> tuple[str, int, int, int, list[str] | None]:
    """(hash, documents, characters, UTF-8 bytes, sorted tags or None) of a stream of documents:
    texts, or (words, tags) of a tagged corpus."""
    h = hashlib.blake2b(digest_size=16)
    n_docs = n_chars = n_bytes = 0
    tags: set[str] | None = None
    for doc in docs:
        if isinstance(doc, str):
            b = doc.encode("utf-8")
            n_chars += len(doc)
        else:
            words, doc_tags = doc
            tags = (tags or set()) | set(doc_tags)
            text, _ = join_words(words)
            n_chars += len(text)
            b = ("\x1f".join(words) + "\x1e" + "\x1f".join(doc_tags)).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
        n_docs += 1
        n_bytes += len(b) if isinstance(doc, str) else len(text.encode("utf-8"))
    return h.hexdigest(), n_docs, n_chars, n_bytes, sorted(tags) if tags is not None else None


def _chunks(docs: Iterable, tag_index: dict[str, int] | None) -> Iterator[tuple[list[str], list | None, int]]:
    """Chunks of about CHUNK_CHARS characters: (texts, word_tags or None, UTF-8 bytes)."""
    texts: list[str] = []
    word_tags: list = []
    chars = n_bytes = 0
    for doc in docs:
        if isinstance(doc, str):
            text = doc
        else:
            words, tags = doc
            text, starts = join_words(words)
            word_tags.append((starts, np.array([tag_index[t] for t in tags], dtype=np.int64)))
        texts.append(text)
        chars += len(text)
        n_bytes += len(text.encode("utf-8"))
        if chars >= CHUNK_CHARS or len(texts) >= CHUNK_DOCS:
            yield texts, word_tags if tag_index is not None else None, n_bytes
            texts, word_tags, chars, n_bytes = [], [], 0, 0
    if texts:
        yield texts, word_tags if tag_index is not None else None, n_bytes


class _Backend:
    """What :func:`tokenize_annotated` needs of a tokenizer: its Rust backend."""

    def __init__(self, backend):
        self.backend_tokenizer = backend


_WORKER: dict = {}


def _init_worker(backend_json: str, fields: tuple[str, ...], segmenter: Segmenter) -> None:
    from tokenizers import Tokenizer

    _WORKER.update(tokenizer=_Backend(Tokenizer.from_str(backend_json)), fields=fields, segmenter=segmenter)


def _annotate_chunk(texts: list[str], word_tags, tokenizer=None, fields=None, segmenter=None):
    """ids, per-document lengths and annotations of one chunk (in a worker or in this process)."""
    if tokenizer is None:
        tokenizer, fields, segmenter = _WORKER["tokenizer"], _WORKER["fields"], _WORKER["segmenter"]
    corpus = tokenize_annotated(
        texts, tokenizer, fields=fields, word_tags=word_tags, segmenter=segmenter, processes=1
    )
    return corpus.ids, np.diff(corpus.offsets), corpus.fields


def annotate_stream(
    chunks: Iterable[tuple[list[str], list | None, int]],
    tokenizer,
    *,
    fields: tuple[str, ...],
    segmenter: Segmenter,
    workers: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], int]]:
    """(ids, document lengths, annotations, bytes) of each chunk, in order.

    With ``workers > 1`` the chunks are segmented and tokenized by that many forked processes, at
    most ``2 * workers`` chunks in flight (the corpus is never read ahead further)."""
    backend = whole_document_backend(tokenizer)
    if backend is None:
        raise DataError("token annotations need a fast (Rust) tokenizer")
    if "word_start" in fields:
        from lmvalue.data.annotate import segment_words

        segment_words(["预热"], processes=1, segmenter=segmenter)  # load jieba before forking
    if workers <= 1 or sys.platform != "linux" or multiprocessing.current_process().daemon:
        # (a daemonic process, e.g. a multiprocessing pool's worker, may not start children)
        local = _Backend(backend)
        for texts, word_tags, n_bytes in chunks:
            yield (*_annotate_chunk(texts, word_tags, local, fields, segmenter), n_bytes)
        return
    # The children must not use the Rust tokenizer's thread pool after the fork (one thread each).
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = multiprocessing.get_context("fork").Pool(
            workers, initializer=_init_worker, initargs=(backend.to_str(), fields, segmenter)
        )
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    with pool:
        pending: deque = deque()
        for texts, word_tags, n_bytes in chunks:
            pending.append((pool.apply_async(_annotate_chunk, (texts, word_tags)), n_bytes))
            if len(pending) >= 2 * workers:
                job, nb = pending.popleft()
                yield (*job.get(), nb)
        while pending:
            job, nb = pending.popleft()
            yield (*job.get(), nb)


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def cached_annotated(
    docs: Callable[[], Iterable],
    tokenizer,
    *,
    fields: Iterable[str],
    segmenter: Segmenter | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[AnnotatedCache, dict]:
    """The corpus's token ids and annotations from the cache, computing (and caching) them first
    when needed.

    Args:
        docs: a function returning a fresh stream of the documents: texts, or ``(words, tags)`` of
            a tagged corpus (for ``tag_labels``; its words are then the whole words).
        fields: any of ``word_start``, ``segment_start``, ``tag_labels``.
        workers: processes that segment and tokenize (None: one per core, at most 8).
    Returns:
        (entry, stats) with ``hit``, ``hash_s``, and when computed now ``tokenize_s``, ``mb_per_s``,
        ``workers``.
    """
    fields = tuple(f for f in FIELDS if f in set(fields))
    segmenter = segmenter or Segmenter()
    t0 = time.perf_counter()
    content, n_docs, n_chars, n_bytes, tags = _fingerprint(docs())
    if n_docs == 0:
        raise DataError("the corpus has no documents (every line is empty)")
    if "tag_labels" in fields and tags is None:
        raise DataError("tag_labels need a segmented, tagged corpus (word/TAG tokens)")
    hash_s = time.perf_counter() - t0
    seg = segmenter.fingerprint() if "word_start" in fields and tags is None else "-"
    key = hashlib.blake2b(
        f"{FORMAT}:{ANNOTATED_FORMAT}:{tokenizer_fingerprint(tokenizer)}:{content}:{','.join(fields)}:{seg}".encode(),
        digest_size=16,
    ).hexdigest()
    folder = cache_root(cache_dir) / "tokens" / key
    stats = {"hit": True, "hash_s": round(hash_s, 3), "cache": str(folder)}
    if (folder / "info.json").is_file():
        log.info("token cache hit (annotated: %s): %s", ", ".join(fields), folder)
        return AnnotatedCache(folder), stats
    workers = workers or default_workers()
    if n_chars < 2 * CHUNK_CHARS:
        workers = 1  # one or two chunks: forking costs more than it saves
    t1 = time.perf_counter()
    tag_index = {t: i for i, t in enumerate(tags)} if tags is not None else None
    _annotate_to(
        folder,
        annotate_stream(
            _chunks(docs(), tag_index), tokenizer, fields=fields, segmenter=segmenter, workers=workers
        ),
        tokenizer,
        fields=fields,
        n_docs=n_docs,
        n_chars=n_chars,
        n_bytes=n_bytes,
        info_extra={
            "tag_labels": tags,
            "segmenter": {"hmm": segmenter.hmm, "user_dict": segmenter.user_dict} if seg != "-" else None,
        },
        progress=progress,
    )
    dt = time.perf_counter() - t1
    stats.update(
        hit=False, tokenize_s=round(dt, 3), mb_per_s=round(n_bytes / 1e6 / max(dt, 1e-9), 2), workers=workers
    )
    log.info(
        "segmented and tokenized %s documents (%.1f MB, %s) in %.1fs with %d process(es): %.1f MB/s -> %s",
        f"{n_docs:,}",
        n_bytes / 1e6,
        ", ".join(fields),
        dt,
        workers,
        stats["mb_per_s"],
        folder,
    )
    return AnnotatedCache(folder), stats


def _annotate_to(
    folder: Path, stream, tokenizer, *, fields, n_docs, n_chars, n_bytes, info_extra, progress
) -> None:
    dtype, vocab = ids_dtype(whole_document_backend(tokenizer))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_bytes, unit="B", unit_scale=True, desc="segmenting + tokenizing", disable=None)
    files = {}
    try:
        files = {"ids": open(tmp / "ids.bin", "wb"), **{f: open(tmp / f"{f}.bin", "wb") for f in fields}}
        done = 0
        for ids, lengths, annotations, nb in stream:
            if done + len(lengths) > n_docs:
                raise DataError("the corpus changed while it was read; run again")
            files["ids"].write(np.asarray(ids, dtype=dtype).tobytes())
            for f in fields:
                files[f].write(np.asarray(annotations[f], dtype=FIELD_DTYPES[f]).tobytes())
            offsets[done + 1 : done + 1 + len(lengths)] = offsets[done] + np.cumsum(lengths)
            done += len(lengths)
            if bar is not None:
                bar.update(nb)
        for fh in files.values():
            fh.close()
        if done != n_docs:
            raise DataError(
                f"the corpus changed while it was read ({n_docs} documents, then {done}); run again"
            )
        info = {
            "annotated_format": ANNOTATED_FORMAT,
            "documents": n_docs,
            "characters": n_chars,
            "bytes": n_bytes,
            "dtype": np.dtype(dtype).name,
            "fields": {f: np.dtype(FIELD_DTYPES[f]).name for f in fields},
            **info_extra,
        }
        commit_entry(tmp, folder, offsets, info, vocab)
    except BaseException:
        for fh in files.values():
            fh.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------- training rows


def _rows_key(entry: AnnotatedCache, docs: np.ndarray, *parts) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{FORMAT}:{ANNOTATED_FORMAT}:{entry.folder.name}:{parts}".encode())
    h.update(np.ascontiguousarray(docs, dtype=np.int64).tobytes())
    return h.hexdigest()


def _doc_chunks(docs: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(docs), CHUNK_DOCS):
        yield docs[start : start + CHUNK_DOCS]


def _write_rows(folder: Path, produce: Callable[[], Iterator[dict[str, np.ndarray]]]) -> dict[str, BlockFile]:
    """Rows streamed chunk by chunk into ``<folder>/<name>.npy`` files (once); opened as BlockFiles."""
    if not (folder / "done").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            raw, meta = {}, {}
            for rows in produce():
                for name, values in rows.items():
                    if name not in raw:
                        raw[name] = open(tmp / f"{name}.raw", "wb")
                        meta[name] = (values.dtype, values.shape[1:], 0)
                    dtype, shape, n = meta[name]
                    raw[name].write(np.ascontiguousarray(values, dtype=dtype).tobytes())
                    meta[name] = (dtype, shape, n + len(values))
            for name, fh in raw.items():
                fh.close()
                dtype, shape, n = meta[name]
                with open(tmp / f"{name}.npy", "wb") as out, open(tmp / f"{name}.raw", "rb") as src:
                    np.lib.format.write_array_header_1_0(
                        out,
                        {
                            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                            "fortran_order": False,
                            "shape": (n, *shape),
                        },
                    )
                    shutil.copyfileobj(src, out, 1 << 22)
                (tmp / f"{name}.raw").unlink()
            (tmp / "done").write_text("")
            try:
                tmp.rename(folder)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {p.stem: BlockFile(p) for p in sorted(folder.glob("*.npy"))}


def cached_annotated_blocks(
    entry: AnnotatedCache,
    docs: np.ndarray,
    block_size: int,
    *,
    sep_id: int,
    cls_id: int | None,
    cache_dir: str | Path | None = None,
) -> dict[str, BlockFile]:
    """:func:`lmvalue.data.layout.layout_rows` packed blocks of ``docs`` with their annotations,
    written to the cache once and read row by row."""
    docs = np.asarray(docs, dtype=np.int64)
    carry = {k: v for k, v in ANNOTATION_FILL.items() if k in entry.fields}
    folder = cache_root(cache_dir) / "rows" / _rows_key(entry, docs, "blocks", block_size, sep_id, cls_id)
    return _write_rows(folder, lambda: _packed_rows(entry, docs, block_size, sep_id, cls_id, carry))


def _packed_rows(entry, docs, block_size, sep_id, cls_id, carry) -> Iterator[dict[str, np.ndarray]]:
    """Blocks exactly as :func:`lmvalue.data.packing.pack_blocks` cuts the whole stream, chunk by chunk."""
    body = block_size - (1 if cls_id is not None else 0)
    fills = {"input_ids": sep_id, **carry}
    heads = {"input_ids": cls_id, **{n: (None if cls_id is None else f) for n, f in carry.items()}}
    tail: dict[str, np.ndarray] = {}
    for chunk in _doc_chunks(docs):
        lo, hi = int(chunk.min()), int(chunk.max()) + 1
        part = entry.read_docs(lo, hi)
        local = chunk - lo
        rows = {}
        for name, fill in fills.items():
            values = part.ids if name == "input_ids" else part.fields[name]
            sep = np.array([fill], dtype=values.dtype)
            pieces = [tail.get(name, values[:0])]
            for d in local:
                pieces.append(values[part.offsets[d] : part.offsets[d + 1]])
                pieces.append(sep)
            stream = np.concatenate(pieces)
            k = len(stream) // body
            blocks = stream[: k * body].reshape(k, body)
            if heads[name] is not None:
                blocks = np.concatenate([np.full((k, 1), heads[name], dtype=values.dtype), blocks], axis=1)
            rows[name] = blocks
            tail[name] = stream[k * body :]
        yield rows


def cached_pairs(
    entry: AnnotatedCache,
    docs: np.ndarray,
    block_size: int,
    *,
    kind: str,
    seed,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    cache_dir: str | Path | None = None,
) -> dict[str, BlockFile]:
    """:func:`lmvalue.data.pairs.build_pairs` of ``docs`` (the same rows, drawn with ``seed``),
    built chunk by chunk from plain reads, written to the cache once and read row by row."""
    docs = np.asarray(docs, dtype=np.int64)
    carry = {k: v for k, v in ANNOTATION_FILL.items() if k in entry.fields}
    seed_key = tuple(np.atleast_1d(seed).tolist())
    folder = (
        cache_root(cache_dir)
        / "rows"
        / _rows_key(entry, docs, "pairs", kind, seed_key, block_size, cls_id, sep_id, pad_id)
    )

    def produce():
        builder = PairBuilder(
            block_size, kind=kind, seed=seed, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id, carry=carry
        )
        for chunk in _doc_chunks(docs):
            lo, hi = int(chunk.min()), int(chunk.max()) + 1
            rows = builder.rows(entry.read_docs(lo, hi), chunk - lo)
            if rows is not None:
                yield rows
        builder.check()

    return _write_rows(folder, produce)
