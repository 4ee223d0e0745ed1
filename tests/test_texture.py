"""The sample-quality figures (onade.metrics.texture, sample_quality) on images built to have a known answer."""

import math

import numpy as np
import pytest
import torch

from onade.metrics import SPECK_L1, Texture, sample_quality, texture


def flat(colour=(200, 120, 40), side=12) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (1, side, side, 3)).copy()


def centre_hole(side=12, lo=3, hi=9) -> np.ndarray:
    hidden = np.zeros((side, side), bool)
    hidden[lo:hi, lo:hi] = True
    return hidden


def test_a_one_pixel_speck_is_counted_and_raises_the_roughness():
    image, hidden = flat(), centre_hole()
    speck = image.copy()
    speck[0, 5, 6] = (0, 255, 255)
    clean, specked = texture(image, hidden), texture(speck, hidden)
    assert (clean.specks, specked.specks) == (0, 1)
    assert specked.pixels == clean.pixels == 36
    assert specked.speck_rate == pytest.approx(1 / 36)
    # Its four neighbours in the hole each differ by |200-0| + |120-255| + |40-255| = 550.
    assert specked.l1_sum == 4 * 550 and clean.roughness == 0
    assert specked.pairs == 2 * 6 * 5


def test_a_hard_edge_between_two_flat_regions_is_not_a_speck():
    image, hidden = flat(), centre_hole()
    image[0, :, 6:] = (10, 10, 250)
    t = texture(image, hidden)
    assert t.specks == 0
    # One column of horizontal pairs (6 of them) crosses the edge: 190 + 110 + 210 each.
    assert t.l1_sum == 6 * 510 and t.roughness == pytest.approx(6 * 510 / 60)
    # A thin line one pixel wide is not a speck either: its pixels have like neighbours along it.
    line = flat()
    line[0, :, 5] = (0, 0, 0)
    assert texture(line, hidden).specks == 0


def test_a_speck_needs_every_neighbour_far_and_the_image_edge_counts_as_far():
    image = flat()
    image[0, 5, 5] = (200 - SPECK_L1, 120, 40)  # exactly SPECK_L1 away: not more
    assert texture(image, centre_hole()).specks == 0
    image[0, 5, 5] = (200 - SPECK_L1 - 1, 120, 40)
    assert texture(image, centre_hole()).specks == 1
    corner = flat()
    corner[0, 0, 0] = (0, 0, 0)
    hidden = np.zeros((12, 12), bool)
    hidden[0, 0] = True
    assert texture(corner, hidden).specks == 1


def test_uniform_noise_is_far_rougher_than_a_smooth_image():
    rng = np.random.default_rng(0)
    side = 32
    rows, cols = np.meshgrid(np.arange(side) * 2, np.arange(side) * 2, indexing="ij")
    ramp = np.stack([rows, cols, np.full((side, side), 99)], -1).astype(np.uint8)[None]
    hidden = centre_hole(side, 8, 24)
    noise = ramp.copy()
    noise[0, hidden] = rng.integers(0, 256, (int(hidden.sum()), 3), dtype=np.uint8)
    figures = sample_quality(texture(noise, hidden), texture(ramp, hidden))
    assert figures["hole_roughness_originals"] == pytest.approx(2.0)
    assert figures["roughness_ratio"] > 30
    assert figures["speck_rate"] > 0.5 and figures["speck_rate_originals"] == 0


def test_a_sample_equal_to_its_original_has_ratio_one():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    hidden = centre_hole(16, 4, 12)
    figures = sample_quality(texture(torch.from_numpy(images), torch.from_numpy(hidden)), texture(images, hidden))
    assert figures["roughness_ratio"] == 1.0
    assert figures["speck_rate"] == figures["speck_rate_originals"] > 0


def test_sets_pool_by_adding_and_rgba_is_seen_on_white():
    a, b = flat(), flat((0, 0, 0))
    hidden = centre_hole()
    both = texture(np.concatenate([a, b]), hidden)
    assert both == texture(a, hidden) + texture(b, hidden)
    # A transparent pixel shows white whatever RGB lies under it; an opaque one shows its RGB.
    rgba = np.concatenate([flat((255, 255, 255)), np.full((1, 12, 12, 1), 255, np.uint8)], -1)
    rgba[0, 5, 5] = (0, 0, 0, 0)
    assert texture(rgba, hidden).specks == 0
    rgba[0, 5, 5, 3] = 255
    assert texture(rgba, hidden).specks == 1
    assert math.isnan(Texture().roughness) and math.isnan(Texture().speck_rate)


def test_only_the_hole_and_its_margin_are_read_whatever_the_image_size():
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (2, 10, 10, 3), dtype=np.uint8)
    hidden = np.zeros((10, 10), bool)
    hidden[3:7, 2:8] = True
    big = rng.integers(0, 256, (2, 300, 400, 3), dtype=np.uint8)
    big[:, 100:110, 200:210] = small
    big_hidden = np.zeros((300, 400), bool)
    big_hidden[100:110, 200:210] = hidden
    assert texture(big, big_hidden) == texture(small, hidden)
    assert texture(big, np.zeros((300, 400), bool)) == Texture()
