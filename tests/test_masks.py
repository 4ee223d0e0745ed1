import math

import pytest
import torch

from onade.config import MASK_KINDS, MaskConfig
from onade.masks import draw_observed, observed_except_box, observed_except_center


def _chi2_pvalue(observed, expected):
    """Upper tail of the chi-square distribution via the Wilson-Hilferty normal approximation."""
    stat = float(((observed - expected) ** 2 / expected).sum())
    k = len(observed) - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_orderless_count_is_uniform_in_1_to_D():
    g = torch.Generator().manual_seed(0)
    side, n = 2, 24000
    D = side * side * 3
    observed = draw_observed(MaskConfig(weights={"orderless": 1}), n, side, g)[0]
    hidden = (~observed).flatten(1).sum(1)
    assert hidden.min() >= 1 and hidden.max() <= D
    counts = torch.bincount(hidden, minlength=D + 1)[1:].double()
    assert _chi2_pvalue(counts, torch.full_like(counts, n / D)) > 1e-3
    assert counts.min() > 0


def test_orderless_subset_is_uniform_given_its_size():
    g = torch.Generator().manual_seed(1)
    observed = draw_observed(MaskConfig(weights={"orderless": 1}), 20000, 2, g)[0]
    one_hidden = (~observed).flatten(1)[(~observed).flatten(1).sum(1) == 1]
    counts = one_hidden.sum(0).double()
    assert _chi2_pvalue(counts, torch.full_like(counts, counts.sum() / 12)) > 1e-3


def test_orderless_per_pixel_hides_whole_pixels():
    g = torch.Generator().manual_seed(2)
    observed = draw_observed(MaskConfig(weights={"orderless": 1}, per_pixel=True), 500, 4, g)[0]
    assert torch.equal(observed.all(-1), observed.any(-1))
    hidden = (~observed.all(-1)).flatten(1).sum(1)
    assert hidden.min() >= 1 and hidden.max() <= 16


def test_bernoulli_rate_is_uniform_per_example():
    g = torch.Generator().manual_seed(3)
    observed = draw_observed(MaskConfig(weights={"bernoulli": 1}), 4000, 16, g)[0]
    frac = (~observed).float().flatten(1).mean(1)
    assert abs(frac.mean() - 0.5) < 0.02 and abs(frac.var() - 1 / 12) < 0.01


