"""A folder of every awkward input a user may have (`write_awkward_cases`), each with what data.make_shards and
the inpainting job must make of it: image modes, EXIF rotation, odd sizes and names, broken files, missing or
blank captions."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


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


__all__ = ["AwkwardCase", "write_awkward_cases"]
