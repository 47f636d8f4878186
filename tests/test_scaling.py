"""Studies beyond one process (issue 19): local worker processes and Ray tasks give the in-process scores;
a killed worker's cell is retried and recorded once; a killed driver resumes without duplicates; a failing
arm's pretraining fails only its cells. The driver alone writes results.sqlite."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import study_runners
from lmvalue.cli import main
from lmvalue.errors import ConfigError
from lmvalue.value.registry import Registry
from lmvalue.value.study import StudyConfig, parse_arm, preparation_graph, run_study

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    from lmvalue.data.sources import load_labeled

    rows = load_labeled("demo:zh-reviews")
    pos = [r for r in rows if r["label"] == "pos"][:150]
    neg = [r for r in rows if r["label"] == "neg"][:150]
    path = tmp_path_factory.mktemp("data") / "reviews.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pos + neg), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ray_runtime():
    """A local Ray runtime with 2 CPUs for this module's Ray tests (its workers import study_runners)."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}},
    )
    yield ray
    ray.shutdown()


def kwargs(labeled, out, **kw) -> dict:
    return {
        "output_dir": str(out),
        "data": str(labeled),
        "test_size": 100,
        "arms": ["scratch", "tfidf"],
        "budgets": [8, 16],
        "seeds": 2,
        "vocab_size": 500,
        **kw,
    }


def cells(out) -> list[dict]:
    reg = Registry(Path(out) / "results.sqlite")
    try:
        return reg.cells()
    finally:
        reg.close()


