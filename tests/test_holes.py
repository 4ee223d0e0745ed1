"""Holes in image coordinates and the model's window around them (onade.holes)."""

import numpy as np
import pytest
from PIL import ImageFilter

from onade.holes import HoleSpec, Window, _depth, _rank_filter, centre_window, context_window


def test_specs_in_pixels_fractions_centre_and_random_boxes():
    assert HoleSpec.parse("box:10,20,30,40").box(100, 80) == (10, 20, 40, 60)
    assert HoleSpec.parse("box:0.25,0.25,0.5,0.5").box(1600, 1200) == (400, 300, 1200, 900)
    assert HoleSpec.parse("box:0.25,0.25,0.5,0.5").box(9, 7) == (2, 2, 7, 5)  # rounded, never empty
    assert HoleSpec.parse("center").box(1600, 1200) == (500, 300, 1100, 900)  # half the shorter side
    assert HoleSpec.parse("center").box(32, 32) == (8, 8, 24, 24)  # the training set's centre hole
    assert HoleSpec.parse("center").box(1, 1) == (0, 0, 1, 1)
    spec = HoleSpec.parse("random-box:3")
    boxes = {spec.box(640, 480, key=f"img{i}.jpg") for i in range(50)}
    assert len(boxes) > 40, "each image gets its own box"
    assert spec.box(640, 480, key="a.jpg") == HoleSpec.parse("random-box:3").box(640, 480, key="a.jpg")
    assert spec.box(640, 480, key="a.jpg") != HoleSpec.parse("random-box:4").box(640, 480, key="a.jpg")
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 480
        assert 0.25 * 480 - 1 <= right - left <= 0.5 * 480 + 1 and 0.25 * 480 - 1 <= bottom - top <= 0.5 * 480 + 1
    hidden = HoleSpec.parse("box:1,2,3,4").hidden(10, 8)
    assert hidden.shape == (8, 10) and hidden.sum() == 12 and hidden[2:6, 1:4].all()


@pytest.mark.parametrize("spec, message", [
    ("box:1,2,3", "expected center, box:X,Y,W,H"), ("box:a,b,c,d", "expected center"), ("middle", "expected"),
    ("box:0,0,0,5", "W and H > 0"), ("box:-1,0,5,5", "X and Y must be >= 0"), ("box:0.5,0.5,0.6,0.1", "at most 1"),
    ("random-box:x", "seed must be an integer"), ("box:nan,0.1,0.2,0.2", "expected")])
def test_bad_specs_say_what_is_expected(spec, message):
    with pytest.raises(ValueError, match=message):
        HoleSpec.parse(spec)


def test_a_pixel_box_outside_an_image_is_an_error_naming_the_size():
    with pytest.raises(ValueError, match="does not lie inside the 40x30 image"):
        HoleSpec.parse("box:30,10,20,10").box(40, 30)


def _hole(w, h, box):
    return HoleSpec.parse("box:" + ",".join(map(str, box))).hidden(w, h)


def test_the_context_window_centres_the_hole_with_as_much_context_again():
    w = context_window(_hole(1600, 1200, (700, 500, 100, 80)), 32)
    assert w.side == 200 and (w.left, w.top) == (650, 440)  # the hole fills the central half
    # A small hole is seen at the image's own resolution: the window is at least the model size.
    w = context_window(_hole(1600, 1200, (700, 500, 5, 5)), 32)
    assert w.side == 32 and w.left <= 700 and w.left + 32 >= 705
    # Near a corner the window slides inside the image and still holds the whole hole.
    w = context_window(_hole(1600, 1200, (0, 1150, 40, 50)), 32)
    assert (w.left, w.top, w.side) == (0, 1100, 100)
    # The window is at most the shorter side; the hole then fills more than half of it.
    w = context_window(_hole(1600, 1200, (100, 100, 800, 600)), 32)
    assert w.side == 1200 and w.left <= 100 and w.left + 1200 >= 900 and w.top == 0
    # A tiny image: its whole shorter side, upscaled to the model.
    w = context_window(_hole(9, 7, (3, 2, 3, 3)), 32)
    assert w.side == 7 and 0 <= w.left <= 2


def test_a_hole_too_large_for_one_window_is_refused_not_tiled():
    w = context_window(_hole(1600, 1200, (0, 0, 1200, 10)), 32)  # no context left across, but it fits
    assert (w.left, w.top, w.side) == (0, 0, 1200)
    with pytest.raises(ValueError, match=r"longer than the image's shorter side \(1200 px\).*not tiled.*--fit crop"):
        context_window(_hole(1600, 1200, (0, 0, 1201, 10)), 32)
    with pytest.raises(ValueError, match="hides nothing"):
        context_window(np.zeros((10, 10), bool), 32)


