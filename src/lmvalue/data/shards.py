"""Pre-tokenized corpora on disk: tokenize once, memory-map on every later run.

A corpus is streamed twice and never held in memory: a first pass hashes its documents (the cache
key is the tokenizer's full definition plus that content hash, so a changed file or tokenizer
never reuses stale ids), and, on a cache miss, a second pass tokenizes it in batches with the Rust
tokenizer (``encode_batch`` runs on all cores) and appends the ids to disk. A cache entry is a
folder::

    <cache>/tokens/<key>/ids.bin        token ids, uint16 when the vocabulary fits, else int32
                        offsets.npy     int64 (D + 1,): document d is ids[offsets[d]:offsets[d + 1]]
                        info.json       documents, tokens, characters, bytes, dtype, tokenizer

written into a temporary folder and renamed into place, so a killed run leaves no half entry.
Packed training blocks are cached the same way (``<cache>/blocks/<key>.npy``, keyed on the corpus,
the split and the layout) and read a few rows per batch: the resident memory of a run stays flat as
the corpus grows.

The cache folder is ``$LMVALUE_CACHE`` or ``~/.cache/lmvalue``; delete it at any time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from lmvalue.errors import DataError

log = logging.getLogger("lmvalue")

FORMAT = 2  # bump when the layout or content of an entry changes (2: documents are never truncated)
CHUNK_DOCS = 20_000  # documents per packing chunk
TOKENIZE_DOCS = 2_000  # documents per encode_batch call: the Encoding objects are large


def cache_root(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("LMVALUE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmvalue"


def whole_document_backend(tokenizer):
    """The fast tokenizer's Rust backend without its truncation and padding settings.

    A checkpoint's ``tokenizer.json`` may carry them (all-MiniLM-L6-v2 truncates at 128 tokens);
    pretraining tokenizes whole documents and packs them afterwards, so it must not cut them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or (backend.truncation is None and backend.padding is None):
        return backend
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


# The CJK Unified Ideographs (with extension A) of the Basic Multilingual Plane. BERT's normalizer
# isolates each as a word of its own, and none changes under its lower-casing or accent stripping
# (the compatibility ideographs U+F900-FAFF do: NFD maps them to unified ones, so they take the
# general path).
_CJK_RUN = re.compile("([\u3400-\u4dbf\u4e00-\u9fff]+)")
_CJK_ANY = re.compile("[\u3400-\u4dbf\u4e00-\u9fff]")
_PIECE_CACHE = 50_000  # distinct non-CJK pieces remembered before the memo starts afresh (~10 MB)


