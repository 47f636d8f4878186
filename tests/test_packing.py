import numpy as np
import torch

from lmvalue.data.annotate import tokenize_annotated
from lmvalue.data.packing import BlockBatches, pack_blocks, split_documents
from lmvalue.tokenizer import load_tokenizer


def test_pack_blocks_no_padding_and_separators():
    ids = np.arange(100, 130, dtype=np.int32)
    offsets = np.array([0, 5, 12, 30])
    blocks = pack_blocks(ids, offsets, np.array([0, 1, 2]), 8, sep_id=3, cls_id=2)
    # 30 tokens + 3 separators = 33 -> 4 blocks of 7 + [CLS]
    assert blocks.shape == (4, 8)
    assert (blocks[:, 0] == 2).all()
    stream = blocks[:, 1:].reshape(-1)
    assert list(stream[:6]) == [100, 101, 102, 103, 104, 3]


def test_split_documents_is_seeded_and_disjoint():
    a_train, a_eval = split_documents(100, 0.1, seed=0)
    b_train, b_eval = split_documents(100, 0.1, seed=0)
    assert np.array_equal(a_eval, b_eval) and len(a_eval) == 10
    assert not set(a_train) & set(a_eval) and len(a_train) + len(a_eval) == 100


def test_tokenized_corpus_offsets(zh_tokenizer_dir):
    tok = load_tokenizer(zh_tokenizer_dir)
    texts = ["这个东西很好", "质量太差了，不推荐"]
    corpus = tokenize_annotated(texts, tok)
    ids, offsets = corpus.ids, corpus.offsets
    assert offsets[-1] == len(ids)
    assert (
        list(ids[offsets[1] : offsets[2]]) == tok("质量太差了，不推荐", add_special_tokens=False)["input_ids"]
    )


def test_block_batches_ranks_take_disjoint_rows_and_are_reproducible():
    blocks = np.arange(40 * 4).reshape(40, 4)
    ident = lambda b, g: b  # noqa: E731
    r0 = BlockBatches(blocks, 5, seed=1, epoch=0, prepare=ident, rank=0, world=2)
    r1 = BlockBatches(blocks, 5, seed=1, epoch=0, prepare=ident, rank=1, world=2)
    assert len(r0) == 4
    seen0 = np.concatenate([r0.indices(i) for i in range(4)])
    seen1 = np.concatenate([r1.indices(i) for i in range(4)])
    assert not set(seen0) & set(seen1) and len(set(seen0) | set(seen1)) == 40
    again = BlockBatches(blocks, 5, seed=1, epoch=0, prepare=ident, rank=0, world=2)
    assert torch.equal(r0[2]["input_ids"], again[2]["input_ids"])
    other_epoch = BlockBatches(blocks, 5, seed=1, epoch=1, prepare=ident, rank=0, world=2)
    assert not np.array_equal(r0.indices(0), other_epoch.indices(0))
