"""onade.ema: the average follows its formula exactly, starts from the model, and is a separate copy."""

import pytest
import torch

from onade.ema import EMA
from tests.helpers import tiny_model


def test_ema_is_the_exponential_average_with_warmup():
    model = tiny_model(8)
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone().float() for k, v in start.items()}
    g = torch.Generator().manual_seed(0)
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        d = min(0.9, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        params = dict(model.named_parameters())
        for k in expected:
            if k in params:
                expected[k] = d * expected[k] + (1 - d) * params[k].detach()
        ema.update(model)
    got = ema.state_dict()
    for k, v in expected.items():
        assert torch.allclose(got[k], v, atol=1e-5), k
    assert not torch.allclose(got["head_proj.weight"], model.state_dict()["head_proj.weight"])


def test_ema_is_a_separate_frozen_copy_and_round_trips():
    model = tiny_model(8)
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        model.head_proj.weight.add_(1.0)
    assert not torch.equal(ema.model.head_proj.weight, model.head_proj.weight)
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training
    other = EMA(tiny_model(8, seed=1), decay=0.99)
    other.load_state_dict(ema.state_dict(), num_updates=7)
    assert other.num_updates == 7
    assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), ema.model.state_dict().values()))


def test_decay_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="decay"):
        EMA(tiny_model(8), decay=1.0)
