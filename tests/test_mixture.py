"""The discretized logistic mixture head (onade.mixture, model.head="logistic")."""

import math

import pytest
import torch

import onade
from onade.config import ConfigError, get_preset
from onade.loss import hidden_nats
from onade.masks import observed_except_center
from onade.mixture import log_probs, nats
from tests.helpers import random_batch, tiny_model

K = 4


def params(n: int, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3 * K, generator=torch.Generator().manual_seed(seed)) * scale


def test_the_table_is_a_distribution_and_nats_read_it_at_the_value():
    p = params(2000)  # scales from e^-7 to e^3, means well outside [-1, 1]
    table = log_probs(p, K)
    assert table.shape == (2000, 256)
    assert torch.allclose(table.exp().sum(-1), torch.ones(2000), atol=1e-5)
    values = torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(nats(p, values, K), -table.gather(-1, values[:, None])[:, 0], atol=1e-4)


def test_a_sharp_component_puts_its_weight_on_its_value_and_the_ends_take_the_tails():
    p = torch.zeros(3 * K)
    p[:K] = torch.tensor([0.0, math.log(3), -50, -50])  # weights 1/4, 3/4
    p[K:2 * K] = torch.tensor([200 / 127.5 - 1, 2.0, 0, 0])  # value 200, and far beyond 255
    p[2 * K:] = -7.0  # the sharpest scale: half a bin is 4.3 scales, the bin holds 97% of the component
    prob = log_probs(p, K).exp()
    assert prob[200] == pytest.approx(0.25 * 0.973, abs=1e-3)
    assert prob[255] == pytest.approx(0.75, abs=1e-4)  # the last bin reaches to +inf
    assert prob[199] == prob[201] == pytest.approx(0.25 * 0.027 / 2, abs=1e-3)


def test_gradients_are_finite_at_both_end_bins_and_the_extreme_scales():
    p = params(64, scale=6.0).requires_grad_(True)
    values = torch.tensor([0, 255] * 32)
    nats(p, values, K).sum().backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("head", ["softmax", "logistic"])
def test_score_mode_gives_the_hidden_nats_of_the_full_table(head):
    model = tiny_model(head=head, mixtures=3).eval()
    x, observed, tokens, lengths = random_batch(2, 8)
    with torch.no_grad():
        logits = model(x, observed, tokens, lengths)
        scored = model(x, observed, tokens, lengths, score=True)
    assert logits.shape == (2, 8, 8, 3, 256) and scored.shape == (2, 8, 8, 3)
    assert torch.allclose(scored, hidden_nats(logits, x, observed), atol=1e-4)
    assert (scored[observed] == 0).all()


def test_a_logistic_model_learns_and_samples():
    torch.manual_seed(0)
    model = tiny_model(head="logistic", mixtures=3)
    x, observed, tokens, lengths = random_batch(4, 8)
    x = (x // 64) * 64  # four levels: a mixture should find them
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(x, observed, tokens, lengths, score=True).sum() / (~observed).sum() / math.log(2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 2, losses[::10]
    hole = observed_except_center(4, 8)
    filled, _ = onade.inpaint(model.eval(), x, hole, tokens, lengths, steps=6, seed=0)
    assert torch.equal(filled[hole], x[hole])


def test_bad_head_settings_are_config_errors_naming_the_key():
    for key, value in (("head", "mixture"), ("mixtures", 0)):
        cfg = get_preset("debug")
        setattr(cfg.model, key, value)
        with pytest.raises(ConfigError, match=f"model.{key}"):
            cfg.validate()
