"""Decode any image a user may have into an RGB square of the target size, or say why it cannot be used.

Modes: grayscale, 1-bit, palette (with or without transparency), RGBA/LA (composited on BACKGROUND),
CMYK, 16-bit and 32-bit integer or float grayscale are all mapped to 8-bit RGB; the EXIF orientation is
applied first. Resizing is a centre crop to a square then a resize (`crop`), or a resize of the long
side then symmetric padding with BACKGROUND (`pad`). An image already RGB and of the target size is
kept pixel for pixel.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps

from data.untrusted import DEFAULT_MAX_IMAGE_PIXELS

# Transparent pixels and padding become this colour (white: what viewers show for transparency).
BACKGROUND = (255, 255, 255)
RESIZE_MODES = ("crop", "pad")
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm", ".pnm")


class ImageSkip(Exception):
    """This input cannot be used; the message is the reason recorded in skipped.jsonl."""


def set_max_pixels(n: int) -> None:
    """PIL's decompression-bomb limit, for this process: `Image.open` refuses an image with more pixels from
    its header, before decoding anything (PIL warns above the limit and raises above twice it; `load` and
    `decode_rgb` treat both as a refusal, so the limit is exactly `n`)."""
    if n < 1:
        raise ValueError(f"the pixel limit must be >= 1, got {n}")
    Image.MAX_IMAGE_PIXELS = n


@contextlib.contextmanager
def pixel_limit(n: int) -> Iterator[None]:
    """PIL's limit set to `n` for a block of decoding (a job's worker), then put back."""
    previous = Image.MAX_IMAGE_PIXELS
    set_max_pixels(n)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


set_max_pixels(DEFAULT_MAX_IMAGE_PIXELS)  # explicit, whatever PIL's own default is in the installed version


BAND_PIXELS = 1 << 22  # to_rgb converts a large image this many pixels at a time
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")  # PIL modes with an alpha channel


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, compositing transparency on BACKGROUND. Every conversion is per pixel, so a
    large image is converted in bands of rows: beyond the decoded image and its RGB result, memory stays at a
    few bands (a 100 Mpx RGBA image would otherwise need four more full-size copies)."""
    if img.mode == "RGB":
        return img
    w, h = img.size
    rows = max(1, BAND_PIXELS // max(1, w))
    bands = [(0, top, w, min(h, top + rows)) for top in range(0, h, rows)]
    scale = 1.0
    if img.mode == "F":  # [0, 1] floats are scaled to [0, 255]; decided on the whole image
        peak = max((float(np.nanmax(np.asarray(img.crop(b), dtype=np.float64), initial=0.0)) for b in bands),
                   default=0.0)
        scale = 255.0 if peak <= 1.0 else 1.0
    if len(bands) <= 1:
        return _to_rgb(img, scale)
    out = Image.new("RGB", img.size)
    for b in bands:
        out.paste(_to_rgb(img.crop(b), scale), b[:2])
    return out


def _to_rgb(img: Image.Image, float_scale: float) -> Image.Image:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ALPHA_MODES:
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer holding 16-bit) grey: scale 0..65535 to 0..255 with rounding.
        arr = np.asarray(img).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64) * float_scale, nan=0.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV: PIL's own conversions.
    return img.convert("RGB")


def fit(img: Image.Image, size: int, resize: str = "crop") -> Image.Image:
    """Square `size` x `size`: centre crop then resize, or resize then pad with BACKGROUND."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    if resize == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    if resize == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        inner = img if (nw, nh) == (w, h) else img.resize((nw, nh), Image.Resampling.BICUBIC)
        out = Image.new("RGB", (size, size), BACKGROUND)
        out.paste(inner, ((size - nw) // 2, (size - nh) // 2))
        return out
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")


def load(data: bytes, size: int, resize: str = "crop") -> tuple[Image.Image, tuple[int, int], str]:
    """Bytes of any image file -> (RGB size x size image, original (w, h) after EXIF rotation, mode).

    Raises ImageSkip with a short reason for empty, truncated, corrupt or non-image data.
    """
    img, upright_size, mode = open_upright(data, draft=size)
    return fit(to_rgb(img), size, resize), upright_size, mode


def open_upright(data: bytes, draft: int = 0) -> tuple[Image.Image, tuple[int, int], str]:
    """Bytes of any image file -> (the decoded image turned upright by its EXIF orientation, the file's
    (w, h) after that rotation, its file mode).
    `draft` > 0 lets libjpeg decode a JPEG at a reduced scale still at least that many pixels a side (the
    size is then smaller than the file's). Raises ImageSkip like `load`."""
    if not data:
        raise ImageSkip("empty file")
    try:
        with warnings.catch_warnings():
            # A truncated file or a decompression bomb is a reason to skip, not a warning to print.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            mode = img.mode
            w, h = upright_size(img)
            if draft and img.format == "JPEG" and mode in ("RGB", "L"):
                img.draft(mode, (draft, draft))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place: a copy would double a large image's memory
    except Image.UnidentifiedImageError:
        raise ImageSkip("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        got = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise ImageSkip(f"image too large: {got}, over the limit of {Image.MAX_IMAGE_PIXELS:,} "
                        "(--max-image-pixels raises it)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageSkip(f"corrupt image: {str(e) or type(e).__name__}") from None
    if min(img.size) < 1:
        raise ImageSkip(f"image has no pixels ({w}x{h})")
    return img, (w, h), mode


def upright_size(img: Image.Image) -> tuple[int, int]:
    """An opened image's (w, h) once turned upright by its EXIF orientation (read from the header)."""
    w, h = img.size
    return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)  # orientations that swap the sides


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def encode(img: Image.Image, fmt: str = "png") -> bytes:
    """Deterministic encoding: no timestamps or metadata, fixed settings."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpg":
        img.save(buf, format="JPEG", quality=95, subsampling=0)
    elif fmt == "webp":
        # Lossless: the model predicts exact 8-bit values, so a lossy store would change the target.
        # exact: keep the colour under fully transparent pixels (libwebp would otherwise change it).
        img.save(buf, format="WEBP", lossless=True, quality=80, method=4, exact=True)
    else:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    return buf.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3] (raises on corrupt data, and on more pixels than the limit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(to_rgb(img), dtype=np.uint8)


__all__ = ["BACKGROUND", "RESIZE_MODES", "FORMATS", "IMAGE_EXTENSIONS", "ImageSkip", "set_max_pixels", "pixel_limit",
           "to_rgb", "fit", "load", "open_upright", "upright_size", "has_alpha", "encode",
           "decode_rgb"]
