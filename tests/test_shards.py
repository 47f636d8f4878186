"""The token cache: the same ids and blocks as in memory, reused when (and only when) the tokenizer
and the text are the same, nothing half-written after a failure, and pretraining that uses it."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from lmvalue.data.annotate import tokenize_annotated
from lmvalue.data.packing import pack_blocks
from lmvalue.data.shards import cached_blocks, cached_tokens
from lmvalue.data.sources import iter_texts
from lmvalue.errors import DataError


@pytest.fixture(scope="module")
def texts():
    return list(iter_texts("demo:zh-reviews", max_docs=3000))


def test_cached_ids_equal_in_memory_tokenization_and_are_reused(texts, zh_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    corpus = tokenize_annotated(texts, tok)
    ids, offsets = corpus.ids, corpus.offsets
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
    from lmvalue.pretraining import pretrain

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
    corpus = tokenize_annotated(texts, tok)
    ids, offsets = corpus.ids, corpus.offsets
    assert np.diff(offsets).max() > 20
    cutting = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    cutting.backend_tokenizer.enable_truncation(max_length=8)
    entry, _ = cached_tokens(lambda: iter(texts), cutting, cache_dir=tmp_path)
    assert np.array_equal(entry.offsets, offsets) and np.array_equal(entry.ids, ids)
    annotated = tokenize_annotated(texts, cutting)
    assert np.array_equal(annotated.offsets, offsets)
    assert cutting.backend_tokenizer.truncation is not None  # the caller's tokenizer is untouched


def test_the_cjk_fast_path_equals_the_rust_tokenizer_on_every_ideograph_and_mixed_text(
    texts, zh_tokenizer_dir, bpe_like_tokenizer, monkeypatch
):
    from lmvalue.data.shards import CjkFastEncoder, encode_ids

    backend = AutoTokenizer.from_pretrained(zh_tokenizer_dir).backend_tokenizer
    assert CjkFastEncoder.applies(backend)
    fast = CjkFastEncoder(backend)

    def reference(batch):
        return [e.ids for e in backend.encode_batch(batch, add_special_tokens=False)]

    every = "".join(chr(c) for c in [*range(0x3400, 0x4DC0), *range(0x4E00, 0xA000)])
    edges = "".join(
        chr(c) for c in (0x33FF, 0x4DC0, 0x4DFF, 0xA000, 0xF900, 0xFA0E, 0xFAFF, 0x20000, 0x2F800)
    )
    mixed = [every[i : i + 300] for i in range(0, len(every), 300)] + [
        edges,
        "好" + edges + "的",
        "iPhone11很好用，ＡＢＣ全角！Café naïve 字\u0301 A\u030a 好\u0000坏\ufffd\t\n\u3000评价",
        "价格: $12.50 (打折) #好评# ...... 😀👍 http://x.cn/a?b=1 就这样",
        "   ",
        "",
        "[MASK] 和 [UNK]，还有 [SEP]",
    ]
    batch = mixed + texts[:2000]
    assert fast.encode(batch) == reference(batch)
    assert fast.encode(batch) == reference(batch)  # again, with the memo of pieces warm
    small = CjkFastEncoder(backend)  # a memo that overflows on every batch starts afresh, losing nothing
    monkeypatch.setattr("lmvalue.data.shards._PIECE_CACHE", 50)
    assert [small.encode(batch[i : i + 300]) for i in range(0, len(batch), 300)] == [
        reference(batch[i : i + 300]) for i in range(0, len(batch), 300)
    ]
    assert len(small.pieces) <= max(50, 300 * 40)
    assert sum(i == fast.unk for ids in fast.encode([every]) for i in ids) > 10_000  # most are [UNK] at 1,500
    # tokenizers it does not apply to take the general path
    assert not CjkFastEncoder.applies(bpe_like_tokenizer)
    assert encode_ids(bpe_like_tokenizer)(["好的 ok"]) == [
        bpe_like_tokenizer.encode("好的 ok", add_special_tokens=False).ids
    ]
    added = AutoTokenizer.from_pretrained(zh_tokenizer_dir)
    added.add_tokens(["好评"])
    assert not CjkFastEncoder.applies(added.backend_tokenizer)  # matched before normalisation


@pytest.fixture(scope="module")
def bpe_like_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(texts[:500], trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    return tok
