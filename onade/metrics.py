"""Evaluation, all in bits per subpixel.

- `orderless_bits`: the orderless-NADE loss averaged over random orderless masks (an unbiased estimate of
  the NLL of a random ordering of the whole image).
- `exact_hole_bits`: the exact NLL of a hole under one random ordering, by the chain rule: one conditional per
  hole subpixel, evaluated in batched chunks of prefixes so it takes (hole size / chunk) forward passes.
- `center_bits`: one-shot NLL of the centre hole given the border and the caption; with captions shuffled
  across the batch, the difference is what the caption is worth.
- `loss_profile`: L(t), the expected bits of the next hole variable when t are known (onade.plans).
- `budget_bits`: the NLL of a K-pass sampler: each pass's variables scored given only what earlier passes
  revealed (OA-ARDM's budgeted NLL); with one variable per pass it is `exact_hole_bits`.

- `evaluate`: all but the loss profile over held-out batches, as training's validation and ray_jobs.evaluate
  report them (the metric names are the keys of METRICS and EXACT_CENTER); `one_shot_fill`, the centre hole
  filled in one forward pass, for the image grids.
- `texture`, `sample_quality` (from onade.texture, numpy only): whether a fill looks like the image, from
  its pixels: hole roughness over the originals' and the speck rate.
- `centre_colour`, `hole_colour`, `caption_adherence`: on synthetic data with a known palette
  (data.synthetic), whether a sample's centre has the caption's colour.

Random masks and orderings are drawn from a CPU generator and then moved to the model's device, so a
given seed scores the same masks on CPU and GPU. Every function reads the caption once per batch and
reuses the reader's states in each of its forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from onade.config import MaskConfig, num_hole_side
from onade.loss import loss_from_nats
from onade.masks import draw_observed, observed_except_center
from onade.model import Caption
from onade.plans import LossProfile, isotonic_decreasing
from onade.precision import autocast
from onade.texture import SPECK_L1, Texture, sample_quality, texture  # noqa: F401 (their home is onade.texture)

LN2 = math.log(2)
METRICS = ("bits_per_dim", "center_bits_true_caption", "center_bits_shuffled_caption")  # `evaluate`'s cheap ones
EXACT_CENTER = "exact_center_bits"  # the centre hole's exact chain-rule NLL (`exact_center_bits`)
PROFILE_POINTS = 64  # values of t a loss profile measures (one forward pass per point per image)
# `evaluate(seed=s)` draws its masks from s, the exact NLL's ordering from s + EXACT_SEED_OFFSET, and a loss
# profile's ordering comes from s + PROFILE_SEED_OFFSET: ray_jobs.evaluate scores its budgets in the exact
# NLL's ordering, so its full plan over the centre hole is that NLL.
EXACT_SEED_OFFSET = 1
PROFILE_SEED_OFFSET = 2


@torch.no_grad()
def orderless_bits(model, x_BHWC, tokens_BT, lengths_B, num_masks: int = 4, generator=None) -> float:
    cfg = MaskConfig(weights={"orderless": 1.0})
    total = 0.0
    for _ in range(num_masks):
        observed_BHWC = draw_observed(cfg, x_BHWC.shape[0], x_BHWC.shape[1], generator)[0].to(x_BHWC.device)
        total += float(loss_from_nats(model(x_BHWC, observed_BHWC, tokens_BT, lengths_B, score=True), observed_BHWC))
    return total / num_masks


@torch.no_grad()
def exact_hole_bits(model, x_BHWC, observed_BHWC, tokens_BT, lengths_B, chunk: int = 64, generator=None,
                    max_batch: int = 256) -> float:
    """Exact NLL of the hidden subpixels of `observed_BHWC` under one random ordering (shared by the batch),
    in bits per hidden subpixel. Every example must hide the same number of subpixels."""
    B, H, W, C = x_BHWC.shape
    order_BM, rank_BD, M = _random_order(observed_BHWC, generator, shared=True)
    device = x_BHWC.device
    chunk = max(1, min(chunk, max_batch // B if B <= max_batch else 1, M))
    caption = model.read_caption(tokens_BT, lengths_B)
    nats = torch.zeros((), device=device, dtype=torch.float64)
    for j0 in range(0, M, chunk):
        js_J = torch.arange(j0, min(j0 + chunk, M), device=device)
        J = js_J.shape[0]
        # Prefix j reveals the hole variables of rank < j; its target is the variable of rank j.
        mask_JBD = observed_BHWC.flatten(1)[None] | (rank_BD[None] < js_J[:, None, None])
        target_JB = order_BM[:, js_J].T
        pix_JB, ch_JB = target_JB // C, target_JB % C
        where_JBP = torch.zeros(J, B, H * W, dtype=torch.bool, device=device)
        where_JBP.scatter_(2, pix_JB[..., None], True)
        feats_NHWD = model.features(x_BHWC.expand(J, *x_BHWC.shape).reshape(J * B, H, W, C),
                                    mask_JBD.view(J * B, H, W, C), _repeat(caption, J))
        logits_NCK = model.head(feats_NHWD[where_JBP.view(J * B, H, W)]).float()
        logits_NK = logits_NCK[torch.arange(J * B, device=device), ch_JB.reshape(-1)]
        values_N = x_BHWC.flatten(1).gather(1, target_JB.T).T.reshape(-1).long()
        nats += torch.nn.functional.cross_entropy(logits_NK, values_N, reduction="sum").double()
    return float(nats) / (B * M) / LN2


@torch.no_grad()
def exact_center_bits(model, x_BHWC, tokens_BT, lengths_B, generator=None, chunk: int = 64) -> float:
    """`exact_hole_bits` over the centre hole (the model should be in eval mode)."""
    observed_BHWC = observed_except_center(x_BHWC.shape[0], x_BHWC.shape[1], device=x_BHWC.device)
    return exact_hole_bits(model, x_BHWC, observed_BHWC, tokens_BT, lengths_B, chunk, generator)


@torch.no_grad()
def center_bits(model, x_BHWC, tokens_BT, lengths_B, shuffle_captions: bool = False) -> float:
    """One-shot NLL of the centre hole given the border, in bits per hole subpixel."""
    B, H = x_BHWC.shape[:2]
    if shuffle_captions and B > 1:
        # A cyclic shift is a derangement: no image keeps its own caption.
        tokens_BT, lengths_B = tokens_BT.roll(1, 0), lengths_B.roll(1, 0)
    observed_BHWC = observed_except_center(B, H, device=x_BHWC.device)
    where_BHW = ~observed_BHWC.all(-1)
    logits_PCK = model.logits_at(x_BHWC, observed_BHWC, tokens_BT, lengths_B, where_BHW)
    targets_PC = x_BHWC[where_BHW].long()
    nats = torch.nn.functional.cross_entropy(logits_PCK.flatten(0, 1), targets_PC.flatten(), reduction="mean")
    return float(nats) / LN2


def _repeat(caption: Caption, N: int) -> Caption:
    """A batch's caption states for N copies of the batch (copy-major, like `x.expand(N, ...)`)."""
    states = caption.states_BTE
    if states is not None:
        states = states.expand(N, *states.shape).reshape(N * states.shape[0], *states.shape[1:])
    return Caption(states, caption.lengths_B.expand(N, -1).reshape(-1))


