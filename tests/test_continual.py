"""Continual pretraining: transfer metrics on a hand-made matrix, the replay share, the
regularizers, and a real two-stage run (news, then reviews) with the forgetting matrix."""

import json

import numpy as np
import pytest
import torch

from lmvalue.continual import ContinualConfig, MixedBatches, make_penalty, run_continual, transfer_metrics
from lmvalue.errors import ConfigError


def test_bwt_and_fwt_of_a_hand_made_accuracy_matrix():
    # rows: start, after stage 1, 2, 3; columns: corpora of stages 1..3 (higher is better)
    r = [
        [0.10, 0.20, 0.30],
        [0.90, 0.40, 0.35],
        [0.70, 0.95, 0.50],
        [0.60, 0.85, 0.90],
    ]
    m = transfer_metrics(r, higher_is_better=True)
    # BWT = mean(R[3,0] - R[1,0], R[3,1] - R[2,1]) = mean(-0.30, -0.10)
    assert m["bwt"] == pytest.approx(-0.20)
    # FWT = mean(R[1,1] - R[0,1], R[2,2] - R[0,2]) = mean(0.20, 0.20)
    assert m["fwt"] == pytest.approx(0.20)
    assert m["forgetting"] == pytest.approx({0: -0.30, 1: -0.10})


def test_losses_keep_the_sign_convention_and_previous_corpora_count_as_learned_at_the_start():
    # one corpus learned before (column 0), one stage on corpus 1; losses (lower is better)
    r = [[3.0, 6.0], [3.5, 4.0]]
    m = transfer_metrics(r, higher_is_better=False)
    assert m["bwt"] == pytest.approx(-0.5)  # the old corpus's loss rose by 0.5: forgetting is negative
    assert m["forgetting"] == {0: pytest.approx(0.5)}  # in loss units: +0.5
    assert m["fwt"] is None  # no stage after the first


@pytest.mark.parametrize("share,batch_size", [(0.25, 8), (0.3, 8), (0.1, 16)])
def test_replay_mixes_the_configured_share(share, batch_size):
    new = np.full((4000, 4), 5, dtype=np.int64)
    old = np.full((300, 4), 7, dtype=np.int64)
    batches = MixedBatches(new, old, batch_size, share, seed=0, epoch=0, prepare=lambda b, g: b)
    rows = torch.cat([batches[i]["input_ids"][:, 0] for i in range(len(batches))])
    assert all(len(batches[i]["input_ids"]) == batch_size for i in range(len(batches)))
    assert abs(float((rows == 7).float().mean()) - share) <= 0.02
    flags = np.concatenate([batches.replayed(i) for i in range(len(batches))])
    assert np.array_equal(flags, (rows == 7).numpy())
    # every new block is used at most once per epoch, and the epoch uses nearly all of them
    seen = np.concatenate([batches.indices(i) for i in range(len(batches))])
    assert len(seen) == len(set(seen.tolist())) > 4000 - batch_size
    again = MixedBatches(new, old, batch_size, share, seed=0, epoch=0, prepare=lambda b, g: b)
    assert all(np.array_equal(batches.rows(i)[1], again.rows(i)[1]) for i in range(5))  # seeded


def test_l2sp_and_ewc_penalties():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    fisher = {"weight": torch.full((2, 3), 2.0), "bias": torch.zeros(2)}
    l2 = make_penalty("l2sp", 0.5, model)
    ewc = make_penalty("ewc", 0.5, model, fisher)
    assert float(l2(model).detach()) == 0.0 and float(ewc(model).detach()) == 0.0  # at the anchor
    with torch.no_grad():
        model.weight += 1.0
        model.bias += 1.0
    assert float(l2(model).detach()) == pytest.approx(0.5 / 2 * 8)  # 8 weights moved by 1
    assert float(ewc(model).detach()) == pytest.approx(0.5 / 2 * 6 * 2.0)  # the bias has zero Fisher
    ewc(model).backward()
    assert torch.allclose(model.weight.grad, torch.full((2, 3), 0.5 * 2.0))


def test_bad_continual_configs_are_refused():
    with pytest.raises(ConfigError, match="no stages"):
        ContinualConfig.from_dict({})
    with pytest.raises(ConfigError, match="replay"):
        ContinualConfig.from_dict({"stages": ["a"], "replay": 1.5})
    with pytest.raises(ConfigError, match="regularizer"):
        ContinualConfig.from_dict({"stages": ["a"], "regularizer": "si"})
    with pytest.raises(ConfigError, match="unknown setting"):
        ContinualConfig.from_dict({"stages": ["a"], "replai": 0.1})


def tiny_stages(tmp_path, **kw) -> ContinualConfig:
    return ContinualConfig.from_dict(
        {
            "output_dir": str(tmp_path / "cont"),
            "stages": [
                {"source": "demo:zh-news", "max_steps": 30},
                {"source": "demo:zh-reviews", "max_steps": 30},
            ],
            "eval_max_blocks": 16,
            "pretrain": {
                "model": {
                    "preset": "tiny",
                    "hidden": 64,
                    "heads": 2,
                    "ffn": 128,
                    "max_position_embeddings": 128,
                },
                "tokenizer": {"vocab_size": 1500},
                "data": {"max_docs": 1500, "block_size": 64, "eval_fraction": 0.05},
                "train": {
                    "batch_size": 8,
                    "eval_every": 15,
                    "lr": 2e-3,
                    "warmup": 2,
                    "progress": False,
                    "threads": 1,
                    "max_minutes": 5,
                },
            },
            **kw,
        }
    )


def test_two_stage_run_measures_both_stages_with_replay_and_ewc(tmp_path):
    cfg = tiny_stages(tmp_path, replay=0.25, regularizer="ewc", reg_weight=0.1, fisher_batches=2)
    result = run_continual(cfg)
    out = tmp_path / "cont"
    assert result["corpora"] == ["demo:zh-news", "demo:zh-reviews"]
    losses = result["held_out_loss"]
    # no starting model: row 0 is empty; one row per stage, a loss per corpus
    assert losses[0] == [None, None] and len(losses) == 3 and all(len(r) == 2 for r in losses[1:])
    after1, after2 = losses[1], losses[2]
    assert after2[1] < after1[1]  # stage 2 (reviews) lowered the loss on reviews
    assert result["bwt"] == pytest.approx(-(after2[0] - after1[0]))
    assert [s["steps"] for s in result["stages"]] == [30, 30]
    for i, name in ((1, "demo_zh-news"), (2, "demo_zh-reviews")):
        stage = out / f"stage{i}-{name}"
        assert (stage / "model" / "config.json").is_file() and (stage / "metrics.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["bwt"] == result["bwt"]
    assert (out / "forgetting.png").stat().st_size > 1000
    # a finished sequence is not run again; an existing folder is not overwritten
    with pytest.raises(ConfigError, match="--resume"):
        run_continual(tiny_stages(tmp_path))
    again = run_continual(tiny_stages(tmp_path, resume=True, replay=0.25, regularizer="ewc", reg_weight=0.1))
    assert again["held_out_loss"][0] == [None, None]
    np.testing.assert_allclose(again["held_out_loss"][1:], losses[1:], atol=1e-6)  # the same models, kept


def test_cli_refuses_a_bad_config_with_one_message(tmp_path, capsys):
    from lmvalue.cli import main

    bad = tmp_path / "c.yaml"
    bad.write_text("stages: [demo:zh-news]\nreplay: 2\n", encoding="utf-8")
    assert main(["continual", "--config", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "replay=2" in err and "[0, 1)" in err
    assert not (tmp_path / "out").exists()
