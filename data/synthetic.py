"""Synthetic captioned images for demos, tests and benchmarks.

    python -m data.synthetic demo_images --num 2000 --image-size 32
    python -m data.synthetic offset_images --num 4000 --variant offset

Each synthetic image is a background (plain, or striped with grey) and one shape. The caption names the
shape's kind and colour and the background colour, with several phrasings per image. Two variants:

- `centre` (the demo's): flat colours, the shape inside the central square of half the image side.
  Outside that square every image with the same background is identical, so what is in the centre can
  only be known from the caption: a model that inpaints the centre well must read it.
- `offset` (the quality benchmarks'): the shape is larger than the centre hole and extends past it on
  all four sides, at a position and size that vary per image, so the border shows part of the answer;
  and every subpixel carries independent uniform noise in -2..2. The border determines the shape's
  position and size (`hole_is_determined` checks it by enumeration) and the caption its kind and
  colour, so the noise is all that is left to guess: the NLL of the centre hole given the border and
  the caption cannot go below `OFFSET_FLOOR_BITS` = log2(5) bits per subpixel, and a perfect model
  reaches it.

Flat colours, a six-colour palette and four shapes keep both learnable by a tiny ConvNet in minutes of
CPU training.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
STRIPE = (128, 128, 128)
SHAPES = ("square", "circle", "triangle", "cross")
PATTERNS = ("plain", "striped")
SYNONYMS = {"square": ("square", "box"), "circle": ("circle", "disc"), "triangle": ("triangle",),
            "cross": ("cross", "plus sign")}
TEMPLATES = (
    "a {c} {s} on a {bg_desc}",
    "a {c} {s} in the middle of a {bg_desc}",
    "{bg_desc_cap} with a {c} {s} in the centre",
    "the centre shows a {c} {s}; the background is {bg}{striped}",
    "{c} {s}, {bg}{striped} background",
    "there is a {c} {s} at the centre of the picture, on a {bg_desc}",
    "a picture of a {c} {s} surrounded by {bg}{surround}",
    "centre: {c} {s}. background: {bg}{striped}",
)
CAPTIONS_PER_IMAGE = 3
VARIANTS = ("centre", "offset")
# The offset variant: per-subpixel noise uniform in -NOISE..NOISE (no palette value is within NOISE of 0
# or 255, so it never clips), shape side OFFSET_SIDES and centre shift OFFSET_SHIFTS, at 32 px (scaled).
NOISE = 2
OFFSET_FLOOR_BITS = math.log2(2 * NOISE + 1)
OFFSET_SIDES = range(22, 27)
OFFSET_SHIFTS = range(-2, 3)


@dataclass(frozen=True)
class SyntheticSample:
    name: str  # file stem: img_00000
    shape: str
    colour: str
    background: str
    pattern: str
    captions: tuple[str, ...]
    variant: str = "centre"
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # the shape's inclusive corners


def centre_box(image_size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), exclusive, of the central square of half the image side."""
    side = max(1, image_size // 2)
    lo = (image_size - side) // 2
    return lo, lo, lo + side, lo + side


def background(image_size: int, colour: str, pattern: str) -> np.ndarray:
    img = np.empty((image_size, image_size, 3), np.uint8)
    img[:] = COLOURS[colour]
    if pattern == "striped":
        # Horizontal stripes two pixels wide at 32 px (scaled with the size), starting at the top edge.
        width = max(1, image_size // 16)
        rows = (np.arange(image_size) // width) % 2 == 1
        img[rows] = STRIPE
    return img


def draw_shape(img: np.ndarray, shape: str, colour: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """Draw without antialiasing so the image holds only palette colours."""
    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    x0, y0, x1, y1 = box  # inclusive corners for ImageDraw
    fill = COLOURS[colour]
    if shape == "square":
        d.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "circle":
        d.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        t = max(1, (x1 - x0 + 1) // 3)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        d.rectangle((cx - t // 2, y0, cx - t // 2 + t - 1, y1), fill=fill)
        d.rectangle((x0, cy - t // 2, x1, cy - t // 2 + t - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    return np.asarray(pil)


def captions_for(shape: str, colour: str, bg: str, pattern: str, rng: np.random.Generator) -> tuple[str, ...]:
    striped = pattern == "striped"
    bg_desc = f"{bg} striped background" if striped else f"{bg} background"
    picks = rng.choice(len(TEMPLATES), size=CAPTIONS_PER_IMAGE, replace=False)
    out = []
    for i in sorted(picks):
        names = SYNONYMS[shape]
        out.append(TEMPLATES[i].format(
            c=colour, s=names[int(rng.integers(len(names)))], bg=bg, bg_desc=bg_desc,
            bg_desc_cap=bg_desc[0].upper() + bg_desc[1:] if i == 2 else bg_desc,
            striped=" with grey stripes" if striped else "",
            surround=" and grey stripes" if striped else ""))
    return tuple(out)


def make_sample(index: int, image_size: int = 32, seed: int = 0,
                variant: str = "centre") -> tuple[np.ndarray, SyntheticSample]:
    """Image uint8 [H, W, 3] and its description; depends only on (index, image_size, seed, variant)."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 for a visible centre shape, got {image_size}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown synthetic variant {variant!r}; choose from {VARIANTS}")
    rng = np.random.default_rng([seed, index])
    names = list(COLOURS)
    bg = names[int(rng.integers(len(names)))]
    colour = [c for c in names if c != bg][int(rng.integers(len(names) - 1))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    if variant == "centre":
        left, top, right, bottom = centre_box(image_size)
        side = right - left
        # The shape fills 60-100% of the centre square's side and stays entirely inside it.
        s = int(rng.integers(max(2, round(0.6 * side)), side + 1))
        ox = left + int(rng.integers(0, side - s + 1))
        oy = top + int(rng.integers(0, side - s + 1))
        box = (ox, oy, ox + s - 1, oy + s - 1)
    else:
        sides, shifts = offset_params(image_size)
        s = sides[int(rng.integers(len(sides)))]
        dx, dy = (shifts[int(rng.integers(len(shifts)))] for _ in range(2))
        box = offset_box(image_size, s, dx, dy)
    img = draw_shape(background(image_size, bg, pattern), shape, colour, box)
    if variant == "offset":
        noise = rng.integers(-NOISE, NOISE + 1, size=img.shape)
        img = (img.astype(np.int16) + noise).astype(np.uint8)
    caps = captions_for(shape, colour, bg, pattern, rng)
    return img, SyntheticSample(f"img_{index:05d}", shape, colour, bg, pattern, caps, variant, box)


def offset_params(image_size: int) -> tuple[list[int], list[int]]:
    """The offset variant's shape sides and centre shifts at this image size (the 32 px values, scaled)."""
    scale = image_size / 32
    sides = sorted({max(2, round(v * scale)) for v in OFFSET_SIDES})
    shifts = sorted({round(v * scale) for v in OFFSET_SHIFTS})
    return sides, shifts


def offset_box(image_size: int, side: int, dx: int, dy: int) -> tuple[int, int, int, int]:
    """Inclusive corners of a side x side box centred dx, dy from the image centre."""
    x0, y0 = image_size // 2 + dx - side // 2, image_size // 2 + dy - side // 2
    return x0, y0, x0 + side - 1, y0 + side - 1


def clean_image(meta: SyntheticSample, image_size: int) -> np.ndarray:
    """The image of `meta` without noise."""
    return draw_shape(background(image_size, meta.background, meta.pattern), meta.shape, meta.colour, meta.box)


def hole_is_determined(meta: SyntheticSample, image_size: int) -> bool:
    """True if every offset-variant shape of the caption's kind and colour (any side and shift) that draws the
    same border as `meta` also draws the same centre hole: then the border and caption leave only the noise
    unknown, and OFFSET_FLOOR_BITS is the hole's exact conditional entropy per subpixel."""
    left, top, right, bottom = centre_box(image_size)
    border = np.ones((image_size, image_size), bool)
    border[top:bottom, left:right] = False
    truth = clean_image(meta, image_size)
    sides, shifts = offset_params(image_size)
    base = background(image_size, meta.background, meta.pattern)
    for s in sides:
        for dx in shifts:
            for dy in shifts:
                other = draw_shape(base, meta.shape, meta.colour, offset_box(image_size, s, dx, dy))
                if np.array_equal(other[border], truth[border]) and not np.array_equal(other, truth):
                    return False
    return True


def write_synthetic(folder: str | Path, num_images: int, image_size: int = 32, seed: int = 0,
                    start: int = 0, variant: str = "centre") -> list[SyntheticSample]:
    """Write `img_XXXXX.png` and a sidecar `img_XXXXX.txt` (one caption per line) for each image."""
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(start, start + num_images):
        img, meta = make_sample(i, image_size, seed, variant)
        Image.fromarray(img).save(out / f"{meta.name}.png", format="PNG", compress_level=6)
        (out / f"{meta.name}.txt").write_text("\n".join(meta.captions) + "\n", encoding="utf-8")
        samples.append(meta)
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--num", type=int, default=1000, help="number of images (default 1000)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="centre", choices=VARIANTS,
                    help="centre: shapes inside the hole (the demo's); offset: shapes past the hole, noisy (see above)")
    args = ap.parse_args(argv)
    try:
        samples = write_synthetic(args.out, args.num, args.image_size, args.seed, variant=args.variant)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(samples)} synthetic images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
