"""Tables: csv / tsv / jsonl / json / parquet files, read record by record as ``(location, record)``."""

from __future__ import annotations

import csv
import difflib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmvalue.data.lines import iter_lines
from lmvalue.data.sources.common import Item, ReadOptions, cell_text, label_str
from lmvalue.errors import DataError, with_option


def column_error(
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


def iter_records(
    path: Path, fmt: str, required: list[tuple[str, str]], opts: ReadOptions
) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, record)`` for each row of a table file.

    ``required`` lists ``(column, option_name)`` pairs that must exist; csv/tsv/parquet check the
    header up front, JSON records are checked one by one.
    """
    if fmt in ("csv", "tsv"):
        yield from iter_csv(path, fmt, required, opts)
    elif fmt == "jsonl":
        yield from iter_jsonl(path, required, opts)
    elif fmt == "json":
        yield from iter_json(path, required, opts)
    elif fmt == "parquet":
        yield from iter_parquet(path, required)
    else:  # pragma: no cover - callers dispatch only table formats here
        raise AssertionError(fmt)


def raise_field_size_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            if csv.field_size_limit() < limit:
                csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def iter_csv(
    path: Path, fmt: str, required: list[tuple[str, str]], opts: ReadOptions
) -> Iterator[tuple[str, dict]]:
    raise_field_size_limit()
    lines = (line for _, line in iter_lines(path, opts.encoding, opts.errors, keepends=True))
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
                raise column_error(path, " (header line 1)", col, header, option)
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


def check_record(path: Path, where: str, rec: Any, required: list[tuple[str, str]]) -> dict:
    if not isinstance(rec, dict):
        raise DataError(
            f'{path}{where}: expected a JSON object like {{"text": ...}}, got {type(rec).__name__}; '
            "each record must be an object with named fields"
        )
    for col, option in required:
        if col not in rec:
            raise column_error(path, where, col, list(rec), option, what="field")
    return rec


def iter_jsonl(path: Path, required: list[tuple[str, str]], opts: ReadOptions) -> Iterator[tuple[str, dict]]:
    for lineno, line in iter_lines(path, opts.encoding, opts.errors):
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
        yield where, check_record(path, where, rec, required)


def iter_json(path: Path, required: list[tuple[str, str]], opts: ReadOptions) -> Iterator[tuple[str, dict]]:
    """A ``.json`` file: a top-level list of objects (parsed incrementally) or JSON Lines."""
    lines = iter_lines(path, opts.encoding, opts.errors, keepends=True)
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
            for lineno, line in prepend(first, lines):
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
                yield where, check_record(path, where, rec, required)
            return
        yield from iter_json_array(path, first, lines, required)
    finally:
        lines.close()


def prepend(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


def iter_json_array(
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
        yield loc, check_record(path, loc, rec, required)
        index += 1
        pos = end
        expect_value = False
        if pos > 1 << 20:  # keep the buffer small
            start_line += buf.count("\n", 0, pos)
            buf = buf[pos:]
            pos = 0


def iter_parquet(path: Path, required: list[tuple[str, str]]) -> Iterator[tuple[str, dict]]:
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
            raise column_error(path, "", col, names, option)
    columns = [c for c, _ in required]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            for rec in batch.to_pylist():
                yield f" row {row}", rec
                row += 1
    except OSError as e:
        raise DataError(f"cannot read {path} near row {row}: {e}; the Parquet file may be damaged") from None


def table_texts(path: Path, fmt: str, opts: ReadOptions) -> Iterator[str]:
    col = opts.text_column
    for where, rec in iter_records(path, fmt, [(col, "text_column")], opts):
        text = cell_text(path, where, col, rec.get(col))
        if text is not None:
            text = text.rstrip()
            if text.strip():
                yield text


def table_classification(path: Path, fmt: str, opts: ReadOptions) -> Iterator[dict]:
    required = [(opts.text_column, "text_column"), (opts.label_column, "label_column")]
    if opts.text_pair_column:
        required.append((opts.text_pair_column, "text_pair_column"))
    for where, rec in iter_records(path, fmt, required, opts):
        yield from classification_example(path, where, rec, opts)


def classification_example(path: Any, where: str, rec: dict, opts: ReadOptions) -> Iterator[dict]:
    text = cell_text(path, where, opts.text_column, rec.get(opts.text_column))
    if text is None or not text.strip():
        return
    label = label_str(rec.get(opts.label_column))
    if label is None:
        raise DataError(
            f"{path}{where}: empty label in column {opts.label_column!r}; every example needs a label "
            "(remove the row, or set label_column"
            + with_option("data.label_column", "COLUMN")
            + " to the right column)"
        )
    ex = {"text": text.rstrip()}
    if opts.text_pair_column:
        pair = cell_text(path, where, opts.text_pair_column, rec.get(opts.text_pair_column))
        ex["text_pair"] = (pair or "").rstrip()
    ex["label"] = label
    yield ex


def seq_field(rec: dict, preferred: str, default: str, fallbacks: tuple[str, ...]) -> str | None:
    if preferred != default:
        return preferred if preferred in rec else None
    for name in (default, *fallbacks):
        if name in rec:
            return name
    return None


def as_seq(path: Any, where: str, field: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise DataError(f"{path}{where}: field {field!r} must be a list of strings, got {type(value).__name__}")


def records_tagging(path: Path, fmt: str, opts: ReadOptions) -> Iterator[dict]:
    tok_opt = opts.text_column if opts.text_column != "text" else "tokens"
    tag_opt = opts.label_column if opts.label_column != "label" else "tags"
    for where, rec in iter_records(path, fmt, [], opts):
        if not isinstance(rec, dict):  # pragma: no cover - checked by the readers
            continue
        tok_field = seq_field(rec, tok_opt, "tokens", ("words",))
        tag_field = seq_field(rec, tag_opt, "tags", ("ner_tags", "pos_tags", "labels"))
        if tok_field is None:
            raise column_error(path, where, tok_opt, list(rec), "text_column", what="field")
        if tag_field is None:
            raise column_error(path, where, tag_opt, list(rec), "label_column", what="field")
        ex = tagging_example(path, where, tok_field, tag_field, rec[tok_field], rec[tag_field])
        if ex is not None:
            yield ex


def tagging_example(
    path: Any,
    where: str,
    tok_field: str,
    tag_field: str,
    tokens: Any,
    tags: Any,
    int2str: Callable | None = None,
) -> dict | None:
    tokens = as_seq(path, where, tok_field, tokens)
    if int2str is not None:
        tags = [int2str(t) if isinstance(t, int) else str(t) for t in tags]
    tags = as_seq(path, where, tag_field, tags)
    if len(tokens) != len(tags):
        raise DataError(
            f"{path}{where}: mismatched token/label count: {len(tokens)} {tok_field} but {len(tags)} "
            f"{tag_field}; every token needs exactly one tag"
        )
    if not tokens:
        return None
    return {"tokens": tokens, "tags": tags}


# --- the reader of .csv / .tsv / .jsonl / .json / .parquet files ----------------------------------------


def read_texts(item: Item, opts: ReadOptions) -> Iterator[str]:
    return table_texts(item.path, item.fmt, opts)


def read_classification(item: Item, opts: ReadOptions) -> Iterator[dict]:
    return table_classification(item.path, item.fmt, opts)


def read_tagging(item: Item, opts: ReadOptions) -> Iterator[dict]:
    if item.fmt in ("jsonl", "json", "parquet"):
        return records_tagging(item.path, item.fmt, opts)
    raise DataError(
        f"{item.path}: a .{item.fmt} file cannot hold tagging data; use a CoNLL file (one 'token tag' per "
        "line, blank lines between sentences) or JSON Lines with 'tokens' and 'tags' lists"
    )
