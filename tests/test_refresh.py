"""lmvalue refresh and the model registry: promotion only when it pays, atomic versions, rollback."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tests.conftest import TINY_MODEL

from lmvalue import versions
from lmvalue.cli import main
from lmvalue.errors import ConfigError
from lmvalue.refresh import decide, metric_values, paired_bootstrap


@pytest.fixture(scope="module")
def world(tmp_path_factory, zh_tokenizer_dir):
    """Real reviews split into an old corpus, a new corpus, labeled old data, new labels and a new test
    set; a tiny encoder pretrained on the old corpus; a deployed model fine-tuned from it properly and
    one fine-tuned for a single step (near chance)."""
    import random

    from lmvalue.config import PretrainConfig, build_config
    from lmvalue.data.sources import load_labeled
    from lmvalue.finetuning import finetune, finetune_config
    from lmvalue.pretraining import pretrain

    root = tmp_path_factory.mktemp("refresh")
    rows = list({r["text"]: r for r in load_labeled("demo:zh-reviews")}.values())
    random.Random(0).shuffle(rows)

    def jsonl(name, part):
        (root / name).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8"
        )
        return str(root / name)

    def text(name, part):
        (root / name).write_text("".join(r["text"].replace("\n", " ") + "\n" for r in part), encoding="utf-8")
        return str(root / name)

    w = {
        "labeled": jsonl("old_labeled.jsonl", rows[:500]),
        "new_labels": jsonl("new_labels.jsonl", rows[500:600]),
        "new_test": jsonl("new_test.jsonl", rows[600:800]),
        "old": text("old.txt", rows[1000:2500]),
        "new": text("new.txt", rows[2500:4000]),
        "root": root,
    }
    pretrain(
        build_config(
            PretrainConfig,
            overrides={
                **TINY_MODEL,
                "model.tokenizer": str(zh_tokenizer_dir),
                "data.source": w["old"],
                "data.block_size": 64,
                "data.eval_max_blocks": 16,
                "train.output_dir": str(root / "pt"),
                "train.batch_size": 16,
                "train.max_steps": 30,
                "train.lr": 2e-3,
                "train.progress": False,
                "train.checkpoints": False,
                "train.threads": 2,
            },
        )
    )
    ft = {
        "model.init_from": str(root / "pt" / "model"),
        "data.source": w["labeled"],
        "data.test_size": 150,
        "data.max_length": 64,
        "train.batch_size": 16,
        "train.lr": 2e-3,
        "train.progress": False,
        "train.threads": 2,
    }
    finetune(
        finetune_config(overrides={**ft, "train.output_dir": str(root / "good"), "train.max_steps": 150})
    )
    finetune(
        finetune_config(
            overrides={
                **ft,
                "train.output_dir": str(root / "weak"),
                "train.max_steps": 1,
                "train.min_steps": 1,
                "train.lr": 1e-6,
            }
        )
    )
    return w


def refresh_args(w, model, out, *extra):
    return [
        "refresh",
        "--model",
        str(model),
        "--new",
        w["new"],
        "--new-test",
        w["new_test"],
        "--steps",
        "10",
        "--pretrain",
        "train.batch_size=16",
        "train.progress=false",
        "-o",
        str(out),
        *extra,
    ]


def test_refresh_promotes_a_better_model_into_the_registry(world, tmp_path, capsys):
    reg = tmp_path / "models"
    args = refresh_args(world, world["root"] / "weak", tmp_path / "r", "--registry", str(reg))
    args += [
        "--new-labels",
        world["new_labels"],
        "--finetune",
        "train.max_steps=150",
        "train.min_steps=100",
        "train.lr=2e-3",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "r" / "refresh.json").read_text(encoding="utf-8"))
    assert r["promoted"] is True and r["version"] == "v2", out
    assert r["new_domain"]["low"] > 0 and r["new_domain"]["examples"] == 200
    assert r["original_test"]["examples"] == 150  # the deployed run's own carved test split
    assert "PROMOTE" in out and "v2" in out
    # the continual machinery replayed the old corpus and measured both corpora before and after
    assert r["held_out_lm_loss"]["corpora"] == [world["old"], world["new"]]
    assert len(r["held_out_lm_loss"]["loss"]) == 2
    assert r["compute"]["pretrain_steps"] == 10
    # the registry: v1 is the deployed model, v2 the refreshed one, current -> v2, lineage kept
    assert versions.version_names(reg) == ["v1", "v2"] and versions.current_version(reg) == "v2"
    v2 = versions.version_info(reg, "v2")
    assert v2["parents"] == ["v1"]
    assert len(v2["lineage"]["new_text"]["sha256"]) == 64 and v2["lineage"]["new_labels"]["bytes"] > 0
    # serving the registry serves current; a version folder can be served too
    from fastapi.testclient import TestClient

    from lmvalue.serve import create_app

    with TestClient(create_app(str(reg), load_in_background=False)) as client:
        info = client.get("/info").json()
        assert info["version"] == "v2" and info["registry"] == str(reg)
        assert client.post("/predict", json={"inputs": "质量很好，很满意"}).status_code == 200
    # rollback is one command
    assert main(["registry", "rollback", str(reg)]) == 0
    assert versions.current_version(reg) == "v1"
    assert main(["registry", "list", str(reg)]) == 0
    listing = capsys.readouterr().out
    assert "* v1" in listing and "  v2" in listing


def test_refresh_keeps_the_old_model_when_the_refresh_is_worse(world, tmp_path, capsys):
    reg = tmp_path / "models"
    # a deliberately bad budget: the re-fine-tuning gets one step at a tiny rate, so it is near chance
    bad = ["--finetune", "train.max_steps=1", "train.min_steps=1", "train.lr=1e-6"]
    assert (
        main(refresh_args(world, world["root"] / "good", tmp_path / "r", "--registry", str(reg), *bad)) == 0
    )
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "r" / "refresh.json").read_text(encoding="utf-8"))
    assert r["promoted"] is False and r["version"] is None
    assert r["new_domain"]["difference"] < 0 and "not better" in out and "KEEP" in out
    assert versions.version_names(reg) == ["v1"] and versions.current_version(reg) == "v1"


def test_refresh_without_new_domain_labels_does_not_promote(world, tmp_path):
    args = refresh_args(world, world["root"] / "good", tmp_path / "r")
    i = args.index("--new-test")
    del args[i : i + 2]
    assert main(args) == 0
    r = json.loads((tmp_path / "r" / "refresh.json").read_text(encoding="utf-8"))
    assert r["promoted"] is False and r["new_domain"] is None and "--new-test" in r["reasons"][0]


def test_refresh_refuses_bad_input_before_any_work(world, tmp_path, capsys):
    out = tmp_path / "r"
    # new labels that are also in the new test set
    assert main(refresh_args(world, world["root"] / "good", out, "--new-labels", world["new_test"])) == 2
    err = capsys.readouterr().err
    assert "also in --new-test" in err and "Traceback" not in err
    assert not out.exists()
    # not a fine-tuning run
    assert main(refresh_args(world, world["root"] / "pt", out)) == 2
    assert "is a pretraining run" in capsys.readouterr().err
    assert not (out / "refresh.json").exists()
    assert main(refresh_args(world, tmp_path, out)) == 2
    assert "no config.yaml" in capsys.readouterr().err
    # a budget of nothing
    assert main(refresh_args(world, world["root"] / "good", out, "--confidence", "1.5")) == 2
    assert "--confidence" in capsys.readouterr().err
    assert not (out / "refresh.json").exists()


def test_promotion_rule():
    better = {"difference": 3.0, "low": 0.5, "high": 5.0}
    noise = {"difference": 1.0, "low": -1.0, "high": 3.0}
    kept = {"difference": -0.5, "low": -0.9, "high": 0.0}
    lost = {"difference": -1.0, "low": -2.5, "high": 0.5}
    assert decide(kept, better, tolerance=1.0)[0] is True
    assert decide(lost, better, tolerance=1.0)[0] is False
    assert decide(lost, better, tolerance=3.0)[0] is True
    assert decide(kept, noise, tolerance=1.0)[0] is False
    assert decide(kept, None, tolerance=1.0)[0] is False


def test_paired_bootstrap_and_metrics_match_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]
    truth = list(rng.choice(labels, 300))
    p1 = [t if rng.random() < 0.6 else rng.choice(labels) for t in truth]
    p2 = [t if rng.random() < 0.8 else rng.choice(labels) for t in truth]
    f = metric_values("macro_f1", labels, truth, p1)
    idx = rng.integers(0, 300, 300)
    expected = f1_score([truth[i] for i in idx], [p1[i] for i in idx], labels=labels, average="macro")
    assert f(idx) == pytest.approx(expected)
    same = paired_bootstrap(f, f, 300, level=0.95, seed=0)
    assert same["difference"] == same["low"] == same["high"] == 0
    acc1, acc2 = (metric_values("accuracy", labels, truth, p) for p in (p1, p2))
    d = paired_bootstrap(acc1, acc2, 300, level=0.95, seed=0)
    assert d["low"] > 0 and d["low"] <= d["difference"] <= d["high"]
    assert d["new"] - d["old"] == pytest.approx(d["difference"], abs=0.02)


# --- the registry --------------------------------------------------------------------------------


def fake_run(path, tag: str):
    (path / "model").mkdir(parents=True)
    for i in range(3):
        (path / "model" / f"part{i}.bin").write_bytes(tag.encode() * 1000)
    (path / "metrics.json").write_text(
        json.dumps({"metric": "accuracy", "test_score": 0.5}), encoding="utf-8"
    )
    return path


def test_registry_versions_current_and_rollback(tmp_path):
    reg = tmp_path / "models"
    assert versions.add_version(reg, fake_run(tmp_path / "a", "a")) == "v1"
    assert versions.add_version(reg, fake_run(tmp_path / "b", "b")) == "v2"
    assert versions.current_version(reg) == "v2" and versions.resolve_model(reg) == reg / "v2"
    assert versions.version_info(reg, "v2")["parents"] == ["v1"]
    assert (reg / "current" / "model" / "part0.bin").read_bytes().startswith(b"b")
    assert versions.rollback(reg) == ("v2", "v1")
    with pytest.raises(ConfigError, match="nothing to roll back to"):
        versions.rollback(reg)
    with pytest.raises(ConfigError, match="no version 'v9'"):
        versions.set_current(reg, "v9")
    versions.set_current(reg, "v2")
    assert versions.current_version(reg) == "v2"
    # a folder that holds something else is never made a registry
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a model registry"):
        versions.add_version(other, tmp_path / "a")
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]


KILLER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from lmvalue import versions
    reg, run, where = sys.argv[1:4]
    if where == "copy":  # killed in the middle of copying the model
        real = shutil.copy2
        calls = []
        def copy2(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        real_tree = shutil.copytree
        shutil.copytree = lambda src, dst, **k: real_tree(src, dst, **{**k, "copy_function": copy2})
    else:  # killed right before the switch of current
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("current"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        versions.os.replace = replace
    versions.add_version(reg, run)
    """
)


@pytest.mark.parametrize("where", ["copy", "switch"])
def test_a_killed_promotion_leaves_current_intact(tmp_path, where):
    reg = tmp_path / "models"
    versions.add_version(reg, fake_run(tmp_path / "a", "a"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(reg), str(fake_run(tmp_path / "b", "b")), where], env=env
    )
    assert proc.returncode == -signal.SIGKILL
    assert versions.current_version(reg) == "v1"
    assert (reg / "current" / "model" / "part0.bin").read_bytes().startswith(b"a")
    # a half-copied version is not a version; the next change cleans up and carries on
    assert versions.version_names(reg) == (["v1"] if where == "copy" else ["v1", "v2"])
    name = versions.add_version(reg, fake_run(tmp_path / "c", "c"))
    assert versions.current_version(reg) == name and not [
        p for p in reg.iterdir() if p.name.startswith(".tmp-")
    ]
    assert (reg / "current" / "model" / "part0.bin").read_bytes().startswith(b"c")
