"""Self-supervised objectives: masking rates and word boundaries, span lengths, sentence pairs, causal
LM labels, configuration errors, and tiny end-to-end runs of every objective on real demo data."""

import inspect
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lmvalue.config import ObjectiveConfig, PretrainConfig, build_config
from lmvalue.data.annotate import tokenize_annotated
from lmvalue.data.layout import layout_rows
from lmvalue.data.pairs import build_pairs
from lmvalue.data.sources import load_texts
from lmvalue.errors import ConfigError, DataError
from lmvalue.objectives import ObjectiveSet, build_objectives, check_objectives
from lmvalue.objectives.clm import CausalLM, shifted_labels
from lmvalue.objectives.forward import Encoded
from lmvalue.objectives.mlm import IGNORE, MaskedLM
from lmvalue.objectives.wwm import SpanMasking, WholeWordMasking, span_length_probs, word_units
from lmvalue.pretraining import pretrain
from lmvalue.tokenizer import load_tokenizer, train_tokenizer

MASKING = {"mlm": MaskedLM, "wwm": WholeWordMasking, "span": SpanMasking}


@pytest.fixture(scope="module")
def zh(zh_tokenizer_dir):
    """The Chinese tokenizer and 600 real reviews, tokenized with word and sentence boundaries."""
    tok = load_tokenizer(zh_tokenizer_dir)
    texts = load_texts("demo:zh-reviews", max_docs=600)
    corpus = tokenize_annotated(texts, tok, fields=["word_start", "segment_start"])
    return tok, texts, corpus


def packed_batch(tok, corpus, block_size=128, rows=32, start=0) -> dict:
    blocks = layout_rows(
        corpus,
        np.arange(len(corpus.offsets) - 1),
        block_size,
        sep_id=tok.sep_token_id,
        cls_id=tok.cls_token_id,
    )
    pick = slice(start, start + rows)
    return {k: torch.from_numpy(v[pick].astype(np.int64)) for k, v in blocks.items()}


def clone(batch: dict) -> dict:
    return {k: v.clone() for k, v in batch.items()}


def doc_rows(tok, texts, corpus, max_len=126) -> tuple[dict, list[int]]:
    """One padded row per short document: [CLS] doc [SEP] [PAD]...; returns the batch and the docs."""
    docs = [d for d in range(len(texts)) if 0 < corpus.offsets[d + 1] - corpus.offsets[d] <= max_len][:400]
    T = max_len + 2
    ids = torch.full((len(docs), T), tok.pad_token_id)
    word_start = torch.ones((len(docs), T), dtype=torch.long)
    mask = torch.zeros((len(docs), T), dtype=torch.long)
    for row, d in enumerate(docs):
        a, b = corpus.offsets[d], corpus.offsets[d + 1]
        n = b - a
        ids[row, 0], ids[row, n + 1] = tok.cls_token_id, tok.sep_token_id
        ids[row, 1 : n + 1] = torch.from_numpy(corpus.ids[a:b].astype(np.int64))
        word_start[row, 1 : n + 1] = torch.from_numpy(corpus.fields["word_start"][a:b].astype(np.int64))
        mask[row, : n + 2] = 1
    return {"input_ids": ids, "word_start": word_start, "attention_mask": mask}, docs


# --- masking: rates, labels, word boundaries, spans, determinism -----------------------------------


@pytest.mark.parametrize("name", list(MASKING))
@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_masking_rate_and_labels(zh, name, rate):
    tok, _, corpus = zh
    batch = packed_batch(tok, corpus)  # 32 x 128 = 4,096 tokens of real reviews
    obj = MASKING[name](tok, mask_rate=rate)
    never = torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id])
    candidates = ~torch.isin(batch["input_ids"], never)  # [UNK] is text: masked like any token
    out = obj.prepare(clone(batch), torch.Generator().manual_seed(0))
    chosen = out["labels"] != IGNORE
    assert abs(chosen.sum().item() / candidates.sum().item() - rate) <= 0.01
    assert not (chosen & ~candidates).any()  # never [CLS] / [SEP]
    assert torch.equal(
        out["labels"][chosen], batch["input_ids"][chosen]
    )  # -100 exactly where nothing is predicted
    assert torch.equal(out["input_ids"][~chosen], batch["input_ids"][~chosen])
    assert 0.7 < (out["input_ids"][chosen] == tok.mask_token_id).float().mean() < 0.9  # 80/10/10


