"""The report's claims hold on the observed cells: factors, "never matches", one-class models."""

import numpy as np
import pytest

from lmvalue.value.report import markdown_report, summarize, verdict
from lmvalue.value.stats import factor_interval, label_efficiency_factor


def _cells(curves, one_class=()):
    """Registry-like rows; ``curves``: arm -> budget -> scores (seed = position, None = no cell).

    ``one_class``: (arm, budget, seed) whose model predicted a single class.
    """
    out = []
    for arm, curve in curves.items():
        for budget, scores in curve.items():
            for seed, s in enumerate(scores):
                if s is None:
                    continue
                out.append(
                    {
                        "arm": arm,
                        "budget": budget,
                        "seed": seed,
                        "status": "done",
                        "score": s,
                        "metrics": {"predicted_classes": 1 if (arm, budget, seed) in one_class else 2},
                        "error": None,
                        "wall_s": 1.0,
                        "cpu_s": 1.0,
                        "train_flops": 1e9,
                        "trainable_params": 100,
                    }
                )
    return out


def _row(summary, budget, arm="pretrained:mlm", base="scratch"):
    comp = next(c for c in summary["comparisons"] if (c["arm"], c["baseline"]) == (arm, base))
    return next(r for r in comp["budgets"] if r["budget"] == budget)


# Scratch's mean at 16 labels equals the pretrained arm's (0.60); its extra seed makes the paired
# difference over the shared seeds positive, and its smoothed curve never reaches 0.60 (it drops at 32).
TIE = {
    "scratch": {8: [0.50] * 4, 16: [0.55, 0.55, 0.55, 0.75], 32: [0.58] * 4},
    "pretrained:mlm": {8: [0.55, 0.56, 0.57], 16: [0.60, 0.60, 0.60], 32: [0.65, 0.66, 0.67]},
}


def test_a_tie_at_the_focus_budget_is_not_never_matches():
    summary = summarize(_cells(TIE))
    text = verdict(summary, focus_budget=16)
    assert "never matches" not in text and "≥ 2.0×" not in text and "at least 2.0×" not in text
    assert "worth about 1.0× the labels at 16 labels (scratch needs ~16 labels to match)" in text
    row = _row(summary, 16)
    assert row["reached"] and row["factor"] <= 1.0 + 1e-9 and row["matched_at"] == 16
    assert not row["text"].startswith("≥")
    # a tie is no gain: the budget does not "pay off", although the shared seeds' interval excludes zero
    assert row["diff"][1] > 0 and "pays off at every budget" not in text


def test_a_tie_through_float_rounding_is_not_never_matches_in_the_table():
    cells = _cells(
        {
            "scratch": {8: [0.50] * 3, 16: [0.62, 0.61, 0.60], 32: [0.58] * 3},
            "pretrained:mlm": {8: [0.55, 0.56, 0.57], 16: [0.61, 0.60, 0.62], 32: [0.65, 0.66, 0.67]},
        }
    )
    summary = summarize(cells)
    text = verdict(summary, focus_budget=16)
    assert "did not beat training from scratch at 16 labels" in text
    md = markdown_report(summary, {}, text)
    line = next(x for x in md.splitlines() if x.startswith("| pretrained:mlm | scratch | 16 |"))
    assert "≥" not in line.split("|")[4] and "never" not in line


def test_factor_is_at_most_the_budget_where_scratch_is_observed_to_match():
    # scratch reaches 0.60 at 32 labels and dips at 64: the monotone fit never gets to 0.60
    scratch = {8: [0.50] * 3, 16: [0.55] * 3, 32: [0.60] * 3, 64: [0.56] * 3}
    pretrained = {16: [0.60] * 3}
    eff = label_efficiency_factor(pretrained, scratch, 16)
    assert eff.reached and eff.matched_at == 32 and 1.0 < eff.factor <= 32 / 16
    assert not eff.describe().startswith("≥")
    summary = summarize(_cells({"scratch": scratch, "pretrained:mlm": pretrained}))
    text = verdict(summary, focus_budget=16)
    assert "never matches" not in text and "at least" not in text
    assert _row(summary, 16)["factor"] <= 2.0 + 1e-9


