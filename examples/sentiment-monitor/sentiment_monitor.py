"""A per-category negative-review monitor, built with lmvalue on online_shopping_10_cats
(examples/sentiment-monitor/README.md).

1. Models from few labels, both with ``lmvalue.finetune``: a sentiment model on ``--sentiment-labels``
   labels (TF-IDF by default; ``--sentiment pretrained``: a tiny BERT pretrained with masked LM on the
   unlabeled training-pool reviews, then fine-tuned) and a category model (TF-IDF on ``--category-labels``
   labels per category). A review counts for its predicted category when the category model's
   probability reaches the lowest threshold with ``--category-precision`` on that model's dev split.
2. A simulated stream: the data has no timestamps, so the held-out reviews in a seeded random order
   stand in for arrivals, cut into windows of ``--window`` reviews. Every window is read with the
   *predicted* sentiment and category, as a deployed monitor would.
3. Per category and window: the share of negative reviews with a Wilson 95% interval, and an alert when
   it is significantly above the category's baseline: a one-sided exact binomial test of the window's
   negative count against the baseline rate (the first ``--baseline-windows`` windows), at
   ``--alpha`` Bonferroni-corrected over every (category, window) test of the monitored period.
4. Validation: a surge is injected (in ``--surge-windows`` windows from ``--surge-start``, a
   ``--surge-share`` of one category's positive reviews are swapped for unseen negative reviews of that
   category, held out in a reserve). The alert must fire in that category during the surge and nowhere else; the clean stream
   must give no alert. Every category is surged in turn (one at a time) for the detection table.

Only lmvalue's public API is used. Run ``python examples/sentiment-monitor/sentiment_monitor.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import random
import time
from pathlib import Path

NEG, POS = "neg", "pos"
ENGLISH = {
    "书籍": "books",
    "平板": "tablets",
    "手机": "phones",
    "水果": "fruit",
    "洗发水": "shampoo",
    "热水器": "water heaters",
    "蒙牛": "Mengniu dairy",
    "衣服": "clothes",
    "计算机": "computers",
    "酒店": "hotels",
}


# --------------------------------------------------------------------------- data


def load_reviews(
    path: str | Path,
    *,
    categories: list[str] | None = None,
    max_per_category: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """The reviews as ``{"id", "text", "label" (pos/neg), "cat"}``: BOM and surrounding space stripped, empty
    reviews dropped, repeated texts kept once (the first). ``categories`` and ``max_per_category`` (a
    seeded sample of each category, in file order) make small slices."""
    rows, seen = [], set()
    with open(path, encoding="utf-8-sig", newline="") as f:
        for r in csv.DictReader(f):
            text = (r["review"] or "").replace("\ufeff", "").strip()
            cat = r["cat"].strip()
            if not text or text in seen or (categories and cat not in categories):
                continue
            seen.add(text)
            label = POS if r["label"].strip() == "1" else NEG
            rows.append({"text": text, "label": label, "cat": cat})
    if max_per_category is not None:  # the file is sorted by category and label: sample, never cut
        by_cat: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_cat.setdefault(r["cat"], []).append(i)
        rng = random.Random(seed)
        keep = {i for idx in by_cat.values() for i in rng.sample(idx, min(max_per_category, len(idx)))}
        rows = [r for i, r in enumerate(rows) if i in keep]
    return [{"id": i, **r} for i, r in enumerate(rows)]


def split_reviews(rows: list[dict], *, train_share: float, reserve: int, seed: int) -> dict:
    """A seeded split: per category a reserve of negative reviews for surge injection (at most half the
    category's negatives), then ``train_share`` of the rest as the training pool (labels drawn from it,
    its texts the unlabeled corpus) and the rest as the simulated stream, in a seeded random order."""
    rng = random.Random(seed)
    rows = list(rows)
    rng.shuffle(rows)
    reserve_rows: dict[str, list[dict]] = {}
    rest = []
    negs: dict[str, int] = {}
    for r in rows:
        if r["label"] == NEG:
            negs[r["cat"]] = negs.get(r["cat"], 0) + 1
    for r in rows:
        pool = reserve_rows.setdefault(r["cat"], [])
        if r["label"] == NEG and len(pool) < min(reserve, negs[r["cat"]] // 2):
            pool.append(r)
        else:
            rest.append(r)
    rng.shuffle(
        rest
    )  # the reserve came from the front of the order: shuffle again, or it would leave a trend
    n_train = int(round(train_share * len(rest)))
    return {"train_pool": rest[:n_train], "stream": rest[n_train:], "reserve": reserve_rows}


# --------------------------------------------------------------------------- statistics


def wilson(x: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion x/n (95% by default); (nan, nan) when n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def binom_sf(x: int, n: int, p: float) -> float:
    """P(X >= x) for X ~ Binomial(n, p): the one-sided p-value of x negatives out of n."""
    from scipy.stats import binom

    return float(binom.sf(x - 1, n, p)) if n else 1.0


def window_counts(cats: list[str], negs: list[bool], window: int, categories: list[str]) -> list[dict]:
    """Per window: per category the number of reviews and of negative ones."""
    out = []
    for start in range(0, len(cats) - window + 1, window):
        n = dict.fromkeys(categories, 0)
        x = dict.fromkeys(categories, 0)
        for c, neg in zip(cats[start : start + window], negs[start : start + window], strict=True):
            if c in n:
                n[c] += 1
                x[c] += neg
        out.append({"n": n, "x": x})
    return out


def monitor(counts: list[dict], categories: list[str], *, baseline_windows: int, alpha: float) -> dict:
    """Baseline rate per category (pooled over the first windows; (x + 0.5) / (n + 1), never 0 or 1) and,
    for every later window, the share, its Wilson interval, the one-sided binomial p-value and whether it
    alerts at ``alpha`` / (categories x monitored windows) (Bonferroni)."""
    monitored = len(counts) - baseline_windows
    level = alpha / (len(categories) * max(monitored, 1))
    base = {}
    for c in categories:
        n = sum(w["n"][c] for w in counts[:baseline_windows])
        x = sum(w["x"][c] for w in counts[:baseline_windows])
        base[c] = {"n": n, "x": x, "rate": (x + 0.5) / (n + 1)}
    series = {c: [] for c in categories}
    alerts = []
    for i, w in enumerate(counts):
        for c in categories:
            n, x = w["n"][c], w["x"][c]
            lo, hi = wilson(x, n)
            point = {"window": i, "n": n, "neg": x, "share": x / n if n else math.nan, "lo": lo, "hi": hi}
            if i >= baseline_windows:
                point["p"] = binom_sf(x, n, base[c]["rate"])
                point["alert"] = point["p"] < level
                if point["alert"]:
                    alerts.append({"category": c, "window": i, "share": point["share"], "p": point["p"]})
            series[c].append(point)
    return {"baseline": base, "level": level, "series": series, "alerts": alerts}


# --------------------------------------------------------------------------- stream and surge


def inject_surge(
    stream: list[dict],
    reserve: list[dict],
    *,
    category: str,
    window: int,
    start: int,
    windows: int,
    share: float,
    seed: int,
) -> tuple[list[dict], int]:
    """A copy of ``stream`` where, in windows ``start`` .. ``start + windows - 1``, a ``share`` of the
    reviews of ``category`` that are positive are replaced with reviews of ``reserve`` (negative reviews
    of that category never seen elsewhere). Returns the surged stream and the number swapped."""
    out = list(stream)
    rng = random.Random(seed)
    spare = list(reserve)
    swapped = 0
    for w in range(start, start + windows):
        idx = [
            i
            for i in range(w * window, (w + 1) * window)
            if out[i]["cat"] == category and out[i]["label"] == POS
        ]
        for i in rng.sample(idx, int(round(share * len(idx)))):
            if not spare:
                return out, swapped
            out[i] = {**spare.pop(), "injected": True}
            swapped += 1
    return out, swapped


def judge(alerts: list[dict], *, category: str, start: int, windows: int) -> dict:
    """Was the surge detected in the right category and window, and how many alerts fell elsewhere."""
    surge = [a for a in alerts if a["category"] == category and start <= a["window"] < start + windows]
    false = [a for a in alerts if not (a["category"] == category and start <= a["window"] < start + windows)]
    first = min((a["window"] for a in surge), default=None)
    return {
        "detected": first is not None,
        "delay_windows": None if first is None else first - start,
        "surge_windows_alerting": len(surge),
        "false_alarms": len(false),
        "false_alarm_list": false,
    }


# --------------------------------------------------------------------------- models


@contextlib.contextmanager
def quiet():
    """Keep lmvalue's step-by-step lines out of the monitor's output (warnings still show)."""
    logger = logging.getLogger("lmvalue")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def train_models(split: dict, args, out: Path) -> dict:
    """The sentiment and category models, fine-tuned on few labels of the training pool; each scored on
    ``--model-test`` held-out pool reviews."""
    from lmvalue import PretrainConfig, build_config, finetune, finetune_config, pretrain

    pool = [{"text": r["text"], "label": r["label"], "cat": r["cat"]} for r in split["train_pool"]]
    test, labeled = pool[: args.model_test], pool[args.model_test :]
    sent_rows = [{"text": r["text"], "label": r["label"]} for r in labeled]
    sent_test = [{"text": r["text"], "label": r["label"]} for r in test]
    corpus = out / "corpus.txt"  # the training pool's texts, unlabeled (the model-test texts left out)
    corpus.write_text("".join(r["text"] + "\n" for r in labeled), encoding="utf-8")
    info = {}
    start = None
    if args.sentiment == "pretrained" and args.pretrained:
        start = args.pretrained  # a model pretrained by an earlier run
    elif args.sentiment == "pretrained":
        run = out / "pretrain"
        t0 = time.perf_counter()
        cfg = build_config(
            PretrainConfig,
            overrides={
                "data.source": str(corpus),
                "model.preset": args.preset,
                "tokenizer.vocab_size": args.vocab_size,
                "train.output_dir": str(run),
                "train.max_steps": args.pretrain_steps,
                "train.lr": 1e-3,
                "train.progress": False,
                "train.seed": args.seed,
                "train.overwrite": True,
                **args.pretrain,
            },
        )
        with quiet():
            m = pretrain(cfg)
        info["pretrain"] = {
            "steps": m["steps"],
            "tokens": m["tokens"],
            "heldout_mlm_loss": (m.get("final") or {}).get("eval_mlm_loss"),
        }
        info["pretrain_seconds"] = round(time.perf_counter() - t0, 1)
        start = str(run / "model")
    method = "full" if args.sentiment == "pretrained" else args.sentiment
    overrides = {
        "method.name": method,
        "budget.train_size": args.sentiment_labels,
        "budget.seed": args.seed,
        "train.seed": args.seed,
        "train.output_dir": str(out / "sentiment"),
        "train.overwrite": True,
        "train.progress": False,
    }
    if start:  # the value study's recipe: inputs cut to 128 tokens, the learning rate chosen on dev
        overrides.update({"model.init_from": start, "data.max_length": 128, "train.lr_search": [3e-4, 1e-3]})
    overrides.update(args.finetune)
    if method in ("embeddings", "hybrid"):
        overrides["method.vectors.source"] = str(corpus)
    t0 = time.perf_counter()
    with quiet():
        sent = finetune(
            finetune_config(overrides=overrides),
            train_examples=sent_rows,
            test_examples=sent_test,
            keep_model=True,
        )
    info["sentiment"] = {
        "model": args.sentiment,
        "labels": sent["examples"]["train"] + sent["examples"]["dev"],
        "accuracy": sent["test"]["accuracy"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    cat_rows = [{"text": r["text"], "label": r["cat"]} for r in labeled]
    cat_test = [{"text": r["text"], "label": r["cat"]} for r in test]
    t0 = time.perf_counter()
    with quiet():
        cat = finetune(
            finetune_config(
                overrides={
                    "method.name": args.category,
                    "budget.per_class": args.category_labels,
                    "budget.seed": args.seed,
                    "train.seed": args.seed,
                    "train.output_dir": str(out / "category"),
                    "train.overwrite": True,
                    "train.progress": False,
                }
            ),
            train_examples=cat_rows,
            test_examples=cat_test,
            keep_model=True,
        )
    # the category threshold: the lowest with --category-precision on the budget's own dev split
    dev = cat["task_data"].dev
    dev_preds = cat["task_model"].predict([{"text": r["text"]} for r in dev])
    threshold = lowest_threshold(
        [p["probs"][p["label"]] for p in dev_preds],
        [p["label"] == r["label"] for p, r in zip(dev_preds, dev, strict=True)],
        args.category_precision,
    )
    if threshold == float("inf"):
        raise SystemExit(
            f"the category model reaches {args.category_precision:.0%} precision at no threshold"
        )
    info["category"] = {
        "threshold": threshold,
        "model": args.category,
        "labels": cat["examples"]["train"] + cat["examples"]["dev"],
        "accuracy": cat["test"]["accuracy"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return {"sentiment": sent["task_model"], "category": cat["task_model"], "info": info}


def lowest_threshold(top_probs: list[float], correct: list[bool], target: float) -> float:
    """The lowest threshold t whose predictions with top probability >= t reach ``target`` precision
    (above every probability when none does)."""
    order = sorted(range(len(top_probs)), key=lambda i: -top_probs[i])
    best, hits = float("inf"), 0
    for n, i in enumerate(order, 1):
        hits += correct[i]
        last_of_tie = n == len(order) or top_probs[order[n]] < top_probs[i]
        if last_of_tie and hits / n >= target:
            best = top_probs[i]
    return best


def predict(models: dict, rows: list[dict], category_min_prob: float) -> list[dict]:
    """Predicted sentiment and category of each review; ``cat`` is None (the review is counted in no
    category) when the category model's top probability is below ``category_min_prob``."""
    examples = [{"text": r["text"]} for r in rows]
    sent = models["sentiment"].predict(examples)
    cats = models["category"].predict(examples)
    return [
        {
            "neg": s["label"] == NEG,
            "cat": c["label"] if c["probs"][c["label"]] >= category_min_prob else None,
            "cat_top": c["label"],
        }
        for s, c in zip(sent, cats, strict=True)
    ]