@pytest.mark.parametrize("name", list(MASKING))
def test_masking_is_deterministic_under_a_seed(zh, name):
    tok, _, corpus = zh
    batch = packed_batch(tok, corpus, rows=8)
    obj = MASKING[name](tok)
    a = obj.prepare(clone(batch), torch.Generator().manual_seed(1))
    b = obj.prepare(clone(batch), torch.Generator().manual_seed(1))
    c = obj.prepare(clone(batch), torch.Generator().manual_seed(2))
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["labels"], c["labels"])


@pytest.mark.parametrize("name", ["wwm", "span"])
def test_whole_words_of_jieba_are_never_split(zh, name):
    import jieba

    tok, texts, corpus = zh
    batch, docs = doc_rows(tok, texts, corpus)
    out = MASKING[name](tok, mask_rate=0.3).prepare(clone(batch), torch.Generator().manual_seed(0))
    chosen = out["labels"] != IGNORE
    masked_words = split_words = 0
    for row, d in enumerate(docs):
        text = texts[d]
        spans = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        bounds = np.cumsum([0] + [len(w) for w in jieba.lcut(text)])
        word_of = np.searchsorted(bounds, [s for s, _ in spans], side="right")  # jieba word of each token
        states: dict[int, set] = {}
        for k, w in enumerate(word_of):
            states.setdefault(int(w), set()).add(bool(chosen[row, k + 1]))
        split_words += sum(len(s) > 1 for s in states.values())
        masked_words += sum(s == {True} for s in states.values())
    assert masked_words > 500 and split_words == 0


def english_texts() -> list[str]:
    """Real English prose: docstrings of the standard library, one paragraph per document."""
    import argparse
    import collections
    import functools
    import json as json_module
    import pathlib
    import textwrap

    texts = []
    for module in (argparse, collections, functools, json_module, pathlib, textwrap):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if callable(obj) else None
            texts += [p.replace("\n", " ") for p in (doc or "").split("\n\n") if len(p.split()) > 8]
    return sorted(set(texts))


def test_whole_word_masking_keeps_english_subword_pieces_together(tmp_path):
    texts = english_texts()
    assert len(texts) > 100
    tok = train_tokenizer(texts, tmp_path / "en", kind="wordpiece", vocab_size=400)  # many ## pieces
    corpus = tokenize_annotated(texts, tok, fields=["word_start"])
    batch, docs = doc_rows(tok, texts, corpus, max_len=126)
    out = WholeWordMasking(tok, mask_rate=0.2).prepare(clone(batch), torch.Generator().manual_seed(0))
    chosen = out["labels"] != IGNORE
    multi_piece = 0
    for row, d in enumerate(docs):
        word_ids = tok(texts[d], add_special_tokens=False).word_ids()
        states: dict[int, set] = {}
        for k, w in enumerate(word_ids):
            states.setdefault(w, set()).add(bool(chosen[row, k + 1]))
        assert all(len(s) == 1 for s in states.values()), texts[d]
        multi_piece += sum(word_ids.count(w) > 1 and s == {True} for w, s in states.items())
    assert multi_piece > 50  # masked words of several pieces, all pieces masked


@pytest.mark.parametrize(("p", "max_words"), [(0.2, 10), (0.4, 5)])
def test_span_lengths_follow_the_configured_distribution(zh, p, max_words):
    tok, _, corpus = zh
    obj = SpanMasking(tok, span_p=p, span_max_words=max_words)
    lengths = []
    for start in range(0, 256, 32):
        batch = packed_batch(tok, corpus, rows=32, start=start)
        candidates = obj.mlm.candidates(batch)
        chosen = obj.choose(batch, torch.Generator().manual_seed(start)).numpy()
        unit = word_units(batch["word_start"], candidates).numpy()
        for row in range(len(unit)):
            words = np.unique(unit[row][candidates[row].numpy()])
            masked = np.isin(words, unit[row][chosen[row]]).astype(int)  # per word, in order
            edges = np.diff(np.concatenate([[0], masked, [0]]))
            lengths += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))  # spans never touch
    expected = (np.arange(1, max_words + 1) * span_length_probs(p, max_words)).sum()
    assert len(lengths) > 500 and max(lengths) <= max_words
    assert abs(np.mean(lengths) - expected) <= 0.1 * expected, (np.mean(lengths), expected)


