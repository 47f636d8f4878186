"""The value analysis statistics on hand-made curves with known answers."""

import math
import sqlite3

import numpy as np
import pytest

from lmvalue.value.overlap import text_overlap
from lmvalue.value.registry import Registry, RegistryError
from lmvalue.value.report import summarize, verdict, write_report
from lmvalue.value.stats import (
    bootstrap_ci,
    budget_to_reach,
    isotonic,
    label_efficiency_factor,
    labels_saved_area,
)


def test_interpolation_is_linear_in_log_budget():
    budgets, scores = [10, 100, 1000], [0.5, 0.6, 0.8]
    assert budget_to_reach(budgets, scores, 0.6) == pytest.approx(100)
    assert budget_to_reach(budgets, scores, 0.55) == pytest.approx(
        math.sqrt(10 * 100)
    )  # half way in log space
    assert budget_to_reach(budgets, scores, 0.7) == pytest.approx(math.sqrt(100 * 1000))
    assert budget_to_reach(budgets, scores, 0.4) == 10  # already there at the smallest budget
    assert budget_to_reach(budgets, scores, 0.81) is None  # never reaches


def test_non_monotone_baseline_is_made_monotone_first():
    assert list(isotonic([0.5, 0.7, 0.6, 0.8])) == pytest.approx([0.5, 0.65, 0.65, 0.8])
    # 0.65 reached at budget 100 on the monotone fit (not at the noisy 0.7 point)
    assert budget_to_reach([10, 100, 1000, 10000], [0.5, 0.7, 0.6, 0.8], 0.65) == pytest.approx(100)


def test_label_efficiency_factor_known_answers():
    scratch = {10: [0.50, 0.50], 100: [0.60, 0.60], 1000: [0.80, 0.80]}
    pretrained = {10: [0.60, 0.60], 100: [0.70, 0.70], 1000: [0.85, 0.85]}
    eff = label_efficiency_factor(pretrained, scratch, 10)
    assert eff.reached and eff.factor == pytest.approx(10.0)  # scratch needs 100 labels for 0.60
    eff = label_efficiency_factor(pretrained, scratch, 100)
    assert eff.factor == pytest.approx(math.sqrt(100 * 1000) / 100)
    eff = label_efficiency_factor(pretrained, scratch, 1000)
    assert not eff.reached and eff.factor == pytest.approx(1.0) and eff.describe().startswith("≥")


def test_labels_saved_area_of_a_shifted_curve():
    # The arm reaches every score with exactly 50 fewer labels than the baseline.
    base = {100: [0.5] * 3, 200: [0.6] * 3, 300: [0.7] * 3}
    arm = {50: [0.5] * 3, 150: [0.6] * 3, 250: [0.7] * 3}
    est, lo, hi = labels_saved_area(arm, base, n_boot=50)
    assert est == pytest.approx(50, abs=1e-6) and lo == pytest.approx(50, abs=1e-6)


def test_bootstrap_interval_covers_at_roughly_the_nominal_rate():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 300
    for t in range(trials):
        sample = rng.normal(0.7, 0.05, size=20)
        _, lo, hi = bootstrap_ci(sample, n_boot=500, seed=t)
        covered += lo <= 0.7 <= hi
    # percentile bootstrap with n=20 under-covers slightly; nominal 95%
    assert 0.88 <= covered / trials <= 0.99


def test_registry_round_trip_and_not_sqlite(tmp_path):
    reg = Registry(tmp_path / "results.sqlite")
    reg.record_cell(
        "scratch",
        100,
        0,
        status="done",
        score=0.7,
        metrics={"accuracy": 0.7},
        config={"lr": 1},
        wall_s=1.0,
        cpu_s=2.0,
        trainable_params=10,
        train_flops=1e9,
    )
    reg.record_cell(
        "scratch", 100, 1, status="failed", score=None, metrics={}, config={}, wall_s=0, cpu_s=0, error="boom"
    )
    assert reg.finished() == {("scratch", 100, 0), ("scratch", 100, 1)}
    # a concurrent reader sees committed rows
    other = sqlite3.connect(tmp_path / "results.sqlite")
    assert other.execute("select count(*) from cells").fetchone()[0] == 2
    reg.close()

    bad = tmp_path / "bad" / "results.sqlite"
    bad.parent.mkdir()
    bad.write_text("arm,budget\nscratch,100\n")
    with pytest.raises(RegistryError, match="not an SQLite"):
        Registry(bad)
    assert bad.read_text() == "arm,budget\nscratch,100\n"


