"""model.init_vectors: word2vec vectors of the tokenizer's pieces copied into a fresh model's embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from lmvalue.vector_init import init_embeddings, piece_vectors


@pytest.fixture(scope="module")
def texts():
    from lmvalue.data.sources import iter_texts

    return list(iter_texts("demo:zh-reviews", max_docs=600))


def test_the_embeddings_hold_exactly_the_vectors_of_the_tokenizers_pieces(char_tokenizer_dir, texts):
    tok = PreTrainedTokenizerFast.from_pretrained(str(char_tokenizer_dir))
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
    before = model.get_input_embeddings().weight.detach().clone()
    info = init_embeddings(model, tok, texts, seed=0)
    after = model.get_input_embeddings().weight.detach()
    kv = piece_vectors(texts, tok, dim=32, seed=0)  # the same vectors again: one worker, same seed
    vocab = tok.get_vocab()
    seen = {vocab[p] for p in kv.key_to_index}
    assert info["pieces"] == len(seen) > 500
    for piece in ["好", "的", "不"]:
        assert np.allclose(after[vocab[piece]].numpy(), kv[piece] * info["scale"], atol=1e-7)
    untouched = [i for i in range(len(tok)) if i not in seen]
    assert untouched and torch.equal(after[untouched], before[untouched])  # [PAD], [MASK], unseen pieces
    rows = after[sorted(seen)]
    assert float(rows.std()) == pytest.approx(0.02, rel=1e-3)  # the model's initializer_range
    # the MLM output layer is tied to the embeddings: it starts from the same vectors
    assert torch.equal(model.get_output_embeddings().weight.detach(), after)
    # similar pieces get similar rows: a sentiment character's nearest neighbours come from the vectors
    assert kv.most_similar("好", topn=1)[0][0] in kv.key_to_index


def test_a_pretraining_run_with_init_vectors_records_them(char_tokenizer_dir, tmp_path, texts):
    from lmvalue.config import PretrainConfig, build_config
    from lmvalue.pretraining import pretrain

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    over = {
        "data.source": str(corpus),
        "model.tokenizer": str(char_tokenizer_dir),
        "model.hidden": 32,
        "model.heads": 2,
        "model.ffn": 64,
        "model.num_layers": 1,
        "data.block_size": 32,
        "train.batch_size": 4,
        "train.max_steps": 2,
        "train.progress": False,
        "train.output_dir": str(tmp_path / "run"),
    }
    m = pretrain(build_config(PretrainConfig, overrides={**over, "model.init_vectors": True}))
    assert m["init_vectors"]["pieces"] > 500 and m["init_vectors"]["seconds"] >= 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["init_vectors"]["pieces"] == m["init_vectors"]["pieces"]
    with pytest.raises(Exception, match="init_vectors"):
        build_config(PretrainConfig, overrides={**over, "model.init_vectors": True, "model.init_from": "x"})
