"""Mask samplers for training and inpainting. Names carry their polarity: an `observed_*` mask is True
where a subpixel is observed (what the model and the samplers take), a `*_hidden` one True where it is
hidden. Both are bool [B,H,W,3]; training draws them with `draw_observed`.

Kinds: orderless (number hidden uniform in 1..D, then a uniform subset: the orderless-NADE training
distribution), bernoulli (hiding rate drawn per example), box (a contiguous box at a random place),
center (the central square of half the side), contiguish (the seed's: a Bernoulli conjoined over a
neighbourhood, giving blobs). `per_pixel` hides whole pixels instead of single subpixels. A share
(`hole_orderless`) of centre and box holes is partly revealed, by subpixels or by whole pixels (`hole_reveal`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onade.config import MASK_KINDS, NUM_CHANNELS, MaskConfig, num_hole_side


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _expand(hidden_BHWc: torch.Tensor) -> torch.Tensor:
    """A per-pixel mask [B,H,W,1] broadcast to the three channels."""
    return hidden_BHWc.expand(*hidden_BHWc.shape[:3], NUM_CHANNELS).contiguous()


def orderless_hidden(batch: int, image_size: int, per_pixel: bool, generator=None, device="cpu") -> torch.Tensor:
    """Hidden [B,H,W,3]: d ~ U{1..D} hidden variables, then a uniform subset of that size."""
    c = 1 if per_pixel else NUM_CHANNELS
    D = image_size * image_size * c
    num_hidden_B = torch.randint(1, D + 1, (batch,), generator=generator, device=device)
    # The rank of a uniform random key is a uniform random permutation; hide the first d of it.
    rank_BD = _rand((batch, D), generator, device).argsort(dim=1).argsort(dim=1)
    hidden = (rank_BD < num_hidden_B[:, None]).view(batch, image_size, image_size, c)
    return _expand(hidden) if per_pixel else hidden


def bernoulli_hidden(batch, image_size, per_pixel, generator=None, device="cpu") -> torch.Tensor:
    c = 1 if per_pixel else NUM_CHANNELS
    rate_B = _rand((batch,), generator, device)
    hidden = _rand((batch, image_size, image_size, c), generator, device) < rate_B[:, None, None, None]
    return _expand(hidden) if per_pixel else hidden


def box_hidden(batch, image_size, min_frac, max_frac, generator=None, device="cpu") -> torch.Tensor:
    lo = max(1, round(min_frac * image_size))
    hi = max(lo, round(max_frac * image_size))
    h_B = torch.randint(lo, hi + 1, (batch,), generator=generator, device=device)
    w_B = torch.randint(lo, hi + 1, (batch,), generator=generator, device=device)
    y_B = (_rand((batch,), generator, device) * (image_size - h_B + 1)).long()
    x_B = (_rand((batch,), generator, device) * (image_size - w_B + 1)).long()
    r = torch.arange(image_size, device=device)
    rows_BH = (r[None] >= y_B[:, None]) & (r[None] < (y_B + h_B)[:, None])
    cols_BW = (r[None] >= x_B[:, None]) & (r[None] < (x_B + w_B)[:, None])
    return _expand((rows_BH[:, :, None] & cols_BW[:, None, :])[..., None])


def contiguish_hidden(batch, image_size, size, per_pixel, generator=None, device="cpu") -> torch.Tensor:
    """The seed's "contiguish" mask: a variable stays observed only if a Bernoulli draw is 1 at every site
    of its size x size neighbourhood, so hidden variables come in blobs. The hidden fraction q is drawn
    uniformly per example, and the per-site keep rate (1-q)^(1/size^2) makes it the expected fraction."""
    c = 1 if per_pixel else NUM_CHANNELS
    keep_rate_B = (1 - _rand((batch,), generator, device)) ** (1.0 / (size * size))
    draws = (_rand((batch, c, image_size, image_size), generator, device)
             < keep_rate_B[:, None, None, None]).float()
    # Min-pool (a conjunction) via max-pool of the complement.
    hidden = F.max_pool2d(1 - draws, size, stride=1, padding=size // 2)[..., :image_size, :image_size] > 0
    hidden = hidden.permute(0, 2, 3, 1)
    return _expand(hidden) if per_pixel else hidden.contiguous()


def observed_except_center(batch: int, image_size: int, hole: int | None = None, device="cpu") -> torch.Tensor:
    """Observed everywhere except the central hole x hole square (default: half the side)."""
    hole = num_hole_side(image_size) if hole is None else hole
    start = (image_size - hole) // 2
    return observed_except_box(batch, image_size, start, start, hole, hole, device=device)


def observed_except_box(batch: int, image_size: int, x: int, y: int, w: int, h: int, device="cpu") -> torch.Tensor:
    """Observed everywhere except the box with top-left (x, y), width w and height h."""
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > image_size or y + h > image_size:
        raise ValueError(f"box x={x} y={y} w={w} h={h} does not fit inside a {image_size}x{image_size} image")
    observed = torch.ones(batch, image_size, image_size, NUM_CHANNELS, dtype=torch.bool, device=device)
    observed[:, y:y + h, x:x + w] = False
    return observed


def draw_observed(cfg: MaskConfig, batch: int, image_size: int, generator=None,
                  device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(observed_BHWC, kind_B): a batch of training masks drawn from the mixture in `cfg.weights`, each
    example's own kind (kind_B: its index into MASK_KINDS)."""
    kinds = [k for k in MASK_KINDS if cfg.weights.get(k, 0) > 0]
    if not kinds:
        raise ValueError("masks.weights gives no mask kind a positive weight")
    probs = torch.tensor([float(cfg.weights[k]) for k in kinds])
    choice_B = torch.multinomial(probs, batch, replacement=True, generator=_cpu(generator)).to(device)
    hidden = torch.zeros(batch, image_size, image_size, NUM_CHANNELS, dtype=torch.bool, device=device)
    kind_B = torch.zeros(batch, dtype=torch.long, device=device)
    for i, kind in enumerate(kinds):
        sel = choice_B == i
        if not bool(sel.any()):
            continue
        n = int(sel.sum())
        if kind == "orderless":
            h = orderless_hidden(n, image_size, cfg.per_pixel, generator, device)
        elif kind == "bernoulli":
            h = bernoulli_hidden(n, image_size, cfg.per_pixel, generator, device)
        elif kind == "box":
            h = box_hidden(n, image_size, cfg.min_box_fraction, cfg.max_box_fraction, generator, device)
            h = _partly_revealed(h, cfg, generator, device)
        elif kind == "center":
            h = _partly_revealed(~observed_except_center(n, image_size, device=device), cfg, generator, device)
        else:
            h = contiguish_hidden(n, image_size, cfg.contiguish_size, cfg.per_pixel, generator, device)
        hidden[sel] = h
        kind_B[sel] = MASK_KINDS.index(kind)
    return ~hidden, kind_B


