"""Holes in image coordinates, and the square window of an image that the model sees.

    spec = HoleSpec.parse("box:0.25,0.25,0.5,0.5")   # center | box:X,Y,W,H (pixels or fractions) | random-box[:SEED]
    hidden_HW = spec.hidden(width, height, key="photos/a.jpg")
    window = context_window(hidden_HW, model_size)   # or centre_window(width, height, model_size)
    x_SSC, hidden_SS = window.to_model(rgb_HWC, hidden_HW)
    ... inpaint x_SSC where hidden_SS ...
    out_HWC = window.paste(source_HWC, hidden_HW, sample_SSC)    # only the hole changes

A context window is the square around the hole's bounding box with as much context again (the hole fills
about its central half, like the training set's `center` masks), at least the model size so a small hole
is seen at the image's own resolution, and at most the image's shorter side; a large hole so gets less
context (none when it fills the window: the model then draws from the caption alone). A hole whose bounding
box is longer than the image's shorter side fits no square window inside the image and is refused
(ValueError); holes are never tiled.

Shapes: H/W image side, S model side, C channels (3, or 4 when the source keeps its alpha).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from onade.config import num_hole_side

RANDOM_BOX_FRACTIONS = (0.25, 0.5)  # random-box sides, as fractions of the image's shorter side
RESAMPLE = Image.Resampling.BICUBIC  # as the shards are made (data.images.fit); antialiased when shrinking


@dataclass(frozen=True)
class HoleSpec:
    """`center`: the central square of half the shorter side; `box`: a rectangle in pixels (ints) or
    fractions of the sides (any value with a '.'); `random-box`: a box per image, drawn from (seed, key)."""
    kind: str
    values: tuple[float, ...] = ()
    fractions: bool = False
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> HoleSpec:
        usage = ("expected center, box:X,Y,W,H in image pixels (box:10,20,64,48) or as fractions of the sides "
                 "(box:0.25,0.25,0.5,0.5), or random-box[:SEED]")
        if spec == "center":
            return cls("center")
        if spec == "random-box" or spec.startswith("random-box:"):
            seed = spec.partition(":")[2] or "0"
            if not seed.isdigit():
                raise ValueError(f"{spec!r}: the random-box seed must be an integer >= 0; {usage}")
            return cls("random-box", seed=int(seed))
        if not spec.startswith("box:"):
            raise ValueError(f"{spec!r}: {usage}")
        parts = spec[4:].split(",")
        fractions = "." in spec
        try:
            values = tuple(float(v) if fractions else int(v) for v in parts)
        except ValueError:
            raise ValueError(f"{spec!r}: {usage}") from None
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"{spec!r}: {usage}")
        x, y, w, h = values
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            raise ValueError(f"{spec!r}: X and Y must be >= 0 and W and H > 0")
        if fractions and (x + w > 1 + 1e-9 or y + h > 1 + 1e-9):
            raise ValueError(f"{spec!r}: as fractions, X+W and Y+H must be at most 1 (the box lies inside the image)")
        return cls("box", values, fractions)

    def box(self, width: int, height: int, key: str = "") -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels of a width x height image; ValueError if it does not fit."""
        if self.kind == "center":
            side = num_hole_side(min(width, height))
            left, top = (width - side) // 2, (height - side) // 2
            return left, top, left + side, top + side
        if self.kind == "random-box":
            rng = np.random.default_rng(key_seed(self.seed, key))
            short = min(width, height)
            w, h = (max(1, round(short * rng.uniform(*RANDOM_BOX_FRACTIONS))) for _ in range(2))
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
        x, y, w, h = self.values
        if self.fractions:
            left, top = min(round(x * width), width - 1), min(round(y * height), height - 1)
            right, bottom = max(left + 1, round((x + w) * width)), max(top + 1, round((y + h) * height))
            return left, top, min(right, width), min(bottom, height)
        if x + w > width or y + h > height:
            raise ValueError(f"box:{x},{y},{w},{h} does not lie inside the {width}x{height} image (pixels); "
                             "give the box as fractions (box:0.25,0.25,0.5,0.5) for folders of mixed sizes")
        return int(x), int(y), int(x + w), int(y + h)

    def hidden(self, width: int, height: int, key: str = "") -> np.ndarray:
        """The hole as bool [H, W] (True = inpaint) of a width x height image; `key` names the image (its
        relative path) so random-box gives each image its own box, the same on every run."""
        left, top, right, bottom = self.box(width, height, key)
        hidden_HW = np.zeros((height, width), bool)
        hidden_HW[top:bottom, left:right] = True
        return hidden_HW