def test_registry_from_another_version_is_refused(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    reg.db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    reg.close()
    with pytest.raises(RegistryError, match="schema 99"):
        Registry(tmp_path / "r.sqlite")


def _cells(curves):
    out = []
    for arm, curve in curves.items():
        for budget, scores in curve.items():
            for seed, s in enumerate(scores):
                out.append(
                    {
                        "arm": arm,
                        "budget": budget,
                        "seed": seed,
                        "status": "done",
                        "score": s,
                        "error": None,
                        "wall_s": 1.0,
                        "cpu_s": 1.0,
                        "train_flops": 1e9,
                        "trainable_params": 100,
                    }
                )
    return out


def test_report_contains_plot_table_and_verdict(tmp_path):
    cells = _cells(
        {
            "scratch": {10: [0.50, 0.52, 0.51], 100: [0.60, 0.61, 0.59], 1000: [0.80, 0.79, 0.81]},
            "pretrained:mlm": {10: [0.61, 0.60, 0.62], 100: [0.70, 0.71, 0.69], 1000: [0.80, 0.81, 0.80]},
            "tfidf": {10: [0.55, 0.55, 0.55], 100: [0.65, 0.64, 0.66], 1000: [0.78, 0.78, 0.78]},
        }
    )
    cells.append(
        {
            "arm": "pretrained:mlm",
            "budget": 10,
            "seed": 9,
            "status": "failed",
            "score": None,
            "error": "out of memory",
            "wall_s": 0,
            "cpu_s": 0,
            "train_flops": 0,
            "trainable_params": None,
        }
    )
    summary = summarize(cells)
    text = verdict(summary, corpus_desc="7 MB of reviews")
    assert "pretrained:mlm" in text and "labels" in text and "stops paying off above 100 labels" in text
    assert "1 run(s) failed and are left out" in text
    html_path, md_path = write_report(tmp_path, summary, {"name": "t", "overlap_text": "0 of 3"}, text)
    page = html_path.read_text()
    assert "<img id='learning-curves'" in page and "data:image/png;base64," in page
    assert "<table>" in page and "pretrained:mlm" in page and "out of memory" in page
    assert "<script" not in page and "http" not in page.split("<body>")[1]
    md = md_path.read_text()
    assert "| pretrained:mlm | scratch | 10 |" in md and "Failures" in md


def test_overlap_exact_and_near():
    corpus = ["这个东西很好，下次还买", "质量太差了，不推荐", "completely unrelated text here"]
    test = ["这个东西很好，下次还买！", "质量太差了不推荐啊", "全新的评论内容，和语料无关"]
    o = text_overlap(test, corpus)
    assert o["exact"] == 1 and o["near"] == 2 and o["test"] == 3


def test_models_that_predict_one_class_are_flagged_in_table_and_verdict(tmp_path):
    from lmvalue.tasks.metrics import classification_scores

    s = classification_scores(["a", "b", "a", "a"], ["a", "a", "a", "a"], ["a", "b"])
    assert s["predicted_classes"] == 1 and s["top_prediction_share"] == 1.0
    assert classification_scores(["a", "b"], ["a", "b"], ["a", "b"])["predicted_classes"] == 2
    cells = _cells(
        {
            "scratch": {10: [0.53, 0.53, 0.53], 100: [0.60, 0.61, 0.59]},
            "pretrained:mlm": {10: [0.61, 0.60, 0.62], 100: [0.70, 0.71, 0.69]},
        }
    )
    for c in cells:
        c["metrics"] = {"predicted_classes": 1 if (c["arm"], c["budget"]) == ("scratch", 10) else 2}
    summary = summarize(cells)
    assert summary["one_class_cells"] == [{"arm": "scratch", "budget": 10, "seeds": 3}]
    row = next(r for r in summary["table"] if (r["arm"], r["budget"]) == ("scratch", 10))
    assert row["one_class"] == 3
    text = verdict(summary)
    assert "3 fine-tuned model(s) predicted a single class" in text and "scratch @ 10: 3 seed(s)" in text
    _, md_path = write_report(tmp_path, summary, {"name": "t"}, text)
    md = md_path.read_text()
    assert "| scratch | 10 | 3 | 53.0 | 53.0–53.0 | 3 |" in md and "One-class models" in md
    # without such models the verdict carries no caution
    for c in cells:
        c["metrics"] = {"predicted_classes": 2}
    assert "Caution" not in verdict(summarize(cells))


def test_a_failed_pretrained_arm_is_named_in_the_verdict():
    cells = _cells({"scratch": {10: [0.5, 0.52], 100: [0.6, 0.61]}})
    arms = {"pretrained:mlm": {"status": "failed", "info": {}, "error": "KeyError: x"}}
    text = verdict(summarize(cells, arms))
    assert "No pretrained arm was compared with scratch (pretrained:mlm: preparing the arm failed" in text


def test_verdict_judges_the_embeddings_and_prompt_arms_against_scratch_and_tfidf():
    cells = _cells(
        {
            "scratch": {10: [0.50, 0.52, 0.51], 100: [0.60, 0.61, 0.59]},
            "embeddings": {10: [0.60, 0.62, 0.61], 100: [0.70, 0.71, 0.72]},
            "prompt:zero": {10: [0.50, 0.50, 0.50], 100: [0.50, 0.50, 0.50]},
            "tfidf": {10: [0.55, 0.55, 0.55], 100: [0.65, 0.64, 0.66]},
        }
    )
    text = verdict(summarize(cells), corpus_desc="7 MB of reviews")
    assert "embeddings: word vectors learned from 7 MB of reviews is worth" in text
    assert "prompt:zero did not beat training from scratch at 100 labels" in text
    assert "Against the TF-IDF baseline at 100 labels, embeddings is +6.0 points" in text


def test_verdict_judges_unlabeled_text_against_the_strongest_label_only_baseline():
    cells = _cells(
        {
            "scratch": {10: [0.50, 0.52, 0.51], 100: [0.60, 0.61, 0.59]},
            "pretrained:mlm": {10: [0.60, 0.62, 0.61], 100: [0.70, 0.71, 0.72]},
            "tfidf": {10: [0.55, 0.55, 0.55], 100: [0.65, 0.64, 0.66]},
            "nbsvm": {10: [0.58, 0.57, 0.58], 100: [0.69, 0.70, 0.71]},
        }
    )
    text = verdict(summarize(cells))
    assert (
        "Against the strongest label-only baseline (NB-LR, accuracy 70.0) at 100 labels, pretrained:mlm is +1.0"
        in text
    )
    assert "TF-IDF baseline" not in text
