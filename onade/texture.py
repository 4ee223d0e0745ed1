"""Whether a fill looks like the image, from its pixels alone (numpy only: the inpainting job's write tasks
use it without torch; onade.metrics re-exports it).

- hole roughness: the mean L1 RGB difference of horizontally and vertically adjacent pixel pairs inside the
  hole. Samples' over the originals' is about 1 for the data's texture, well above 1 for noise, well below 1
  for a smear.
- speck rate: the share of hole pixels more than SPECK_L1 (L1 over RGB) from each of their 8 neighbours:
  isolated off-colour pixels, which a hard edge between two flat regions never makes.

`texture` returns the sums behind both, so sets pool by adding (`Texture.__add__`); `sample_quality` turns
the samples' sums and the originals' into the figures.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SPECK_L1 = 90  # a hole pixel this far (L1 over RGB, 0-765) from each of its 8 neighbours is a speck


@dataclasses.dataclass
class Texture:
    """The sums behind hole roughness and speck rate over a set of images; `a + b` pools two sets."""
    l1_sum: float = 0.0  # L1 RGB differences of adjacent pixel pairs inside the hole, summed
    pairs: int = 0
    specks: int = 0
    pixels: int = 0  # hole pixels

    def __add__(self, other: "Texture") -> "Texture":
        return Texture(self.l1_sum + other.l1_sum, self.pairs + other.pairs, self.specks + other.specks,
                       self.pixels + other.pixels)

    @property
    def roughness(self) -> float:
        return self.l1_sum / self.pairs if self.pairs else math.nan

    @property
    def speck_rate(self) -> float:
        return self.specks / self.pixels if self.pixels else math.nan


def _rgb(images_BHWC) -> np.ndarray:
    """int32 RGB [B,H,W,3] of uint8 images; RGBA is composited on white, as a viewer shows it."""
    x = np.asarray(images_BHWC)
    if x.ndim == 3:
        x = x[None]
    if x.shape[-1] == 4:
        alpha = x[..., 3:].astype(np.int32)
        return (x[..., :3].astype(np.int32) * alpha + 255 * (255 - alpha) + 127) // 255
    return x[..., :3].astype(np.int32)


def _numpy(a):
    """A torch tensor (on any device) as numpy, without importing torch here; anything else as it is."""
    return a.cpu().numpy() if hasattr(a, "cpu") else a


def texture(images_BHWC, hidden_BHW) -> Texture:
    """Hole roughness and speck sums of `images_BHWC` (uint8 RGB or RGBA, numpy or torch; [H,W,C] is one
    image) over the hole `hidden_BHW` (True = in the hole; [H,W] is every image's). A neighbour outside the
    image counts as different, one outside the hole as what it is."""
    hidden, images = np.asarray(_numpy(hidden_BHW), bool), np.asarray(_numpy(images_BHWC))
    rows, cols = np.nonzero(hidden.reshape(-1, *hidden.shape[-2:]).any(0))
    if rows.size == 0:
        return Texture()
    # Only the hole's bounding box and a one-pixel margin matter: a large photo with a small hole stays cheap.
    top, left = max(0, rows.min() - 1), max(0, cols.min() - 1)
    window = np.s_[top:rows.max() + 2, left:cols.max() + 2]
    x = _rgb(images[(..., *window, slice(None))])
    hidden = np.broadcast_to(hidden[(..., *window)], x.shape[:3])
    l1_sum, pairs = 0.0, 0
    for axis in (1, 2):
        n = x.shape[axis] - 1
        a, b = (np.take(x, range(lo, lo + n), axis=axis) for lo in (0, 1))
        both = np.take(hidden, range(n), axis=axis) & np.take(hidden, range(1, n + 1), axis=axis)
        l1_sum += float(np.abs(a - b).sum(-1)[both].sum())
        pairs += int(both.sum())
    far = np.full(3, -10_000, np.int32)  # beyond the image (or the window): farther than SPECK_L1 from any pixel
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=0)
    padded[:, 0], padded[:, -1], padded[:, :, 0], padded[:, :, -1] = far, far, far, far
    H, W = x.shape[1:3]
    nearest = np.full(x.shape[:3], np.iinfo(np.int32).max, np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                shifted = padded[:, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
                nearest = np.minimum(nearest, np.abs(x - shifted).sum(-1))
    specks = int(((nearest > SPECK_L1) & hidden).sum())
    return Texture(l1_sum, pairs, specks, int(hidden.sum()))


def sample_quality(samples: Texture, originals: Texture | None = None) -> dict[str, float]:
    """The figures of `texture` sums: `hole_roughness` and `speck_rate` of the samples and, given the
    originals', theirs (`..._originals`) and `roughness_ratio` (samples over originals)."""
    out = {"hole_roughness": samples.roughness, "speck_rate": samples.speck_rate}
    if originals is not None:
        out.update(hole_roughness_originals=originals.roughness, speck_rate_originals=originals.speck_rate,
                   roughness_ratio=samples.roughness / originals.roughness if originals.roughness else math.nan)
    return out
