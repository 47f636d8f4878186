"""Consistency training on unlabeled text (UDA): the loss by hand, its zero on identical inputs, the
annealing, the augmentation, and a fine-tuning run that never trains on a test text."""

import math

import numpy as np
import pytest
import torch
from tests.conftest import TINY_MODEL

from lmvalue.config import FinetuneConfig, build_config
from lmvalue.errors import ConfigError
from lmvalue.tasks.consistency import (
    UnlabeledStream,
    annealed_cross_entropy,
    augment_ids,
    consistency_kl,
    tsa_threshold,
)


def test_the_consistency_loss_equals_a_hand_computation():
    target = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.0, 0.2]])
    augmented = torch.tensor([[0.5, 0.5, 0.0], [1.0, -1.0, 0.0]])
    loss, kept = consistency_kl(target, augmented, temperature=0.5, threshold=0.5)

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    total = 0.0
    for t, a in zip(target.numpy(), augmented.numpy(), strict=True):
        if softmax(t).max() < 0.5:  # the second text's target is not confident: it counts zero
            continue
        p = softmax(t / 0.5)
        q = softmax(a)
        total += float(np.sum(p * (np.log(p) - np.log(q))))
    assert kept == 0.5
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)
    assert total > 0


def test_the_consistency_loss_is_zero_for_identical_inputs_on_a_tiny_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=3,
        )
    ).eval()
    ids = torch.tensor([[1, 7, 8, 9, 2], [1, 11, 12, 2, 0]])
    mask = (ids != 0).long()
    logits = model(input_ids=ids, attention_mask=mask).logits
    loss, kept = consistency_kl(logits, model(input_ids=ids, attention_mask=mask).logits, temperature=1.0)
    assert kept == 1.0 and loss.item() == pytest.approx(0.0, abs=1e-7)
    # an augmented copy moves the prediction, and the gradient reaches the weights through it only
    g = torch.Generator().manual_seed(0)
    aug, aug_mask = augment_ids(
        ids,
        mask,
        kind="mask",
        rate=0.5,
        generator=g,
        special_ids={0, 1, 2},
        mask_id=3,
        vocab_size=50,
        pad_id=0,
    )
    loss, _ = consistency_kl(logits, model(input_ids=aug, attention_mask=aug_mask).logits)
    assert loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_training_signal_annealing():
    assert tsa_threshold("linear", 0.0, 4) == pytest.approx(0.25)
    assert tsa_threshold("linear", 1.0, 4) == pytest.approx(1.0)
    assert tsa_threshold("linear", 0.5, 2) == pytest.approx(0.75)
    assert tsa_threshold("log", 0.2, 2) > tsa_threshold("linear", 0.2, 2) > tsa_threshold("exp", 0.2, 2)
    assert tsa_threshold("none", 0.0, 2) == 1.0
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 0])  # confident and right, unsure, confident and wrong
    loss, kept = annealed_cross_entropy(logits, labels, threshold=0.9)
    nll = -torch.log_softmax(logits, -1)[torch.arange(3), labels]
    assert kept == pytest.approx(2 / 3)  # the first (p = 0.98 > 0.9) is left out
    assert loss.item() == pytest.approx(float(nll[1:].sum() / 3), rel=1e-6)
    full, kept = annealed_cross_entropy(logits, labels, threshold=1.0)
    assert kept == 1.0 and full.item() == pytest.approx(float(nll.mean()), rel=1e-6)


def test_augmentation_keeps_special_tokens_and_padding():
    ids = torch.tensor([[1] + list(range(10, 40)) + [2, 0, 0]])
    mask = (ids != 0).long()
    specials = {0, 1, 2, 3}
    for kind in ("mask", "random", "drop"):
        out, out_mask = augment_ids(
            ids,
            mask,
            kind=kind,
            rate=0.3,
            generator=torch.Generator().manual_seed(1),
            special_ids=specials,
            mask_id=3,
            vocab_size=60,
            pad_id=0,
        )
        row = out[0][out_mask[0].bool()].tolist()
        assert row[0] == 1 and row[-1] == 2  # [CLS] and [SEP] stay
        inner = row[1:-1]
        if kind == "mask":
            assert len(inner) == 30 and 3 <= inner.count(3) <= 18
        elif kind == "random":
            changed = sum(a != b for a, b in zip(inner, range(10, 40), strict=True))
            assert 3 <= changed <= 18 and all(4 <= t < 60 for t in inner)
        else:
            assert 12 <= len(inner) <= 27 and inner == sorted(inner)  # deleted, order kept
    stream = UnlabeledStream([[1, 5, 2], [1, 6, 7, 2], [1, 8, 2]], batch_size=2, pad_id=0, seed=0)
    seen = [tuple(stream.next()["input_ids"].shape) for _ in range(4)]
    assert all(s[0] == 2 for s in seen)


