"""Reading data: unlabeled corpora, labeled examples and the built-in demo sources."""

from lmvalue.data.sources import DEMO_SOURCES, iter_texts, load_labeled, load_tagged_texts, load_texts

__all__ = ["DEMO_SOURCES", "iter_texts", "load_labeled", "load_tagged_texts", "load_texts"]
