import itertools
import math

import pytest
import torch

from onade.loss import nade_loss
from tests.helpers import tiny_model


@torch.no_grad()
def test_orderless_loss_is_unbiased_for_the_nll_of_a_random_ordering():
    """Enumerate everything on a 1x2 image (D = 6): E_mask[loss] must equal the mean over all 720 orderings
    of the chain-rule NLL, in bits per subpixel."""
    model = tiny_model(image_size=2, dilations=(1,), num_blocks=1)
    x = torch.tensor([[[[10, 200, 30], [40, 50, 250]]], [[[0, 0, 0], [255, 255, 255]]]], dtype=torch.uint8)
    x = torch.cat([x, x], dim=1)  # 2x2 image, D = 12 is too many orderings; mask out the bottom row below
    tokens, lengths = torch.tensor([[5, 6], [7, 0]]), torch.tensor([2, 1])
    B, D = 2, 6
    var_positions = [(0, w, c) for w in range(2) for c in range(3)]  # the 6 variables of the top row

    def mask_for(observed_vars):
        m = torch.zeros(B, 2, 2, 3, dtype=torch.bool)
        m[:, 1] = True  # the bottom row is always observed (context)
        for v in observed_vars:
            m[(slice(None),) + var_positions[v]] = True
        return m

    def cond_nats(observed_vars, target):
        logits = model(x, mask_for(observed_vars), tokens, lengths)
        h, w, c = var_positions[target]
        return torch.nn.functional.cross_entropy(logits[:, h, w, c], x[:, h, w, c].long(), reduction="none")

    cache = {}

    def cached(obs, t):
        key = (frozenset(obs), t)
        if key not in cache:
            cache[key] = cond_nats(sorted(obs), t)
        return cache[key]

    nll_orderings = torch.stack([sum(cached(order[:i], order[i]) for i in range(D))
                                 for order in itertools.permutations(range(D))]).mean(0)
    target_B = nll_orderings / D / math.log(2)

    # Expected loss under the orderless mask distribution: hidden count uniform in 1..D, subset uniform.
    expected_B = torch.zeros(B, dtype=torch.float64)
    for num_hidden in range(1, D + 1):
        subsets = list(itertools.combinations(range(D), num_hidden))
        for hidden in subsets:
            observed = [v for v in range(D) if v not in hidden]
            m = mask_for(observed)
            logits = model(x, m, tokens, lengths)
            per_example = torch.stack([nade_loss(logits[i:i + 1], x[i:i + 1], m[i:i + 1]) for i in range(B)])
            expected_B += per_example.double() / D / len(subsets)
    assert torch.allclose(expected_B.float(), target_B.float(), rtol=1e-4)
    # The plain mean ("mean" kind) coincides per example; over a batch it weights examples by hole size.


def test_mean_kind_pools_the_batch_and_orderless_averages_examples():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 2, 3, 256, generator=g)
    x = torch.randint(0, 256, (2, 2, 2, 3), generator=g, dtype=torch.uint8)
    observed = torch.ones(2, 2, 2, 3, dtype=torch.bool)
    observed[0, 0, 0, 0] = False
    observed[1] = False
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, -2), x.long().flatten(), reduction="none").view(2, -1)
    orderless = (ce[0, 0] + ce[1].mean()) / 2 / math.log(2)
    pooled = (ce[0, 0] + ce[1].sum()) / 13 / math.log(2)
    assert torch.isclose(nade_loss(logits, x, observed, "orderless"), orderless)
    assert torch.isclose(nade_loss(logits, x, observed, "mean"), pooled)
    with pytest.raises(ValueError, match="loss kind"):
        nade_loss(logits, x, observed, "sum")