def _hole_scores(model, x_BHWC, observed_BHWC, caption: Caption, known_NBD, target_NBD):
    """For N masks at once (each revealing `known_NBD` beside the observed subpixels): nats of the
    subpixels target_NBD, per mask and example [N,B], from one batched forward pass (`caption`: the batch's,
    read once by the caller)."""
    N = known_NBD.shape[0]
    B, H, W, C = x_BHWC.shape
    # The head runs only at pixels holding a target (one pixel per pass when a pass is one variable).
    where_NBHW = target_NBD.view(N, B, H, W, C).any(-1)
    feats_NHWD = model.features(x_BHWC.expand(N, *x_BHWC.shape).reshape(N * B, H, W, C),
                                (observed_BHWC.flatten(1)[None] | known_NBD).view(N * B, H, W, C), _repeat(caption, N))
    logits_PCK = model.head(feats_NHWD[where_NBHW.reshape(N * B, H, W)]).float()
    values_PC = x_BHWC.expand(N, *x_BHWC.shape)[where_NBHW].long()
    nats_PC = -torch.log_softmax(logits_PCK, -1).gather(-1, values_PC[..., None]).squeeze(-1)
    nats_NBHWC = torch.zeros(N, B, H, W, C, device=x_BHWC.device)
    nats_NBHWC[where_NBHW] = nats_PC * target_NBD.view(N, B, H, W, C)[where_NBHW]
    return nats_NBHWC.flatten(2).sum(-1)


