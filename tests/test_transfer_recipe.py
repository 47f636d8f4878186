"""Transfer-recipe options: layer-wise learning-rate decay groups, and a run that uses them."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lmvalue.config import FinetuneConfig, build_config
from lmvalue.errors import ConfigError
from lmvalue.finetuning import finetune_config, llrd_groups


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


def _reviews():
    import random

    from lmvalue.data.budget import dedupe
    from lmvalue.data.sources import load_labeled

    examples, _ = dedupe(load_labeled("demo:zh-reviews"))
    random.Random(0).shuffle(examples)
    return examples


def _tiny_run(char_tokenizer_dir, tmp_path) -> dict:
    """Overrides of a few-step fine-tuning run of a tiny BERT from scratch on 100 reviews."""
    return {
        "model.preset": "tiny",
        "model.hidden": 64,
        "model.heads": 2,
        "model.ffn": 128,
        "model.from_scratch": True,
        "model.tokenizer": str(char_tokenizer_dir),
        "data.test_size": 100,
        "data.max_length": 32,
        "budget.train_size": 100,
        "train.output_dir": str(tmp_path / "run"),
        "train.progress": False,
    }


def test_a_run_takes_llrd_and_bad_values_are_refused(char_tokenizer_dir, tmp_path):
    from lmvalue.finetuning import finetune

    examples = _reviews()
    over = {
        **_tiny_run(char_tokenizer_dir, tmp_path),
        "train.llrd": 0.5,
        "train.max_steps": 5,
        "train.min_steps": 5,
    }
    cfg = build_config(FinetuneConfig, overrides=over)
    m = finetune(cfg, train_examples=examples[:600])
    assert m["steps"] == 5 and m["evals"][-1]["step"] == 5
    with pytest.raises(ConfigError, match="train.llrd"):
        build_config(FinetuneConfig, overrides={"model.init_from": "x", "train.llrd": 1.5})


def _tiny_classifier(seed=0, layers=3):
    torch.manual_seed(seed)
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    ).eval()


def test_mean_pooling_feeds_the_pooler_the_masked_mean_of_real_tokens():
    from lmvalue.tasks.pooling import POOLING_KEY, set_pooling

    model = _tiny_classifier()
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 20, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    cls_logits = model(input_ids=ids, attention_mask=mask).logits
    set_pooling(model, "mean")
    assert getattr(model.config, POOLING_KEY) == "mean"
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    mean = torch.stack([hidden[0].mean(0), hidden[1, :3].mean(0)])  # padding left out
    expected = model.classifier(torch.tanh(model.bert.pooler.dense(mean)))
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(logits, expected, atol=1e-6)
    assert not torch.allclose(logits, cls_logits, atol=1e-4)
    # the saved keys are those of a plain BERT classifier: the pooler's weights stay where they were
    assert set(model.state_dict()) == set(_tiny_classifier().state_dict())
    with pytest.raises(ConfigError, match="model.pooling"):
        set_pooling(model, "max")
    set_pooling(model, "cls")  # a mean-pooled checkpoint trained again on [CLS] no longer claims mean
    assert not hasattr(model.config, POOLING_KEY)


def test_reinit_layers_resets_only_the_top_layers_and_the_pooler():
    from lmvalue.tasks.pooling import reinit_top_layers

    model = _tiny_classifier(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    assert reinit_top_layers(model, 1) == 1
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "bert.encoder.layer.2.attention.self.query.weight" in changed
    assert "bert.pooler.dense.weight" in changed
    assert not any(
        k.startswith(("bert.encoder.layer.0.", "bert.encoder.layer.1.", "bert.embeddings.")) for k in changed
    )
    assert torch.all(after["bert.encoder.layer.2.output.LayerNorm.weight"] == 1)  # transformers' own init
    assert float(after["bert.encoder.layer.2.attention.self.query.weight"].std()) == pytest.approx(
        0.02, rel=0.15
    )
    with pytest.raises(ConfigError, match="it has 3 layers"):
        reinit_top_layers(model, 4)


def test_reinit_layers_reaches_weights_loaded_from_a_checkpoint(tmp_path):
    """transformers marks loaded weights as initialised and its own init then skips them."""
    from lmvalue.tasks.pooling import reinit_top_layers

    _tiny_classifier(seed=0).save_pretrained(tmp_path / "ckpt")
    model = BertForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    before = model.bert.encoder.layer[2].attention.self.query.weight.clone()
    below = model.bert.encoder.layer[1].attention.self.query.weight.clone()
    torch.manual_seed(1)
    reinit_top_layers(model, 1)
    assert not torch.equal(model.bert.encoder.layer[2].attention.self.query.weight, before)
    assert torch.equal(model.bert.encoder.layer[1].attention.self.query.weight, below)


def test_a_mean_pooled_run_with_reinit_reloads_with_identical_predictions(char_tokenizer_dir, tmp_path):
    from lmvalue.finetuning import finetune
    from lmvalue.inference import load_task_model, score

    examples = _reviews()
    over = {
        **_tiny_run(char_tokenizer_dir, tmp_path),
        "model.pooling": "mean",
        "model.reinit_layers": 1,
        "train.max_steps": 30,
        "train.min_steps": 30,
        "train.lr": 1e-3,
    }
    m = finetune(build_config(FinetuneConfig, overrides=over), train_examples=examples[:600])
    task = load_task_model(m["model_dir"])
    assert task.model.config.lmvalue_pooling == "mean"
    assert type(task.model.bert.pooler).__name__ == "MeanPooler"
    from lmvalue.finetuning import load_task_data

    test = load_task_data(build_config(FinetuneConfig, overrides=over), train_examples=examples[:600]).test
    rescored = score(task, test)  # a plain [CLS] reload would give other probabilities
    assert rescored["accuracy"] == pytest.approx(m["test"]["accuracy"])
    assert rescored["loss"] == pytest.approx(m["test"]["loss"], abs=1e-5)
    for bad, match in (
        ({"model.pooling": "max"}, "model.pooling"),
        ({"model.reinit_layers": -1}, "model.reinit_layers"),
        ({"method.name": "tfidf", "model.pooling": "mean"}, "has none"),
        ({"method.name": "lora", "model.reinit_layers": 1}, "needs method full"),
    ):
        with pytest.raises(ConfigError, match=match):
            finetune_config(overrides={"model.init_from": "x", **bad})


@pytest.mark.parametrize("n_classes", [2, 3])
def test_lp_ft_head_is_the_logistic_regression_fitted_on_the_frozen_features(n_classes):
    """LP-FT's first stage: the head's softmax reproduces the fitted regression's probabilities on the
    very features the head reads (binary: ±(w·x+b)/2; multi-class: the rows as they are)."""
    from sklearn.linear_model import LogisticRegression

    from lmvalue.finetuning import fit_probe_head

    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=n_classes,
        )
    )
    gen = torch.Generator().manual_seed(0)
    items, labels = [], []
    for i in range(60):
        label = i % n_classes
        n = 4 + i % 5
        ids = torch.randint(5, 100, (n,), generator=gen)
        ids[1] = 10 + label  # a token that tells the class
        items.append({"input_ids": ids.numpy(), "labels": label})
        labels.append(label)
    model.train()
    info = fit_probe_head(model, items, labels, n_classes, pad_id=0, seed=0)
    assert model.training  # the mode it was in
    assert info["features"] == 32
    model.eval()
    with torch.no_grad():
        feats, logits = [], []
        hook = model.classifier.register_forward_hook(lambda m, i, o: feats.append(i[0]))
        for it in items:
            logits.append(model(input_ids=torch.as_tensor(it["input_ids"])[None]).logits[0])
        hook.remove()
    x = torch.cat(feats).numpy()
    clf = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced", random_state=0).fit(x, labels)
    probs = torch.softmax(torch.stack(logits), -1).numpy()
    assert abs(probs - clf.predict_proba(x)).max() < 1e-4
    assert info["train_accuracy"] == pytest.approx(clf.score(x, labels))


def test_lp_ft_fine_tuning_starts_from_the_first_stages_head(char_tokenizer_dir, tmp_path):
    """With a zero learning rate, the model fine-tuning returns is its starting point: with
    model.head_init=probe its head is the regression fitted on the frozen features; without, zero."""
    from lmvalue.finetuning import finetune

    examples = _reviews()
    over = {
        **_tiny_run(char_tokenizer_dir, tmp_path),
        "model.pooling": "mean",  # a random model's [CLS] state barely differs between inputs; the mean does
        "train.lr": 1e-12,
        "train.max_steps": 2,
        "train.min_steps": 2,
    }
    probe = finetune(
        build_config(FinetuneConfig, overrides={**over, "model.head_init": "probe"}),
        train_examples=examples[:600],
        keep_model=True,
    )
    head = probe["task_model"].model.classifier.weight
    assert probe["head_probe"]["train_accuracy"] > 0.6
    assert float(head.detach().abs().max()) > 1e-3
    over["train.overwrite"] = True
    zero = finetune(
        build_config(FinetuneConfig, overrides=over), train_examples=examples[:600], keep_model=True
    )
    assert float(zero["task_model"].model.classifier.weight.detach().abs().max()) < 1e-6
    # the loop's first evaluation (step 0, before any update) already sees the fitted head: it tells
    # the classes apart, where the zero head predicts one class for everything
    assert probe["evals"][0]["step"] == 0 and zero["evals"][0]["step"] == 0
    assert (
        probe["evals"][0]["eval_predicted_classes"] == 2 and zero["evals"][0]["eval_predicted_classes"] == 1
    )
    assert zero["head_probe"] is None
    with pytest.raises(ConfigError, match="head_init"):
        build_config(FinetuneConfig, overrides={"model.init_from": "x", "model.head_init": "linear"})