def test_box_is_one_contiguous_rectangle():
    g = torch.Generator().manual_seed(4)
    cfg = MaskConfig(weights={"box": 1}, min_box_fraction=0.25, max_box_fraction=0.5, hole_orderless=0)
    observed = draw_observed(cfg, 200, 16, g)[0]
    for m in observed:
        hidden = ~m[..., 0]
        rows, cols = hidden.any(1).nonzero().flatten(), hidden.any(0).nonzero().flatten()
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8
        assert hidden[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert int(hidden.sum()) == len(rows) * len(cols)
    assert torch.equal(observed.all(-1), observed.any(-1))


def test_center_is_half_the_side():
    m = observed_except_center(2, 64)
    assert int((~m).sum()) == 2 * 32 * 32 * 3
    assert not m[:, 16:48, 16:48].any() and m[:, :16].all() and m[:, 48:].all()


def test_observed_except_box_rejects_boxes_outside_the_image():
    with pytest.raises(ValueError, match="does not fit"):
        observed_except_box(1, 8, 6, 0, 4, 2)


def test_contiguish_hides_blobs():
    g = torch.Generator().manual_seed(5)

    def hidden_neighbour_fraction(kind):
        hidden = (~draw_observed(MaskConfig(weights={kind: 1}), 300, 16, g)[0]).float().permute(0, 3, 1, 2)
        neighbours = torch.nn.functional.avg_pool2d(hidden, 3, 1, 1)
        return float(hidden.mean()), float((neighbours * hidden).sum() / hidden.sum())

    rate, blob = hidden_neighbour_fraction("contiguish")
    bern_rate, scattered = hidden_neighbour_fraction("bernoulli")
    assert abs(rate - 0.5) < 0.1 and abs(bern_rate - 0.5) < 0.05  # fewer neighbours at the border
    # A hidden variable in a contiguish mask has far more hidden neighbours than in a Bernoulli mask.
    assert blob > scattered + 0.1


def test_mixture_follows_weights():
    g = torch.Generator().manual_seed(6)
    observed, kind_B = draw_observed(MaskConfig(weights={"center": 3, "orderless": 1}, hole_orderless=0), 4000, 8, g)
    is_center = (observed == observed_except_center(1, 8)).flatten(1).all(1)
    assert abs(float(is_center.float().mean()) - 0.75) < 0.03
    # The reported kind is the one drawn (an orderless mask equal to the centre hole is vanishingly rare).
    assert torch.equal(is_center, kind_B == MASK_KINDS.index("center"))


def test_partly_revealed_holes_hide_a_uniform_number_inside_the_hole():
    g = torch.Generator().manual_seed(7)
    side, n = 4, 20000
    observed, kind_B = draw_observed(MaskConfig(weights={"center": 1}, hole_orderless=0.5), n, side, g)
    hole = ~observed_except_center(1, side)[0]
    assert bool((kind_B == MASK_KINDS.index("center")).all())
    assert not bool((~observed & ~hole).any())  # nothing outside the hole is ever hidden
    num_hidden = (~observed).flatten(1).sum(1)
    M = int(hole.sum())  # 2x2 pixels x 3 = 12
    whole = num_hidden == M
    # Half hide the whole hole; the other half d ~ U{1..M} (which is M with probability 1/M).
    assert abs(float(whole.float().mean()) - (0.5 + 0.5 / M)) < 0.015
    counts = torch.bincount(num_hidden, minlength=M + 1)[1:M].float() / (0.5 * n)
    assert float((counts - 1 / M).abs().max()) < 0.01
    # Given d, every subpixel of the hole is equally likely to be the hidden one.
    per_site = (~observed[num_hidden == 1]).flatten(1).float().mean(0)[hole.flatten()]
    assert float(per_site.max() - per_site.min()) < 0.06


def test_holes_revealed_by_pixels_hide_whole_pixels_or_the_channels_after_a_prefix():
    g = torch.Generator().manual_seed(8)
    side, n = 4, 20000
    cfg = MaskConfig(weights={"box": 1, "center": 1}, hole_orderless=0.5, hole_reveal="pixels")
    observed, kind_B = draw_observed(cfg, n, side, g)
    hidden = ~observed
    centre = kind_B == MASK_KINDS.index("center")
    hole = ~observed_except_center(1, side)[0]
    assert not bool((hidden[centre] & ~hole).any())  # nothing outside the hole is ever hidden
    assert bool(hidden.flatten(1).any(1).all())  # something always is
    # Every hidden pixel hides a suffix of its channels: B alone, G and B, or all three.
    pattern = hidden.long() @ torch.tensor([1, 2, 4])
    assert set(pattern.unique().tolist()) == {0, 4, 6, 7}
    # Partly shown pixels come only in partly revealed holes, and then with one prefix per example.
    pixels = hidden.any(-1).flatten(1).sum(1)
    partial = (hidden.any(-1) & ~hidden.all(-1)).flatten(1)
    whole_hole = centre & (pixels == 4) & ~partial.any(1)
    assert abs(float(whole_hole.float().sum() / centre.sum()) - (0.5 + 0.5 / 4 * (1 / 3 + 2 / 3 / 16))) < 0.02
    per_example = (pattern.flatten(1)[:, :, None] == torch.tensor([4, 6])).any(1).sum(1)
    assert int(per_example.max()) == 1
    # A partly revealed hole with a prefix shows it on about half its hidden pixels (more, given it shows one).
    with_prefix = partial.any(1)
    assert 0.5 < float(partial[with_prefix].sum() / pixels[with_prefix].sum()) < 0.7
    # Given the count, every pixel of the hole is equally likely to be the hidden one.
    one = centre & (pixels == 1)
    per_site = hidden[one].any(-1).flatten(1).float().mean(0)[hole[..., 0].flatten()]
    assert float(per_site.max() - per_site.min()) < 0.1

