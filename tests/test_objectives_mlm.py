import torch

from lmvalue.objectives.forward import Encoded
from lmvalue.objectives.mlm import IGNORE, MaskedLM, apply_masking, masked_lm_loss, select_exact
from lmvalue.tokenizer import load_tokenizer


def test_exact_rate_and_specials_never_masked(zh_tokenizer_dir):
    tok = load_tokenizer(zh_tokenizer_dir)
    obj = MaskedLM(tok, mask_rate=0.15)
    ids = torch.randint(5, len(tok), (64, 64))
    ids[:, 0] = tok.cls_token_id
    ids[:, 20] = tok.sep_token_id
    batch = obj.prepare({"input_ids": ids.clone()}, torch.Generator().manual_seed(0))
    chosen = batch["labels"] != IGNORE
    candidates = 64 * 62
    assert abs(chosen.sum().item() / candidates - 0.15) < 0.01
    assert not chosen[:, 0].any() and not chosen[:, 20].any()
    # labels hold the original ids exactly where something is predicted
    assert torch.equal(batch["labels"][chosen], ids[chosen])
    # 80/10/10: most chosen positions show [MASK], the unchosen are untouched
    share_mask = (batch["input_ids"][chosen] == tok.mask_token_id).float().mean().item()
    assert 0.74 < share_mask < 0.86
    assert torch.equal(batch["input_ids"][~chosen], ids[~chosen])


def test_masking_is_deterministic_under_a_seed(zh_tokenizer_dir):
    obj = MaskedLM(load_tokenizer(zh_tokenizer_dir))
    ids = torch.randint(5, 1000, (4, 32))
    a = obj.prepare({"input_ids": ids.clone()}, torch.Generator().manual_seed(1))
    b = obj.prepare({"input_ids": ids.clone()}, torch.Generator().manual_seed(1))
    c = obj.prepare({"input_ids": ids.clone()}, torch.Generator().manual_seed(2))
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["labels"], c["labels"])


def test_select_exact_counts():
    cand = torch.ones(3, 100, dtype=torch.bool)
    cand[1, 50:] = False
    chosen = select_exact(cand, 0.2, torch.Generator().manual_seed(0))
    assert chosen.sum(1).tolist() == [20, 10, 20]
    assert not chosen[1, 50:].any()


def test_sparse_head_matches_dense_loss_and_gradients():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=300,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0,
            attention_probs_dropout_prob=0,
        )
    )
    ids = torch.randint(5, 300, (4, 24))
    chosen = select_exact(torch.ones_like(ids, dtype=torch.bool), 0.15, torch.Generator().manual_seed(0))
    inp, labels = apply_masking(
        ids, chosen, torch.Generator().manual_seed(1), mask_token_id=4, vocab_size=300
    )
    batch = {"input_ids": inp, "labels": labels}
    sparse = masked_lm_loss(Encoded(model, batch, sparse_head=True), labels)["mlm_loss"]
    sparse.backward()
    g_sparse = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    dense = masked_lm_loss(Encoded(model, batch, sparse_head=False), labels)["mlm_loss"]
    reference = model(input_ids=inp, labels=labels).loss  # transformers' own computation
    dense.backward()
    assert abs(sparse.item() - dense.item()) < 1e-5 and abs(sparse.item() - reference.item()) < 1e-5
    for a, p in zip(g_sparse, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6)
