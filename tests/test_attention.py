"""The CPU training attention (``train.fast_attention``) against transformers' SDPA path."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

import lmvalue.attention as attention
from lmvalue.attention import NAME, cpu_attention_forward, use_cpu_attention

# round(1e-9 * 65536) = 0 dropped levels: the dropout path runs but drops nothing, so the result
# must equal SDPA's exactly up to float rounding.
NO_DROP = 1e-9


def _ids():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids, mask


def _pair(model):
    model.train()
    fast = copy.deepcopy(model)
    assert use_cpu_attention(fast) == 1
    assert fast.config._attn_implementation == NAME and model.config._attn_implementation == "sdpa"
    return model, fast


def _loss_and_grads(model, **batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    (la, ga), (lb, gb) = a, b
    assert torch.allclose(la, lb, atol=1e-5), (la, lb)
    assert ga.keys() == gb.keys()
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-5), n


def _bert(attention_dropout: float) -> BertForMaskedLM:
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=attention_dropout,
    )
    return BertForMaskedLM(cfg)


@pytest.fixture
def calls(monkeypatch):
    """Count the calls that take the fast path (its dropout is applied once per call)."""
    seen = []
    original = attention.FastDropoutFunction

    class Counting:
        @staticmethod
        def apply(x, p):
            seen.append(x.shape)
            return original.apply(x, p)

    monkeypatch.setattr(attention, "FastDropoutFunction", Counting)
    return seen


def test_bert_with_padding_matches_sdpa(calls):
    torch.manual_seed(0)
    ref, fast = _pair(_bert(NO_DROP))
    ids, mask = _ids()
    labels = ids.masked_fill(mask == 0, -100)
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    _assert_same(_loss_and_grads(ref, **batch), _loss_and_grads(fast, **batch))
    assert len(calls) == 2  # both layers took the fast path
    # evaluation goes to SDPA unchanged
    ref.eval(), fast.eval()
    with torch.no_grad():
        assert torch.equal(ref(**batch).logits, fast(**batch).logits)
    assert len(calls) == 2


@pytest.mark.parametrize("padded", [False, True])
def test_gpt2_causal_matches_sdpa(calls, padded):
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=100,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=NO_DROP,
        bos_token_id=1,
        eos_token_id=2,
    )
    ref, fast = _pair(GPT2LMHeadModel(cfg))
    ids, mask = _ids()
    batch = dict(input_ids=ids, labels=ids)
    if padded:
        batch["attention_mask"] = mask
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    _assert_same(_loss_and_grads(ref, **batch), _loss_and_grads(fast, **batch))
    assert len(calls) == 2


def test_bf16_without_dropout_takes_fast_path_and_fp32_does_not(calls, monkeypatch):
    torch.manual_seed(0)
    ref, fast = _pair(_bert(0.0))
    ids, mask = _ids()
    batch = dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    a = _loss_and_grads(ref, **batch)
    b = _loss_and_grads(fast, **batch)
    _assert_same(a, b)
    assert calls == []  # fp32, no dropout: SDPA's fused kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lr = ref(**batch).loss
        lf = fast(**batch).loss
    assert torch.allclose(lr.float(), lf.float(), atol=0.03)
    # no dropout is applied, so the dropout counter stays empty; count the calls handed to SDPA instead
    handed = []
    sdpa = attention.sdpa_attention_forward

    def counting(*args, **kwargs):
        handed.append(args[1].dtype)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", counting)
    q = torch.randn(2, 4, 6, 8, dtype=torch.bfloat16)
    module = torch.nn.Module()
    module.is_causal = False
    out, _ = cpu_attention_forward(module, q, q, q, None, dropout=0.0, scaling=8**-0.5)
    assert handed == []  # bf16 without dropout: the fast path
    cpu_attention_forward(module, q.float(), q.float(), q.float(), None, dropout=0.0, scaling=8**-0.5)
    assert handed == [torch.float32]  # fp32 without dropout: SDPA
    expected = torch.softmax((q.float() @ q.float().transpose(-1, -2)) * 8**-0.5, -1) @ q.float()
    assert torch.allclose(out.float(), expected.transpose(1, 2), atol=0.03)


def test_dropout_on_probabilities_is_unbiased():
    """Each draw drops about p of the weights; the mean over draws is the undropped attention."""
    torch.manual_seed(0)
    module = torch.nn.Module()
    module.is_causal = False
    q, k = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    v = torch.eye(16).expand(1, 2, 16, 16)  # the output rows are the (dropped, rescaled) probabilities
    exact = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, -1).transpose(1, 2)
    draws = torch.stack(
        [cpu_attention_forward(module, q, k, v, None, dropout=0.3, scaling=8**-0.5)[0] for _ in range(2000)]
    )
    zero = (draws == 0).float().mean().item()
    assert 0.28 < zero < 0.32
    kept = draws[draws != 0] / exact.expand_as(draws)[draws != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.7), rtol=1e-4)
    assert torch.allclose(draws.mean(0), exact, atol=0.02)
    module.eval()  # evaluation (transformers passes dropout 0 then): SDPA
    out, _ = cpu_attention_forward(module, q, k, v, None, dropout=0.0, scaling=8**-0.5)
    assert torch.allclose(out, exact, atol=1e-6)


def test_not_saved_in_config(tmp_path):
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    model = BertForMaskedLM(cfg)
    use_cpu_attention(model)
    model.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()
    again = BertForMaskedLM.from_pretrained(tmp_path)
    assert again.config._attn_implementation == "sdpa"


def test_float_masks_keep_the_scores_dtype():
    """An additive fp32 mask on bf16 inputs (pure bf16 weights, no autocast) keeps bf16 throughout."""
    torch.manual_seed(0)
    module = torch.nn.Module()
    module.is_causal = False
    q = torch.randn(2, 2, 5, 8, dtype=torch.bfloat16)
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, ..., 3:] = torch.finfo(torch.float32).min  # the second row attends to its first 3 keys
    out, _ = cpu_attention_forward(module, q, q, q, mask, dropout=0.1, scaling=8**-0.5)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 2, 8) and torch.isfinite(out.float()).all()