# --- sentence pairs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nsp", "sop"])
def test_sentence_pairs(zh, kind):
    tok, _, corpus = zh
    T = 64
    pairs = build_pairs(
        corpus,
        np.arange(len(corpus.offsets) - 1),
        T,
        kind=kind,
        seed=0,
        cls_id=tok.cls_token_id,
        sep_id=tok.sep_token_id,
        pad_id=tok.pad_token_id,
        carry={"word_start": 1},
    )
    ids, types, mask, labels = (
        pairs[k] for k in ("input_ids", "token_type_ids", "attention_mask", "pair_labels")
    )
    n = len(labels)
    assert n > 300 and ids.shape == (n, T) and pairs["word_start"].shape == (n, T)
    assert abs(labels.mean() - 0.5) <= 1 / n  # balanced: labels come in shuffled pairs
    stream = corpus.ids.astype(np.int32).tobytes()
    contiguous = {0: 0, 1: 0}
    for row in range(n):
        length = int(mask[row].sum())
        seps = np.flatnonzero(ids[row] == tok.sep_token_id)
        assert ids[row, 0] == tok.cls_token_id and list(seps) == [seps[0], length - 1] and seps[0] > 1
        assert (ids[row, length:] == tok.pad_token_id).all() and not mask[row, length:].any()
        assert (types[row, : seps[0] + 1] == 0).all() and (types[row, seps[0] + 1 : length] == 1).all()
        assert not types[row, length:].any()
        a, b = ids[row, 1 : seps[0]], ids[row, seps[0] + 1 : length - 1]
        first, second = (b, a) if kind == "sop" and labels[row] else (a, b)
        contiguous[int(labels[row])] += np.concatenate([first, second]).astype(np.int32).tobytes() in stream
    # The junction is real text: in order for positives, swapped back for SOP negatives; NSP negatives
    # join two documents, which the corpus almost never contains.
    assert contiguous[0] == (labels == 0).sum()
    if kind == "sop":
        assert contiguous[1] == (labels == 1).sum()
    else:
        assert contiguous[1] < 0.05 * (labels == 1).sum()


def test_pair_batches_drop_unused_padding(zh):
    tok, _, corpus = zh
    pairs = build_pairs(
        corpus, np.arange(50), 128, kind="sop", seed=0, cls_id=2, sep_id=3, pad_id=tok.pad_token_id
    )
    batch = {k: torch.from_numpy(v[:4].astype(np.int64)) for k, v in pairs.items()}
    objectives = ObjectiveSet([MaskedLM(tok)], [1.0])
    out = objectives.prepare(batch, torch.Generator().manual_seed(0))
    width = int(batch["attention_mask"].sum(1).max())
    assert out["input_ids"].shape == (4, width) and out["pair_labels"].shape == (4,)


# --- causal LM ---------------------------------------------------------------------------------------


def test_clm_labels_are_the_inputs_shifted_and_padding_is_ignored():
    from transformers import GPT2Config, GPT2LMHeadModel

    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = CausalLM().prepare({"input_ids": ids, "attention_mask": mask}, torch.Generator())["labels"]
    assert labels.tolist() == [[6, 7, 8, 9, IGNORE], [11, 12, IGNORE, IGNORE, IGNORE]]
    assert torch.equal(shifted_labels(ids)[:, :-1], ids[:, 1:])

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=20, n_embd=16, n_layer=1, n_head=2, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    batch = {"input_ids": ids[:1], "labels": labels[:1]}
    ours = CausalLM().losses(Encoded(model, batch), batch)["clm_loss"]
    assert torch.allclose(ours, model(input_ids=ids[:1], labels=ids[:1]).loss)  # transformers shifts itself