def test_at_least_only_when_every_observed_baseline_budget_is_below():
    scratch = {8: [0.50] * 3, 16: [0.55] * 3, 32: [0.58] * 3}
    eff = label_efficiency_factor({16: [0.60] * 3}, scratch, 16)
    assert not eff.reached and eff.factor == pytest.approx(2.0) and eff.describe().startswith("≥ 2.0×")
    # rounding never overstates a bound: 300 / 32 = 9.375 is "≥ 9.3×", not "≥ 9.4×"
    eff = label_efficiency_factor({32: [0.9]}, {32: [0.5], 300: [0.6]}, 32)
    assert eff.describe().startswith("≥ 9.3×")


def test_factor_claims_agree_with_the_observed_means_on_random_curves():
    rng = np.random.default_rng(0)
    budgets = [8, 16, 32, 64, 128]
    for _ in range(300):
        scratch = {b: list(rng.uniform(0.4, 0.8, size=2).round(2)) for b in budgets}
        n = int(rng.choice(budgets))
        arm = {n: list(rng.uniform(0.4, 0.8, size=2).round(2))}
        eff = label_efficiency_factor(arm, scratch, n)
        score = np.mean(arm[n])
        means = {b: np.mean(v) for b, v in scratch.items()}
        if not eff.reached:  # "≥ k×": every observed baseline mean is below
            assert all(m < score for m in means.values()) and eff.factor == max(budgets) / n
            continue
        first = min(b for b, m in means.items() if m >= score - 1e-9)
        assert eff.matched_at == first and eff.factor <= first / n + 1e-12
        assert all(means[b] < score for b in budgets if b * (1 + 1e-12) < eff.baseline_budget)


def test_one_class_cells_are_left_out_of_the_claims():
    # scratch's seed 0 at 16 labels predicted one class (0.50, the majority share): without it scratch
    # ties the arm at 16 labels, so there is no gain to claim
    curves = {
        "scratch": {16: [0.50, 0.60, 0.60], 32: [0.65] * 3},
        "pretrained:mlm": {16: [0.60] * 3, 32: [0.70] * 3},
    }
    summary = summarize(_cells(curves, one_class={("scratch", 16, 0)}))
    row = _row(summary, 16)
    assert row["diff"][0] == pytest.approx(0) and row["upper_bound"] and row["factor"] <= 1.0 + 1e-9
    text = verdict(summary, focus_budget=16)
    assert "did not beat training from scratch at 16 labels" in text
    assert "left out of the comparisons" in text and "scratch @ 16: 1 seed(s)" in text
    # the scores table still shows the cell, with its flag
    table = next(r for r in summary["table"] if (r["arm"], r["budget"]) == ("scratch", 16))
    assert table["n_seeds"] == 3 and table["one_class"] == 1 and table["mean"] == pytest.approx(1.7 / 3)


def test_no_claim_at_a_budget_where_every_model_predicted_one_class():
    curves = {
        "scratch": {16: [0.50] * 3, 32: [0.60] * 3},
        "pretrained:mlm": {16: [0.60] * 3, 32: [0.70] * 3},
    }
    one = {("pretrained:mlm", 16, s) for s in range(3)}
    summary = summarize(_cells(curves, one_class=one))
    row = _row(summary, 16)
    assert row["no_claim"] and row["diff"] is None and row["text"].startswith("no claim")
    text = verdict(summary, focus_budget=16)
    assert "no claim, because every pretrained:mlm model at 16 labels predicted one class" in text
    # no worth is claimed at 16 labels (the "What paid" line speaks of 32 labels only)
    assert "at 16 labels" not in text.split(". ")[0] and "at 32 labels pretrained:mlm" in text.split(". ")[0]
    assert "worth" not in text.split("Caution")[0].split("its labels. ", 1)[1]
    md = markdown_report(summary, {}, text)
    assert "| pretrained:mlm | 16 | 3 | 60.0 | 60.0–60.0 | 3 |" in md  # still in the scores table

    # the baseline's models at the focus budget all one-class: no paired difference there, and the
    # factor rests on the other budgets, naming the one left out
    one = {("scratch", 16, s) for s in range(3)}
    summary = summarize(_cells(curves, one_class=one))
    row = _row(summary, 32)
    assert row["baseline_left_out"] == [16] and not row["reached"] and row["factor"] == pytest.approx(1.0)
    row = _row(summary, 16)
    assert row["diff"] is None and row["no_diff"] and row["matched_at"] == 32
    text = verdict(summary, focus_budget=16)
    assert "no paired difference at 16 labels (every scratch model at 16 labels predicted one class)" in text
    assert "leaving out 16 labels where every scratch model predicted one class" in text