# --------------------------------------------------------------------------- plot


def plot(
    result: dict, categories: list[str], path: Path, *, baseline_windows: int, surge: dict | None
) -> None:
    """Per-category trend panels: predicted negative share per window with its Wilson band, the baseline
    rate, the injected surge (shaded) and the alerts (red triangles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(5, len(categories))
    rows_ = math.ceil(len(categories) / cols)
    fig, axes = plt.subplots(
        rows_, cols, figsize=(3.4 * cols, 2.7 * rows_ + 0.6), sharex=True, sharey=True, squeeze=False
    )
    for ax, c in zip(axes.flat, categories, strict=False):
        pts = result["series"][c]
        xs = [p["window"] for p in pts]
        ax.axvspan(-0.5, baseline_windows - 0.5, color="0.9", lw=0, label="baseline windows")
        if surge and surge["category"] == c:
            ax.axvspan(
                surge["start"] - 0.5,
                surge["start"] + surge["windows"] - 0.5,
                color="#f4c7c3",
                lw=0,
                label="injected surge",
            )
        ax.fill_between(
            xs,
            [p["lo"] for p in pts],
            [p["hi"] for p in pts],
            color="#9ecae1",
            alpha=0.6,
            lw=0,
            label="95% Wilson",
        )
        ax.plot(xs, [p["share"] for p in pts], color="#08519c", lw=1.2, label="predicted neg. share")
        ax.axhline(result["baseline"][c]["rate"], color="0.3", ls="--", lw=0.9, label="baseline rate")
        hits = [p for p in pts if p.get("alert")]
        if hits:
            ax.plot(
                [p["window"] for p in hits],
                [min(p["hi"] + 0.08, 0.97) for p in hits],  # above the band, so the line stays visible
                "v",
                color="#d62728",
                ms=7,
                label="alert",
            )
        n = sum(p["n"] for p in pts) / max(len(pts), 1)
        ax.set_title(
            f"{ENGLISH.get(c, c)} (~{n:.0f}/window)", fontsize=10, color="#d62728" if hits else "black"
        )
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, lw=0.5)
    for ax in axes.flat[len(categories) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("window")
    for ax in axes[:, 0]:
        ax.set_ylabel("negative share")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    what = (
        f"injected surge: {ENGLISH.get(surge['category'], surge['category'])}, windows {surge['start']}-"
        f"{surge['start'] + surge['windows'] - 1} ({surge['share']:.0%} of its positive reviews swapped for negative ones)"
        if surge
        else "clean stream"
    )
    fig.suptitle(
        f"Share of negative reviews per category and window (predicted labels, simulated stream); {what}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the run


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="online_shopping_10_cats.csv")
    p.add_argument("-o", "--output", default="runs/sentiment-monitor", help="output folder")
    p.add_argument(
        "--sentiment",
        default="tfidf",
        choices=["tfidf", "pretrained", "nbsvm", "embeddings", "hybrid"],
        help="sentiment model: TF-IDF + logistic regression (measured best here), a tiny BERT pretrained on the "
        "pool's reviews and fine-tuned (pretrained), or another classical method",
    )
    p.add_argument(
        "--sentiment-labels", type=int, default=1000, help="sentiment labels (budget, dev split included)"
    )
    p.add_argument("--category", default="tfidf", help="category model's method")
    p.add_argument("--category-labels", type=int, default=100, help="category labels per category")
    p.add_argument(
        "--category-precision",
        type=float,
        default=0.8,
        help="a review counts for its predicted category only when the category model's probability reaches "
        "the lowest threshold with this precision on the category model's dev split",
    )
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=3000,
        help="masked-LM pretraining steps (--sentiment pretrained)",
    )
    p.add_argument(
        "--pretrained", default=None, help="reuse this pretrained model folder (e.g. OUT/pretrain/model)"
    )
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--pretrain", nargs="*", default=[], metavar="KEY=VALUE", help="pretraining overrides")
    p.add_argument(
        "--finetune", nargs="*", default=[], metavar="KEY=VALUE", help="sentiment fine-tuning overrides"
    )
    p.add_argument("--train-share", type=float, default=0.3, help="share of the reviews in the training pool")
    p.add_argument("--model-test", type=int, default=1000, help="pool reviews held out to score the models")
    p.add_argument("--window", type=int, default=1000, help="reviews per window")
    p.add_argument("--baseline-windows", type=int, default=10, help="windows that estimate the baseline rate")
    p.add_argument(
        "--alpha", type=float, default=0.05, help="family-wise level (Bonferroni over the period's tests)"
    )
    p.add_argument("--surge-category", default="衣服", help="category of the injected surge (the plot's)")
    p.add_argument("--surge-start", type=int, default=25, help="first surge window")
    p.add_argument("--surge-windows", type=int, default=3, help="surge length in windows")
    p.add_argument(
        "--surge-share",
        type=float,
        nargs="+",
        default=[0.5, 0.25, 1.0],
        help="surge strengths: the share of the category's positive reviews swapped (the first is plotted)",
    )
    p.add_argument(
        "--reserve", type=int, default=300, help="negative reviews per category kept for injection"
    )
    p.add_argument("--categories", nargs="+", default=None, help="only these categories (small slices)")
    p.add_argument(
        "--max-per-category", type=int, default=None, help="at most this many reviews per category"
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per loaded or saved model would bury the monitor's lines
    args.pretrain = parse_overrides(args.pretrain)
    args.finetune = parse_overrides(args.finetune)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_reviews(
        args.data, categories=args.categories, max_per_category=args.max_per_category, seed=args.seed
    )
    categories = sorted({r["cat"] for r in rows})
    split = split_reviews(rows, train_share=args.train_share, reserve=args.reserve, seed=args.seed)
    stream = split["stream"]
    n_windows = len(stream) // args.window
    stream = stream[: n_windows * args.window]
    print(
        f"{len(rows)} reviews, {len(categories)} categories: training pool {len(split['train_pool'])}, "
        f"simulated stream {len(stream)} ({n_windows} windows of {args.window}), "
        f"reserve {sum(map(len, split['reserve'].values()))} negatives",
        flush=True,
    )
    if args.surge_category not in categories:
        raise SystemExit(f"--surge-category {args.surge_category} is not among {categories}")
    if args.surge_start < args.baseline_windows or args.surge_start + args.surge_windows > n_windows:
        raise SystemExit("the surge must lie after the baseline windows and inside the stream")

    t0 = time.perf_counter()
    models = train_models(split, args, out)
    info = models["info"]
    print(f"models: {json.dumps(info, ensure_ascii=False)}", flush=True)
    preds = predict(models, stream, info["category"]["threshold"])
    reserve_rows = [r for c in categories for r in split["reserve"][c]]
    reserve_preds = predict(models, reserve_rows, info["category"]["threshold"])
    # an injected review keeps its prediction wherever it lands in the stream
    pred_of = {r["id"]: p for r, p in zip(stream + reserve_rows, preds + reserve_preds, strict=True)}
    model_seconds = time.perf_counter() - t0
    stream_acc = {
        "sentiment": sum(p["neg"] == (r["label"] == NEG) for r, p in zip(stream, preds, strict=True))
        / len(stream),
        "category": sum(p["cat_top"] == r["cat"] for r, p in zip(stream, preds, strict=True)) / len(stream),
        "category_assigned": sum(p["cat"] is not None for p in preds) / len(stream),
        "category_assigned_accuracy": sum(p["cat"] == r["cat"] for r, p in zip(stream, preds, strict=True))
        / max(1, sum(p["cat"] is not None for p in preds)),
    }

    def run(rows_: list[dict]) -> dict:
        ps = [pred_of[r["id"]] for r in rows_]
        counts = window_counts([p["cat"] for p in ps], [p["neg"] for p in ps], args.window, categories)
        return monitor(counts, categories, baseline_windows=args.baseline_windows, alpha=args.alpha)

    clean = run(stream)
    clean_judge = judge(clean["alerts"], category="", start=0, windows=0)
    print(
        f"clean stream: {len(clean['alerts'])} alert(s) over {len(categories)} x {n_windows - args.baseline_windows} tests "
        f"(level {clean['level']:.2g} each)",
        flush=True,
    )

    surges: dict[str, dict] = {}  # surge share -> category -> outcome
    shown = None
    for share in args.surge_share:
        key = f"{share:g}"
        surges[key] = {}
        for c in categories:
            surged, swapped = inject_surge(
                stream,
                split["reserve"][c],
                category=c,
                window=args.window,
                start=args.surge_start,
                windows=args.surge_windows,
                share=share,
                seed=args.seed,
            )
            res = run(surged)
            j = judge(res["alerts"], category=c, start=args.surge_start, windows=args.surge_windows)
            base = res["baseline"][c]["rate"]
            surge_slice = slice(
                args.surge_start * args.window, (args.surge_start + args.surge_windows) * args.window
            )
            outcome = {
                **j,
                "swapped": swapped,
                "baseline_rate": base,
                "surge_shares": [
                    res["series"][c][w]["share"]
                    for w in range(args.surge_start, args.surge_start + args.surge_windows)
                ],
                "true_baseline": _true_share(stream[: args.baseline_windows * args.window], c),
                "true_surge": _true_share(surged[surge_slice], c),
                "per_window": sum(p["n"] for p in res["series"][c]) / n_windows,
            }
            surges[key][c] = outcome
            print(
                f"surge {share:.0%} in {c} ({ENGLISH.get(c, c)}): {swapped} swapped, true neg share "
                f"{outcome['true_baseline']:.2f} -> {outcome['true_surge']:.2f}; predicted baseline {base:.2f}, "
                f"surge windows {', '.join(f'{x:.2f}' for x in outcome['surge_shares'])}; "
                + (f"DETECTED with delay {j['delay_windows']} window(s)" if j["detected"] else "missed")
                + f", {j['false_alarms']} false alarm(s)",
                flush=True,
            )
            if c == args.surge_category and share == args.surge_share[0]:
                shown = res
    surge_desc = {
        "category": args.surge_category,
        "start": args.surge_start,
        "windows": args.surge_windows,
        "share": args.surge_share[0],
    }
    plot(shown, categories, out / "trends.png", baseline_windows=args.baseline_windows, surge=surge_desc)
    plot(clean, categories, out / "trends-clean.png", baseline_windows=args.baseline_windows, surge=None)

    result = {
        "settings": vars(args),
        "reviews": len(rows),
        "categories": categories,
        "stream": {"reviews": len(stream), "windows": n_windows, "window": args.window},
        "models": info,
        "stream_accuracy": stream_acc,
        "model_seconds": round(model_seconds, 1),
        "level_per_test": clean["level"],
        "clean": {
            "alerts": clean["alerts"],
            "false_alarms": clean_judge["false_alarms"],
            "baseline": {c: clean["baseline"][c]["rate"] for c in categories},
        },
        "surges": surges,
        "headline": surges[f"{args.surge_share[0]:g}"][args.surge_category],
        "series": {"clean": clean["series"], "surged": shown["series"]},
    }
    (out / "results.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False, default=str), encoding="utf-8"
    )
    (out / "results.md").write_text(results_markdown(result), encoding="utf-8")
    print(f"\nwrote {out / 'results.md'}, {out / 'trends.png'} and {out / 'results.json'}")
    return result


def _true_share(rows: list[dict], category: str) -> float:
    xs = [r["label"] == NEG for r in rows if r["cat"] == category]
    return sum(xs) / len(xs) if xs else math.nan


def results_markdown(result: dict) -> str:
    s = result["settings"]
    m = result["models"]
    lines = [
        f"Stream: {result['stream']['reviews']} reviews in {result['stream']['windows']} windows of {s['window']}; "
        f"baseline: the first {s['baseline_windows']} windows; one-sided binomial test per (category, window) at "
        f"{s['alpha']} / {len(result['categories'])} x {result['stream']['windows'] - s['baseline_windows']} = "
        f"{result['level_per_test']:.2g}.",
        "",
        f"Models: sentiment {m['sentiment']['model']} on {m['sentiment']['labels']} labels, accuracy "
        f"{100 * m['sentiment']['accuracy']:.1f}% (held-out pool) / {100 * result['stream_accuracy']['sentiment']:.1f}% "
        f"(stream); category {m['category']['model']} on {m['category']['labels']} labels, accuracy "
        f"{100 * m['category']['accuracy']:.1f}% / {100 * result['stream_accuracy']['category']:.1f}%; "
        f"{100 * result['stream_accuracy']['category_assigned']:.1f}% of the stream reviews reach the category "
        f"threshold {m['category']['threshold']:.3f} and are counted, their category right for "
        f"{100 * result['stream_accuracy']['category_assigned_accuracy']:.1f}%.",
        "",
        f"Clean stream: {result['clean']['false_alarms']} alert(s).",
        "",
        f"Injected surges, one category at a time, in windows {s['surge_start']}-"
        f"{s['surge_start'] + s['surge_windows'] - 1}: a share of the category's positive reviews swapped for "
        "unseen negative ones of that category.",
        "",
    ]
    for key, by_cat in result["surges"].items():
        detected = sum(r["detected"] for r in by_cat.values())
        false = sum(r["false_alarms"] for r in by_cat.values())
        lines += [
            f"Surge share {float(key):.0%}: detected in {detected} of {len(by_cat)} categories; "
            f"{false} false alarm(s) in all.",
            "",
            "| category | reviews/window | true neg. share (base -> surge) | predicted baseline "
            "| predicted surge windows | detected | delay (windows) | false alarms |",
            "|---|---:|---|---:|---|---|---:|---:|",
        ]
        for c, r in by_cat.items():
            lines.append(
                f"| {c} ({ENGLISH.get(c, c)}) | {r['per_window']:.0f} | {r['true_baseline']:.2f} -> "
                f"{r['true_surge']:.2f} | {r['baseline_rate']:.2f} | "
                f"{', '.join(f'{x:.2f}' for x in r['surge_shares'])} | {'yes' if r['detected'] else 'no'} | "
                f"{'-' if r['delay_windows'] is None else r['delay_windows']} | {r['false_alarms']} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