def _random_order(observed_BHWC, generator, shared: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A uniformly random order of each example's hole: (order_BM, the flat subpixel index of the j-th
    variable; rank_BD, each hidden subpixel's place in it, observed subpixels M; M). One order for the
    whole batch when `shared`. Every example must hide the same number M > 0 of subpixels."""
    B = observed_BHWC.shape[0]
    D = observed_BHWC[0].numel()
    num_hidden_B = (~observed_BHWC).flatten(1).sum(1)
    if bool((num_hidden_B != num_hidden_B[0]).any()):
        raise ValueError("every example must hide the same number of subpixels")
    M = int(num_hidden_B[0])
    if M == 0:
        raise ValueError("the mask must hide at least one subpixel")
    device = observed_BHWC.device
    key_BD = (torch.rand(D, generator=generator).expand(B, D) if shared
              else torch.rand((B, D), generator=generator)).to(device)
    key_BD = key_BD.masked_fill(observed_BHWC.flatten(1), float("inf"))
    order_BM = key_BD.argsort(dim=1)[:, :M]
    rank_BD = torch.full((B, D), M, device=device, dtype=torch.long)
    rank_BD.scatter_(1, order_BM, torch.arange(M, device=device).expand(B, M))
    return order_BM, rank_BD, M


@torch.no_grad()
def budget_bits(model, x_BHWC, observed_BHWC, tokens_BT, lengths_B, plan: list[int], generator=None,
                max_batch: int = 256) -> float:
    """Bits per hidden subpixel when the hole is generated in the passes of `plan` (boundaries 0 = t_0 < ...
    < t_K = M, onade.plans): pass k's variables, those of ranks t_k .. t_{k+1}-1 in one random ordering
    shared by the batch (drawn as exact_hole_bits draws it), are each scored given the observed subpixels
    and the t_k revealed before the pass. K forward passes per image; with K = M it is the exact NLL."""
    _, rank_BD, M = _random_order(observed_BHWC, generator, shared=True)
    t = list(plan)
    if t[0] != 0 or t[-1] != M or any(a >= b for a, b in zip(t, t[1:])):
        raise ValueError(f"plan must rise strictly from 0 to the hole's {M} subpixels, got {t[:4]}...{t[-2:]}")
    B = x_BHWC.shape[0]
    J = max(1, max_batch // B)
    caption = model.read_caption(tokens_BT, lengths_B)
    nats = torch.zeros((), dtype=torch.float64, device=x_BHWC.device)
    for k0 in range(0, len(t) - 1, J):
        lo = torch.tensor(t[k0:k0 + J][:len(t) - 1 - k0], device=x_BHWC.device)
        hi = torch.tensor(t[k0 + 1:k0 + 1 + len(lo)], device=x_BHWC.device)
        known_NBD = rank_BD[None] < lo[:, None, None]
        target_NBD = ~known_NBD & (rank_BD[None] < hi[:, None, None])
        nats += _hole_scores(model, x_BHWC, observed_BHWC, caption, known_NBD, target_NBD).sum().double()
    return float(nats) / (B * M) / LN2


@torch.no_grad()
def loss_profile(model, batches, hole_HW: torch.Tensor | None = None, num_points: int = 64, generator=None,
                 mask_name: str = "center", max_batch: int = 256) -> LossProfile:
    """L(t) for t = 0..M-1 over the hole `hole_HW` (True = hidden pixel; default the centre square):
    at `num_points` values of t spread over the hole, each image of `batches` (an iterable of
    (x_BHWC, tokens_BT, lengths_B)) gets a random order, its first t hole subpixels revealed, and the
    mean bits of the M - t still hidden scored (an unbiased estimate of the next variable's expected
    bits, which is uniform among them). The means are made non-increasing in t (isotonic regression)
    and interpolated to every t. One forward pass per point per image."""
    was_training = model.training
    model.eval()
    sums, counts, M, H, num_images = None, None, 0, 0, 0
    try:
        for x_BHWC, tokens_BT, lengths_B in batches:
            B, H = x_BHWC.shape[:2]
            hole = hole_HW if hole_HW is not None else ~observed_except_center(1, H)[0].all(-1)
            hole = hole.to(x_BHWC.device)
            if hole.shape != (H, H) or not bool(hole.any()):
                raise ValueError(f"the profile's hole must be a non-empty bool [{H},{H}] pixel mask")
            observed_BHWC = ~hole[None, :, :, None].expand(B, H, H, 3)
            _, rank_BD, M = _random_order(observed_BHWC, generator, shared=False)
            if sums is None:
                points = np.unique(np.round(np.linspace(0, M - 1, min(num_points, M))).astype(int))
                sums, counts = np.zeros(len(points)), np.zeros(len(points))
            J = max(1, max_batch // B)
            caption = model.read_caption(tokens_BT, lengths_B)
            for j0 in range(0, len(points), J):
                ts = torch.as_tensor(points[j0:j0 + J], device=x_BHWC.device)
                known_NBD = rank_BD[None] < ts[:, None, None]
                target_NBD = ~known_NBD & (rank_BD[None] < M)
                nats_NB = _hole_scores(model, x_BHWC, observed_BHWC, caption, known_NBD, target_NBD)
                per_var_NB = nats_NB / (M - ts)[:, None]
                sums[j0:j0 + len(ts)] += per_var_NB.sum(1).double().cpu().numpy() / LN2
                counts[j0:j0 + len(ts)] += B
            num_images += B
    finally:
        model.train(was_training)
    if sums is None:
        raise ValueError("loss_profile needs at least one batch of images")
    smooth = isotonic_decreasing(sums / counts, counts)
    bits = np.interp(np.arange(M), points, smooth)
    return LossProfile(bits=[round(float(b), 5) for b in bits], mask=mask_name, image_size=H, num_images=num_images)


def evaluate_batch(model, x_BHWC, tokens_BT, lengths_B, num_masks: int = 4, generator=None,
                   exact_chunk: int = 64, exact: bool = True) -> dict[str, float]:
    """All metrics for one batch; the exact NLL (over the centre hole, one forward pass per `exact_chunk`
    hole subpixels) only when `exact`. `generator` is a CPU generator (or None)."""
    was_training = model.training
    model.eval()
    try:
        out = dict(zip(METRICS, (
            orderless_bits(model, x_BHWC, tokens_BT, lengths_B, num_masks, generator),
            center_bits(model, x_BHWC, tokens_BT, lengths_B),
            center_bits(model, x_BHWC, tokens_BT, lengths_B, shuffle_captions=True),
        )))
        if exact:
            out[EXACT_CENTER] = exact_center_bits(model, x_BHWC, tokens_BT, lengths_B, generator, exact_chunk)
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model, batches, num_masks: int = 2, seed: int = 0, exact_images: int = 0,
             precision: str = "fp32") -> dict[str, float]:
    """`evaluate_batch`'s metrics averaged over the images of `batches` ((x_BHWC, tokens_BT, lengths_B) each,
    moved to the model's device here), the exact NLL over the centre hole (EXACT_CENTER) over the first
    `exact_images` of them only, under `precision`'s autocast. With a fixed seed the masks and orderings are
    the same at every call and on any device (drawn on the CPU), so successive validations are comparable.
    Also returns `num_images` and `exact_num_images`."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    exact_generator = torch.Generator().manual_seed(seed + EXACT_SEED_OFFSET)
    sums: dict[str, float] = {}
    num_images = num_exact = 0
    was_training = model.training
    model.eval()
    with autocast(precision, device):
        for batch in batches:
            x_BHWC, tokens_BT, lengths_B = (t.to(device) for t in batch)
            n = x_BHWC.shape[0]
            metrics = evaluate_batch(model, x_BHWC, tokens_BT, lengths_B, num_masks=num_masks,
                                     generator=generator, exact=False)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * n
            num_images += n
            e = min(n, exact_images - num_exact)
            if e > 0:
                exact = exact_center_bits(model, x_BHWC[:e], tokens_BT[:e], lengths_B[:e], exact_generator)
                sums[EXACT_CENTER] = sums.get(EXACT_CENTER, 0.0) + exact * e
                num_exact += e
    model.train(was_training)
    out = {k: v / max(num_images, 1) for k, v in sums.items() if k != EXACT_CENTER}
    if num_exact:
        out[EXACT_CENTER] = sums[EXACT_CENTER] / num_exact
    return {**out, "num_images": num_images, "exact_num_images": num_exact}


@torch.no_grad()
def one_shot_fill(model, x_BHWC, tokens_BT, lengths_B) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked, predicted) images for the centre hole: every hole subpixel set to its most likely value
    given the border and caption, in a single forward pass. Hidden subpixels show as grey."""
    was_training = model.training
    model.eval()
    try:
        observed_BHWC = observed_except_center(x_BHWC.shape[0], x_BHWC.shape[1], device=x_BHWC.device)
        where_BHW = ~observed_BHWC.all(-1)
        logits_PCK = model.logits_at(x_BHWC, observed_BHWC, tokens_BT, lengths_B, where_BHW)
        predicted = x_BHWC.clone()
        predicted[where_BHW] = logits_PCK.argmax(-1).to(x_BHWC.dtype)
        masked = torch.where(observed_BHWC, x_BHWC, torch.full_like(x_BHWC, 128))
        return masked, predicted
    finally:
        model.train(was_training)


# ---- caption adherence on synthetic data --------------------------------------------------------
# `palette` maps each colour a caption may name to its RGB (data.synthetic.COLOURS); `unnamed` are colours
# an image may hold that no caption names (data.synthetic's stripes' grey).

RGB = tuple[int, int, int]


def centre_colour(image_BHWC: np.ndarray, palette: Mapping[str, RGB], side: int = 4) -> list[str]:
    """Per image, the palette colour most of the central side x side pixels are nearest to: how the Gibbs
    acceptance checks that a sample put the caption's colour in the centre (data.synthetic's offset
    variant's shapes always cover the image centre)."""
    x = np.asarray(image_BHWC)
    H = x.shape[1]
    lo = (H - side) // 2
    patch = x[:, lo:lo + side, lo:lo + side].reshape(x.shape[0], -1, 3).astype(np.int32)
    names = list(palette)
    colours = np.array([palette[n] for n in names], np.int32)
    nearest = ((patch[:, :, None, :] - colours[None, None]) ** 2).sum(-1).argmin(-1)
    return [names[int(np.bincount(row, minlength=len(names)).argmax())] for row in nearest]