def test_fine_tuning_with_consistency_runs_and_never_reads_a_test_text(reviews, char_tokenizer_dir, tmp_path):
    from lmvalue.finetuning import finetune

    pool = reviews[:400]
    unlabeled = tmp_path / "unlabeled.txt"
    extra = [r["text"] for r in reviews[3000:3300]]
    unlabeled.write_text(
        "\n".join(extra + [r["text"] for r in pool]), encoding="utf-8"
    )  # labeled + test texts too
    over = {
        **TINY_MODEL,
        "model.from_scratch": True,
        "model.tokenizer": str(char_tokenizer_dir),
        "data.test_size": 200,
        "data.max_length": 48,
        "budget.train_size": 32,
        "train.output_dir": str(tmp_path / "run"),
        "train.progress": False,
        "train.max_steps": 12,
        "train.min_steps": 12,
        "train.batch_size": 8,
        "train.lr": 1e-3,
        "consistency.unlabeled": str(unlabeled),
        "consistency.ratio": 2,
    }
    m = finetune(build_config(FinetuneConfig, overrides=over), train_examples=pool)
    info = m["consistency"]
    # 12 steps x 8 x 2 texts needed; the labeled and test texts were removed before sampling
    assert info["unlabeled_texts"] == min(12 * 8 * 2, len(set(extra) - {r["text"] for r in pool}))
    assert math.isfinite(m["test"]["accuracy"])
    with pytest.raises(ConfigError, match="consistency training trains a network"):
        build_config(
            FinetuneConfig,
            overrides={**over, "method.name": "tfidf"},
            checks=[__import__("lmvalue.methods", fromlist=["x"]).config_problems],
        )
    with pytest.raises(ConfigError, match="consistency.augment"):
        build_config(FinetuneConfig, overrides={**over, "consistency.augment": "backtranslate"})


def test_a_uda_arm_in_a_study_trains_on_the_unlabeled_pool(tmp_path):

    from tests.conftest import write_balanced_reviews

    from lmvalue.data.sources import load_labeled
    from lmvalue.value.registry import Registry
    from lmvalue.value.study import StudyConfig, run_study

    rows = load_labeled("demo:zh-reviews")
    data = write_balanced_reviews(tmp_path / "reviews.jsonl", 100)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in rows[5000:5600]), encoding="utf-8")
    cfg = StudyConfig(
        output_dir=str(tmp_path / "study"),
        data=str(data),
        corpus=str(corpus),
        test_size=60,
        arms=["scratch+uda"],
        budgets=[16],
        seeds=1,
        vocab_size=400,
        pretrain_overrides={"model.hidden": 32, "model.heads": 2, "model.ffn": 64, "model.num_layers": 1},
        finetune_overrides={
            "model.hidden": 32,
            "model.heads": 2,
            "model.ffn": 64,
            "model.num_layers": 1,
            "train.max_steps": 6,
            "train.min_steps": 6,
            "train.batch_size": 4,
            "data.max_length": 48,
        },
    )
    summary = run_study(cfg)
    assert not summary["failures"], summary["failures"]
    reg = Registry(tmp_path / "study" / "results.sqlite")
    (cell,) = reg.cells()
    reg.close()
    assert cell["config"]["consistency.unlabeled"] == str(tmp_path / "study" / "unlabeled.txt")
    assert cell["metrics"]["consistency"]["unlabeled_texts"] == 6 * 4 * 2  # steps x batch x ratio