def test_to_model_resizes_the_window_and_the_hole_covers_every_hidden_pixel():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    hidden = _hole(400, 300, (150, 100, 50, 40))
    window = context_window(hidden, 16)
    x, hole = window.to_model(image, hidden)
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8 and hole.shape == (16, 16)
    scale = window.side / 16
    for y in range(300):  # every hidden image pixel lies under a model pixel of the hole
        for xx in range(400):
            if hidden[y, xx]:
                assert hole[int((y - window.top) / scale), int((xx - window.left) / scale)]
    assert 0.25 < hole.mean() < 0.5  # about the central half (a quarter of the area), grown by one pixel
    # At the model size itself the window is the image, pixel for pixel.
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    w = Window(0, 0, 16, 16)
    hidden = _hole(16, 16, (4, 4, 8, 8))
    got, hole = w.to_model(small, hidden)
    assert np.array_equal(got[~hidden], small[~hidden]) and np.array_equal(hole, hidden)


@pytest.mark.parametrize("size, box", [((400, 300), (150, 100, 50, 40)),  # shrunk to the model
                                       ((9, 7), (3, 2, 3, 3)),  # enlarged to the model
                                       ((2000, 1500), (900, 700, 1, 1))])  # a speck far below a model pixel
def test_nothing_hidden_reaches_the_model(size, box):
    """What the model sees (pixels and hole) is the same whatever the hidden pixels hold."""
    w, h = size
    hidden = _hole(w, h, box)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    window = context_window(hidden, 16)
    x, hole = window.to_model(image, hidden)
    assert hole.any(), "every hidden pixel is under the hole"
    other = image.copy()
    other[hidden] = 255 - other[hidden]
    x2, hole2 = window.to_model(other, hidden)
    assert np.array_equal(hole, hole2) and np.array_equal(x, x2)


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("feather", [0, 3])
def test_paste_changes_only_the_hole(channels, feather):
    rng = np.random.default_rng(1)
    source = rng.integers(0, 256, (120, 90, channels), dtype=np.uint8)
    hidden = np.zeros((120, 90), bool)
    hidden[40:70, 20:50] = True
    hidden[45, 55] = True  # a second, separate speck
    window = context_window(hidden, 16)
    sample = np.full((16, 16, 3), 7, np.uint8)
    out = window.paste(source, hidden, sample, feather=feather)
    assert out.shape == source.shape and out.dtype == np.uint8
    assert np.array_equal(out[~hidden], source[~hidden]), "outside the hole every byte is the source's"
    inner = np.zeros_like(hidden)
    inner[40 + 4:70 - 4, 20 + 4:50 - 4] = True
    assert (out[inner][:, :3] == 7).all(), "deep inside the hole: the sample"
    if channels == 4:
        assert (out[hidden][:, 3] == 255).all(), "filled pixels are opaque, feathered or not"
    if feather == 0:
        assert (out[hidden][:, :3] == 7).all()
    else:
        edge = out[40, 30, :3].astype(int)
        assert (np.abs(edge - 7) > 0).any() or (source[40, 30, :3] == 7).all(), "the edge blends in"


def test_feathering_blends_at_every_edge_of_the_hole_inside_the_image():
    source = np.full((60, 200, 3), 200, np.uint8)
    hidden = np.zeros((60, 200), bool)
    hidden[25:35, 70:130] = True  # as wide as the window: it touches the window's left and right edges
    window = context_window(hidden, 16)
    assert (window.left, window.side) == (70, 60)
    out = window.paste(source, hidden, np.full((16, 16, 3), 7, np.uint8), feather=3)
    for y, x in ((25, 100), (34, 100), (30, 70), (30, 129)):  # top, bottom, left, right edges
        assert 7 < out[y, x, 0] < 200, (y, x, out[y, x])
    assert out[30, 100, 0] == 7 and (out[~hidden] == 200).all()


def test_centre_window_is_the_centre_crop():
    assert centre_window(1600, 1200, 32) == Window(200, 0, 1200, 32)
    assert centre_window(7, 9, 32).box == (0, 1, 7, 8)


def hand_dilate(mask):
    """One 3x3 dilation as onade.holes wrote it by hand: the reference for the PIL filter that replaced it."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def hand_depth(hole, limit):
    """onade.holes._depth as written by hand (erosions padded with True: the border is not outside)."""
    depth = np.zeros(hole.shape, np.float32)
    inside = hole.copy()
    for d in range(1, limit + 2):
        depth[inside] = d
        padded = np.pad(inside, 1, constant_values=True)
        eroded = inside.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                eroded &= padded[dy:dy + hole.shape[0], dx:dx + hole.shape[1]]
        inside = eroded
    return depth


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (2, 2), (16, 16), (13, 29)])
@pytest.mark.parametrize("density", [0.02, 0.3, 0.9, 1.0])
def test_grow_and_depth_equal_the_hand_written_morphology(shape, density):
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    for _ in range(5):
        mask = rng.random(shape) < density
        mask[0, -1] |= density > 0.5  # a corner pixel, touching two borders
        expect = mask
        for times in range(4):
            assert np.array_equal(_rank_filter(mask, ImageFilter.MaxFilter, times), expect), times
            expect = hand_dilate(expect)
        for limit in (0, 1, 3):
            assert np.array_equal(_depth(mask, limit), hand_depth(mask, limit)), limit
