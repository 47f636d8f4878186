"""Token/tag files: CoNLL columns, and word/TAG corpora in the People's Daily style."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmvalue.data.lines import iter_lines
from lmvalue.data.sources.common import LABELED_TABLE_HINT, Item, ReadOptions, join_tokens
from lmvalue.errors import DataError

ASCII_WS = re.compile(r"[ \t\r\n\f\v]+")


def iter_conll(path: Path, opts: ReadOptions) -> Iterator[tuple[int, list[str], list[str]]]:
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
    for lineno, line in iter_lines(path, opts.encoding, opts.errors):
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
            cols = ASCII_WS.split(stripped)
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
            raise DataError(conll_columns_error(path, lineno, stripped, len(cols), first))
        if not tokens:
            start = lineno
        tokens.append(cols[0])
        tags.append(cols[-1])
    if tokens:
        yield start, tokens, tags


def conll_columns_error(path: Path, lineno: int, text: str, n: int, first: tuple[int, int, str]) -> str:
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


def conll_tagging(path: Path, opts: ReadOptions) -> Iterator[dict]:
    for _, tokens, tags in iter_conll(path, opts):
        yield {"tokens": tokens, "tags": tags}


# A People's Daily sentence id such as ``19980101-01-001-001/m`` at the start of a line.
PD_ID_RE = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")
NER_TYPES = {"nr": "PER", "nrf": "PER", "nrg": "PER", "ns": "LOC", "nt": "ORG"}


def split_word_tag(tok: str) -> tuple[str, str] | None:
    word, sep, tag = tok.rpartition("/")
    if not sep or not word or not tag:
        return None
    return word, tag


def is_opening(tok: str) -> bool:
    """``[中央/n`` opens a bracketed compound; ``[/w`` is the word "[" itself."""
    return tok.startswith("[") and len(tok) > 1 and not tok.startswith("[/")


def is_word_tag_token(tok: str) -> bool:
    return split_word_tag(tok[1:] if is_opening(tok) else tok) is not None


def parse_tagged_line(path: Any, lineno: int, line: str) -> list[tuple[str, str, int, str | None]]:
    """Parse ``word/TAG`` tokens with People's Daily brackets.

    Returns ``(word, tag, group, group_tag)``: ``group`` numbers bracketed compounds
    (``[中央/n  人民/n  广播/vn  电台/n]nt``, -1 outside brackets) and ``group_tag`` is the tag
    after the closing bracket. A leading sentence id such as ``19980101-01-001-001/m`` is dropped.
    """
    toks = line.split()
    if toks and PD_ID_RE.match(toks[0]):
        toks = toks[1:]
    out: list[tuple[str, str, int, str | None]] = []
    open_start: int | None = None
    group = 0
    for tok in toks:
        opening = is_opening(tok)
        if opening:
            tok = tok[1:]
        pair = split_word_tag(tok)
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


def looks_word_tag(path: Path, opts: ReadOptions) -> bool:
    for _, line in iter_lines(path, opts.encoding, opts.errors):
        toks = line.split()
        if not toks or toks[0] == "-DOCSTART-":
            continue
        return all(is_word_tag_token(t) for t in toks)
    return False


def ner_bio(parsed: list[tuple[str, str, int, str | None]]) -> tuple[list[str], list[str]]:
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
        if group >= 0 and gtag in NER_TYPES:
            j = i
            while j < n and parsed[j][2] == group:
                j += 1
            spans.append(("".join(w for w, *_ in parsed[i:j]), NER_TYPES[gtag]))
            i = j
            continue
        etype = NER_TYPES.get(tag)
        if etype == "PER":
            j = i + 1
            while (
                j < n
                and NER_TYPES.get(parsed[j][1]) == "PER"
                and not (parsed[j][2] >= 0 and parsed[j][3] in NER_TYPES)
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


def read_people_daily(path: Path, opts: ReadOptions) -> Iterator[tuple[int, list[str], list[str], list]]:
    """Yield ``(line_number, words, tags, parsed)`` for each non-empty line of a word/TAG corpus."""
    seen_pairs = False
    for lineno, line in iter_lines(path, opts.encoding, opts.errors):
        if not line.strip():
            continue
        if not seen_pairs and not all(is_word_tag_token(t) for t in line.split()):
            raise DataError(
                f"{path} has no word/TAG pairs (line {lineno} is {line.strip()[:40]!r}); a tagged corpus "
                "needs tokens like 中国/ns separated by whitespace, e.g. demo:zh-news"
            )
        seen_pairs = True
        parsed = parse_tagged_line(path, lineno, line)
        if not parsed:
            continue
        yield lineno, [w for w, *_ in parsed], [t for _, t, *_ in parsed], parsed


# --- the reader of CoNLL files -------------------------------------------------------------------------


def read_texts(item: Item, opts: ReadOptions) -> Iterator[str]:
    return (join_tokens(toks) for _, toks, _ in iter_conll(item.path, opts))


def read_classification(item: Item, opts: ReadOptions) -> Iterator[dict]:
    raise DataError(
        f"{item.path} is a token/tag (CoNLL) file; load it with task='tagging', or use "
        f"{LABELED_TABLE_HINT} for classification"
    )


def read_tagging(item: Item, opts: ReadOptions) -> Iterator[dict]:
    return conll_tagging(item.path, opts)