def ran(out) -> list[str]:
    path = Path(out).parent / "cells.log"
    return path.read_text().splitlines() if path.exists() else []


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--executor", "ray", "--workers", "2"], "Ray places the tasks itself"),
        (["--ray-address", "auto"], "--ray-address needs --executor ray"),
        (["--cell-retries", "-1"], "--cell-retries must be >= 0"),
        (["--cpus-per-cell", "0"], "--cpus-per-cell must be >= 1"),
    ],
)
def test_bad_executor_settings_are_one_message_and_exit_2(flags, message, labeled, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["value", "--data", str(labeled), "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_executor_ray_without_ray_says_how_to_install_it(labeled, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    out = tmp_path / "s"
    assert main(["value", "--data", str(labeled), "-o", str(out), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'lmvalue[ray]'" in err and "Traceback" not in err
    assert not out.exists()


def test_preparation_graph_runs_shared_work_once():
    """Under Ray, what writes the same files (the tokenizer, a pretraining run, the word vectors) is one
    task that the arms needing it wait for."""
    specs = [
        "pretrained:mlm",
        "pretrained:mlm/lora",
        "pretrained:mlm+self",
        "prompt:zero",
        "scratch",
        "embeddings",
        "hybrid",
        "distill:embeddings+self",
        "tfidf",
        "pretrained:mlm@model.preset=mini",
    ]
    nodes, arm_nodes = preparation_graph([parse_arm(s) for s in specs])
    keys = [n.key for n in nodes]
    assert len(keys) == len(set(keys))
    assert [k for k in keys if not k.startswith("arm:")] == [
        "tokenizer",
        "pretraining:pretrained:mlm",
        "vectors",
        "pretraining:pretrained:mlm@model.preset=mini",
    ]
    after = {n.key: n.after for n in nodes}
    assert after["pretraining:pretrained:mlm"] == ["tokenizer"]
    for spec in ("pretrained:mlm", "pretrained:mlm/lora", "pretrained:mlm+self", "prompt:zero"):
        assert after[arm_nodes[spec]] == ["pretraining:pretrained:mlm"]
    assert after[arm_nodes["distill:embeddings+self"]] == ["vectors", "pretraining:pretrained:mlm"]
    assert after[arm_nodes["tfidf"]] == [] and after[arm_nodes["scratch"]] == ["tokenizer"]
    # every node comes after those it waits for
    seen = set()
    for n in nodes:
        assert set(n.after) <= seen
        seen.add(n.key)
    assert [n.network for n in nodes if n.key.startswith("pretraining:")] == [True, True]


# --- same numbers --------------------------------------------------------------------------------


def test_same_scores_in_process_in_workers_and_on_ray(labeled, tmp_path, ray_runtime):
    """A small real study (a tokenizer, 10 steps of masked-LM pretraining, word vectors, fine-tuning and
    scikit-learn cells) gives identical results in this process, in 2 worker processes and as Ray tasks:
    every cell's metrics, and the pretrained model's held-out loss. The deterministic settings: pretraining
    steps (not minutes) and one thread per cell and pretraining (train.threads=1)."""
    import torch

    tiny = {"model.hidden": 64, "model.heads": 2, "model.ffn": 128, "model.num_layers": 2}
    kw = dict(
        arms=["tfidf", "nbsvm", "embeddings", "scratch", "pretrained:mlm"],
        budgets=[16],
        seeds=2,
        pretrain_minutes=None,
        pretrain_steps=10,
        pretrain_overrides={
            **tiny,
            "data.block_size": 64,
            "train.batch_size": 8,
            "train.eval_every": 10,
            "train.progress": False,
            "train.threads": 1,
        },
        finetune_overrides={
            "train.max_steps": 8,
            "train.min_steps": 8,
            "train.batch_size": 8,
            "data.max_length": 48,
            "train.threads": 1,
            "train.lr": 1e-3,
        },
    )
    threads = torch.get_num_threads()
    results, pretrained = {}, {}
    try:
        for name, executor in [
            ("in-process", {}),
            ("workers", {"workers": 2}),
            ("ray", {"executor": "ray"}),
        ]:
            out = tmp_path / name / "s"
            summary = run_study(StudyConfig(**kwargs(labeled, out, **kw, **executor)))
            assert not summary["failures"], (name, summary["failures"])
            results[name] = {
                (c["arm"], c["budget"], c["seed"]): (c["score"], c["metrics"]) for c in cells(out)
            }
            assert len(results[name]) == 10
            reg = Registry(out / "results.sqlite")
            pretrained[name] = reg.arm("pretrained:mlm")["info"]["pretrain_final"]["eval_mlm_loss"]
            reg.close()
    finally:
        torch.set_num_threads(threads)
    assert results["workers"] == results["in-process"]
    assert results["ray"] == results["in-process"]
    assert pretrained["workers"] == pretrained["in-process"] == pretrained["ray"]
    # not a trivial match: the scikit-learn and word-vector arms' scores differ between seeds
    scores = {key: score for key, (score, _) in results["ray"].items()}
    assert len({scores[(arm, 16, s)] for arm in ("tfidf", "nbsvm", "embeddings") for s in (0, 1)}) > 3


# --- faults --------------------------------------------------------------------------------------


def test_a_killed_worker_is_retried_and_its_cell_recorded_once(labeled, tmp_path):
    """Cell (tfidf, 16, 0) is SIGKILLed once: it runs again and is recorded once; (tfidf, 16, 1) is killed
    every time: after 1 + cell_retries attempts it is recorded as failed with the reason; the rest finish."""
    out = tmp_path / "s"
    run_study(
        StudyConfig(**kwargs(labeled, out, workers=2, cell_retries=1)), cell_runner=study_runners.kill_worker
    )
    recorded = {(c["arm"], c["budget"], c["seed"]): c for c in cells(out)}
    assert len(recorded) == 8
    assert recorded[("tfidf", 16, 0)]["status"] == "done"
    assert recorded[("tfidf", 16, 0)]["score"] == pytest.approx(
        study_runners.score(parse_arm("tfidf"), 16, 0)
    )
    poisoned = recorded[("tfidf", 16, 1)]
    assert poisoned["status"] == "failed" and "worker process died" in poisoned["error"]
    assert "2 attempts" in poisoned["error"]
    assert sum(c["status"] == "done" for c in recorded.values()) == 7
    runs = Counter(ran(out))
    assert runs["tfidf,16,0"] == 2 and runs["tfidf,16,1"] == 2
    assert all(n == 1 for cell, n in runs.items() if not cell.startswith("tfidf,16"))
    assert "worker process died" in (out / "report.md").read_text()


def test_a_killed_worker_is_retried_on_ray(labeled, tmp_path, ray_runtime):
    out = tmp_path / "s"
    run_study(
        StudyConfig(**kwargs(labeled, out, executor="ray", cell_retries=1, arms=["tfidf"])),
        cell_runner=study_runners.kill_worker,
    )
    recorded = {(c["arm"], c["budget"], c["seed"]): c for c in cells(out)}
    assert len(recorded) == 4
    assert recorded[("tfidf", 16, 0)]["status"] == "done"
    assert recorded[("tfidf", 16, 1)]["status"] == "failed"
    assert "2 attempts" in recorded[("tfidf", 16, 1)]["error"]
    assert Counter(ran(out))["tfidf,16,0"] == 2


DRIVER = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
import study_runners
from lmvalue.value.study import StudyConfig, run_study

run_study(StudyConfig(**json.loads(sys.argv[1])), cell_runner=study_runners.kill_driver)
"""


def test_a_killed_driver_resumes_without_duplicates(labeled, tmp_path):
    """The driver is SIGKILLed while 2 workers run cells: its workers stop, the cells it recorded stay,
    and --resume runs only the others."""
    out = tmp_path / "s"
    kw = kwargs(labeled, out, workers=2)

    def driver(kw):
        return subprocess.run(
            [sys.executable, "-c", DRIVER, json.dumps(kw), TESTS],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )

    proc = driver(kw)
    assert proc.returncode == -9, proc.stderr[-3000:]
    before = {(c["arm"], c["budget"], c["seed"]) for c in cells(out)}
    assert 1 <= len(before) <= 3  # the 4th cell killed the driver before it finished
    first = len(ran(out))
    (tmp_path / "resumed").touch()
    proc = driver({**kw, "resume": True})
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = cells(out)
    assert len(after) == 8 and all(c["status"] == "done" for c in after)
    rerun = {tuple(int(x) if x.isdigit() else x for x in line.split(",")) for line in ran(out)[first:]}
    assert not rerun & before  # nothing recorded before ran again
    assert rerun | before == {(c["arm"], c["budget"], c["seed"]) for c in after}


@pytest.mark.parametrize("executor", ["workers", "ray"])
def test_a_failing_arms_cells_are_recorded_failed_with_the_reason(executor, labeled, tmp_path, request):
    """A continued: arm whose folder holds a config.json but no model: its pretraining fails, its cells are
    recorded as failed with the reason, tfidf's cells finish."""
    settings = {"workers": 2} if executor == "workers" else {"executor": "ray"}
    if executor == "ray":
        request.getfixturevalue("ray_runtime")
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    out = tmp_path / "s"
    arm = f"continued:{broken}"
    summary = run_study(
        StudyConfig(**kwargs(labeled, out, arms=[arm, "tfidf"], pretrain_steps=5, **settings)),
        cell_runner=study_runners.fake,
    )
    recorded = cells(out)
    assert len(recorded) == 8
    failed = [c for c in recorded if c["arm"] == arm]
    assert len(failed) == 4 and all(c["status"] == "failed" for c in failed)
    assert all(c["error"].startswith("arm preparation failed: ") for c in failed)
    assert all(c["status"] == "done" for c in recorded if c["arm"] == "tfidf")
    assert Counter(line.split(",")[0] for line in ran(out)) == {"tfidf": 4}  # no failed cell ran
    reg = Registry(out / "results.sqlite")
    arms = reg.arms()
    reg.close()
    assert arms[arm]["status"] == "failed" and arms[arm]["error"] == failed[0]["error"].split(": ", 1)[1]
    assert len(summary["failures"]) == 5  # its 4 cells, and the arm: "preparing the arm"
    assert any(f["what"].endswith("preparing the arm") for f in summary["failures"])
    assert "arm preparation failed" in (out / "report.md").read_text()


def test_the_runner_must_reach_worker_processes(labeled, tmp_path):
    with pytest.raises(ConfigError, match="cannot be sent to a worker process"):
        run_study(
            StudyConfig(**kwargs(labeled, tmp_path / "s", workers=2, arms=["tfidf"])),
            cell_runner=lambda *a: {"metrics": {"accuracy": 0.5}},
        )


# --- GPUs ----------------------------------------------------------------------------------------


def test_local_workers_take_one_gpu_each(labeled, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    n = torch.cuda.device_count()
    out = tmp_path / "s"
    run_study(
        StudyConfig(**kwargs(labeled, out, workers=max(2, n), arms=["tfidf"])),
        cell_runner=study_runners.devices,
    )
    seen = {}
    for c in cells(out):
        assert c["metrics"]["device_count"] == 1
        seen[c["metrics"]["pid"]] = c["metrics"]["visible"]
    assert set(seen.values()) <= {str(d) for d in range(n)}
    if n >= 2 and len(seen) >= 2:
        assert len(set(seen.values())) >= 2