class CjkFastEncoder:
    """The ids of a BERT-style WordPiece tokenizer, with the CJK characters looked up directly.

    With ``BertNormalizer(handle_chinese_chars)`` + ``BertPreTokenizer`` + ``WordPiece``, every CJK
    ideograph is a word of its own, and its id is its vocabulary entry or ``[UNK]``; the text
    between ideographs is tokenized by the Rust tokenizer exactly as in a whole document (an
    ideograph is always a word boundary), and memoised: in Chinese text those pieces are mostly
    punctuation and a few repeated Latin words. The result equals ``encode_batch`` (tested over
    every ideograph and real mixed text); it skips the per-character normalisation, splitting and
    ``Encoding`` objects of the general path, which dominate on Chinese.
    """

    def __init__(self, backend):
        self.backend = backend
        spec = json.loads(backend.to_str())
        model = spec["model"]
        self.vocab = backend.get_vocab(with_added_tokens=False)
        self.unk = self.vocab[model["unk_token"]]
        self.pieces: dict[str, list[int]] = {}

    @classmethod
    def applies(cls, backend) -> bool:
        """True for the tokenizers lmvalue trains (``kind=wordpiece``) and BERT-style Chinese checkpoints."""
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # noqa: BLE001 - anything unexpected: the general path
            return False
        normalizer = spec.get("normalizer") or {}
        if not (
            normalizer.get("type") == "BertNormalizer"
            and normalizer.get("handle_chinese_chars")
            and (spec.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and (spec.get("model") or {}).get("type") == "WordPiece"
        ):
            return False
        # An added token with an ideograph in it would be matched before normalisation.
        return not any(_CJK_ANY.search(t.get("content", "")) for t in spec.get("added_tokens") or [])

    def encode(self, texts: list[str]) -> list[list[int]]:
        split = [_CJK_RUN.split(t) for t in texts]  # [other, ideographs, other, ideographs, ..., other]
        pieces = self.pieces
        misses = list({p for parts in split for p in parts[0::2] if p and p not in pieces})
        if len(pieces) + len(misses) > _PIECE_CACHE:  # start the memo afresh with this batch's pieces
            pieces.clear()
            misses = list({p for parts in split for p in parts[0::2] if p})
        if misses:
            for piece, enc in zip(
                misses, self.backend.encode_batch_fast(misses, add_special_tokens=False), strict=True
            ):
                pieces[piece] = enc.ids
        get, unk = self.vocab.get, self.unk
        out = []
        for parts in split:
            ids: list[int] = []
            for i, p in enumerate(parts):
                if i % 2:
                    ids.extend([get(c, unk) for c in p])
                elif p:
                    ids.extend(pieces[p])
            out.append(ids)
        return out


def encode_ids(backend) -> Callable[[list[str]], list[list[int]]]:
    """A function from texts to their token ids (no special tokens): the CJK fast path where it
    applies, else ``encode_batch_fast`` (tokenizers >= 0.20: no character offsets)."""
    if CjkFastEncoder.applies(backend):
        return CjkFastEncoder(backend).encode
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the ids: the fast tokenizer's full JSON definition."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DataError("the token cache needs a fast (Rust) tokenizer")
    return hashlib.blake2b(backend.to_str().encode("utf-8"), digest_size=16).hexdigest()


def content_fingerprint(texts: Iterable[str]) -> tuple[str, int, int, int]:
    """(hash, documents, characters, UTF-8 bytes) of a stream of documents, in one pass."""
    h = hashlib.blake2b(digest_size=16)
    n_docs = n_chars = n_bytes = 0
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
        n_docs += 1
        n_chars += len(t)
        n_bytes += len(b)
    return h.hexdigest(), n_docs, n_chars, n_bytes


class TokenCache:
    """Token ids of one corpus under one tokenizer, memory-mapped from the cache."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.info = json.loads((folder / "info.json").read_text())
        self.ids = np.memmap(folder / "ids.bin", dtype=self.info["dtype"], mode="r")
        self.offsets = np.load(folder / "offsets.npy")


def cached_tokens(
    texts: Callable[[], Iterable[str]],
    tokenizer,
    *,
    cache_dir: str | Path | None = None,
) -> tuple[TokenCache, dict]:
    """The corpus's token ids from the cache, tokenizing (and caching) it first when needed.

    Args:
        texts: a function returning a fresh stream of the documents (called once or twice).
    Returns:
        (entry, stats) with stats ``hit``, ``hash_s``, ``tokenize_s``, ``mb_per_s`` (tokenization
        throughput in MB of UTF-8 text per second, when tokenized now).
    """
    t0 = time.perf_counter()
    content, n_docs, n_chars, n_bytes = content_fingerprint(texts())
    if n_docs == 0:
        raise DataError("the corpus has no documents (every line is empty)")
    hash_s = time.perf_counter() - t0
    key = hashlib.blake2b(
        f"{FORMAT}:{tokenizer_fingerprint(tokenizer)}:{content}".encode(), digest_size=16
    ).hexdigest()
    folder = cache_root(cache_dir) / "tokens" / key
    stats = {"hit": True, "hash_s": round(hash_s, 3), "cache": str(folder)}
    if not (folder / "info.json").is_file():
        stats["hit"] = False
        t1 = time.perf_counter()
        _tokenize_to(folder, texts(), tokenizer, n_docs=n_docs, n_chars=n_chars, n_bytes=n_bytes)
        dt = time.perf_counter() - t1
        stats.update(tokenize_s=round(dt, 3), mb_per_s=round(n_bytes / 1e6 / max(dt, 1e-9), 2))
        log.info(
            "tokenized %s documents (%.1f MB) in %.1fs: %.1f MB/s -> %s",
            f"{n_docs:,}",
            n_bytes / 1e6,
            dt,
            stats["mb_per_s"],
            folder,
        )
    else:
        log.info("token cache hit: %s", folder)
    return TokenCache(folder), stats


def ids_dtype(backend) -> tuple[type, int]:
    """(dtype of the cached ids, vocabulary size): uint16 when the vocabulary fits, else int32."""
    vocab = backend.get_vocab_size(with_added_tokens=True)
    return (np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32), vocab


def commit_entry(tmp: Path, folder: Path, offsets: np.ndarray, info: dict, vocab: int) -> None:
    """Write the offsets and ``info.json`` of a cache entry built in ``tmp`` and rename it into place
    (if another process cached the same corpus meanwhile, theirs is kept)."""
    np.save(tmp / "offsets.npy", offsets)
    info = {"format": FORMAT, "tokens": int(offsets[-1]), "vocab_size": vocab, **info}
    (tmp / "info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False))
    try:
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenize_to(folder: Path, texts: Iterable[str], tokenizer, *, n_docs, n_chars, n_bytes) -> None:
    backend = whole_document_backend(tokenizer)
    dtype, vocab = ids_dtype(backend)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    encode = encode_ids(backend)
    done = 0
    batch: list[str] = []

    def flush(out):
        nonlocal done
        encoded = encode(batch)
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        if len(encoded):
            np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=int(lengths.sum())).tofile(
                out
            )
        offsets[done + 1 : done + 1 + len(batch)] = offsets[done] + np.cumsum(lengths)
        done += len(batch)
        batch.clear()

    try:
        with open(tmp / "ids.bin", "wb") as out:
            for t in texts:
                batch.append(t)
                if len(batch) >= TOKENIZE_DOCS:
                    flush(out)
            if batch:
                flush(out)
        if done != n_docs:
            raise DataError(
                f"the corpus changed while it was read ({n_docs} documents, then {done}); run again"
            )
        commit_entry(
            tmp,
            folder,
            offsets,
            {"documents": n_docs, "characters": n_chars, "bytes": n_bytes, "dtype": np.dtype(dtype).name},
            vocab,
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class BlockFile:
    """Rows of a cached ``.npy`` block file, read with positioned reads (``os.pread``) instead of a
    memory map: a training run touches a few rows per batch, and the pages it read do not pile up
    in its resident memory over an epoch. Indexing with an integer array returns an ndarray."""

    def __init__(self, path: Path):
        header = np.load(path, mmap_mode="r")
        self.shape, self.dtype, self._offset = header.shape, header.dtype, header.offset
        del header
        self.path = path
        self._row_shape = tuple(self.shape[1:])  # () for one value per row (e.g. pair labels)
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = None

    def __len__(self) -> int:
        return self.shape[0]

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # data loader workers open their own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        fd = self._file()
        out = np.empty((len(rows), *self._row_shape), dtype=self.dtype)
        for k, r in enumerate(rows):
            buf = os.pread(fd, self._row_bytes, self._offset + int(r) * self._row_bytes)
            out[k] = np.frombuffer(buf, dtype=self.dtype).reshape(self._row_shape)
        return out

    def __array__(self, dtype=None, copy=None):
        a = self[np.arange(len(self))]
        return a if dtype is None else a.astype(dtype)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"] = None
        return state


def cached_blocks(
    entry: TokenCache,
    docs: np.ndarray,
    block_size: int,
    *,
    sep_id: int,
    cls_id: int | None,
    cache_dir: str | Path | None = None,
) -> BlockFile:
    """:func:`lmvalue.data.packing.pack_blocks` of ``docs``, written to the cache once and read
    row by row: the same blocks, without holding them (or the corpus) in memory."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{FORMAT}:{entry.folder.name}:{block_size}:{sep_id}:{cls_id}".encode())
    h.update(np.ascontiguousarray(docs, dtype=np.int64).tobytes())
    path = cache_root(cache_dir) / "blocks" / f"{h.hexdigest()}.npy"
    if not path.is_file():
        _pack_to(path, entry, docs, block_size, sep_id=sep_id, cls_id=cls_id)
    return BlockFile(path)


