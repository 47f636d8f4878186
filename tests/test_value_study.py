"""The study runner: resume after SIGKILL, failures recorded, folder protection, a real tiny study."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import write_balanced_reviews

from lmvalue.errors import ConfigError, LmvalueError
from lmvalue.value.registry import Registry
from lmvalue.value.study import StudyConfig, run_study, study_problems

FAKE = r"""
import json, os, signal, sys
from lmvalue.value.study import StudyConfig, run_study

cfg = StudyConfig(**json.loads(sys.argv[1]))
log_path, kill_at = sys.argv[2], int(sys.argv[3])

def runner(arm, state, train, test, budget, seed, study):
    with open(log_path, "a") as f:
        f.write(f"{arm.name},{budget},{seed}\n")
    n = sum(1 for _ in open(log_path))
    if n == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"metrics": {"accuracy": 0.5 + budget / 1000 + seed / 100 + (0.1 if arm.name == "tfidf" else 0)}}

run_study(cfg, cell_runner=runner)
"""


@pytest.fixture()
def labeled_csv(tmp_path):
    return write_balanced_reviews(tmp_path / "reviews.jsonl", 150)


def study_kwargs(labeled_csv, out) -> dict:
    return {
        "output_dir": str(out),
        "data": str(labeled_csv),
        "test_size": 100,
        "arms": ["scratch", "tfidf"],
        "budgets": [8, 16],
        "seeds": 2,
        "vocab_size": 500,
    }


def run_fake(kw: dict, log: Path, *, kill_at: int) -> subprocess.CompletedProcess:
    """The study with the fake cell runner in a child process, SIGKILLed at cell ``kill_at`` (0: never)."""
    return subprocess.run(
        [sys.executable, "-c", FAKE, json.dumps(kw), str(log), str(kill_at)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_killed_study_resumes_without_losing_or_repeating_cells(labeled_csv, tmp_path):
    out = tmp_path / "study"
    log = tmp_path / "cells.log"
    kw = study_kwargs(labeled_csv, out)
    proc = run_fake(kw, log, kill_at=5)
    assert proc.returncode == -9, proc.stderr[-2000:]
    reg = Registry(out / "results.sqlite")
    assert len(reg.finished()) == 4  # cells 1-4 finished; the 5th was killed while running
    reg.close()

    kw["resume"] = True
    proc = run_fake(kw, log, kill_at=0)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = log.read_text().splitlines()
    assert len(runs) == 9 and len(set(runs)) == 8  # 8 cells; only the killed one ran twice
    assert runs.count(runs[4]) == 2
    reg = Registry(out / "results.sqlite")
    cells = reg.cells()
    reg.close()
    assert len(cells) == 8 and all(c["status"] == "done" for c in cells)
    assert (out / "report.html").is_file() and "scratch" in (out / "report.md").read_text()


def test_failing_cells_are_recorded_and_the_study_goes_on(labeled_csv, tmp_path):
    def runner(arm, state, train, test, budget, seed, study):
        if arm.name == "tfidf" and budget == 16:
            raise RuntimeError("simulated crash")
        assert len(train) == 200 and len(test) == 100
        return {"metrics": {"accuracy": 0.6}}

    summary = run_study(StudyConfig(**study_kwargs(labeled_csv, tmp_path / "s")), cell_runner=runner)
    assert len(summary["failures"]) == 2 and "simulated crash" in summary["failures"][0]["error"]
    assert "simulated crash" in Path(summary["report_md"]).read_text()


def test_existing_study_is_not_overwritten(labeled_csv, tmp_path):
    kw = study_kwargs(labeled_csv, tmp_path / "s")
    run_study(StudyConfig(**kw), cell_runner=lambda *a: {"metrics": {"accuracy": 0.5}})
    before = (tmp_path / "s" / "results.sqlite").stat().st_mtime_ns
    with pytest.raises(LmvalueError, match="already holds a study"):
        run_study(StudyConfig(**kw), cell_runner=lambda *a: {"metrics": {"accuracy": 0.5}})
    assert (tmp_path / "s" / "results.sqlite").stat().st_mtime_ns == before


def test_resume_refuses_settings_that_would_mix_results(labeled_csv, tmp_path):
    kw = study_kwargs(labeled_csv, tmp_path / "s")
    fake = lambda *a: {"metrics": {"accuracy": 0.5}}  # noqa: E731
    run_study(StudyConfig(**kw), cell_runner=fake)
    with pytest.raises(ConfigError, match="preset: 'mini' now, 'tiny' when started"):
        run_study(StudyConfig(**kw, preset="mini", resume=True), cell_runner=fake)
    with pytest.raises(ConfigError, match="finetune_overrides"):
        run_study(StudyConfig(**kw, finetune_overrides={"train.lr": 1e-4}, resume=True), cell_runner=fake)
    # more arms, budgets or seeds are fine
    run_study(StudyConfig(**{**kw, "seeds": 3}, resume=True), cell_runner=fake)


def test_budgets_larger_than_the_pool_are_capped(labeled_csv, tmp_path, caplog):
    kw = {**study_kwargs(labeled_csv, tmp_path / "s"), "budgets": [8, 5000], "arms": ["tfidf"], "seeds": 1}
    with caplog.at_level("WARNING", logger="lmvalue"):
        summary = run_study(StudyConfig(**kw), cell_runner=lambda *a: {"metrics": {"accuracy": 0.5}})
    assert "capped to 200" in caplog.text and "fewer than 2 seeds" in caplog.text
    assert sorted(summary["curves"]["tfidf"]) == [8, 200]


def test_report_renders_in_a_real_browser(labeled_csv, tmp_path, chromium):
    """The page renders offline in headless Chromium: the embedded plot is drawn (not a broken image)."""
    import numpy as np
    from PIL import Image

    summary = run_study(
        StudyConfig(**study_kwargs(labeled_csv, tmp_path / "s")),
        cell_runner=lambda arm, st, tr, te, b, s, c: {"metrics": {"accuracy": 0.5 + b / 100 + s / 50}},
    )
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1000,1400",
            f"--screenshot={shot}",
            Path(summary["report_html"]).as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The learning-curve plot draws coloured lines: many pixels that are neither white/grey nor black text.
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    assert colourful.sum() > 2000
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--dump-dom",
            Path(summary["report_html"]).as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "learning-curves" in dom and "<table>" in dom


def test_tiny_end_to_end_study(labeled_csv, tmp_path):
    """Real arms: a tokenizer, 30 steps of pretraining, fine-tuning and TF-IDF cells, report."""
    tiny = {"model.hidden": 64, "model.heads": 2, "model.ffn": 128, "model.num_layers": 2}
    cfg = StudyConfig(
        output_dir=str(tmp_path / "study"),
        data=str(labeled_csv),
        test_size=100,
        arms=["scratch", "pretrained:mlm", "tfidf", "prompt:zero", "prompt:pet", "embeddings"],
        budgets=[16, 64],
        seeds=2,
        preset="tiny",
        vocab_size=600,
        pretrain_minutes=2,
        pretrain_max_steps=30,
        pretrain_overrides={
            **tiny,
            "data.block_size": 64,
            "train.batch_size": 8,
            "train.eval_every": 15,
            "train.progress": False,
            "train.lr": 2e-3,
        },
        finetune_overrides={
            "train.max_steps": 15,
            "train.min_steps": 15,
            "train.batch_size": 8,
            "data.max_length": 64,
            "method.prompting.templates": ["{text}总之很{mask}。"],  # used by the prompt arms only
            "method.prompting.verbalizer": "pos=好,neg=差",
        },
    )
    summary = run_study(cfg)
    assert not summary["failures"], summary["failures"]
    assert sorted(summary["curves"]) == [
        "embeddings",
        "pretrained:mlm",
        "prompt:pet",
        "prompt:zero",
        "scratch",
        "tfidf",
    ]
    assert all(len(v) == 2 for curve in summary["curves"].values() for v in curve.values())
    reg = Registry(tmp_path / "study" / "results.sqlite")
    cells = reg.cells()
    arms = reg.arms()
    reg.close()
    assert len(cells) == 24
    by_arm = {}
    for c in cells:
        by_arm.setdefault(c["arm"], []).append(c)
    assert all(c["metrics"]["steps"] == 0 and not c["trainable_params"] for c in by_arm["prompt:zero"])
    # zero-shot uses no label: the same test predictions at every budget of a seed
    assert len({c["score"] for c in by_arm["prompt:zero"]}) == 1
    assert all(c["metrics"]["steps"] == 15 for c in by_arm["prompt:pet"])
    assert sorted(p.name for p in (tmp_path / "study" / "arms").iterdir()) == [
        "pretrained_mlm"
    ]  # one pretraining
    assert all(c["metrics"]["accuracy"] > 0 for c in by_arm["embeddings"])
    assert arms["embeddings"]["info"]["vectors"].endswith(".kv")
    neural = [c for c in cells if c["arm"] not in ("tfidf", "prompt:zero", "embeddings")]
    assert all(c["trainable_params"] and c["train_flops"] and c["wall_s"] > 0 for c in neural)
    assert arms["pretrained:mlm"]["info"]["pretrain_tokens"] > 0
    assert (tmp_path / "study" / "arms" / "pretrained_mlm" / "model" / "config.json").is_file()
    md = (tmp_path / "study" / "report.md").read_text()
    assert "pretrained:mlm" in md and "Verdict" in md


def test_demo_settings_are_the_issue_shape_and_every_cell_config_is_valid(tmp_path):
    from lmvalue.config import FinetuneConfig, PretrainConfig, build_config
    from lmvalue.value.study import cell_overrides, demo_config, parse_arm

    cfg = demo_config(str(tmp_path / "demo"))
    assert cfg.arms == [
        "scratch",
        "pretrained:mlm",
        "pretrained:mlm/probe-hybrid",
        "tfidf",
        "nbsvm",
        "embeddings",
        "hybrid",
    ]
    assert cfg.seeds == 3
    assert cfg.pretrain_steps == 4000 and cfg.pretrain_minutes is None  # reproducible on any machine
    assert len(cfg.budgets) == 4
    assert not study_problems(cfg)
    states = {
        "scratch": {"from_scratch": True, "tokenizer": str(tmp_path / "tok")},
        "pretrained:mlm": {"model": str(tmp_path / "arm"), "from_scratch": False},
        "pretrained:mlm/probe-hybrid": {"model": str(tmp_path / "arm"), "from_scratch": False},
        "tfidf": {},
        "nbsvm": {},
        "embeddings": {"vectors": str(tmp_path / "v.kv")},
        "hybrid": {"vectors": str(tmp_path / "v.kv")},
    }
    for name, state in states.items():
        over = cell_overrides(parse_arm(name), state, 100, 0, cfg, str(tmp_path / "cell"))
        ft = build_config(FinetuneConfig, overrides=over)  # raises on an unknown or invalid setting
        if name in ("scratch", "pretrained:mlm"):
            assert ft.train.lr_search and ft.train.min_steps >= 100
    build_config(PretrainConfig, overrides={**cfg.pretrain_overrides, "model.preset": cfg.preset})


def test_head_options_reach_the_network_arms_only(tmp_path):
    from lmvalue.config import FinetuneConfig, build_config
    from lmvalue.value.study import StudyConfig, cell_overrides, parse_arm

    cfg = StudyConfig(finetune_overrides={"model.pooling": "mean", "model.reinit_layers": 1})
    states = {
        "pretrained:rtd": {"model": str(tmp_path / "arm"), "from_scratch": False},
        "tfidf": {},
        "embeddings": {"vectors": str(tmp_path / "v.kv")},
        "prompt:pet": {"model": str(tmp_path / "arm"), "from_scratch": False},
    }
    for name, state in states.items():
        over = cell_overrides(parse_arm(name), state, 100, 0, cfg, str(tmp_path / "cell"))
        ft = build_config(FinetuneConfig, overrides=over)  # a head option on tfidf would be refused
        network = name == "pretrained:rtd"
        assert (ft.model.pooling, ft.model.reinit_layers) == (("mean", 1) if network else ("cls", 0))


def test_an_lpft_arm_shares_the_pretraining_and_fine_tunes_with_lp_ft_and_mean_pooling(tmp_path):
    from lmvalue.config import FinetuneConfig, build_config
    from lmvalue.value.study import LPFT_FINETUNE, StudyConfig, cell_overrides, parse_arm, preparation_graph

    arm = parse_arm("pretrained:mlm+lpft")
    assert (arm.kind, arm.arg, arm.method, arm.lpft) == ("pretrained", "mlm", "full", True)
    assert arm.pretraining == parse_arm("pretrained:mlm").pretraining  # one pretraining run for both
    nodes, _ = preparation_graph([parse_arm("pretrained:mlm"), arm])
    assert [n.key for n in nodes if n.key.startswith("pretraining:")] == ["pretraining:pretrained:mlm"]
    both = parse_arm("pretrained:mlm+lpft+uda")
    assert both.lpft and both.uda and both.method == "full"
    assert parse_arm("checkpoint:hfl/rbt3/lora+lpft").method == "lora"

    cfg = StudyConfig()
    state = {"model": str(tmp_path / "arm"), "from_scratch": False}
    plain = cell_overrides(parse_arm("pretrained:mlm"), state, 100, 0, cfg, str(tmp_path / "c"))
    lpft = cell_overrides(arm, state, 100, 0, cfg, str(tmp_path / "c"))
    assert {k: v for k, v in lpft.items() if plain.get(k) != v} == LPFT_FINETUNE
    ft = build_config(FinetuneConfig, overrides=lpft)
    assert (ft.model.head_init, ft.model.pooling) == ("probe", "mean")
    assert ft.train.lr_search  # the small-model recipe still applies
    for bad in (
        "tfidf+lpft",
        "embeddings+lpft",
        "pretrained:mlm/probe+lpft",
        "prompt:pet+lpft",
        "pretrained:mlm+uda+lpft",
        "pretrained:mlm+lpft+lpft",
        "distill:embeddings+lpft",
    ):
        with pytest.raises(ConfigError, match=r"\+lpft"):
            parse_arm(bad)


def test_arm_specs_keep_slashes_of_paths_and_hub_names():
    from lmvalue.value.study import parse_arm

    cases = {
        "checkpoint:hfl/rbt3": ("checkpoint", "hfl/rbt3", "full"),
        "checkpoint:hfl/rbt3/lora": ("checkpoint", "hfl/rbt3", "lora"),
        "checkpoint:/data/runs/pre/model": ("checkpoint", "/data/runs/pre/model", "full"),
        "continued:runs/pre/model/pet": ("continued", "runs/pre/model", "pet"),
        "pretrained:mlm+sop/lora": ("pretrained", "mlm+sop", "lora"),
        "scratch/adapter": ("scratch", None, "adapter"),
        "tfidf": ("tfidf", None, "tfidf"),
    }
    for spec, expected in cases.items():
        arm = parse_arm(spec)
        assert (arm.kind, arm.arg, arm.method) == expected, spec
    with pytest.raises(ConfigError, match="needs an argument"):
        parse_arm("checkpoint:/lora")


def test_the_recipe_reaches_the_small_model_arms_only_and_yields_to_the_user(tmp_path):
    from lmvalue.value.study import RECIPE_FINETUNE, StudyConfig, cell_overrides, parse_arm

    states = {
        "scratch": {"from_scratch": True, "tokenizer": str(tmp_path / "tok")},
        "pretrained:mlm": {"model": str(tmp_path / "arm"), "from_scratch": False},
        "checkpoint:hfl/rbt3": {"model": "hfl/rbt3", "from_scratch": False},
        "continued:hfl/rbt3": {"model": str(tmp_path / "cont"), "from_scratch": False},
    }
    for user, expect_recipe in (
        ({}, True),
        ({"train.lr": 5e-5}, False),
        ({"train.lr_search": [1e-4]}, False),
    ):
        cfg = StudyConfig(finetune_overrides=user)
        for name, state in states.items():
            over = cell_overrides(parse_arm(name), state, 100, 0, cfg, str(tmp_path / "cell"))
            small = name in ("scratch", "pretrained:mlm")
            has = over.get("train.lr_search") == RECIPE_FINETUNE["train.lr_search"]
            assert has == (small and expect_recipe), (user, name)
            for key, value in user.items():
                assert over[key] == value
    assert not StudyConfig(recipe=False).recipe


def test_arm_options_parse_and_are_refused_where_they_do_not_apply():
    from lmvalue.value.study import parse_arm

    arm = parse_arm("pretrained:mlm@model.preset=mini,data.block_size=64/lora")
    assert (arm.kind, arm.arg, arm.method) == ("pretrained", "mlm", "lora")
    assert arm.options == {"model.preset": "mini", "data.block_size": "64"}
    assert arm.pretraining == "pretrained:mlm@data.block_size=64,model.preset=mini"  # sorted
    arm = parse_arm("continued:hfl/rbt3@train.lr=1e-4")
    assert (arm.arg, arm.options) == ("hfl/rbt3", {"train.lr": "1e-4"})
    assert parse_arm("continued:/data/x@y/model").options == {}  # an "@" of a path, not options
    assert parse_arm("pretrained:mlm").pretraining == "pretrained:mlm"
    problems = {
        "pretrained:mlm@preset=mini": "section.field=VALUE",
        "pretrained:mlm@data.source=x.txt": "set by the study",
        "pretrained:mlm@model.tokenizer=tok": "set by the study",
        "prompt:zero@train.lr=1": "only pretrained: and continued:",
        "pretrained:mlm@model.presett=mini": "unknown option 'model.presett'",
        "pretrained:mlm@data.block_size=abc": "expected int",
        "pretrained:mlm/lora@model.preset=mini": "write the method last",
        "scratch/probe": "a probe reads a pretrained encoder",
        "continued:hfl/rbt3@tokenizer.vocab_size=500": "keeps its checkpoint's tokenizer",
        # checked together with the study's own pretraining settings (block size 128 by default)
        "pretrained:mlm@model.max_position_embeddings=64": "max_position_embeddings",
    }
    for spec, message in problems.items():
        found = study_problems(StudyConfig(arms=[spec]))
        assert len(found) == 1 and message in found[0] and spec in found[0], (spec, found)
    # the study's one tokenizer is shared by all arms: a study-wide tokenizer option would be ignored
    found = study_problems(StudyConfig(pretrain_overrides={"tokenizer.vocab_size": 500}))
    assert len(found) == 1 and "--vocab-size" in found[0] and "@tokenizer.vocab_size=VALUE" in found[0]


def test_arm_options_reach_that_arms_pretraining_only(labeled_csv, tmp_path):
    """Two pretrained arms of one study, one with its own depth and block size: two pretrainings."""
    seen = []

    def runner(arm, state, train, test, budget, seed, study):
        seen.append((arm.name, state["model"]))
        return {"metrics": {"accuracy": 0.5}}

    other = "pretrained:mlm@model.num_layers=1,data.block_size=32,tokenizer.vocab_size=300"
    third = "pretrained:mlm@tokenizer.min_frequency=1"  # its own tokenizer, of the study's size
    kw = study_kwargs(labeled_csv, tmp_path / "study")
    kw.update(arms=["pretrained:mlm", other, third], seeds=1, budgets=[8], pretrain_max_steps=4)
    kw["pretrain_overrides"] = {
        "model.hidden": 32,
        "model.heads": 2,
        "model.ffn": 64,
        "train.batch_size": 4,
        "train.eval_every": 1000,
        "train.progress": False,
    }
    cfg = StudyConfig(**kw)
    summary = run_study(cfg, cell_runner=runner)
    assert not summary["failures"]
    arms = tmp_path / "study" / "arms"
    folders = sorted(p.name for p in arms.iterdir())
    assert folders == [
        "pretrained_mlm",
        "pretrained_mlm_data.block_size_32_model.num_layers_1_tokenizer.vocab_size_300",
        "pretrained_mlm_tokenizer.min_frequency_1",
    ]
    import yaml

    tok_cfg = yaml.safe_load((arms / folders[2] / "config.yaml").read_text())["tokenizer"]
    assert (tok_cfg["vocab_size"], tok_cfg["min_frequency"]) == (kw["vocab_size"], 1)
    assert (arms / folders[2] / "model" / "tokenizer.json").is_file()
    folders = folders[:2]
    layers = {
        f: json.loads((arms / f / "model" / "config.json").read_text())["num_hidden_layers"] for f in folders
    }
    assert layers == {folders[0]: 2, folders[1]: 1}
    blocks = {
        f: yaml.safe_load((arms / f / "config.yaml").read_text())["data"]["block_size"] for f in folders
    }
    assert blocks[folders[1]] == 32 and blocks[folders[0]] != 32
    # the arm with a tokenizer option trained its own on the corpus, and its model was saved with it;
    # the other arm uses the study's tokenizer (the one scratch uses)
    from lmvalue.tokenizer import load_tokenizer

    study_vocab = len(load_tokenizer(tmp_path / "study" / "tokenizer"))
    vocab = {f: json.loads((arms / f / "model" / "config.json").read_text())["vocab_size"] for f in folders}
    assert vocab[folders[0]] == study_vocab
    assert vocab[folders[1]] == len(load_tokenizer(arms / folders[1] / "model")) <= 300 < study_vocab
    assert (arms / folders[1] / "tokenizer" / "tokenizer.json").is_file()
    assert {name: model for name, model in seen} == {
        "pretrained:mlm": str(arms / folders[0] / "model"),
        other: str(arms / folders[1] / "model"),
        third: str(arms / "pretrained_mlm_tokenizer.min_frequency_1" / "model"),
    }


def test_an_arm_given_a_path_is_shown_by_its_folder_name(labeled_csv, tmp_path):
    from transformers import BertConfig, BertModel

    from lmvalue.value.study import display_names

    assert display_names(["checkpoint:/data/runs/minilm/model", "checkpoint:hfl/rbt3/lora", "tfidf"]) == {
        "checkpoint:/data/runs/minilm/model": "checkpoint:minilm",  # a generic "model" folder: its parent
        "checkpoint:hfl/rbt3/lora": "checkpoint:hfl/rbt3/lora",  # a hub name stays
        "tfidf": "tfidf",
    }
    same = display_names(["checkpoint:/a/x", "checkpoint:/b/x", "continued:/b/x"])
    assert same == {
        "checkpoint:/a/x": "checkpoint:/a/x",
        "checkpoint:/b/x": "checkpoint:/b/x",
        "continued:/b/x": "continued:x",
    }

    folder = tmp_path / "public" / "tiny-bert"
    cfg = BertConfig(
        vocab_size=120, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(cfg).save_pretrained(folder)
    kw = {**study_kwargs(labeled_csv, tmp_path / "s"), "arms": [f"checkpoint:{folder}", "tfidf"], "seeds": 1}
    summary = run_study(StudyConfig(**kw), cell_runner=lambda arm, *a: {"metrics": {"accuracy": 0.6}})
    assert "checkpoint:tiny-bert" in summary["curves"]
    for report in (summary["report_md"], summary["report_html"]):
        text = Path(report).read_text(encoding="utf-8")
        assert "checkpoint:tiny-bert" in text and str(folder) not in text
