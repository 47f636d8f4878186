"""Label budgets: exact stratified counts, determinism per seed, nesting, dev and test carving."""

import logging
from collections import Counter

import pytest

from lmvalue.data.budget import carve_test, dedupe, draw_budget, input_key, split_dev
from lmvalue.errors import DataError


def pool(n_per_class=None):
    n_per_class = n_per_class or {"a": 300, "b": 120, "c": 30}
    return [{"text": f"{label}-{i}", "label": label} for label, n in n_per_class.items() for i in range(n)]


def counts(examples):
    return Counter(ex["label"] for ex in examples)


def keys(examples):
    return {input_key(ex) for ex in examples}


def test_per_class_gives_exact_counts_and_is_deterministic_per_seed():
    data = pool()
    a, info = draw_budget(data, train_size=None, per_class=16, seed=3)
    assert counts(a) == {"a": 16, "b": 16, "c": 16} and info["per_class"] == {"a": 16, "b": 16, "c": 16}
    again, _ = draw_budget(data, train_size=None, per_class=16, seed=3)
    other, _ = draw_budget(data, train_size=None, per_class=16, seed=4)
    assert a == again
    assert keys(a) != keys(other)


def test_train_size_is_exact_and_proportional_and_keeps_every_class():
    data = pool()
    budget, info = draw_budget(data, train_size=100, per_class=None, seed=0)
    assert len(budget) == 100
    assert counts(budget) == {"a": 67, "b": 27, "c": 6}  # 300:120:30 of 100, largest remainder
    tiny, _ = draw_budget(data, train_size=3, per_class=None, seed=0)
    assert counts(tiny) == {"a": 1, "b": 1, "c": 1}  # the rare class is not lost


def test_smaller_budgets_are_subsets_of_larger_ones_for_the_same_seed():
    data = pool()
    small, _ = draw_budget(data, train_size=50, per_class=None, seed=7)
    large, _ = draw_budget(data, train_size=200, per_class=None, seed=7)
    assert keys(small) <= keys(large)


def test_dev_is_carved_from_the_budget_stratified():
    budget, _ = draw_budget(pool(), train_size=None, per_class=10, seed=0)
    train, dev = split_dev(budget, 0.2, seed=0)
    assert counts(dev) == {"a": 2, "b": 2, "c": 2} and counts(train) == {"a": 8, "b": 8, "c": 8}
    assert keys(train) | keys(dev) == keys(budget) and not keys(train) & keys(dev)
    two, _ = draw_budget(pool(), train_size=None, per_class=2, seed=0)
    train, dev = split_dev(two, 0.2, seed=0)  # every class keeps one to train on and one to select with
    assert counts(dev) == {"a": 1, "b": 1, "c": 1} == counts(train)
    assert split_dev(two, 0.0, seed=0) == (two, [])


def test_test_split_is_fixed_and_independent_of_the_budget():
    data = pool()
    rest, test = carve_test(data, 45, seed=0)
    assert len(test) == 45 and counts(test) == {"a": 30, "b": 12, "c": 3}
    assert not keys(rest) & keys(test) and len(rest) + len(test) == len(data)
    assert carve_test(data, 45, seed=0) == (rest, test)
    share, _ = carve_test(data, 0.1, seed=0)
    assert len(share) == len(data) - 45
    with pytest.raises(DataError, match="leave at least 2"):
        carve_test(data, len(data), seed=0)


def test_budget_larger_than_the_data_uses_all_or_refuses_when_strict(caplog):
    data = pool({"a": 10, "b": 4})
    with caplog.at_level(logging.WARNING, logger="lmvalue"):
        budget, info = draw_budget(data, train_size=None, per_class=5, seed=0)
    assert counts(budget) == {"a": 5, "b": 4}
    # the shortfall is returned, not logged: the caller says it once (see test_finetune)
    assert "'b' (4)" in info["shortfall"] and caplog.text == ""
    with pytest.raises(DataError, match=r"budget.per_class=5 is more than the data has for 'b' \(4\)"):
        draw_budget(data, train_size=None, per_class=5, seed=0, strict=True)
    everything, info = draw_budget(data, train_size=100, per_class=None, seed=0)
    assert len(everything) == 14 and "100" in info["shortfall"]
    with pytest.raises(DataError, match="more than the 14 labeled examples"):
        draw_budget(data, train_size=100, per_class=None, seed=0, strict=True)


def test_tagging_budgets_count_sentences():
    sentences = [{"tokens": [str(i)], "tags": ["O"]} for i in range(50)]
    budget, _ = draw_budget(sentences, train_size=20, per_class=None, seed=0)
    assert len(budget) == 20
    with pytest.raises(DataError, match="per_class needs one label per example"):
        draw_budget(sentences, train_size=None, per_class=3, seed=0)


def test_dedupe_keeps_the_first_of_every_input():
    data = [
        {"text": "x", "label": "a"},
        {"text": "y", "label": "a"},
        {"text": "x", "label": "a"},
        {"text": "y", "label": "b"},
    ]
    kept, info = dedupe(data)
    assert kept == data[:2] and info == {"dropped": 2, "conflicting": 1}