def _pack_to(path: Path, entry: TokenCache, docs, block_size: int, *, sep_id: int, cls_id) -> None:
    """Stream the documents' ids from ``ids.bin`` with plain reads (no memory map: the pages read
    would count as resident memory) and append whole blocks to the ``.npy`` file."""
    offsets = entry.offsets
    dtype = entry.ids.dtype
    itemsize = dtype.itemsize
    body = block_size - (1 if cls_id is not None else 0)
    docs = np.asarray(docs, dtype=np.int64)
    lengths = offsets[docs + 1] - offsets[docs] + 1  # each document and its separator
    n_blocks = int(lengths.sum()) // body
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    header = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_blocks, block_size))
    data_offset = header.offset
    del header
    try:
        row = 0
        carry = np.zeros(0, dtype=dtype)
        sep = np.array([sep_id], dtype=dtype)
        with open(entry.folder / "ids.bin", "rb") as src, open(tmp, "r+b") as out:
            out.seek(data_offset)
            for start in range(0, len(docs), CHUNK_DOCS):
                chunk = docs[start : start + CHUNK_DOCS]
                lo, hi = int(offsets[chunk[0]]), int(offsets[chunk[-1] + 1])
                src.seek(lo * itemsize)
                span = np.frombuffer(src.read((hi - lo) * itemsize), dtype=dtype)
                pieces = [carry]
                for d in chunk:
                    pieces.append(span[offsets[d] - lo : offsets[d + 1] - lo])
                    pieces.append(sep)
                stream = np.concatenate(pieces)
                k = min(len(stream) // body, n_blocks - row)
                if k:
                    rows = stream[: k * body].reshape(k, body)
                    if cls_id is not None:
                        rows = np.concatenate([np.full((k, 1), cls_id, dtype=dtype), rows], axis=1)
                    out.write(np.ascontiguousarray(rows).tobytes())
                    row += k
                carry = stream[k * body :]
        if row != n_blocks:
            raise RuntimeError(f"packed {row} blocks instead of {n_blocks}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
