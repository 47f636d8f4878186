"""Plain text files: one document per line, or per paragraph."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lmvalue.data.lines import iter_lines
from lmvalue.data.sources.common import LABELED_TABLE_HINT, Item, ReadOptions
from lmvalue.data.sources.conll import conll_tagging, looks_word_tag, read_people_daily
from lmvalue.errors import DataError


def txt_texts(path: Path, opts: ReadOptions) -> Iterator[str]:
    if not opts.paragraphs:
        for _, line in iter_lines(path, opts.encoding, opts.errors):
            line = line.rstrip()
            if line.strip():
                yield line
        return
    para: list[str] = []
    for _, line in iter_lines(path, opts.encoding, opts.errors):
        line = line.rstrip()
        if line.strip():
            para.append(line)
        elif para:
            yield "\n".join(para)
            para = []
    if para:
        yield "\n".join(para)


# --- the reader of .txt files ------------------------------------------------------------------------


def read_texts(item: Item, opts: ReadOptions) -> Iterator[str]:
    return txt_texts(item.path, opts)


def read_classification(item: Item, opts: ReadOptions) -> Iterator[dict]:
    raise DataError(
        f"{item.path} is a plain text file (one document per line) and has no labels; for "
        f"classification use {LABELED_TABLE_HINT} with a {opts.text_column!r} and a "
        f"{opts.label_column!r} column"
    )


def read_tagging(item: Item, opts: ReadOptions) -> Iterator[dict]:
    """Word/TAG lines (People's Daily style) or CoNLL token/tag lines, whichever the file holds."""
    if looks_word_tag(item.path, opts):
        return ({"tokens": words, "tags": tags} for _, words, tags, _ in read_people_daily(item.path, opts))
    return conll_tagging(item.path, opts)