def _nearest_in_hole(image_BHWC: np.ndarray, palette: Mapping[str, RGB], unnamed: Sequence[RGB]) -> np.ndarray:
    """Index into the palette's colours, then the unnamed ones, nearest to each centre-hole pixel [B, P]."""
    x = np.asarray(image_BHWC)
    H = x.shape[1]
    side = num_hole_side(H)
    lo = (H - side) // 2  # the centre hole, as observed_except_center draws it
    patch = x[:, lo:lo + side, lo:lo + side].reshape(x.shape[0], -1, 3).astype(np.int32)
    colours = np.array([palette[n] for n in palette] + list(unnamed), np.int32)
    return ((patch[:, :, None, :] - colours[None, None]) ** 2).sum(-1).argmin(-1)


def hole_colour(image_BHWC: np.ndarray, backgrounds: list[str], palette: Mapping[str, RGB],
                unnamed: Sequence[RGB] = ()) -> list[str]:
    """Per image, the palette colour other than its background (and the unnamed ones) that most pixels of the
    centre hole are nearest to: the shape's colour in data.synthetic's `centre` variant, which only the
    caption tells."""
    nearest, names = _nearest_in_hole(image_BHWC, palette, unnamed), list(palette)
    out = []
    for row, bg in zip(nearest, backgrounds):
        counts = np.bincount(row, minlength=len(names) + len(unnamed))[:len(names)]
        counts[names.index(bg)] = -1
        out.append(names[int(counts.argmax())])
    return out


def caption_adherence(image_BHWC: np.ndarray, colours: list[str], backgrounds: list[str],
                      palette: Mapping[str, RGB], unnamed: Sequence[RGB] = ()) -> dict[str, float]:
    """How well `centre`-variant samples follow their captions, over the batch: `hit`, the share whose
    hole_colour is the caption's colour; `purity`, the mean share of each hole's shape pixels (those
    nearest to neither the background nor an unnamed colour) that are nearest to the caption's colour (a
    hole with no shape pixel scores 0). Real images score 1 and 1; `purity` keeps telling samplers apart
    when nearly every sample gets the majority colour right."""
    nearest, names = _nearest_in_hole(image_BHWC, palette, unnamed), list(palette)
    hits = [g == c for g, c in zip(hole_colour(image_BHWC, backgrounds, palette, unnamed), colours)]
    purity = []
    for row, colour, bg in zip(nearest, colours, backgrounds):
        shape = (row != names.index(bg)) & (row < len(names))
        purity.append(float((row[shape] == names.index(colour)).mean()) if shape.any() else 0.0)
    return {"hit": float(np.mean(hits)), "purity": float(np.mean(purity))}
