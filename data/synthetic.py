"""Synthetic captioned images for demos and tests, a folder of every awkward input a user may have, and a
PNG decompression bomb (`png_bomb`) for the untrusted-input rules.

    python -m data.synthetic demo_images --num 2000 --image-size 32
    python -m data.synthetic offset_images --num 4000 --variant offset
    python -m data.synthetic awkward_inputs --awkward

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
import io
import math
import struct
import sys
import zlib
from dataclasses import dataclass, field
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


# ---- awkward inputs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AwkwardCase:
    path: str  # relative to the folder
    image_ok: bool  # decodes to an image
    captions: tuple[str, ...] = ()  # sidecar captions (empty: none or blank)
    skip: str | None = None  # why data.make_shards skips it (a phrase in its skipped.jsonl reason), or None
    note: str = ""
    extra: dict = field(default_factory=dict, compare=False)


def _gradient(w: int, h: int) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None]
    return np.stack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)),
                     np.full((h, w), 128.0)], -1).round().astype(np.uint8)


def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit grey PNG of side x side pixels (900 Mpx by default) in ~110 KB: all-zero rows compress
    about 1000:1. Decoded naively it needs side*side bytes, then 3x that as RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 100) for _ in range(side // 100)) + z.compress(row * (side % 100)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def write_awkward_cases(folder: str | Path) -> list[AwkwardCase]:
    """Write every awkward input into `folder`; returns what each one is and what should happen to it.

    Usable images (all with sidecar captions unless noted): grayscale, 1-bit, palette, palette with a
    transparent index, RGBA with a fully transparent half, LA, CMYK JPEG, 16-bit grayscale PNG, float
    TIFF, a JPEG whose EXIF orientation rotates it, wide and tiny images, an upper-case extension, a
    nested folder, a multi-line and a non-ASCII caption. Unusable: truncated PNG, empty file, text
    named .jpg, a non-image extension, an image without caption, an image with a blank caption, and a
    caption file without an image.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    cases: list[AwkwardCase] = []

    def save(rel: str, img: Image.Image | bytes, captions: list[str] | None, *, image_ok=True, skip=None,
             note="", fmt=None, extra=None, **kw):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(img, bytes):
            p.write_bytes(img)
        else:
            img.save(p, format=fmt, **kw)
        if captions is not None:
            p.with_suffix(".txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        clean = tuple(c.strip() for c in (captions or []) if c.strip())
        cases.append(AwkwardCase(rel, image_ok, clean, skip, note, extra or {}))

    grad = _gradient(40, 30)
    save("gray.png", Image.fromarray(grad[..., 0]), ["a grey gradient"], note="mode L")
    save("bilevel.png", Image.fromarray(grad[..., 0] > 127).convert("1"), ["black and white halves"],
         note="mode 1")
    save("palette.png", Image.fromarray(grad).quantize(16), ["a palette image"], note="mode P")
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (16, 0, 32, 32))
    save("palette_alpha.png", pal, ["a palette image with a transparent half"], transparency=0,
         note="mode P, index 0 transparent (left half)")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, 16:] = (200, 30, 30, 255)
    rgba[:, :16] = (0, 200, 0, 0)  # invisible green: must not leak into the output
    save("rgba.png", Image.fromarray(rgba), ["a red half beside a transparent half"],
         note="mode RGBA, left half fully transparent")
    la = np.stack([grad[..., 0], np.full((30, 40), 128, np.uint8)], -1)
    save("la.png", Image.fromarray(la), ["a half transparent grey gradient"], note="mode LA")
    save("cmyk.jpg", Image.fromarray(grad).convert("CMYK"), ["a cmyk photo"], fmt="JPEG", quality=95,
         note="CMYK JPEG")
    g16 = (np.linspace(0, 65535, 36 * 36).reshape(36, 36)).astype(np.uint16)
    save("gray16.png", Image.fromarray(g16), ["a sixteen bit gradient"], note="16-bit grayscale PNG",
         extra={"max": 65535})
    save("float.tif", Image.fromarray(grad[..., 1].astype(np.float32) / 255.0), ["a float image"],
         fmt="TIFF", note="32-bit float TIFF in [0, 1]")
    # Stored 40 wide x 20 high, left half red, right half blue; EXIF orientation 6 means "rotate 90
    # degrees clockwise to display", so upright it is 20 x 40 with red on top and blue below.
    rot = np.zeros((20, 40, 3), np.uint8)
    rot[:, :20] = (230, 20, 20)
    rot[:, 20:] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated.jpg", Image.fromarray(rot), ["red above blue once upright"], fmt="JPEG", quality=95,
         exif=exif.tobytes(), note="EXIF orientation 6: upright it is red on top, blue below")
    save("wide.png", Image.fromarray(_gradient(48, 16)), ["a wide strip"], note="48x16")
    save("tiny.bmp", Image.fromarray(_gradient(5, 3)), ["a tiny bitmap"], fmt="BMP", note="5x3 BMP")
    save("UPPER.JPG", Image.fromarray(grad), ["an upper case extension"], fmt="JPEG", quality=95)
    save("nested/deeper/nested.png", Image.fromarray(grad), ["found in a nested folder"])
    save("multi_caption.png", Image.fromarray(grad), ["first caption", "", "  second caption  ", ""],
         note="two captions around blank lines")
    save("unicode.png", Image.fromarray(grad), ["un café très coloré ☕"], note="non-ASCII caption")

    good_png = io.BytesIO()
    Image.fromarray(grad).save(good_png, format="PNG")
    save("corrupt.png", good_png.getvalue()[:60], ["a truncated file"], image_ok=False, skip="corrupt",
         note="PNG cut after 60 bytes")
    save("empty.png", b"", ["an empty file"], image_ok=False, skip="empty", note="0 bytes")
    save("not_an_image.jpg", b"this is plain text, not a JPEG\n" * 4, ["text pretending"], image_ok=False,
         skip="not an image", note="text with an image extension")
    save("notes.md", b"# notes\nnot an image\n", None, image_ok=False, skip="not an image",
         note="non-image extension")
    save("no_caption.png", Image.fromarray(grad), None, skip="no caption", note="no sidecar .txt")
    save("blank_caption.png", Image.fromarray(grad), ["   ", ""], skip="no caption", note="blank sidecar")
    (root / "orphan.txt").write_text("a caption whose image is missing\n", encoding="utf-8")
    cases.append(AwkwardCase("orphan.txt", False, ("a caption whose image is missing",),
                             "caption file without image", "sidecar with no image"))
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--num", type=int, default=1000, help="number of images (default 1000)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="centre", choices=VARIANTS,
                    help="centre: shapes inside the hole (the demo's); offset: shapes past the hole, noisy (see above)")
    ap.add_argument("--awkward", action="store_true", help="also write every awkward input case")
    args = ap.parse_args(argv)
    try:
        samples = write_synthetic(args.out, args.num, args.image_size, args.seed, variant=args.variant)
        n_awk = len(write_awkward_cases(args.out)) if args.awkward else 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(samples)} synthetic images" + (f" and {n_awk} awkward cases" if n_awk else "")
          + f" to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
