"""Synthetic captioned images: deterministic, flat palette, and the centre is only knowable from the caption."""

import itertools

import numpy as np
import pytest
from PIL import Image

from data import synthetic
from data.synthetic import COLOURS, SHAPES, STRIPE, SYNONYMS, centre_box, make_sample, write_synthetic
from tests.awkward_inputs import write_awkward_cases


@pytest.fixture(scope="module")
def samples():
    return [make_sample(i, 32, seed=3) for i in range(240)]


def test_written_files_are_deterministic(tmp_path):
    a = write_synthetic(tmp_path / "a", 6, image_size=16, seed=1)
    b = write_synthetic(tmp_path / "b", 6, image_size=16, seed=1)
    assert a == b
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted([f"img_{i:05d}.png" for i in range(6)] + [f"img_{i:05d}.txt" for i in range(6)])
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    img = Image.open(tmp_path / "a" / "img_00000.png")
    assert img.mode == "RGB" and img.size == (16, 16)
    lines = (tmp_path / "a" / "img_00000.txt").read_text().splitlines()
    assert tuple(lines) == a[0].captions and len(set(lines)) == synthetic.CAPTIONS_PER_IMAGE
    # `start` continues the same sequence (disjoint train/val ranges).
    c = write_synthetic(tmp_path / "c", 2, image_size=16, seed=1, start=4)
    assert c == a[4:6]
    assert write_synthetic(tmp_path / "d", 3, image_size=16, seed=2) != a[:3]


def test_every_caption_names_the_centre_and_the_background(samples):
    for _, meta in samples:
        for cap in (c.lower() for c in meta.captions):
            assert meta.colour in cap and meta.background in cap
            assert any(name in cap for name in SYNONYMS[meta.shape]), cap
            assert ("stripe" in cap) == (meta.pattern == "striped"), cap
    phrasings = {c.replace(m.colour, "C").replace(m.background, "B") for _, m in samples for c in m.captions}
    assert len(phrasings) > 20  # real variety for the tokenizer and the caption reader


def test_flat_palette_and_all_factors_appear(samples):
    allowed = {tuple(c) for c in COLOURS.values()} | {STRIPE}
    for img, _ in samples:
        assert {tuple(p) for p in img.reshape(-1, 3)} <= allowed
    metas = [m for _, m in samples]
    assert {m.shape for m in metas} == set(SHAPES)
    assert {m.colour for m in metas} == set(COLOURS) == {m.background for m in metas}
    assert {m.pattern for m in metas} == {"plain", "striped"}
    assert all(m.colour != m.background for m in metas)


def test_centre_is_only_knowable_from_the_caption(samples):
    l, t, r, b = centre_box(32)
    assert (l, t, r, b) == (8, 8, 24, 24)
    outside = np.ones((32, 32), bool)
    outside[t:b, l:r] = False
    by_background = {}
    for img, meta in samples:
        by_background.setdefault((meta.background, meta.pattern), []).append((img, meta))
        # The shape is drawn, in its colour, inside the centre and nowhere else.
        centre = img[t:b, l:r].reshape(-1, 3)
        assert (centre == COLOURS[meta.colour]).all(-1).sum() >= 16
        assert not (img[outside] == COLOURS[meta.colour]).all(-1).any()
    compared = 0
    for group in by_background.values():
        for (a, ma), (bb, mb) in itertools.combinations(group, 2):
            assert np.array_equal(a[outside], bb[outside])  # same surroundings whatever the centre holds
            if (ma.shape, ma.colour) != (mb.shape, mb.colour):
                assert not np.array_equal(a, bb)
                compared += 1
    assert compared > 50


def test_cli_writes_a_folder(tmp_path, capsys):
    assert synthetic.main([str(tmp_path / "out"), "--num", "3", "--image-size", "16"]) == 0
    assert "wrote 3 synthetic images" in capsys.readouterr().out
    assert (tmp_path / "out" / "img_00002.png").is_file()
    assert synthetic.main([str(tmp_path / "bad"), "--num", "1", "--image-size", "4"]) == 2


# ---- the awkward inputs other tests use (tests/awkward_inputs.py) ----------------------------------------

def test_awkward_cases_are_what_they_claim(tmp_path):
    cases = write_awkward_cases(tmp_path)
    by_path = {c.path: c for c in cases}
    assert len(by_path) == len(cases)
    for c in cases:
        p = tmp_path / c.path
        assert p.is_file(), c.path
        if c.path.endswith(".txt"):
            continue
        try:
            with Image.open(p) as im:
                im.load()
            opened = True
        except Exception:  # noqa: BLE001 - which error PIL raises is not the point here
            opened = False
        assert opened == c.image_ok, c.path
    modes = {}
    for name in ("gray.png", "bilevel.png", "palette.png", "palette_alpha.png", "rgba.png", "la.png", "cmyk.jpg",
                 "gray16.png", "float.tif"):
        with Image.open(tmp_path / name) as im:
            modes[name] = im.mode
    assert modes == {"gray.png": "L", "bilevel.png": "1", "palette.png": "P", "palette_alpha.png": "P",
                     "rgba.png": "RGBA", "la.png": "LA", "cmyk.jpg": "CMYK", "gray16.png": "I;16",
                     "float.tif": "F"}
    with Image.open(tmp_path / "exif_rotated.jpg") as im:
        assert im.getexif().get(0x0112) == 6 and im.size == (40, 20)
    skips = {c.path: c.skip for c in cases if c.skip}
    assert skips == {"corrupt.png": "corrupt", "empty.png": "empty", "not_an_image.jpg": "not an image",
                     "notes.md": "not an image", "no_caption.png": "no caption", "blank_caption.png": "no caption",
                     "orphan.txt": "caption file without image"}
    assert by_path["multi_caption.png"].captions == ("first caption", "second caption")


# ---- the offset variant: shapes past the hole, noise with a known entropy -----------------------------

@pytest.fixture(scope="module")
def offset_samples():
    return [make_sample(i, 32, seed=4, variant="offset") for i in range(160)]


def test_offset_shapes_extend_past_the_hole_and_move(offset_samples):
    l, t, r, b = centre_box(32)
    boxes = {m.box for _, m in offset_samples}
    assert len(boxes) > 20  # positions and sizes vary
    for _, m in offset_samples:
        x0, y0, x1, y1 = m.box
        assert x0 < l and y0 < t and x1 >= r and y1 >= b  # past the hole on all four sides
        assert 0 <= x0 and 0 <= y0 and x1 < 32 and y1 < 32


def test_offset_noise_is_uniform_on_five_levels_and_never_clips(offset_samples):
    from data.synthetic import NOISE, OFFSET_FLOOR_BITS, clean_image

    diffs = np.concatenate([(img.astype(int) - clean_image(m, 32)).ravel() for img, m in offset_samples])
    counts = np.bincount(diffs + NOISE)
    assert len(counts) == 2 * NOISE + 1 and diffs.min() == -NOISE
    assert np.abs(counts / counts.sum() - 1 / (2 * NOISE + 1)).max() < 0.01
    assert OFFSET_FLOOR_BITS == pytest.approx(np.log2(5))


def test_offset_border_and_caption_determine_the_hole(offset_samples):
    """So the floor is exact: given the border, every shape of the caption's kind and colour that could have
    drawn it draws the same hole, leaving only the noise unknown."""
    from data.synthetic import hole_is_determined

    assert all(hole_is_determined(m, 32) for _, m in offset_samples)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        make_sample(0, 32, variant="shifted")
