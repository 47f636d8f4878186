"""Successful runs through the command line (`lmvalue.cli.main`): exit 0, and the files each command
writes hold what it said. Bad inputs of the same commands are in tests/test_bad_inputs.py; predict
from stdin is in tests/test_reliability.py."""

import csv
import dataclasses
import json
import sqlite3

import pytest

from lmvalue.cli import main


@pytest.fixture(scope="module")
def labeled_jsonl(reviews, tmp_path_factory):
    """300 real reviews (150 pos, 150 neg) as a JSON Lines file."""
    pos = [r for r in reviews if r["label"] == "pos"][:150]
    neg = [r for r in reviews if r["label"] == "neg"][:150]
    path = tmp_path_factory.mktemp("data") / "reviews.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n" for r in pos + neg
        ),
        encoding="utf-8",
    )
    return path


def test_tokenizer_trains_from_a_text_file_and_loads_back(reviews, tmp_path, capsys):
    from transformers import AutoTokenizer

    texts = [r["text"] for r in reviews[:400]]
    (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    args = ["tokenizer", "--data", str(tmp_path / "corpus.txt"), "-o", str(out), "--vocab-size", "3000"]
    assert main(args) == 0
    said = capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(out)
    assert f"trained a wordpiece tokenizer with {len(tok)} tokens" in said
    # every one of the 1,834 distinct characters of the corpus is in, and fewer than 3,000 entries
    assert 1834 < len(tok) <= 3000
    assert {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"} <= set(tok.get_vocab())
    # it covers the corpus it was trained on: no unknown tokens, and text decodes back
    ids = [i for t in texts[:100] for i in tok(t, add_special_tokens=False)["input_ids"]]
    assert len(ids) > 3000 and tok.unk_token_id not in ids
    sample = texts[0].lower()
    assert tok.decode(tok(sample)["input_ids"], skip_special_tokens=True).replace(" ", "") == sample.replace(
        " ", ""
    )
    # a second run onto the same folder needs --overwrite
    assert main(args) == 2
    assert main([*args, "--overwrite", "--kind", "bpe"]) == 0
    assert "trained a bpe tokenizer" in capsys.readouterr().out
    assert AutoTokenizer.from_pretrained(out).get_vocab() != tok.get_vocab()


def test_value_then_report_rebuilds_the_same_report_from_the_registry(labeled_jsonl, tmp_path, capsys):
    study = tmp_path / "study"
    args = [
        "value",
        "--data",
        str(labeled_jsonl),
        "--test-size",
        "100",
        "--arms",
        "scratch",
        "tfidf",
        "--budgets",
        "16",
        "64",
        "--seeds",
        "2",
        "--vocab-size",
        "500",
        "--finetune",
        "train.max_steps=10",
        "train.min_steps=10",
        "train.batch_size=8",
        "data.max_length=48",
        "-o",
        str(study),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "verdict: " in out and f"report: {study / 'report.html'}" in out
    with sqlite3.connect(study / "results.sqlite") as db:
        rows = db.execute("SELECT arm, budget, seed, status, score FROM cells").fetchall()
    assert len(rows) == 8  # 2 arms x 2 budgets x 2 seeds
    assert {(a, b, s) for a, b, s, _, _ in rows} == {
        (a, b, s) for a in ("scratch", "tfidf") for b in (16, 64) for s in (0, 1)
    }
    assert all(status == "done" and 0 < score <= 1 for *_, status, score in rows), rows
    md = (study / "report.md").read_text(encoding="utf-8")
    assert "scratch" in md and "tfidf" in md and "Verdict" in md

    # `report` writes both files again from the registry alone: the same Markdown
    (study / "report.md").unlink()
    (study / "report.html").unlink()
    assert main(["report", str(study)]) == 0
    assert "verdict: " in capsys.readouterr().out
    assert (study / "report.md").read_text(encoding="utf-8") == md
    assert (study / "report.html").stat().st_size > 1000


def test_continual_runs_two_stages_from_a_yaml_config(tmp_path, capsys):
    import yaml

    config = {
        "stages": [
            {"source": "demo:zh-news", "max_steps": 10},
            {"source": "demo:zh-reviews", "max_steps": 10},
        ],
        "eval_max_blocks": 8,
        "pretrain": {
            "model": {"preset": "tiny", "hidden": 64, "heads": 2, "ffn": 128, "max_position_embeddings": 128},
            "tokenizer": {"vocab_size": 800},
            "data": {"max_docs": 600, "block_size": 64, "eval_fraction": 0.05},
            "train": {
                "batch_size": 8,
                "eval_every": 10,
                "lr": 2e-3,
                "warmup": 2,
                "progress": False,
                "threads": 1,
            },
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / "cont"
    assert main(["continual", "-c", str(tmp_path / "c.yaml"), "-o", str(out), "--replay", "0.25"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["corpora"] == ["demo:zh-news", "demo:zh-reviews"]
    assert [s["steps"] for s in metrics["stages"]] == [10, 10]
    losses = metrics["held_out_loss"]
    assert losses[0] == [None, None] and all(len(r) == 2 and all(v > 0 for v in r) for r in losses[1:])
    # what it printed is what it wrote
    assert f"BWT {metrics['bwt']:+.4f}" in printed
    assert f"{losses[2][1]:.4f}" in printed
    for i, name in ((1, "demo_zh-news"), (2, "demo_zh-reviews")):
        assert (out / f"stage{i}-{name}" / "model" / "config.json").is_file()
    assert (out / "forgetting.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["replay"] == 0.25


def test_demo_runs_end_to_end_with_its_settings_shrunk(monkeypatch, tmp_path, capsys):
    """`lmvalue demo` has no flag that makes it small (--quick is still 1,000 pretraining steps and
    72 cells), so the study settings that `demo_config` returns are shrunk here (monkeypatched);
    the command's own path (flags, --quick steps, printing, report) is the real one."""
    from lmvalue.value import study

    real = study.demo_config
    seen = {}

    def small(output_dir, **kw):
        cfg = real(output_dir, **kw)
        seen.update(kw)
        return dataclasses.replace(
            cfg,
            arms=["pretrained:mlm", "tfidf"],
            budgets=[32],
            seeds=1,
            test_size=100,
            vocab_size=500,
            pretrain_overrides={
                **cfg.pretrain_overrides,
                "model.hidden": 64,
                "model.heads": 2,
                "model.ffn": 128,
                "data.max_docs": 1500,
                "data.block_size": 64,
                "train.batch_size": 8,
                "train.progress": False,
            },
            finetune_overrides={
                **cfg.finetune_overrides,
                "train.min_steps": 10,
                "train.max_steps": 10,
                "train.batch_size": 8,
            },
        )

    monkeypatch.setattr(study, "DEMO_QUICK_STEPS", 12)
    monkeypatch.setattr(study, "demo_config", small)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out)]) == 0
    assert seen["pretrain_steps"] == 12  # --quick chose the quick steps
    printed = capsys.readouterr().out
    assert "12 steps of pretraining" in printed and "verdict: " in printed and "wall time: " in printed
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = db.execute("SELECT arm, status FROM cells").fetchall()
    assert sorted(rows) == [("pretrained:mlm", "done"), ("tfidf", "done")]
    pretrained = json.loads((out / "arms" / "pretrained_mlm" / "metrics.json").read_text())
    assert pretrained["steps"] == 12
    assert (out / "report.html").is_file() and "pretrained:mlm" in (out / "report.md").read_text()


@pytest.fixture(scope="module")
def tfidf_model(reviews, tmp_path_factory):
    """A TF-IDF sentiment classifier trained through the CLI."""
    out = tmp_path_factory.mktemp("tfidf") / "run"
    data = tmp_path_factory.mktemp("tfidf-data") / "train.jsonl"
    data.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reviews[:800]), encoding="utf-8"
    )
    args = ["finetune", "--method", "tfidf", "--data", str(data), "--train-size", "400"]
    assert main([*args, "data.test_size=100", "-o", str(out)]) == 0
    return out / "model"


def test_predict_reads_jsonl_and_csv_inputs_in_order(tfidf_model, reviews, tmp_path, capsys):
    texts = [r["text"] for r in reviews[1000:1006]]
    # reference: the same texts one per line
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["predict", "-m", str(tfidf_model), "-i", str(tmp_path / "in.txt")]) == 0
    reference = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in reference] == texts

    # .jsonl: a text field among others, an empty line, a bare JSON string
    lines = [json.dumps({"id": i, "text": t}, ensure_ascii=False) for i, t in enumerate(texts[:3])]
    lines += ["", json.dumps(texts[3], ensure_ascii=False)]
    lines += [json.dumps({"text": t, "label": "x"}, ensure_ascii=False) for t in texts[4:]]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", "-m", str(tfidf_model), "-i", str(tmp_path / "in.jsonl"), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[3] == {"line": 4, "empty": True}
    got = rows[:3] + rows[4:]
    assert [r["text"] for r in got] == texts
    for row, ref in zip(got, reference, strict=True):
        assert row["label"] == ref["label"] and row["probs"] == pytest.approx(ref["probs"], abs=1e-9)

    # .csv with the text in a column named by --text-column, written as CSV
    with open(tmp_path / "in.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "stars"])
        for i, t in enumerate(texts):
            w.writerow([t, i])
    csv_out = tmp_path / "out.csv"
    args = ["predict", "-m", str(tfidf_model), "-i", str(tmp_path / "in.csv"), "--text-column", "review"]
    assert main([*args, "-o", str(csv_out)]) == 0
    with open(csv_out, encoding="utf-8", newline="") as f:
        written = list(csv.DictReader(f))
    assert [int(r["line"]) for r in written] == list(range(1, 7))
    assert [r["text"] for r in written] == texts
    for row, ref in zip(written, reference, strict=True):
        assert row["label"] == ref["label"]
        assert float(row["p_pos"]) == pytest.approx(ref["probs"]["pos"], abs=1e-6)
    # the labels are not all one class: these six reviews are mixed
    assert len({r["label"] for r in reference}) == 2, reference
