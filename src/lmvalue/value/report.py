"""Summaries, verdict and the self-contained report (HTML with embedded plots + Markdown) of a study."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from lmvalue.value.stats import (
    TIE,
    bootstrap_ci,
    factor_interval,
    label_efficiency_factor,
    labels_saved_area,
    round_down,
    round_up,
)

BASELINES = ("scratch", "tfidf", "nbsvm")
# The baselines that learn from the labels alone: every arm that uses unlabeled text is judged against the
# strongest of them that the study ran.
LABEL_ONLY = {"tfidf": "TF-IDF", "nbsvm": "NB-LR"}
# Arms that draw on unlabeled text (or a model pretrained on some): the verdict judges each against scratch.
UNLABELED_ARMS = ("pretrained", "continued", "checkpoint", "prompt", "embeddings", "hybrid", "distill")


def uses_unlabeled(arm: str) -> bool:
    """Does the arm draw on unlabeled text: pretraining, word vectors, pseudo-labels (``+self``) or
    consistency training (``+uda``)."""
    return arm.endswith(("+self", "+uda")) or arm.startswith(UNLABELED_ARMS)


def what_paid(summary: dict) -> str | None:
    """One sentence: at each budget, the use of the unlabeled text that scored highest, against the
    strongest label-only baseline at that budget (scratch when the study ran none), with the paired
    difference and the label-efficiency factor, each with its 95% interval."""
    metric = summary["metric"]
    rows: dict = defaultdict(dict)  # budget -> (arm, baseline) -> row
    for comp in summary["comparisons"]:
        if uses_unlabeled(comp["arm"]):
            for r in comp["budgets"]:
                if r.get("diff") and r.get("arm_mean") is not None and r.get("baseline_mean") is not None:
                    rows[r["budget"]][(comp["arm"], comp["baseline"])] = r
    ran = {b for per in rows.values() for (_, b) in per if b in LABEL_ONLY}
    names = {**LABEL_ONLY, "scratch": "scratch"}
    parts, paid = [], []
    for budget in sorted(rows):
        per = {k: r for k, r in rows[budget].items() if k[1] in (ran or {"scratch"})}
        if not per:
            continue
        base_means: dict = {}
        for (_, b), r in per.items():
            base_means[b] = r["baseline_mean"]
        base = max(sorted(base_means), key=lambda b: base_means[b])
        arm, r = max(((a, r) for (a, b), r in per.items() if b == base), key=lambda x: x[1]["arm_mean"])
        d = r["diff"]
        gain = f"{d[0] * 100:+.1f} points (95% CI {d[1] * 100:+.1f} to {d[2] * 100:+.1f})"
        if d[1] > 0 and r["arm_mean"] > r["baseline_mean"] + TIE:
            paid.append(budget)
            ci = f" (95% CI {r['ci_text']})" if r.get("ci_text") not in (None, "–") else ""
            parts.append(
                f"at {budget} labels {arm} ({metric} {r['arm_mean'] * 100:.1f}) beat {names[base]} "
                f"({r['baseline_mean'] * 100:.1f}) by {gain}, worth {r['text']}{ci} its labels"
            )
        else:
            parts.append(
                f"at {budget} labels nothing beat {names[base]} ({r['baseline_mean'] * 100:.1f}) beyond the noise "
                f"(best: {arm}, {gain})"
            )
    if not parts:
        return None
    against = "the strongest label-only baseline" if ran else "scratch"
    head = "What paid" if paid else "Nothing paid"
    return (
        f"{head} (the best use of the unlabeled text against {against} at each budget): "
        + "; ".join(parts)
        + "."
    )


def curves_of(cells: list[dict], *, skip_one_class: bool = False) -> dict[str, dict[int, dict[int, float]]]:
    """arm -> budget -> seed -> score, from the finished (status done) cells.

    With ``skip_one_class``, the cells whose model predicted one class only are left out, but their
    (arm, budget) stays, with no seeds: it was tried, and has nothing a claim can rest on.
    """
    out: dict = defaultdict(lambda: defaultdict(dict))
    for c in cells:
        if c["status"] == "done" and c["score"] is not None and not math.isnan(c["score"]):
            seeds = out[c["arm"]][c["budget"]]  # the budget was tried, even if no seed is kept
            if not (skip_one_class and _is_one_class(c)):
                seeds[c["seed"]] = c["score"]
    return out


def _is_one_class(cell: dict) -> bool:
    return (cell.get("metrics") or {}).get("predicted_classes") == 1


def _plain(curve: dict[int, dict[int, float]]) -> dict[int, list[float]]:
    return {b: list(seeds.values()) for b, seeds in curve.items()}


def paired_difference(arm: dict[int, float], base: dict[int, float]) -> tuple[float, float, float] | None:
    """Mean and bootstrap CI of arm - baseline over the seeds both have (same seed = same labels)."""
    seeds = sorted(set(arm) & set(base))
    if not seeds:
        return None
    return bootstrap_ci([arm[s] - base[s] for s in seeds])


def _comparison(arm: str, base: str, curves: dict, usable: dict, one_class: dict) -> dict:
    """``arm`` against ``base`` at each of the arm's budgets: the label-efficiency factor with its
    interval, the paired difference, and the labels saved over the whole curve."""
    entry = {"arm": arm, "baseline": base, "budgets": []}
    arm_curve, base_curve = _plain(usable[arm]), _plain(usable[base])
    for budget in sorted(curves[arm]):
        left_out = {a: one_class.get((a, budget), 0) for a in (arm, base)}
        if not arm_curve.get(budget):
            why = f"every {arm} model at {budget} labels predicted one class"
            entry["budgets"].append(
                {
                    "budget": budget,
                    "factor": float("nan"),
                    "reached": False,
                    "upper_bound": False,
                    "baseline_budget": None,
                    "no_claim": why,
                    "text": f"no claim ({why})",
                    "ci": None,
                    "ci_text": "–",
                    "diff": None,
                    "one_class_left_out": left_out,
                }
            )
            continue
        eff = label_efficiency_factor(arm_curve, base_curve, budget)
        ci = factor_interval(arm_curve, base_curve, budget)
        diff = paired_difference(usable[arm][budget], usable[base].get(budget, {}))
        base_scores = list(usable[base].get(budget, {}).values())
        no_diff = (
            f"every {base} model at {budget} labels predicted one class"
            if budget in curves[base] and not usable[base][budget]
            else None
        )
        entry["budgets"].append(
            {
                "budget": budget,
                "factor": eff.factor,
                "reached": eff.reached,
                "upper_bound": eff.at_least_min,
                "baseline_budget": eff.baseline_budget,
                "matched_at": eff.matched_at,
                "below_until": eff.below_until,
                "baseline_left_out": list(eff.left_out),
                "no_claim": None,
                "no_diff": no_diff,
                "text": eff.describe(),
                "ci": dataclasses.asdict(ci) if ci else None,  # lo, hi, lo_kind, hi_kind
                "ci_text": ci.describe() if ci else "–",
                "diff": diff,
                # observed means over every usable seed (the paired difference uses shared seeds)
                "arm_mean": eff.arm_score,
                "baseline_mean": float(np.mean(base_scores)) if base_scores else None,
                "one_class_left_out": left_out,
            }
        )
    if any(arm_curve.values()) and any(base_curve.values()):
        est, lo, hi = labels_saved_area(
            {b: v for b, v in arm_curve.items() if v}, {b: v for b, v in base_curve.items() if v}
        )
    else:
        est = lo = hi = float("nan")
    entry["area"] = {"labels": est, "lo": lo, "hi": hi}
    return entry


def summarize(
    cells: list[dict],
    arms_info: dict | None = None,
    *,
    metric: str = "accuracy",
    pairs: list[dict] | None = None,
) -> dict:
    """Everything the report shows, computed from the registry rows.

    The scores table shows every finished cell; the comparisons (factors, paired differences, labels
    saved) and so the verdict use only the cells whose model predicted more than one class.
    """
    curves = curves_of(cells)
    usable = curves_of(cells, skip_one_class=True)  # what the claims rest on
    one_class: dict = defaultdict(int)  # (arm, budget) -> seeds whose model predicted one class only
    for c in cells:
        if c["status"] == "done" and _is_one_class(c):
            one_class[(c["arm"], c["budget"])] += 1
    table = []
    for arm in sorted(curves):
        for budget in sorted(curves[arm]):
            scores = list(curves[arm][budget].values())
            mean, lo, hi = bootstrap_ci(scores)
            table.append(
                {
                    "arm": arm,
                    "budget": budget,
                    "n_seeds": len(scores),
                    "mean": mean,
                    "lo": lo,
                    "hi": hi,
                    "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
                    "one_class": one_class.get((arm, budget), 0),
                }
            )
    comparisons = []
    for arm in sorted(curves):
        for base in BASELINES:
            if base == arm or base not in curves:
                continue
            if arm in BASELINES and BASELINES.index(arm) > BASELINES.index(base):
                continue  # scratch vs tfidf is shown once
            comparisons.append(_comparison(arm, base, curves, usable, one_class))
    for pair in pairs or []:  # continued:X against checkpoint:X: the value of the user's text on top
        if pair["arm"] in curves and pair["baseline"] in curves:
            comparisons.append(_comparison(pair["arm"], pair["baseline"], curves, usable, one_class))
    compute: dict = defaultdict(
        lambda: {"cells": 0, "wall_s": 0.0, "cpu_s": 0.0, "train_flops": 0.0, "trainable": None}
    )
    failures, kept_pairs = [], []
    for c in cells:
        comp = compute[c["arm"]]
        comp["cells"] += 1
        comp["wall_s"] += c["wall_s"] or 0.0
        comp["cpu_s"] += c["cpu_s"] or 0.0
        comp["train_flops"] += c["train_flops"] or 0.0
        comp["trainable"] = c["trainable_params"] or comp["trainable"]
        if c["status"] != "done":
            failures.append(
                {"what": f"{c['arm']} @ {c['budget']} labels, seed {c['seed']}", "error": c["error"]}
            )
    for arm, info in (arms_info or {}).items():
        comp = compute[arm]
        pre = info["info"].get("student") or info["info"]  # a distill: arm's transformer was pretrained
        comp["pretrain_s"] = pre.get("pretrain_seconds")
        comp["pretrain_tokens"] = pre.get("pretrain_tokens")
        comp["pretrain_steps"] = pre.get("pretrain_steps")
        if info["status"] != "done":
            failures.append({"what": f"{arm}: preparing the arm", "error": info["error"]})
    for pair in pairs or []:
        pair = dict(pair)
        pair["pretrain_s"] = compute[pair["arm"]].get("pretrain_s") if pair["arm"] in compute else None
        kept_pairs.append(pair)
    return {
        "metric": metric,
        "pairs": kept_pairs,
        "one_class_cells": sorted(
            ({"arm": a, "budget": b, "seeds": n} for (a, b), n in one_class.items()),
            key=lambda d: (d["arm"], d["budget"]),
        ),
        "curves": {a: _plain(c) for a, c in curves.items()},
        "table": table,
        "comparisons": comparisons,
        "compute": dict(compute),
        "failures": failures,
    }


def verdict(summary: dict, *, corpus_desc: str = "your unlabeled text", focus_budget: int = 100) -> str:
    """One plain-language paragraph a team can decide from."""
    metric = summary["metric"]
    sentences = []
    headline = what_paid(summary)
    if headline:
        sentences.append(headline)
    sentences += value_sources(summary, focus_budget)
    for comp in summary["comparisons"]:
        if comp["baseline"] != "scratch" or not uses_unlabeled(comp["arm"]):
            continue
        rows = {r["budget"]: r for r in comp["budgets"]}
        if not rows:
            continue
        at = (
            focus_budget if focus_budget in rows else min(rows, key=lambda b: abs(math.log(b / focus_budget)))
        )
        r = rows[at]
        compared = [b for b, x in sorted(rows.items()) if x["diff"]]  # both arms have usable cells
        # pays: the paired interval excludes zero and the observed means agree (a tie is no gain)
        paying = [
            b
            for b in compared
            if rows[b]["diff"][1] > 0 and rows[b]["arm_mean"] > rows[b]["baseline_mean"] + TIE
        ]
        not_paying = [b for b in compared if b not in paying]
        arm = comp["arm"]
        using = (
            f"word vectors learned from {corpus_desc}"
            if arm in ("embeddings", "hybrid")
            else f"self-training on {corpus_desc}"
            if arm.endswith("+self") and not arm.startswith(("pretrained", "continued"))
            else f"consistency training on {corpus_desc}"
            if arm.endswith("+uda") and not arm.startswith(("pretrained", "continued"))
            else f"pretraining and consistency training on {corpus_desc}"
            if arm.endswith("+uda")
            else f"distilling into the transformer pretrained on {corpus_desc}"
            if arm.startswith("distill")
            else "the public checkpoint as it is (pretrained elsewhere, not on your text)"
            if arm.startswith("checkpoint:")
            else f"continuing the public checkpoint's pretraining on {_own_corpus(arm) or corpus_desc}"
            if arm.startswith("continued:")
            else f"pretraining on {corpus_desc}"
        )
        if r.get("no_claim"):
            sentences.append(
                f"{arm} vs scratch at {at} labels: no claim, because {r['no_claim']} "
                "(such models learned nothing, so they are left out of the comparison)."
            )
            continue
        if r["diff"] and r["diff"][0] <= TIE:  # a tie is no gain
            sentences.append(
                f"{arm} did not beat training from scratch at {at} labels "
                f"({metric} {r['diff'][0] * 100:+.1f} points, 95% CI {r['diff'][1] * 100:+.1f} to {r['diff'][2] * 100:+.1f}); "
                f"{using} was not worth it at this compute budget."
            )
            continue
        s = f"{arm}: {using} is {_worth(r, at)}"
        if r["diff"]:
            s += f", {r['diff'][0] * 100:+.1f} {metric} points (95% CI {r['diff'][1] * 100:+.1f} to {r['diff'][2] * 100:+.1f})"
        elif r.get("no_diff"):
            s += f"; there is no paired difference at {at} labels ({r['no_diff']})"
        if paying and not_paying and max(paying) < max(compared):
            s += f"; it stops paying off above {max(paying)} labels"
        elif paying and not not_paying:
            s += (
                "; it pays off at every budget tried"
                if len(compared) == len(rows)
                else "; it pays off at every budget where both have usable models"
            )
        elif compared and not paying:
            s += "; the gain is within noise at every budget (no interval excludes zero)"
        sentences.append(s + ".")
    strongest: dict[str, tuple] = {}  # arm -> (baseline mean, baseline, diff) at the focus budget
    for comp in summary["comparisons"]:
        if comp["baseline"] in LABEL_ONLY and uses_unlabeled(comp["arm"]):
            rows = {r["budget"]: r for r in comp["budgets"]}
            if focus_budget in rows and rows[focus_budget]["diff"]:
                r = rows[focus_budget]
                candidate = (r["baseline_mean"] or 0.0, comp["baseline"], r["diff"])
                if comp["arm"] not in strongest or candidate[0] > strongest[comp["arm"]][0]:
                    strongest[comp["arm"]] = candidate
    ran = sorted({c["baseline"] for c in summary["comparisons"] if c["baseline"] in LABEL_ONLY})
    for arm, (mean, base, d) in strongest.items():
        which = (
            f"the {LABEL_ONLY[base]} baseline"
            if len(ran) == 1
            else f"the strongest label-only baseline ({LABEL_ONLY[base]}, {metric} {mean * 100:.1f})"
        )
        sentences.append(
            f"Against {which} at {focus_budget} labels, {arm} is {d[0] * 100:+.1f} points "
            f"(95% CI {d[1] * 100:+.1f} to {d[2] * 100:+.1f})."
        )
    sentences += _distorted_features(summary)
    if not sentences:
        failed = [f["what"] for f in summary.get("failures", []) if f["what"].endswith("preparing the arm")]
        why = f" ({'; '.join(failed)} failed: see Failures)" if failed else ""
        return (
            f"No pretrained arm was compared with scratch{why}, so the study cannot say what "
            "pretraining was worth."
        )
    if summary.get("one_class_cells"):
        n = sum(d["seeds"] for d in summary["one_class_cells"])
        sentences.append(
            f"Caution: {n} fine-tuned model(s) predicted a single class for every test example "
            f"({_one_class_text(summary['one_class_cells'])}); they learned nothing, so they are left out "
            "of the comparisons and of this verdict (the scores table still shows them); they say more "
            "about the fine-tuning recipe than about pretraining (more steps or train.lr_search may help)."
        )
    if summary.get("failures"):
        sentences.append(f"{len(summary['failures'])} run(s) failed and are left out: see Failures.")
    return " ".join(sentences)


def _own_corpus(arm: str) -> str | None:
    """The corpus a ``continued:X@data.source=OTHER`` arm continued on (its out-of-domain control)."""
    m = re.search(r"@(?:[^@]*,)?data\.source=([^,]+?)(?:,|/[A-Za-z0-9-]+$|$)", arm)
    return m.group(1) if m else None


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} minutes" if seconds >= 60 else f"{seconds:.0f} seconds"


def _row_at(summary: dict, arm: str, baseline: str, budget: int) -> dict | None:
    for comp in summary["comparisons"]:
        if comp["arm"] == arm and comp["baseline"] == baseline:
            return next((r for r in comp["budgets"] if r["budget"] == budget), None)
    return None


def _gain_text(r: dict) -> str:
    if r.get("no_claim"):
        return f"no claim ({r['no_claim']})"
    d = r["diff"]
    diff = (
        f"{d[0] * 100:+.1f} points (95% CI {d[1] * 100:+.1f} to {d[2] * 100:+.1f})"
        if d
        else "no paired difference"
    )
    ci = f" (95% CI {r['ci_text']})" if r.get("ci_text") not in (None, "–") else ""
    return f"worth {r['text']}{ci} the labels, {diff}"


def value_sources(summary: dict, focus_budget: int = 100) -> list[str]:
    """The two sources of value of a public checkpoint, apart ("Don't Stop Pretraining", Gururangan et al.
    2020): what someone else's pretraining is worth (``checkpoint:X`` vs scratch), and what the user's text
    adds on top of it (``continued:X`` vs ``checkpoint:X``), each with its factor and interval, and the
    minutes the continued pretraining cost; then the answer to "was continuing worth it?"."""
    out, public_done = [], set()
    for pair in summary.get("pairs", []):
        arm, ckpt = pair["arm"], pair["baseline"]
        public = _row_at(summary, ckpt, "scratch", focus_budget)
        if public and ckpt not in public_done:
            public_done.add(ckpt)
            out.append(
                f"Value of the public pretraining ({ckpt} vs scratch) at {focus_budget} labels: {_gain_text(public)}."
            )
        r = _row_at(summary, arm, ckpt, focus_budget)
        if not r:
            continue
        corpus = f"{pair['corpus']} instead, the out-of-domain control" if pair.get("corpus") else "your text"
        minutes = _duration(pair["pretrain_s"]) if pair.get("pretrain_s") else "its pretraining"
        out.append(
            f"Value of continuing on {corpus} ({arm} vs {ckpt}) at {focus_budget} labels: {_gain_text(r)}, "
            f"for {minutes} of continued pretraining."
        )
        corpus = f"{pair['corpus']} (the out-of-domain control)" if pair.get("corpus") else "your text"
        d = r["diff"]
        if r.get("no_claim") or not d:
            continue  # nothing to answer from
        if d[1] > 0 and r["arm_mean"] > r["baseline_mean"] + TIE:
            answer = f"paid: it was worth its {minutes}"
        elif d[2] < 0:
            answer = "hurt: the checkpoint as it is was better"
        else:
            answer = (
                f"did not pay beyond the noise: the checkpoint as it is does as well, without the {minutes}"
            )
        out.append(f"Continuing {ckpt}'s pretraining on {corpus} {answer}.")
    return out


def _distorted_features(summary: dict) -> list[str]:
    """Flag fine-tuning that throws the pretrained features away: the frozen probe of a model beats
    scratch, while fine-tuning the same model scores below scratch (observed means)."""
    means: dict = defaultdict(dict)
    for row in summary["table"]:
        means[row["arm"]][row["budget"]] = row["mean"]
    out = []
    for arm in sorted(means):
        probe = means.get(f"{arm}/probe")
        if not probe or "scratch" not in means or arm == "scratch":
            continue
        hit = [
            b
            for b in sorted(probe)
            if b in means[arm] and b in means["scratch"] and probe[b] > means["scratch"][b] > means[arm][b]
        ]
        if hit:
            out.append(
                f"Warning: at {', '.join(map(str, hit))} labels the frozen probe of {arm} beats scratch but "
                f"fine-tuning {arm} scores below scratch: fine-tuning throws away what pretraining learned. "
                + "Try "
                + ("" if arm.endswith("+lpft") else f"the arm {arm}+lpft (LP-FT with mean pooling), ")
                + "--finetune train.llrd=0.8 (slower lower layers and embeddings) or a lower learning rate."
            )
    return out


def _worth(r: dict, at: int) -> str:
    """What the label-efficiency factor lets the verdict say; every bound holds on the observed means."""
    gap = r.get("baseline_left_out") or []
    gap_text = (
        f", leaving out {', '.join(map(str, gap))} labels where every scratch model predicted one class"
        if gap
        else ""
    )
    if r["reached"] and not r["upper_bound"]:
        return (
            f"worth about {r['factor']:.1f}× the labels at {at} labels "
            f"(scratch needs ~{r['baseline_budget']:.0f} labels to match{gap_text})"
        )
    if r["reached"]:  # an upper bound: scratch matches at its smallest usable budget
        return (
            f"worth at most {round_up(r['factor']):.1f}× the labels at {at} labels "
            f"(scratch matches it with {r['matched_at']:g} labels, its smallest "
            f"{'usable ' if gap and gap[0] < r['matched_at'] else ''}budget{gap_text})"
        )
    if r.get("below_until") is not None:
        return (
            f"worth at least {round_down(r['factor']):.1f}× the labels at {at} labels "
            f"(scratch never matches it within the budgets tried{gap_text})"
        )
    return f"of unknown worth in labels at {at} labels (scratch has no usable models{gap_text})"


def _one_class_text(rows: list[dict]) -> str:
    return ", ".join(f"{d['arm']} @ {d['budget']}: {d['seeds']} seed(s)" for d in rows)


# --- plots -------------------------------------------------------------------------------------


def learning_curve_png(summary: dict) -> bytes:
    from lmvalue.plotting import figure_fonts

    with figure_fonts() as plt:
        fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
        by_arm = defaultdict(list)
        for row in summary["table"]:
            by_arm[row["arm"]].append(row)
        for arm, rows in sorted(by_arm.items()):
            rows.sort(key=lambda r: r["budget"])
            x = [r["budget"] for r in rows]
            ax.plot(x, [r["mean"] for r in rows], marker="o", label=arm)
            ax.fill_between(x, [r["lo"] for r in rows], [r["hi"] for r in rows], alpha=0.2)
        ax.set_xscale("log")
        budgets = sorted({r["budget"] for r in summary["table"]})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("labeled examples (log scale)")
        ax.set_ylabel(f"test {summary['metric']}")
        ax.set_title("Learning curves (mean over seeds, 95% bootstrap CI)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        plt.close(fig)
    return buf.getvalue()


# --- documents ---------------------------------------------------------------------------------


def _fmt(x, pct=True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * 100:.1f}" if pct else f"{x:,.0f}"


def markdown_report(summary: dict, meta: dict, verdict_text: str) -> str:
    m = summary["metric"]
    lines = [f"# lmvalue study: {meta.get('name', '')}", "", f"**Verdict.** {verdict_text}", ""]
    lines += [
        f"- task: {meta.get('task', '')}; metric: test {m} (%); test examples: {meta.get('n_test', '?')}",
        f"- unlabeled corpus: {meta.get('corpus', '')}",
        f"- overlap of the unlabeled corpus with the test texts: {meta.get('overlap_text', 'not checked')}",
        "",
    ]
    lines += [
        "## Scores",
        "",
        f"| arm | budget | seeds | mean {m} | 95% CI | one-class models |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in summary["table"]:
        lines.append(
            f"| {r['arm']} | {r['budget']} | {r['n_seeds']} | {_fmt(r['mean'])} | {_fmt(r['lo'])}–{_fmt(r['hi'])} "
            f"| {r.get('one_class', 0) or ''} |"
        )
    if summary.get("one_class_cells"):
        lines += [
            "",
            "One-class models predicted the same label for every test example: their score is that "
            "label's share of the test set, not something they learned.",
        ]
    sources = value_sources(summary, meta.get("focus_budget", 100))
    if sources:
        lines += ["", "## Two sources of value", ""] + [f"- {t}" for t in sources]
    lines += [
        "",
        "## Label efficiency",
        "",
        "| arm | vs | budget | factor | factor 95% CI | Δ points (95% CI) |",
        "|---|---|---:|---|---|---|",
    ]
    for comp in summary["comparisons"]:
        for r in comp["budgets"]:
            d = r["diff"]
            dtxt = f"{d[0] * 100:+.1f} ({d[1] * 100:+.1f} to {d[2] * 100:+.1f})" if d else "–"
            lines.append(
                f"| {comp['arm']} | {comp['baseline']} | {r['budget']} | {r['text']} | {r.get('ci_text', '–')} | {dtxt} |"
            )
    lines += [
        "",
        "Factors and differences use only models that predicted more than one class. A factor never "
        "exceeds what the observed means show: '≥' means the baseline's observed mean stays below the arm's "
        "at every budget tried, '≤' that it already matches it (a tie counts) at its smallest budget.",
    ]
    lines += ["", "| arm | vs | labels saved (area between curves) | 95% CI |", "|---|---|---:|---|"]
    for comp in summary["comparisons"]:
        a = comp["area"]
        lines.append(
            f"| {comp['arm']} | {comp['baseline']} | {_fmt(a['labels'], False)} | {_fmt(a['lo'], False)} – {_fmt(a['hi'], False)} |"
        )
    lines += [
        "",
        "## Compute",
        "",
        "| arm | cells | fine-tuning wall s | CPU s | est. train FLOPs | trainable params | pretraining s "
        "| pretraining steps | pretraining tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, c in sorted(summary["compute"].items()):
        lines.append(
            f"| {arm} | {c['cells']} | {c['wall_s']:.0f} | {c['cpu_s']:.0f} | {c['train_flops']:.2e} | "
            f"{c['trainable'] or '–'} | {c.get('pretrain_s') or '–'} | "
            f"{_count(c.get('pretrain_steps'))} | {_count(c.get('pretrain_tokens'))} |"
        )
    if summary["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f['what']}: {f['error']}" for f in summary["failures"]]
    return "\n".join(lines) + "\n"


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int | float) else "–"


def html_report(summary: dict, meta: dict, verdict_text: str) -> str:
    """A single self-contained page: inline CSS, the plot as a data URI, no scripts."""
    png = base64.b64encode(learning_curve_png(summary)).decode()
    md = markdown_report(summary, meta, verdict_text)
    e = html.escape
    body = [
        f"<h1>lmvalue study: {e(str(meta.get('name', '')))}</h1>",
        f"<p class='verdict'><b>Verdict.</b> {e(verdict_text)}</p>",
        f"<img id='learning-curves' alt='learning curves' src='data:image/png;base64,{png}'>",
    ]
    # Tables: convert the Markdown tables to HTML (they are simple pipe tables).
    block: list[str] = []
    for line in md.splitlines():
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            body.append(_table_html(block))
            block = []
        if line.startswith("## "):
            body.append(f"<h2>{e(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<p class='meta'>{e(line[2:])}</p>")
    if block:
        body.append(_table_html(block))
    css = (
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}.verdict{background:#f3f7ff;padding:1em;border-left:4px solid #36c}"
        "img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lmvalue study</title>"
        f"<style>{css}</style></head><body>{''.join(body)}</body></html>"
    )


def _table_html(lines: list[str]) -> str:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head, body = rows[0], [r for r in rows[2:]]
    e = html.escape
    out = "<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in head) + "</tr></thead><tbody>"
    for r in body:
        out += "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
    return out + "</tbody></table>"


def write_report(study_dir: Path, summary: dict, meta: dict, verdict_text: str) -> tuple[Path, Path]:
    study_dir = Path(study_dir)
    html_path, md_path = study_dir / "report.html", study_dir / "report.md"
    for path, text in (
        (html_path, html_report(summary, meta, verdict_text)),
        (md_path, markdown_report(summary, meta, verdict_text)),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return html_path, md_path
