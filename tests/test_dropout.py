"""The fast CPU dropout: the configured drop rate, an exact expectation, a backward pass through the
same mask, seeded draws, identity outside training, and the module swap."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from lmvalue.dropout import FastDropout, keep_scale, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drop_rate_scale_and_gradient(p, dtype):
    torch.manual_seed(0)
    x = torch.full((64, 128, 64), 2.0, dtype=dtype, requires_grad=True)
    layer = FastDropout(p).train()
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.005)  # 524k draws: the standard error is ~0.0005
    _, scale = keep_scale(p)
    assert torch.allclose(y[y != 0].float(), torch.tensor(2.0 * scale), rtol=1e-2)
    # the expectation is exact for the quantised rate: round(p * 65536) / 65536
    q = round(p * 65536) / 65536
    assert (1 - q) * scale == pytest.approx(1.0, abs=1e-12)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad == 0, y == 0)  # the same positions get no gradient
    assert torch.allclose(x.grad[y != 0].float(), torch.tensor(scale), rtol=1e-2)


def test_seeded_identity_in_eval_and_swap():
    x = torch.randn(8, 16)
    layer = FastDropout(0.5).train()
    torch.manual_seed(3)
    a = layer(x)
    torch.manual_seed(3)
    assert torch.equal(a, layer(x))  # the global generator decides the mask
    assert not torch.equal(a, layer(x))
    assert torch.equal(layer.eval()(x), x) and torch.equal(FastDropout(0.0).train()(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))  # as nn.Dropout(p=1)

    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n = use_fast_dropout(model)
    assert n >= 5 and not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert all(m.p == 0.1 for m in model.modules() if isinstance(m, FastDropout))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # nothing saved changes
    model.eval()
    ids = torch.randint(5, 50, (2, 8))
    out = model(input_ids=ids).logits
    assert torch.equal(out, model(input_ids=ids).logits)