# --- configuration errors ---------------------------------------------------------------------------


def test_unknown_and_incompatible_objectives_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown objective.*'mlmx'.*known objectives: mlm, wwm, span"):
        check_objectives(["mlmx"])
    with pytest.raises(ConfigError, match="pick one of mlm, wwm, span, clm"):
        check_objectives(["mlm", "wwm"])
    with pytest.raises(ConfigError, match="nsp and sop"):
        check_objectives(["mlm", "nsp", "sop"])
    with pytest.raises(ConfigError, match="need an encoder.*decoder: use objective clm"):
        check_objectives(["mlm"], arch="gpt2")
    with pytest.raises(ConfigError, match="clm needs a decoder"):
        check_objectives(["clm"], arch="bert")


def test_objectives_check_the_model_they_get(zh_tokenizer_dir):
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    tok = load_tokenizer(zh_tokenizer_dir)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2))
    bert = BertForMaskedLM(
        BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ConfigError, match="objective mlm needs an encoder"):
        build_objectives(ObjectiveConfig(names=["mlm"]), tok, model=gpt)
    with pytest.raises(ConfigError, match="objective clm needs a decoder"):
        build_objectives(ObjectiveConfig(names=["clm"]), tok, model=bert)
    with pytest.raises(ConfigError, match="tagged corpus"):
        build_objectives(ObjectiveConfig(names=["mlm", "tags"]), tok, model=bert)


def test_tags_on_an_untagged_corpus_is_a_data_error(tiny_pretrain_overrides):
    over = {**tiny_pretrain_overrides, "objective.names": ["mlm", "tags"]}
    with pytest.raises(DataError, match="not a tagged corpus"):
        pretrain(build_config(PretrainConfig, overrides=over))


# --- end to end: a few dozen steps of each objective on real data ------------------------------------


@pytest.fixture(scope="module")
def bpe_tokenizer_dir(tmp_path_factory):
    from lmvalue.data.sources import iter_texts

    out = tmp_path_factory.mktemp("tok") / "zh-bpe"
    train_tokenizer(iter_texts("demo:zh-reviews", max_docs=2000), out, kind="bpe", vocab_size=1500)
    return out


RUNS = {
    "mlm": {},
    "wwm": {},
    "span": {},
    "mlm+nsp": {},
    "mlm+sop": {},
    "mlm+tags": {"data.source": "demo:zh-news", "data.max_docs": 3000},
    "clm-gpt2": {"model.arch": "gpt2"},
    "clm-llama": {"model.arch": "llama"},
}


@pytest.mark.parametrize("run", list(RUNS))
def test_each_objective_learns_and_saves_a_plain_transformers_model(
    run, tiny_pretrain_overrides, bpe_tokenizer_dir
):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForPreTraining

    names = ["clm"] if run.startswith("clm") else run.split("+")
    over = {
        **tiny_pretrain_overrides,
        **RUNS[run],
        "objective.names": names,
        "train.max_steps": 40,
        "train.eval_every": 20,
        "train.save_every": 40,
    }
    if names == ["clm"]:
        over["model.tokenizer"] = str(bpe_tokenizer_dir)
    metrics = pretrain(build_config(PretrainConfig, overrides=over))
    first, final = metrics["evals"][0], metrics["final"]
    assert metrics["objectives"] == names
    assert final["eval_loss"] < first["eval_loss"] - 0.5, (first, final)
    predicted = next(n for n in names if n in ("mlm", "wwm", "span", "clm"))
    assert final[f"eval_{predicted}_loss"] < first[f"eval_{predicted}_loss"] - 0.5
    if "tags" in names:
        assert final["eval_tags_loss"] < first["eval_tags_loss"] - 0.3
    model_dir = Path(over["train.output_dir"]) / "model"
    if names == ["clm"]:
        assert "eval_clm_perplexity" in final and "eval_ref_mlm_loss" not in final
        lm = AutoModelForCausalLM.from_pretrained(model_dir)
        assert lm.config.model_type == over["model.arch"]
        return
    # Every encoder is also scored by the same plain MLM evaluation (same blocks, same masks).
    assert final["eval_ref_mlm_loss"] < first["eval_ref_mlm_loss"]
    if names == ["mlm"]:
        assert final["eval_ref_mlm_loss"] == final["eval_mlm_loss"]
    lm = AutoModelForMaskedLM.from_pretrained(model_dir)
    assert type(lm).__name__ == "BertForMaskedLM"
    saved = load_file(str(model_dir / "model.safetensors"))
    if "sop" in names or "nsp" in names:  # BERT's own pretraining layout: pooler + cls.seq_relationship
        full = AutoModelForPreTraining.from_pretrained(model_dir)
        assert torch.equal(full.cls.seq_relationship.weight, saved["cls.seq_relationship.weight"])
        assert torch.equal(full.bert.pooler.dense.weight, saved["bert.pooler.dense.weight"])
    if "tags" in names:
        labels = AutoConfig.from_pretrained(model_dir).lmvalue_tag_labels
        assert {"n", "v", "w", "nr"} <= set(labels)
        assert saved["tag_head.weight"].shape[0] == len(labels)


