"""Label budgets: a fixed test split, a seeded stratified draw, and a dev split carved from it.

The order of operations is what keeps the comparison honest:

1. :func:`dedupe` drops repeated inputs (``demo:zh-reviews`` holds most reviews two or three
   times; without this, half of a random test split is also in the training pool);
2. :func:`carve_test` sets aside a test split with its *own* fixed seed, so every budget and
   every training seed is scored on the same examples (skipped when a test file is given);
3. :func:`draw_budget` draws ``train_size`` examples (or ``per_class`` per class) from the rest,
   stratified by label with exact per-class counts;
4. :func:`split_dev` carves the dev split (model selection, early stopping) out of the budget.

Every draw is a pure function of its seed. Per class, examples are taken in the order of one
seeded permutation, so with the same seed a smaller budget is a subset of a larger one (learning
curves compare nested label sets).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np

from lmvalue.errors import DataError, setting

# Separate streams of randomness for the separate draws (numpy SeedSequence keys).
_TEST, _BUDGET, _DEV = 11, 22, 33


def input_key(example: dict) -> tuple:
    """What makes two examples "the same input": the text (and pair), or the token sequence."""
    if "tokens" in example:
        return tuple(example["tokens"])
    return (example["text"], example.get("text_pair"))


def stratum(example: dict) -> str | None:
    """The label stratified on: the class for classification, none for tagging."""
    return example.get("label")


def dedupe(examples: list[dict]) -> tuple[list[dict], dict]:
    """Keep the first example of every input.

    Returns:
        (examples, info) with info ``{"dropped": n, "conflicting": m}``: m inputs appeared with
        different labels (the first label is kept).
    """
    first: dict[tuple, dict] = {}
    conflicting = set()
    for ex in examples:
        key = input_key(ex)
        kept = first.setdefault(key, ex)
        if kept is not ex and _labels(kept) != _labels(ex):
            conflicting.add(key)
    kept = list(first.values())
    return kept, {"dropped": len(examples) - len(kept), "conflicting": len(conflicting)}


def _labels(ex: dict):
    return tuple(ex["tags"]) if "tags" in ex else ex.get("label")


def _allocate(total: int, sizes: dict, *, at_least_one: bool) -> dict:
    """Split ``total`` over strata in proportion to ``sizes``, exactly (largest remainder).

    With ``at_least_one`` a stratum that would get none takes one from the largest allocation
    (when ``total`` allows), so that a small budget still sees every class.
    """
    keys = sorted(sizes, key=str)
    n = sum(sizes.values())
    if n == 0:
        return dict.fromkeys(keys, 0)
    shares = {k: total * sizes[k] / n for k in keys}
    alloc = {k: min(sizes[k], math.floor(shares[k])) for k in keys}
    # Hand out what rounding down left, largest remainder first (ties: larger stratum, then name).
    order = sorted(keys, key=lambda k: (-(shares[k] - math.floor(shares[k])), -sizes[k], str(k)))
    left = total - sum(alloc.values())
    while left > 0 and any(alloc[k] < sizes[k] for k in keys):
        for k in order:
            if left and alloc[k] < sizes[k]:
                alloc[k] += 1
                left -= 1
    if at_least_one and total >= len(keys):
        for k in keys:
            if alloc[k] == 0 and sizes[k] > 0:
                donor = max(keys, key=lambda j: (alloc[j], str(j)))
                alloc[donor] -= 1
                alloc[k] = 1
    return alloc


def _by_stratum(examples: list[dict], key: Callable) -> dict:
    groups: dict = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[key(ex)].append(i)
    return groups


def _take(examples: list[dict], counts: dict, groups: dict, rng: np.random.Generator) -> tuple[list, list]:
    """Per stratum, the first ``counts[s]`` indices of one seeded permutation; (taken, rest)."""
    taken, rest = [], []
    for s in sorted(groups, key=str):
        idx = np.asarray(groups[s])
        order = idx[rng.permutation(len(idx))]
        taken.extend(order[: counts.get(s, 0)].tolist())
        rest.extend(order[counts.get(s, 0) :].tolist())
    return [examples[i] for i in sorted(taken)], [examples[i] for i in sorted(rest)]


def carve_test(examples: list[dict], size: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Set aside a test split (stratified; ``size`` examples, or a share when < 1).

    Returns:
        (pool, test)

    Raises:
        DataError: the test split would leave fewer than two examples to learn from.
    """
    n = len(examples)
    k = round(size * n) if size < 1 else int(size)
    if k < 1 or k > n - 2:
        raise DataError(
            f"cannot carve a test split of {k} examples out of {n}: leave at least 2 for training. "
            f"Lower {setting('data.test_size')} or give a separate test file ({setting('data.test')})"
        )
    groups = _by_stratum(examples, stratum)
    counts = _allocate(k, {s: len(v) for s, v in groups.items()}, at_least_one=False)
    test, pool = _take(examples, counts, groups, np.random.default_rng([seed, _TEST]))
    return pool, test