def _partly_revealed(hole_BHWC: torch.Tensor, cfg: MaskConfig, generator, device) -> torch.Tensor:
    """With probability cfg.hole_orderless per example, keep hidden only a uniform subset of the hole whose
    size is uniform in 1..M (the orderless draw, restricted to the hole); otherwise the whole hole. The subset
    is of subpixels, or with cfg.hole_reveal "pixels" of whole pixels, half of which then show their channels
    before c (c uniform in 0..2 per example), as a pass of ancestral sampling with channels in sequence sees them.

    A sampler filling a hole asks for p(hole subpixel | border + part of the hole): Gibbs resamples blocks
    of a filled hole, ancestral sampling reveals it piece by piece, and the exact hole NLL is the chain
    rule over those same conditionals. Whole holes train the one-shot fill that starts Gibbs."""
    B, C = hole_BHWC.shape[0], NUM_CHANNELS
    by_pixel = cfg.hole_reveal == "pixels"
    units_BU = (hole_BHWC.any(-1) if by_pixel else hole_BHWC).reshape(B, -1)
    M_B = units_BU.sum(1)
    num_hidden_B = (_rand((B,), generator, device) * M_B).long().clamp(max=M_B - 1) + 1
    partly_B = _rand((B,), generator, device) < cfg.hole_orderless
    num_hidden_B = torch.where(partly_B, num_hidden_B, M_B)
    # Rank the hole's units by a random key (outside the hole ranks last) and hide the first d.
    key_BU = _rand(units_BU.shape, generator, device).masked_fill(~units_BU, 2.0)
    hidden_BU = key_BU.argsort(dim=1).argsort(dim=1) < num_hidden_B[:, None]
    if not by_pixel:
        return hidden_BU.view_as(hole_BHWC)
    c_B = (_rand((B,), generator, device) * C).long()
    shows_BU = partly_B[:, None] & (_rand(units_BU.shape, generator, device) < 0.5)
    shown_BUC = shows_BU[..., None] & (torch.arange(C, device=device) < c_B[:, None, None])
    return (hidden_BU[..., None] & ~shown_BUC).view_as(hole_BHWC) & hole_BHWC


def _cpu(generator):
    # torch.multinomial on a CPU tensor needs a CPU generator; other draws use the caller's device generator.
    return generator if generator is None or generator.device.type == "cpu" else None
