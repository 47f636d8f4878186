"""A real domain shift, end to end: drift detection and `lmvalue refresh` (docs/refresh.md).

    python benchmarks/study_refresh.py [--data ../shared/data/online_shopping_10_cats/online_shopping_10_cats.csv]
        [--pretrain-steps 2000] [--refresh-steps 1000] [--out runs/study-refresh]

online_shopping_10_cats (Chinese product reviews, pos/neg, 10 categories) is split by category:
the **old domain** is books, tablets, phones, computers, water heaters and hotels; the **new domain**
fruit, shampoo, milk (蒙牛) and clothes. Each document is in one file only:

- old corpus (unlabeled), 2,000 labeled old reviews (the fine-tuning pool), 1,000 old test reviews,
  1,000 more old reviews as "new text of the same kind" for the no-drift check;
- new corpus (unlabeled), 100 new labeled reviews, 1,000 new test reviews.

Then, with the CLI only: pretrain a `tiny` BERT on the old corpus; fine-tune it on 300 old labels with a
learning-rate search (the deployed model); `lmvalue drift` on old held-out text and on the new corpus; `lmvalue refresh` without
and with the 100 new labels. Every command's output is kept under ``--out``; the figures are printed.
"""

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

OLD = ("书籍", "平板", "手机", "计算机", "热水器", "酒店")
NEW = ("水果", "洗发水", "蒙牛", "衣服")


def split(csv_path: Path, out: Path) -> dict:
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.DictReader(f) if (r.get("review") or "").strip()]
    seen, uniq = set(), []
    for r in rows:
        text = " ".join(r["review"].split())
        if text not in seen:
            seen.add(text)
            uniq.append({"text": text, "label": "pos" if r["label"] == "1" else "neg", "cat": r["cat"]})
    random.Random(0).shuffle(uniq)
    old = [r for r in uniq if r["cat"] in OLD]
    new = [r for r in uniq if r["cat"] in NEW]
    out.mkdir(parents=True, exist_ok=True)

    def jsonl(name, part):
        (out / name).write_text(
            "".join(
                json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n" for r in part
            ),
            encoding="utf-8",
        )
        return str(out / name)

    def text(name, part):
        (out / name).write_text("".join(r["text"] + "\n" for r in part), encoding="utf-8")
        return str(out / name)

    files = {
        "old_labeled": jsonl("old_labeled.jsonl", old[:2000]),
        "old_test": jsonl("old_test.jsonl", old[2000:3000]),
        "old_more": text("old_more.txt", old[3000:4000]),
        "old_corpus": text("old_corpus.txt", old[4000:]),
        "new_labels": jsonl("new_labels.jsonl", new[:100]),
        "new_test": jsonl("new_test.jsonl", new[100:1100]),
        "new_corpus": text("new_corpus.txt", new[1100:]),
    }
    print(
        f"old domain: {len(old)} reviews, corpus {len(old) - 4000}; new domain: {len(new)}, corpus {len(new) - 1100}"
    )
    return files


def lmvalue(*args: str, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "lmvalue.cli", *args], stdout=fh, stderr=subprocess.STDOUT
        )
    if proc.returncode:
        sys.exit(f"lmvalue {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", default="../shared/data/online_shopping_10_cats/online_shopping_10_cats.csv", type=Path
    )
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--refresh-steps", type=int, default=1000)
    p.add_argument("--out", default="runs/study-refresh", type=Path)
    a = p.parse_args()
    out = a.out
    f = split(a.data, out / "data")
    t = {}
    t["pretrain"] = lmvalue(
        "pretrain", "--data", f["old_corpus"], "--preset", "tiny", "--max-steps", str(a.pretrain_steps),
        "-o", str(out / "pt"), "--overwrite", "train.progress=false", log=out / "pretrain.log",
    )  # fmt: skip
    t["finetune"] = lmvalue(
        "finetune", "--data", f["old_labeled"], "--test", f["old_test"], "--init-from", str(out / "pt" / "model"),
        "budget.train_size=300", "train.lr_search=[3e-4,1e-3]", "-o", str(out / "deployed"), "--overwrite", "train.progress=false",
        log=out / "finetune.log",
    )  # fmt: skip
    for name, new in (("same", f["old_more"]), ("shifted", f["new_corpus"])):
        t[f"drift_{name}"] = lmvalue(
            "drift", "--model", str(out / "pt"), "--new", new, "-o", str(out / f"drift-{name}"),
            log=out / f"drift-{name}.log",
        )  # fmt: skip
    for name, extra in (("unlabeled", []), ("new-labels", ["--new-labels", f["new_labels"]])):
        t[f"refresh_{name}"] = lmvalue(
            "refresh", "--model", str(out / "deployed"), "--new", f["new_corpus"], "--new-test", f["new_test"],
            "--steps", str(a.refresh_steps), "-o", str(out / f"refresh-{name}"), "--overwrite", *extra,
            "--pretrain", "train.progress=false", log=out / f"refresh-{name}.log",
        )  # fmt: skip
    deployed = json.loads((out / "deployed" / "metrics.json").read_text(encoding="utf-8"))
    print(f"deployed model: {deployed['metric']} {deployed['test_score']:.4f} on the old test split")
    for name in ("same", "shifted"):
        d = json.loads((out / f"drift-{name}" / "drift.json").read_text(encoding="utf-8"))
        print(f"drift on {name} text: {d['verdict'].splitlines()[0]}")
    for name in ("unlabeled", "new-labels"):
        r = json.loads((out / f"refresh-{name}" / "refresh.json").read_text(encoding="utf-8"))
        print(f"refresh ({name}): {r['verdict'].splitlines()[0]}")
        for key in ("original_test", "new_domain"):
            c = r[key]
            print(
                f"  {key}: {c['old']:.2f} -> {c['new']:.2f} ({c['difference']:+.2f}, {c['low']:+.2f} to {c['high']:+.2f})"
            )
        print(f"  compute: {r['compute']}")
    print("wall seconds:", {k: round(v, 1) for k, v in t.items()})


if __name__ == "__main__":
    main()
