"""The label-only baselines at small budgets: test accuracy of each method at 32 and 100 labels, 5 seeds,
on demo:zh-reviews and (with ../shared/data) chnsenticorp_htl, each scored on 1,000 held-out examples.

    python benchmarks/bench_baselines.py tfidf nbsvm

The figures in docs/value-recipes.md ("Honest baselines") come from this script.
"""

import logging
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

from lmvalue.config import FinetuneConfig, build_config
from lmvalue.data.sources import load_labeled
from lmvalue.finetuning import finetune

SHARED = next(
    (
        p
        for p in (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data"))
        if p.is_dir()
    ),
    Path("../shared/data"),
)


def cell(pool, test, method, budget, seed):
    with tempfile.TemporaryDirectory() as d:
        over = {
            "method.name": method,
            "budget.train_size": budget,
            "budget.seed": seed,
            "train.seed": seed,
            "train.output_dir": f"{d}/r",
            "train.save_model": False,
            "train.progress": False,
        }
        m = finetune(build_config(FinetuneConfig, overrides=over), train_examples=pool, test_examples=test)
    return m["test"]["accuracy"], m["test"].get("predicted_classes")


def tasks():
    rows = load_labeled("demo:zh-reviews")
    random.Random(0).shuffle(rows)
    yield "demo:zh-reviews", rows[1000:], rows[:1000]
    htl = SHARED / "chnsenticorp_htl" / "ChnSentiCorp_htl_all.csv"
    if htl.is_file():
        rows = load_labeled(str(htl), text_column="review")
        random.Random(0).shuffle(rows)
        yield "chnsenticorp_htl", rows[1000:], rows[:1000]


def main(methods):
    logging.disable(logging.WARNING)
    for name, pool, test in tasks():
        for method in methods:
            for budget in (32, 100):
                cells = [cell(pool, test, method, budget, seed) for seed in range(5)]
                accs = [100 * a for a, _ in cells]
                one = sum(1 for _, k in cells if k == 1)
                print(
                    f"{name:18s} {method:10s} @{budget:4d}: {np.mean(accs):.1f} ± {np.std(accs, ddof=1):.1f}  "
                    f"per seed {[round(a, 1) for a in accs]}  one-class {one}/5",
                    flush=True,
                )


if __name__ == "__main__":
    main(sys.argv[1:] or ["tfidf", "nbsvm"])
