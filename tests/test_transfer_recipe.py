"""Transfer-recipe options: layer-wise learning-rate decay groups, and a run that uses them."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lmvalue.config import FinetuneConfig, build_config
from lmvalue.errors import ConfigError
from lmvalue.finetune import llrd_groups


def test_llrd_groups_scale_each_layer_and_keep_every_weight_once():
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
        )
    )
    groups = llrd_groups(model, 0.5, 0.01)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(scale_of) == len(names)  # every trainable weight, once
    assert scale_of[id(names["classifier.weight"])] == 1.0
    assert scale_of[id(names["bert.pooler.dense.weight"])] == 1.0
    assert scale_of[id(names["bert.encoder.layer.2.output.dense.weight"])] == 0.5
    assert scale_of[id(names["bert.encoder.layer.0.attention.self.query.weight"])] == 0.125
    assert scale_of[id(names["bert.embeddings.word_embeddings.weight"])] == 0.0625
    assert decay_of[id(names["bert.encoder.layer.1.output.LayerNorm.weight"])] == 0.0
    assert decay_of[id(names["bert.encoder.layer.1.output.dense.bias"])] == 0.0
    assert decay_of[id(names["bert.encoder.layer.1.output.dense.weight"])] == 0.01


def test_a_run_takes_llrd_and_bad_values_are_refused(char_tokenizer_dir, tmp_path):
    import random

    from lmvalue.data.budget import dedupe
    from lmvalue.data.sources import load_labeled
    from lmvalue.finetune import finetune

    examples, _ = dedupe(load_labeled("demo:zh-reviews"))
    random.Random(0).shuffle(examples)
    cfg = build_config(
        FinetuneConfig,
        overrides={
            "model.preset": "tiny",
            "model.hidden": 64,
            "model.heads": 2,
            "model.ffn": 128,
            "model.from_scratch": True,
            "model.tokenizer": str(char_tokenizer_dir),
            "data.test_size": 100,
            "data.max_length": 32,
            "budget.train_size": 100,
            "train.llrd": 0.5,
            "train.max_steps": 5,
            "train.min_steps": 5,
            "train.output_dir": str(tmp_path / "run"),
            "train.progress": False,
        },
    )
    m = finetune(cfg, train_examples=examples[:600])
    assert m["steps"] == 5 and m["evals"][-1]["step"] == 5
    with pytest.raises(ConfigError, match="train.llrd"):
        build_config(FinetuneConfig, overrides={"model.init_from": "x", "train.llrd": 1.5})
