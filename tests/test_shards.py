"""The token cache: the same ids and blocks as in memory, reused when (and only when) the tokenizer
and the text are the same, nothing half-written after a failure, and pretraining that uses it."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from lmvalue.data.packing import pack_blocks, tokenize_corpus
from lmvalue.data.shards import cached_blocks, cached_tokens
from lmvalue.data.sources import iter_texts
from lmvalue.errors import DataError


@pytest.fixture(scope="module")
def texts():
    return list(iter_texts("demo:zh-reviews", max_docs=3000))


def test_cached_ids_equal_in_memory_tokenization_and_are_reused(texts, zh_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    ids, offsets = tokenize_corpus(texts, tok)
    entry, stats = cached_tokens(lambda: iter(texts), tok, cache_dir=tmp_path)
    assert not stats["hit"] and stats["mb_per_s"] > 0
    assert isinstance(entry.ids, np.memmap) and entry.ids.dtype == np.uint16  # vocab 1,500 fits
    assert np.array_equal(entry.ids, ids) and np.array_equal(entry.offsets, offsets)
    stamp = (entry.folder / "ids.bin").stat().st_mtime_ns
    again, stats2 = cached_tokens(lambda: iter(texts), tok, cache_dir=tmp_path)
    assert stats2["hit"] and again.folder == entry.folder
    assert (entry.folder / "ids.bin").stat().st_mtime_ns == stamp  # read, not rewritten
    # one changed character, or another tokenizer: another entry
    edited = [texts[0] + "!"] + texts[1:]
    other, stats3 = cached_tokens(lambda: iter(edited), tok, cache_dir=tmp_path)
    assert not stats3["hit"] and other.folder != entry.folder
    tok2 = AutoTokenizer.from_pretrained(zh_tokenizer_dir, do_lower_case=False)
    tok2.backend_tokenizer.normalizer = None
    third, _ = cached_tokens(lambda: iter(texts), tok2, cache_dir=tmp_path)
    assert third.folder != entry.folder


@pytest.mark.parametrize("cls_id", [None, 2])
def test_cached_blocks_equal_pack_blocks(texts, zh_tokenizer_dir, tmp_path, cls_id):
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    entry, _ = cached_tokens(lambda: iter(texts), tok, cache_dir=tmp_path)
    docs = np.sort(np.random.default_rng(0).permutation(len(texts))[:2500])
    expected = pack_blocks(np.asarray(entry.ids), entry.offsets, docs, 64, sep_id=3, cls_id=cls_id)
    blocks = cached_blocks(entry, docs, 64, sep_id=3, cls_id=cls_id, cache_dir=tmp_path)
    assert blocks.shape == expected.shape and len(blocks) > 100
    assert np.array_equal(np.asarray(blocks), expected)
    rows = np.array([5, 0, 77, len(expected) - 1])
    assert np.array_equal(blocks[rows], expected[rows]) and np.array_equal(blocks[3:9], expected[3:9])


def test_a_failure_while_tokenizing_leaves_no_entry(texts, zh_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    calls = []

    def stream():
        calls.append(1)
        for i, t in enumerate(texts):
            if len(calls) == 2 and i == 2500:  # the second pass (tokenizing) dies midway
                raise KeyboardInterrupt
            yield t

    with pytest.raises(KeyboardInterrupt):
        cached_tokens(stream, tok, cache_dir=tmp_path)
    assert list((tmp_path / "tokens").iterdir()) == []  # no entry, no temporary folder
    entry, stats = cached_tokens(lambda: iter(texts), tok, cache_dir=tmp_path)
    assert not stats["hit"] and entry.info["documents"] == len(texts)


def test_empty_corpus_is_refused(zh_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    with pytest.raises(DataError, match="no documents"):
        cached_tokens(lambda: iter([]), tok, cache_dir=tmp_path)


def test_pretraining_reads_the_cache_and_a_second_run_hits_it(tiny_pretrain_overrides, tmp_path):
    from lmvalue.config import PretrainConfig, build_config
    from lmvalue.pretrain import pretrain

    over = {**tiny_pretrain_overrides, "data.cache_dir": str(tmp_path / "cache"), "train.max_steps": 3}
    first = pretrain(
        build_config(PretrainConfig, overrides={**over, "train.output_dir": str(tmp_path / "a")})
    )
    second = pretrain(
        build_config(PretrainConfig, overrides={**over, "train.output_dir": str(tmp_path / "b")})
    )
    off = pretrain(
        build_config(
            PretrainConfig,
            overrides={**over, "data.cache": False, "train.output_dir": str(tmp_path / "c")},
        )
    )
    assert first["data"]["token_cache"] == "written" and second["data"]["token_cache"] == "hit"
    assert off["data"]["token_cache"] == "off"
    # the same data either way: same blocks, same masks, same losses
    for m in (second, off):
        assert m["data"]["train_blocks"] == first["data"]["train_blocks"]
        assert m["evals"][-1]["eval_loss"] == pytest.approx(first["evals"][-1]["eval_loss"], abs=1e-6)


def test_a_tokenizer_that_truncates_does_not_cut_documents(texts, zh_tokenizer_dir, tmp_path):
    """A checkpoint's tokenizer.json may carry truncation (all-MiniLM-L6-v2 cuts at 128 tokens):
    pretraining packs whole documents, so neither the cache nor the in-memory path may cut them."""
    from lmvalue.data.annotate import tokenize_annotated

    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    ids, offsets = tokenize_corpus(texts, tok)
    assert np.diff(offsets).max() > 20
    cutting = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    cutting.backend_tokenizer.enable_truncation(max_length=8)
    entry, _ = cached_tokens(lambda: iter(texts), cutting, cache_dir=tmp_path)
    assert np.array_equal(entry.offsets, offsets) and np.array_equal(entry.ids, ids)
    annotated = tokenize_annotated(texts, cutting)
    assert np.array_equal(annotated.offsets, offsets)
    assert cutting.backend_tokenizer.truncation is not None  # the caller's tokenizer is untouched
