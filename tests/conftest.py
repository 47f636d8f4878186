"""Shared fixtures: offline, tiny models, a tokenizer trained once per session on real demo data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TINY_MODEL = {
    "model.preset": "tiny",
    "model.hidden": 64,
    "model.heads": 2,
    "model.ffn": 128,
    "model.max_position_embeddings": 128,
}


@pytest.fixture(scope="session")
def zh_tokenizer_dir(tmp_path_factory):
    """A small wordpiece tokenizer trained on 2,000 reviews of demo:zh-reviews."""
    from lmvalue.data.sources import iter_texts
    from lmvalue.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "zh-wordpiece"
    train_tokenizer(iter_texts("demo:zh-reviews", max_docs=2000), out, kind="wordpiece", vocab_size=1500)
    return out


@pytest.fixture()
def tiny_pretrain_overrides(zh_tokenizer_dir, tmp_path):
    """Overrides for a pretraining run of a few seconds on 1,500 real reviews."""
    return {
        **TINY_MODEL,
        "model.tokenizer": str(zh_tokenizer_dir),
        "data.source": "demo:zh-reviews",
        "data.max_docs": 1500,
        "data.block_size": 64,
        "data.eval_fraction": 0.05,
        "data.eval_max_blocks": 32,
        "train.output_dir": str(tmp_path / "run"),
        "train.batch_size": 8,
        "train.max_steps": 20,
        "train.eval_every": 10,
        "train.save_every": 5,
        "train.lr": 2e-3,
        "train.warmup": 2,
        "train.progress": False,
        "train.threads": 1,
    }
