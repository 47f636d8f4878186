"""Task specs, sub-word alignment of tags, padded batches and scores."""

import numpy as np
import pytest
import torch

from lmvalue.errors import DataError
from lmvalue.tasks import TaskSpec, build_spec, infer_kind
from lmvalue.tasks.encode import IGNORE, LabeledBatches, encode, word_predictions
from lmvalue.tasks.metrics import classification_scores, confusion_png, spans, tagging_scores


@pytest.fixture(scope="module")
def tokenizer(char_tokenizer_dir):
    from lmvalue.tokenizer import load_tokenizer

    return load_tokenizer(char_tokenizer_dir)


NER = [
    {
        "tokens": ["iPhone", "在", "北", "京", "卖", "superlongunknownword"],
        "tags": ["B-ORG", "O", "B-LOC", "I-LOC", "O", "O"],
    },
    {"tokens": ["张", "三", "说", "好"], "tags": ["B-PER", "I-PER", "O", "O"]},
]


def test_spec_is_inferred_from_the_data():
    assert infer_kind("auto", "demo:zh-news:ner", None) == "tagging"
    assert infer_kind("auto", "x.conll", None) == "tagging"
    assert infer_kind("auto", "x.csv", "second") == "pair"
    assert infer_kind("auto", "demo:zh-reviews", None) == "classification"
    ner = build_spec("tagging", NER)
    assert ner.metric == "entity_f1" and ner.entity_tags and ner.labels[-1] == "O"
    pos = build_spec("tagging", [{"tokens": ["a", "b"], "tags": ["n", "v"]}])
    assert pos.metric == "token_accuracy" and pos.char_tokens
    clf = build_spec("classification", [{"text": "x", "label": "pos"}, {"text": "y", "label": "neg"}])
    assert clf.labels == ("neg", "pos") and clf.metric == "macro_f1"
    ordered = build_spec("classification", [{"text": "x", "label": "pos"}], labels=["pos", "neg"])
    assert ordered.labels == ("pos", "neg")
    with pytest.raises(DataError, match="task.labels does not list: 'pos'"):
        build_spec("classification", [{"text": "x", "label": "pos"}], labels=["neg"])
    with pytest.raises(DataError, match="needs BIO/BIOES tags"):
        build_spec("tagging", [{"tokens": ["a"], "tags": ["n"]}], metric="entity_f1")


def test_tags_go_on_first_pieces_and_come_back_unchanged(tokenizer):
    spec = build_spec("tagging", NER)
    items = encode(NER, spec, tokenizer, max_length=64)
    first = items[0]
    pieces_per_word = np.bincount(first["word_ids"][first["word_ids"] >= 0])
    assert pieces_per_word.max() > 1, "the example must have words split into several pieces"
    labeled = first["labels"] != IGNORE
    assert labeled.sum() == len(NER[0]["tokens"])  # one label per word, on its first piece
    assert (first["labels"][first["word_ids"] < 0] == IGNORE).all()  # [CLS], [SEP]
    for ex, item in zip(NER, items, strict=True):
        ids = word_predictions(item["labels"], item["word_ids"], item["n_words"])
        assert [spec.labels[i] for i in ids] == ex["tags"]


def test_truncated_words_have_no_prediction(tokenizer):
    spec = build_spec("tagging", NER)
    long = {"tokens": list("这是一个很长的句子") * 10, "tags": ["O"] * 90}
    (item,) = encode([long], spec, tokenizer, max_length=16)
    words = word_predictions(item["labels"], item["word_ids"], item["n_words"])
    assert words[:14] == [spec.labels.index("O")] * 14 and set(words[14:]) == {None}


def test_batches_are_deterministic_cover_the_epoch_and_pad_within_the_batch(tokenizer):
    spec = build_spec("classification", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    texts = ["好" * n for n in range(1, 24)]
    items = encode([{"text": t, "label": "a" if len(t) % 2 else "b"} for t in texts], spec, tokenizer, 64)
    batches = LabeledBatches(items, 5, seed=1, epoch=0, pad_id=tokenizer.pad_token_id)
    assert len(batches) == 5  # 23 examples: four of 5 and one of 3, none dropped
    again = LabeledBatches(items, 5, seed=1, epoch=0, pad_id=tokenizer.pad_token_id)
    other_epoch = LabeledBatches(items, 5, seed=1, epoch=1, pad_id=tokenizer.pad_token_id)
    seen = []
    for i in range(len(batches)):
        b = batches[i]
        assert torch.equal(b["input_ids"], again[i]["input_ids"])
        lengths = b["attention_mask"].sum(1)
        assert b["input_ids"].shape[1] == lengths.max()  # padded to the longest of this batch only
        seen += batches.indices(i).tolist()
    assert sorted(seen) == list(range(23))
    assert batches.indices(0).tolist() != other_epoch.indices(0).tolist()


def test_scores_on_known_answers(tmp_path):
    s = classification_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"], ("a", "b"))
    assert s["accuracy"] == 0.75 and s["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert "precision" in s["report_text"]
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG"]]
    t = tagging_scores(true, pred, entities=True)
    assert t["entity_precision"] == 1.0 and t["entity_recall"] == pytest.approx(2 / 3)
    assert t["token_accuracy"] == pytest.approx(5 / 6)
    assert spans(list("张三去北京"), ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]) == [
        {"type": "PER", "start": 0, "end": 2, "text": "张三"},
        {"type": "LOC", "start": 3, "end": 5, "text": "北京"},
    ]
    png = confusion_png(["a", "b", "b"], ["a", "a", "b"], ("a", "b"), tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spec_round_trips_through_its_file(tmp_path):
    spec = TaskSpec(kind="tagging", labels=("B-X", "I-X", "O"), metric="entity_f1", char_tokens=True)
    spec.save(tmp_path)
    assert TaskSpec.load(tmp_path) == spec


@pytest.mark.parametrize("world", [1, 2])
def test_length_grouped_batches_cut_padding_and_keep_the_epoch_and_the_seed(tokenizer, world):
    import random

    spec = build_spec("classification", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    rng = random.Random(0)
    texts = ["好" * rng.randint(1, 60) for _ in range(203)]
    items = encode([{"text": t, "label": "a"} for t in texts], spec, tokenizer, 64)

    def run(group, epoch=0, seed=1):
        per_rank = [
            LabeledBatches(
                items, 8, seed=seed, epoch=epoch, pad_id=0, rank=r, world=world, group_by_length=group
            )
            for r in range(world)
        ]
        batches = [(r, i) for i in range(len(per_rank[0])) for r in range(world)]
        seen = [j for r, i in batches for j in per_rank[r].indices(i).tolist()]
        padded = sum(per_rank[r][i]["input_ids"].numel() for r, i in batches)
        return seen, padded

    plain_seen, plain_padded = run(0)
    seen, padded = run(10)
    assert len(seen) == len(set(seen)) == len(plain_seen)  # the same number of examples, each once
    if world == 1:
        assert sorted(seen) == list(range(203))
    assert padded < 0.75 * plain_padded  # far less padding than random batches
    assert run(10)[0] == seen and run(10, epoch=1)[0] != seen and run(10, seed=2)[0] != seen