def test_pair_objective_resumes_exactly(tiny_pretrain_overrides, tmp_path):
    """Heads are in the checkpoints, and the per-epoch pairs are rebuilt identically on resume."""
    from safetensors.torch import load_file

    base = {**tiny_pretrain_overrides, "objective.names": ["mlm", "sop"], "train.keep_checkpoints": 5}
    straight = {**base, "train.output_dir": str(tmp_path / "straight")}
    pretrain(build_config(PretrainConfig, overrides=straight))
    # A run killed after its step-10 checkpoint: the same run folder as it was at that moment.
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "straight", killed)
    shutil.rmtree(killed / "model")
    for ckpt in (killed / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > 10:
            shutil.rmtree(ckpt)
    info = json.loads((killed / "run.json").read_text())
    (killed / "run.json").write_text(json.dumps({**info, "status": "running"}))
    pretrain(
        build_config(
            PretrainConfig, overrides={**base, "train.output_dir": str(killed), "train.resume": True}
        )
    )
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert "cls.seq_relationship.weight" in a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generate_samples_from_a_causal_lm(tiny_pretrain_overrides, bpe_tokenizer_dir, capsys):
    from lmvalue.cli import main

    over = {
        **tiny_pretrain_overrides,
        "model.arch": "gpt2",
        "model.tokenizer": str(bpe_tokenizer_dir),
        "objective.names": ["clm"],
        "train.max_steps": 10,
    }
    pretrain(build_config(PretrainConfig, overrides=over))
    run = over["train.output_dir"]
    capsys.readouterr()
    args = ["generate", "--model", run, "--prompt", "这本书", "--max-new-tokens", "8", "--top-p", "0.9"]
    assert main([*args, "--seed", "1", "-n", "2"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 2 and all(line.startswith("这本书") for line in first)
    assert main([*args, "--seed", "1", "-n", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == first  # seeded
    assert main(["generate", "--model", run, "--prompt", "好", "--temperature", "0"]) == 0

    mlm = {**tiny_pretrain_overrides, "train.output_dir": str(Path(run).parent / "mlm"), "train.max_steps": 1}
    pretrain(build_config(PretrainConfig, overrides=mlm))
    assert main(["generate", "--model", mlm["train.output_dir"], "--prompt", "好"]) == 2
    assert "generate needs a causal LM" in capsys.readouterr().err


def test_simcse_loss_equals_a_hand_computation_and_uses_two_dropout_views(monkeypatch):
    import torch.nn.functional as F
    from transformers import BertConfig, BertForMaskedLM

    from lmvalue.objectives import simcse
    from lmvalue.objectives.simcse import SimCSE, contrastive_loss

    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 1.0]])
    loss, correct = contrastive_loss(z1, z2, 0.5)
    sim = torch.tensor([[F.cosine_similarity(a, b, dim=0) / 0.5 for b in z2] for a in z1])
    expected = -torch.log_softmax(sim, dim=1).diagonal().mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert int(correct) == int((sim.argmax(1) == torch.arange(3)).sum())

    views: list[tuple[torch.Tensor, torch.Tensor]] = []  # the two [CLS] views the objective contrasts

    def recording(a, b, temperature):
        views.append((a.detach().clone(), b.detach().clone()))
        return contrastive_loss(a, b, temperature)

    monkeypatch.setattr(simcse, "contrastive_loss", recording)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = BertForMaskedLM(cfg)
    batch = {"input_ids": torch.randint(5, 50, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    objective = SimCSE(0.05)
    model.eval()  # no dropout: both views are the same, so the loss is the hand computation on one
    parts = objective.losses(Encoded(model, batch), batch)
    cls = model.bert(**batch).last_hidden_state[:, 0]
    assert float(parts["simcse_loss"]) == pytest.approx(float(contrastive_loss(cls, cls, 0.05)[0]), rel=1e-5)
    eval_loss = float(parts["simcse_loss"])
    a, b = views[-1]
    assert torch.equal(a, b) and torch.allclose(a, cls, atol=1e-6)
    model.train()  # dropout: the second view differs from the first, and gradients reach the encoder
    parts = objective.losses(Encoded(model, batch), batch)
    a, b = views[-1]
    assert a.shape == b.shape == (4, 16)
    assert (a - b).abs().amax(dim=1).min() > 1e-3, (a - b).abs()  # every row's two views differ
    assert not torch.allclose(a, cls, atol=1e-3)  # and neither is the dropout-free state
    # different views of the same row are less alike than identical ones: a higher loss than in eval
    assert float(parts["simcse_loss"]) > eval_loss + 1e-3, (float(parts["simcse_loss"]), eval_loss)
    parts["simcse_loss"].backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_mlm_plus_simcse_spreads_the_held_out_sentence_vectors(tiny_pretrain_overrides):
    """At first a tiny BERT's [CLS] state hardly depends on the input (the held-out contrastive
    loss is ln(batch)); SimCSE pulls the rows apart while MLM keeps learning. The symmetry takes
    ~100 steps to break at this size, hence the longer run."""
    over = {
        **tiny_pretrain_overrides,
        "objective.names": ["mlm", "simcse"],
        "train.max_steps": 160,
        "train.eval_every": 80,
        "train.save_every": 160,
        "train.lr": 5e-3,
        "train.precision": "fp32",
    }
    metrics = pretrain(build_config(PretrainConfig, overrides=over))
    first, final = metrics["evals"][0], metrics["final"]
    assert first["eval_simcse_loss"] == pytest.approx(math.log(8), abs=0.01)  # batch 8, collapsed
    assert final["eval_simcse_loss"] < first["eval_simcse_loss"] - 0.5, (first, final)
    assert final["eval_mlm_loss"] < first["eval_mlm_loss"] - 0.5


# --- replaced-token detection (ELECTRA) ---------------------------------------------------------------


def test_rtd_labels_mark_exactly_the_changed_positions():
    from lmvalue.objectives.rtd import replaced_labels

    original = torch.tensor([[2, 10, 11, 12, 3], [2, 20, 21, 3, 0]])
    chosen = torch.tensor([[False, True, False, True, False], [False, True, True, False, False]])
    sampled = torch.tensor([99, 12, 20, 77])  # row 0: 10->99, 12->12 (kept); row 1: 20->20 (kept), 21->77
    disc_input, labels = replaced_labels(original, sampled, chosen)
    assert disc_input.tolist() == [[2, 99, 11, 12, 3], [2, 20, 77, 3, 0]]
    assert labels.tolist() == [
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
    ]  # a sample equal to the original is "original"


def test_rtd_samples_follow_the_generator_distribution():
    from lmvalue.objectives.rtd import sample_tokens

    torch.manual_seed(0)
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    logits = torch.log(probs.clamp(min=1e-12)).expand(20000, 4)
    counts = torch.bincount(sample_tokens(logits), minlength=4).float() / 20000
    assert torch.allclose(counts, probs, atol=0.015), counts
    assert counts[3] == 0


def test_rtd_loss_equals_a_hand_computation_and_trains_generator_and_discriminator(zh):
    import torch.nn.functional as F
    from transformers import BertConfig, BertForMaskedLM

    from lmvalue.objectives.rtd import ReplacedTokenDetection

    tok, texts, _ = zh
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    model = BertForMaskedLM(cfg)
    objective = ReplacedTokenDetection(tok, model=model, weight=50.0)
    model.eval()  # no dropout (generator included): the hand computation sees the same network
    assert model.rtd_generator.width == 16 and model.rtd_generator.body.config.num_hidden_layers == 1
    enc = tok(texts[:6], truncation=True, max_length=24, padding=True, return_tensors="pt")
    batch = objective.prepare(dict(enc), torch.Generator().manual_seed(1))
    assert torch.equal(batch["input_ids"], enc["input_ids"])  # the discriminator's originals are kept
    chosen = batch["rtd_labels"] != IGNORE
    assert torch.equal(batch["rtd_labels"][chosen], enc["input_ids"][chosen])
    torch.manual_seed(5)
    parts = objective.losses(Encoded(model, batch), batch)
    again = objective.losses(Encoded(model, batch), batch)  # held-out scores repeat exactly
    assert float(again["rtd_discriminator_loss"]) == float(parts["rtd_discriminator_loss"])

    # By hand: generator -> tied MLM head at the chosen positions -> Gumbel samples -> discriminator.
    extra = {"attention_mask": batch["attention_mask"], "token_type_ids": batch["token_type_ids"]}
    g = model.rtd_generator
    states = g.project_out(
        g.body(
            inputs_embeds=g.project_in(model.bert.embeddings.word_embeddings(batch["rtd_input_ids"])), **extra
        ).last_hidden_state
    )
    logits = model.cls(states[chosen])
    assert torch.equal(model.cls.predictions.decoder.weight, model.bert.embeddings.word_embeddings.weight)
    gen_loss = F.cross_entropy(logits, batch["rtd_labels"][chosen])
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(0)).clamp_(1e-9, 1.0)  # eval: fixed
    sampled = (logits - torch.log(-torch.log(u))).argmax(-1)
    disc_input = batch["input_ids"].clone()
    disc_input[chosen] = sampled
    special = torch.tensor(sorted(set(tok.all_special_ids) - {tok.unk_token_id}))  # [UNK] is real text
    scored = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], special)
    hidden = model.bert(input_ids=disc_input, **extra).last_hidden_state
    truth = (disc_input != batch["input_ids"]).float()[scored]
    disc_loss = F.binary_cross_entropy_with_logits(model.rtd_head(hidden[scored]).squeeze(-1), truth)
    assert float(parts["rtd_generator_loss"]) == pytest.approx(float(gen_loss), rel=1e-5)
    assert float(parts["rtd_discriminator_loss"]) == pytest.approx(float(disc_loss), rel=1e-5)
    assert float(parts["rtd_loss"].detach()) == pytest.approx(float(gen_loss + 50 * disc_loss), rel=1e-5)
    assert int(parts["rtd_count"]) == int(scored.sum()) > int(chosen.sum())  # every real token is scored
    assert 0 < int(parts["rtd_replaced"]) <= int(chosen.sum())
    parts["rtd_loss"].backward()  # both networks learn; the sampling passes no gradient
    assert model.rtd_generator.body.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert model.rtd_head[2].weight.grad.abs().sum() > 0


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_rtd_pretrains_and_the_discriminator_fine_tunes_in_plain_transformers(
    tiny_pretrain_overrides, monkeypatch
):
    """The discriminator must beat the best constant guess: a model that says "replaced" with the
    probability p of the held-out tokens actually replaced scores the binary entropy H(p) (~0.40
    nats at ~14% replaced), so "below 0.45" would pass without learning anything. The replaced
    fraction of every evaluation is recorded from the objective's own counts.

    Measured (seeds 0-3, lr 1e-3, 100 steps): the final loss is 0.0067-0.0119 nats below H(p)
    (seed 0: 0.0079). The edge is small and comes early: at lr 2e-3 and 60 steps it was 0.0003, and
    after 800 steps at 1e-3 it shrinks to <0.001 once the generator's samples follow the data's token
    frequencies; the tiny discriminator has not learned contextual cues by then."""
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    from lmvalue.objectives.rtd import ReplacedTokenDetection

    evals: list[list[float]] = []  # per evaluation: [replaced, scored]
    evaluate, losses = ObjectiveSet.evaluate, ReplacedTokenDetection.losses

    def counting_evaluate(self, model, batches):
        evals.append([0.0, 0.0])
        return evaluate(self, model, batches)

    def counting_losses(self, encoded, batch):
        parts = losses(self, encoded, batch)
        if not encoded.model.training:
            evals[-1][0] += float(parts["rtd_replaced"])
            evals[-1][1] += float(parts["rtd_count"])
        return parts

    monkeypatch.setattr(ObjectiveSet, "evaluate", counting_evaluate)
    monkeypatch.setattr(ReplacedTokenDetection, "losses", counting_losses)
    over = {
        **tiny_pretrain_overrides,
        "objective.names": ["rtd"],
        "train.lr": 1e-3,
        "train.max_steps": 100,
        "train.eval_every": 50,
        "train.save_every": 100,
    }
    metrics = pretrain(build_config(PretrainConfig, overrides=over))
    first, final = metrics["evals"][0], metrics["final"]
    assert len(evals) == len(metrics["evals"]) and all(n > 1000 for _, n in evals), evals
    assert first["eval_rtd_discriminator_loss"] == pytest.approx(math.log(2), abs=0.02)
    replaced = evals[-1][0] / evals[-1][1]
    constant = binary_entropy(replaced)  # the loss of always answering p
    assert 0.05 < replaced < 0.2, replaced  # ~15% chosen, minus the samples equal to the original
    assert final["eval_rtd_discriminator_loss"] < constant - 0.003, (constant, final)
    assert final["eval_rtd_generator_loss"] < first["eval_rtd_generator_loss"] - 0.5
    assert "eval_ref_mlm_loss" not in final  # its MLM head is the generator's: no reference score
    model_dir = Path(over["train.output_dir"]) / "model"
    saved = load_file(str(model_dir / "model.safetensors"))
    assert any(k.startswith("rtd_head.") for k in saved) and any(
        k.startswith("rtd_generator.") for k in saved
    )
    lm = AutoModelForMaskedLM.from_pretrained(model_dir)
    clf = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    for model in (lm, clf):  # the discriminator's encoder is what loads
        weight = model.bert.encoder.layer[-1].output.dense.weight
        assert torch.equal(weight, saved["bert.encoder.layer.1.output.dense.weight"])


def test_rtd_excludes_other_masking_objectives():
    with pytest.raises(ConfigError, match="rtd both predict tokens"):
        check_objectives(["mlm", "rtd"])
    with pytest.raises(ConfigError, match="rtd.*need an encoder"):
        check_objectives(["rtd"], "gpt2")


def test_rtd_leaves_no_trainable_weight_without_a_gradient(zh):
    """Under DistributedDataParallel (find_unused_parameters=False) every trainable weight must get one."""
    from transformers import BertConfig, BertForMaskedLM

    from lmvalue.objectives.rtd import ReplacedTokenDetection

    tok, texts, _ = zh
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    objective = ReplacedTokenDetection(tok, model=model)
    batch = objective.prepare(
        dict(tok(texts[:8], truncation=True, max_length=32, padding=True, return_tensors="pt")),
        torch.Generator().manual_seed(0),
    )
    objective.losses(Encoded(model, batch), batch)["rtd_loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_rtd_generator_heads_divide_its_width():
    from transformers import BertConfig

    from lmvalue.objectives.rtd import Generator

    for hidden, share in ((768, 0.3), (256, 0.25), (64, 0.25), (512, 1 / 3)):
        g = Generator(BertConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4), share)
        heads = g.body.config.num_attention_heads
        assert g.width % heads == 0 and g.width % 16 == 0, (hidden, share, g.width, heads)
