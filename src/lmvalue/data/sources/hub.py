"""Datasets on the Hugging Face hub (``hf:NAME[:CONFIG][:SPLIT]``; needs network or a local cache)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lmvalue.data.sources.common import Item, ReadOptions, cell_text
from lmvalue.data.sources.tables import classification_example, column_error, seq_field, tagging_example
from lmvalue.errors import DataError


def hf_load(item: Item, streaming: bool) -> Any:
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


def hf_iter(item: Item, ds: Iterable[dict]) -> Iterator[dict]:
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


def hf_texts(item: Item, opts: ReadOptions) -> Iterator[str]:
    ds = hf_load(item, streaming=True)
    col = opts.text_column
    for n, row in enumerate(hf_iter(item, ds)):
        if col not in row:
            raise column_error(item.spec, "", col, list(row), "text_column")
        text = cell_text(item.spec, f" row {n}", col, row[col])
        if text is not None:
            text = text.rstrip()
            if text.strip():
                yield text


def class_label_int2str(feature: Any) -> Callable | None:
    """``int2str`` of a ClassLabel feature (or of the ClassLabel inside a list feature)."""
    if isinstance(feature, (list, tuple)) and feature:
        feature = feature[0]
    inner = getattr(feature, "feature", None)
    if inner is not None and not hasattr(feature, "int2str"):
        feature = inner
    int2str = getattr(feature, "int2str", None)
    return int2str if callable(int2str) and getattr(feature, "names", None) else None


def hf_classification(item: Item, opts: ReadOptions) -> Iterator[dict]:
    ds = hf_load(item, streaming=False)
    columns = list(ds.column_names)
    required = [(opts.text_column, "text_column"), (opts.label_column, "label_column")]
    if opts.text_pair_column:
        required.append((opts.text_pair_column, "text_pair_column"))
    for col, option in required:
        if col not in columns:
            raise column_error(item.spec, "", col, columns, option)
    features = getattr(ds, "features", None) or {}
    int2str = class_label_int2str(features.get(opts.label_column))
    for n, row in enumerate(hf_iter(item, ds)):
        label = row.get(opts.label_column)
        if int2str is not None and isinstance(label, int) and not isinstance(label, bool):
            if label < 0:  # unlabeled rows (e.g. GLUE test splits use -1)
                raise DataError(
                    f"{item.spec} row {n}: label {label} means 'no label' (test splits are often unlabeled); "
                    "use a labeled split such as hf:NAME:train or hf:NAME:validation"
                )
            row = {**row, opts.label_column: int2str(label)}
        yield from classification_example(item.spec, f" row {n}", row, opts)


def hf_tagging(item: Item, opts: ReadOptions) -> Iterator[dict]:
    ds = hf_load(item, streaming=False)
    columns = list(ds.column_names)
    probe = dict.fromkeys(columns)
    tok_opt = opts.text_column if opts.text_column != "text" else "tokens"
    tag_opt = opts.label_column if opts.label_column != "label" else "tags"
    tok_field = seq_field(probe, tok_opt, "tokens", ("words",))
    tag_field = seq_field(probe, tag_opt, "tags", ("ner_tags", "pos_tags", "labels"))
    if tok_field is None:
        raise column_error(item.spec, "", tok_opt, columns, "text_column")
    if tag_field is None:
        raise column_error(item.spec, "", tag_opt, columns, "label_column")
    features = getattr(ds, "features", None) or {}
    int2str = class_label_int2str(features.get(tag_field))
    for n, row in enumerate(hf_iter(item, ds)):
        ex = tagging_example(
            item.spec, f" row {n}", tok_field, tag_field, row[tok_field], row[tag_field], int2str
        )
        if ex is not None:
            yield ex


# --- the reader of hf: sources ---------------------------------------------------------------------


def read_texts(item: Item, opts: ReadOptions) -> Iterator[str]:
    return hf_texts(item, opts)


def read_classification(item: Item, opts: ReadOptions) -> Iterator[dict]:
    return hf_classification(item, opts)


def read_tagging(item: Item, opts: ReadOptions) -> Iterator[dict]:
    return hf_tagging(item, opts)