def draw_budget(
    pool: list[dict],
    *,
    train_size: int | None,
    per_class: int | None,
    seed: int,
    strict: bool = False,
) -> tuple[list[dict], dict]:
    """Draw the labeled budget (train + dev) from ``pool``, stratified with exact per-class counts.

    ``per_class`` K: K examples of every class. ``train_size`` N: N examples, split over the classes
    in proportion to the pool (each class gets at least one when N allows). Neither: the whole pool.

    Returns:
        (budget, info) with the per-class counts drawn and any shortfall (``info["shortfall"]``, a
        sentence: nothing is logged here, the caller reports it with its other warnings).

    Raises:
        DataError: ``per_class`` with tagging data, or (``strict``) a budget larger than the data.
    """
    groups = _by_stratum(pool, stratum)
    sizes = {s: len(v) for s, v in groups.items()}
    info: dict = {"requested": train_size if per_class is None else {"per_class": per_class}}
    if per_class is not None:
        if None in groups:
            raise DataError(
                "budget.per_class needs one label per example; tagging examples have a tag per token. "
                "Use budget.train_size (sentences) instead"
            )
        short = {s: n for s, n in sizes.items() if n < per_class}
        if short:
            msg = f"budget.per_class={per_class} is more than the data has for " + ", ".join(
                f"{s!r} ({n})" for s, n in sorted(short.items())
            )
            if strict:
                raise DataError(
                    msg + f"; lower {setting('budget.per_class')}, or drop --strict to use all of them"
                )
            info["shortfall"] = msg  # the caller says it, once (lmvalue.finetuning.load_task_data)
        counts = {s: min(n, per_class) for s, n in sizes.items()}
    elif train_size is not None:
        if train_size > len(pool):
            msg = f"budget.train_size={train_size} is more than the {len(pool)} labeled examples available"
            if strict:
                raise DataError(
                    msg + f"; lower {setting('budget.train_size')}, or drop --strict to use all of them"
                )
            info["shortfall"] = msg
        counts = _allocate(min(train_size, len(pool)), sizes, at_least_one=None not in groups)
    else:
        counts = dict(sizes)
    budget, _ = _take(pool, counts, groups, np.random.default_rng([seed, _BUDGET]))
    info["drawn"] = len(budget)
    if None not in groups:
        info["per_class"] = {str(s): c for s, c in sorted(counts.items(), key=lambda x: str(x[0]))}
    return budget, info


def split_dev(budget: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Carve a stratified dev split out of the budget: round(n_c × fraction) per class, at least one
    (and at least one left for training) for every class with two or more examples.

    Returns:
        (train, dev); dev is empty when ``fraction`` is 0.
    """
    if fraction <= 0:
        return list(budget), []
    groups = _by_stratum(budget, stratum)
    counts = {}
    for s, idx in groups.items():
        n = len(idx)
        counts[s] = 0 if n < 2 else min(max(1, round(n * fraction)), n - 1)
    dev, train = _take(budget, counts, groups, np.random.default_rng([seed, _DEV]))
    return train, dev


def label_counts(examples: list[dict]) -> Counter:
    return Counter(label for ex in examples for label in (ex["tags"] if "tags" in ex else [ex["label"]]))