def test_factor_interval_brackets_the_factor_and_keeps_bounds_as_bounds():
    scratch = {10: [0.50, 0.52, 0.48], 100: [0.60, 0.62, 0.58], 1000: [0.80, 0.79, 0.81]}
    arm = {10: [0.60, 0.61, 0.59], 1000: [0.90, 0.91, 0.89]}
    ci = factor_interval(arm, scratch, 10, n_boot=300)
    eff = label_efficiency_factor(arm, scratch, 10)
    assert ci.lo_kind == ci.hi_kind == "=" and ci.lo <= eff.factor <= ci.hi
    ci = factor_interval(arm, scratch, 1000, n_boot=300)  # scratch never gets to 0.90
    assert ci.lo_kind == "≥" and ci.describe() == "≥ 1.0×"
    summary = summarize(_cells(TIE))
    md = markdown_report(summary, {}, verdict(summary, focus_budget=16))
    assert "| factor | factor 95% CI |" in md and _row(summary, 16)["ci_text"] in md


def test_what_paid_names_the_best_use_of_the_unlabeled_text_against_the_strongest_label_only_baseline():
    curves = {
        "scratch": {32: [0.50, 0.52, 0.51], 100: [0.55, 0.56, 0.57], 300: [0.70, 0.71, 0.72]},
        "tfidf": {32: [0.58, 0.60, 0.59], 100: [0.64, 0.66, 0.65], 300: [0.75, 0.76, 0.77]},
        "nbsvm": {32: [0.57, 0.58, 0.59], 100: [0.66, 0.67, 0.68], 300: [0.74, 0.75, 0.76]},
        # wins clearly at 32, by less at 100 (where NB-LR is the stronger baseline), ties at 300
        "embeddings": {32: [0.66, 0.68, 0.67], 100: [0.70, 0.71, 0.72], 300: [0.76, 0.75, 0.77]},
        "embeddings+self": {32: [0.61, 0.62, 0.60], 100: [0.69, 0.70, 0.71], 300: [0.74, 0.77, 0.76]},
        "tfidf+self": {32: [0.59, 0.61, 0.60], 100: [0.65, 0.67, 0.66], 300: [0.77, 0.75, 0.78]},
    }
    summary = summarize(_cells(curves))
    text = verdict(summary)
    assert text.startswith("What paid")
    assert "at 32 labels embeddings (accuracy 67.0) beat TF-IDF (59.0) by +8.0 points" in text
    assert "at 100 labels embeddings (accuracy 71.0) beat NB-LR (67.0) by +4.0 points" in text
    # the factor against that baseline comes with its own interval
    assert "worth " in text and "95% CI" in text and "its labels" in text
    assert "at 300 labels nothing beat TF-IDF (76.0) beyond the noise (best: tfidf+self, +0.7 points" in text
    # a study without label-only baselines judges against scratch; one where nothing pays says so
    only = {a: curves[a] for a in ("scratch", "embeddings")}
    assert "against scratch" in verdict(summarize(_cells(only)))
    flat = {"tfidf": curves["tfidf"], "embeddings": curves["tfidf"]}
    assert verdict(summarize(_cells(flat))).startswith("Nothing paid")


def test_the_report_flags_a_probe_above_scratch_above_fine_tuning():
    curves = {
        "scratch": {32: [0.60, 0.61, 0.62], 100: [0.65, 0.66, 0.67]},
        "pretrained:mlm": {32: [0.57, 0.58, 0.59], 100: [0.70, 0.71, 0.72]},
        "pretrained:mlm/probe": {32: [0.64, 0.65, 0.66], 100: [0.68, 0.69, 0.70]},
    }
    text = verdict(summarize(_cells(curves)))
    assert "Warning: at 32 labels the frozen probe of pretrained:mlm beats scratch but fine-tuning" in text
    assert "pretrained:mlm+lpft (LP-FT with mean pooling)" in text and "train.llrd=0.8" in text
    curves["pretrained:mlm"][32] = [0.61, 0.62, 0.63]  # fine-tuning above scratch: nothing to flag
    assert "Warning" not in verdict(summarize(_cells(curves)))