def key_seed(seed: int, key: str) -> int:
    """A 64-bit seed from (seed, key): the same on every run and machine, different for different keys."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Window:
    """The square [left, left+side) x [top, top+side) of an image, seen by the model at model_size."""
    left: int
    top: int
    side: int
    model_size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.left + self.side, self.top + self.side

    def to_json(self) -> dict:
        """How a model pixel maps back: model (i, j) covers image x in left + [j, j+1) * scale, y likewise."""
        return {"left": self.left, "top": self.top, "side": self.side, "model_size": self.model_size,
                "scale": self.side / self.model_size}

    def to_model(self, rgb_HWC: np.ndarray, hidden_HW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The window resized to the model: (image uint8 [S,S,3], hole bool [S,S]). A model pixel is in the
        hole when any image pixel under it is. None of the hidden content reaches the model: hidden pixels
        are set to the mean of the window's visible ones before resampling, and the hole grows by the
        resampling filter's reach (one model pixel when shrinking, about 2*S/side when enlarging) so the
        pixels the model sees as known are made of visible ones alone, or nearly so."""
        S = self.model_size
        left, top, right, bottom = self.box
        region_LLC = rgb_HWC[top:bottom, left:right]
        hole_LL = hidden_HW[top:bottom, left:right]
        if hole_LL.any():
            region_LLC = region_LLC.copy()
            seen = ~hole_LL
            region_LLC[hole_LL] = np.rint(region_LLC[seen].mean(0)) if seen.any() else 127
        x_SSC = np.asarray(Image.fromarray(region_LLC).resize((S, S), RESAMPLE), dtype=np.uint8)
        # Float coverage: a speck covering 1/1000 of a model pixel still hides it.
        cover = Image.fromarray(hole_LL.astype(np.float32)).resize((S, S), Image.Resampling.BOX)
        hidden_SS = np.asarray(cover) > 0
        reach = 0 if self.side == S else 1 if self.side > S else math.ceil(2 * S / self.side)
        hidden_SS = _rank_filter(hidden_SS, ImageFilter.MaxFilter, reach)
        return x_SSC, hidden_SS

    def paste(self, source_HWC: np.ndarray, hidden_HW: np.ndarray, sample_SSC: np.ndarray,
              feather: int = 0) -> np.ndarray:
        """`source` with its hole replaced by the sample resized back to the window; every pixel outside the
        hole keeps its bytes. `feather` > 0 blends the sample's colour in over that many pixels inside the
        hole's edge (the source's own hole pixels show through there). A 4-channel source keeps its alpha
        outside the hole and is opaque inside."""
        left, top, right, bottom = self.box
        height, width = hidden_HW.shape
        assert hidden_HW[:top].sum() + hidden_HW[bottom:].sum() + hidden_HW[:, :left].sum() \
            + hidden_HW[:, right:].sum() == 0, "the hole must lie inside the window"
        up_LLC = np.asarray(Image.fromarray(sample_SSC).resize((self.side, self.side), RESAMPLE), dtype=np.uint8)
        out_HWC = source_HWC.copy()
        region = out_HWC[top:bottom, left:right]
        hole_LL = hidden_HW[top:bottom, left:right]
        fill_LLC = up_LLC
        if feather > 0:
            # Depth into the hole measured with a margin around the window, so an edge of the window inside
            # the image is not taken for the image's border.
            m = feather + 1
            y0, x0, y1, x1 = max(0, top - m), max(0, left - m), min(height, bottom + m), min(width, right + m)
            depth = _depth(hidden_HW[y0:y1, x0:x1], feather)[top - y0:bottom - y0, left - x0:right - x0]
            alpha_LL1 = (depth / (feather + 1))[..., None]
            fill_LLC = np.rint(alpha_LL1 * up_LLC + (1 - alpha_LL1) * region[..., :3]).astype(np.uint8)
        if region.shape[-1] == 4:
            fill_LLC = np.concatenate([fill_LLC, np.full(up_LLC.shape[:2] + (1,), 255, np.uint8)], -1)
        region[hole_LL] = fill_LLC[hole_LL]
        return out_HWC


def context_window(hidden_HW: np.ndarray, model_size: int) -> Window:
    """The square around the hole with a margin of context (see the module docstring)."""
    height, width = hidden_HW.shape
    rows, cols = np.flatnonzero(hidden_HW.any(1)), np.flatnonzero(hidden_HW.any(0))
    if not len(rows):
        raise ValueError("the mask hides nothing (white = hide)")
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    short = min(width, height)
    extent = max(x1 - x0, y1 - y0)
    if extent > short:
        raise ValueError(f"the hole ({x1 - x0}x{y1 - y0} px) is longer than the image's shorter side ({short} px): "
                         "it fits no square window of the image (holes are not tiled); use a smaller hole, or "
                         "--fit crop")
    side = min(short, max(model_size, 2 * extent))
    left = min(max(0, (x0 + x1 - side) // 2), width - side)
    top = min(max(0, (y0 + y1 - side) // 2), height - side)
    return Window(left, top, side, model_size)


def centre_window(width: int, height: int, model_size: int) -> Window:
    """The central square of the image (what `--fit crop` and the training shards see)."""
    side = min(width, height)
    return Window((width - side) // 2, (height - side) // 2, side, model_size)


def _rank_filter(mask: np.ndarray, rank_filter, times: int) -> np.ndarray:
    """`times` passes of a 3x3 max (grow) or min (shrink) filter over a bool mask. PIL repeats the edge
    pixels, so beyond the border counts as neither inside nor outside. A 3x3 filter n times rather than one
    (2n+1)-wide filter: PIL's rank filter costs the square of its size per pixel."""
    if times == 0:
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    for _ in range(times):
        im = im.filter(rank_filter(3))
    return np.asarray(im) > 0


def _depth(hole: np.ndarray, limit: int) -> np.ndarray:
    """Per hole pixel, its distance in pixels (chessboard) to the nearest pixel outside the hole, capped at
    limit+1; the image's border is not outside the hole."""
    depth = np.zeros(hole.shape, np.float32)
    inside = hole
    for d in range(1, limit + 2):
        depth[inside] = d
        inside = _rank_filter(inside, ImageFilter.MinFilter, 1)
    return depth


__all__ = ["HoleSpec", "Window", "context_window", "centre_window", "key_seed"]
