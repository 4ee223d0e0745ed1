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

Random masks and orderings are drawn from a CPU generator and then moved to the model's device, so a
given seed scores the same masks on CPU and GPU.
"""

from __future__ import annotations

import math

import torch

import numpy as np

from onade.config import MaskConfig
from onade.loss import nade_loss
from onade.masks import center_mask, sample_masks
from onade.plans import LossProfile, isotonic_decreasing

LN2 = math.log(2)


@torch.no_grad()
def orderless_bits(model, x_BHWC, tokens_BT, lengths_B, num_masks: int = 4, generator=None) -> float:
    cfg = MaskConfig(weights={"orderless": 1.0})
    total = 0.0
    for _ in range(num_masks):
        mask_BHWC = sample_masks(cfg, x_BHWC.shape[0], x_BHWC.shape[1], generator).to(x_BHWC.device)
        total += float(nade_loss(model(x_BHWC, mask_BHWC, tokens_BT, lengths_B), x_BHWC, mask_BHWC))
    return total / num_masks


@torch.no_grad()
def exact_hole_bits(model, x_BHWC, mask_BHWC, tokens_BT, lengths_B, chunk: int = 64, generator=None,
                    max_batch: int = 256) -> float:
    """Exact NLL of the hidden subpixels of `mask_BHWC` under one random ordering (shared by the batch),
    in bits per hidden subpixel. Every example must hide the same number of subpixels."""
    B, H, W, C = x_BHWC.shape
    order_BM, rank_BD, M = _random_order(mask_BHWC, generator, shared=True)
    device = x_BHWC.device
    chunk = max(1, min(chunk, max_batch // B if B <= max_batch else 1, M))
    nats = torch.zeros((), device=device, dtype=torch.float64)
    for j0 in range(0, M, chunk):
        js_J = torch.arange(j0, min(j0 + chunk, M), device=device)
        J = js_J.shape[0]
        # Prefix j reveals the hole variables of rank < j; its target is the variable of rank j.
        mask_JBD = mask_BHWC.flatten(1)[None] | (rank_BD[None] < js_J[:, None, None])
        target_JB = order_BM[:, js_J].T
        pix_JB, ch_JB = target_JB // C, target_JB % C
        where_JBP = torch.zeros(J, B, H * W, dtype=torch.bool, device=device)
        where_JBP.scatter_(2, pix_JB[..., None], True)
        logits_NCK = model.logits_at(
            x_BHWC.expand(J, *x_BHWC.shape).reshape(J * B, H, W, C),
            mask_JBD.view(J * B, H, W, C),
            tokens_BT.expand(J, *tokens_BT.shape).reshape(J * B, -1),
            lengths_B.expand(J, B).reshape(J * B),
            where_JBP.view(J * B, H, W),
        )
        logits_NK = logits_NCK[torch.arange(J * B, device=device), ch_JB.reshape(-1)]
        values_N = x_BHWC.flatten(1).gather(1, target_JB.T).T.reshape(-1).long()
        nats += torch.nn.functional.cross_entropy(logits_NK, values_N, reduction="sum").double()
    return float(nats) / (B * M) / LN2


@torch.no_grad()
def exact_center_bits(model, x_BHWC, tokens_BT, lengths_B, generator=None, chunk: int = 64) -> float:
    """`exact_hole_bits` over the centre hole (the model should be in eval mode)."""
    hole_BHWC = center_mask(x_BHWC.shape[0], x_BHWC.shape[1], device=x_BHWC.device)
    return exact_hole_bits(model, x_BHWC, hole_BHWC, tokens_BT, lengths_B, chunk, generator)


@torch.no_grad()
def center_bits(model, x_BHWC, tokens_BT, lengths_B, shuffle_captions: bool = False) -> float:
    """One-shot NLL of the centre hole given the border, in bits per hole subpixel."""
    B, H = x_BHWC.shape[:2]
    if shuffle_captions and B > 1:
        # A cyclic shift is a derangement: no image keeps its own caption.
        tokens_BT, lengths_B = tokens_BT.roll(1, 0), lengths_B.roll(1, 0)
    mask_BHWC = center_mask(B, H, device=x_BHWC.device)
    where_BHW = ~mask_BHWC.all(-1)
    logits_PCK = model.logits_at(x_BHWC, mask_BHWC, tokens_BT, lengths_B, where_BHW)
    targets_PC = x_BHWC[where_BHW].long()
    nats = torch.nn.functional.cross_entropy(logits_PCK.flatten(0, 1), targets_PC.flatten(), reduction="mean")
    return float(nats) / LN2


def _hole_scores(model, x_BHWC, mask_BHWC, tokens_BT, lengths_B, known_NBD, target_NBD):
    """For N masks at once (each revealing `known_NBD` beside the observed subpixels): nats of the
    subpixels target_NBD, per mask and example [N,B], from one batched forward pass."""
    N = known_NBD.shape[0]
    B, H, W, C = x_BHWC.shape
    # The head runs only at pixels holding a target (one pixel per pass when a pass is one variable).
    where_NBHW = target_NBD.view(N, B, H, W, C).any(-1)
    logits_PCK = model.logits_at(
        x_BHWC.expand(N, *x_BHWC.shape).reshape(N * B, H, W, C),
        (mask_BHWC.flatten(1)[None] | known_NBD).view(N * B, H, W, C),
        tokens_BT.expand(N, *tokens_BT.shape).reshape(N * B, -1),
        lengths_B.expand(N, B).reshape(N * B), where_NBHW.reshape(N * B, H, W))
    values_PC = x_BHWC.expand(N, *x_BHWC.shape)[where_NBHW].long()
    nats_PC = -torch.log_softmax(logits_PCK, -1).gather(-1, values_PC[..., None]).squeeze(-1)
    nats_NBHWC = torch.zeros(N, B, H, W, C, device=x_BHWC.device)
    nats_NBHWC[where_NBHW] = nats_PC * target_NBD.view(N, B, H, W, C)[where_NBHW]
    return nats_NBHWC.flatten(2).sum(-1)


def _random_order(mask_BHWC, generator, shared: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A uniformly random order of each example's hole: (order_BM, the flat subpixel index of the j-th
    variable; rank_BD, each hidden subpixel's place in it, observed subpixels M; M). One order for the
    whole batch when `shared`. Every example must hide the same number M > 0 of subpixels."""
    B = mask_BHWC.shape[0]
    D = mask_BHWC[0].numel()
    num_hidden_B = (~mask_BHWC).flatten(1).sum(1)
    if bool((num_hidden_B != num_hidden_B[0]).any()):
        raise ValueError("every example must hide the same number of subpixels")
    M = int(num_hidden_B[0])
    if M == 0:
        raise ValueError("the mask must hide at least one subpixel")
    device = mask_BHWC.device
    key_BD = (torch.rand(D, generator=generator).expand(B, D) if shared
              else torch.rand((B, D), generator=generator)).to(device)
    key_BD = key_BD.masked_fill(mask_BHWC.flatten(1), float("inf"))
    order_BM = key_BD.argsort(dim=1)[:, :M]
    rank_BD = torch.full((B, D), M, device=device, dtype=torch.long)
    rank_BD.scatter_(1, order_BM, torch.arange(M, device=device).expand(B, M))
    return order_BM, rank_BD, M


@torch.no_grad()
def budget_bits(model, x_BHWC, mask_BHWC, tokens_BT, lengths_B, plan: list[int], generator=None,
                max_batch: int = 256) -> float:
    """Bits per hidden subpixel when the hole is generated in the passes of `plan` (boundaries 0 = t_0 < ...
    < t_K = M, onade.plans): pass k's variables, those of ranks t_k .. t_{k+1}-1 in one random ordering
    shared by the batch (drawn as exact_hole_bits draws it), are each scored given the observed subpixels
    and the t_k revealed before the pass. K forward passes per image; with K = M it is the exact NLL."""
    _, rank_BD, M = _random_order(mask_BHWC, generator, shared=True)
    t = list(plan)
    if t[0] != 0 or t[-1] != M or any(a >= b for a, b in zip(t, t[1:])):
        raise ValueError(f"plan must rise strictly from 0 to the hole's {M} subpixels, got {t[:4]}...{t[-2:]}")
    B = x_BHWC.shape[0]
    J = max(1, max_batch // B)
    nats = torch.zeros((), dtype=torch.float64, device=x_BHWC.device)
    for k0 in range(0, len(t) - 1, J):
        lo = torch.tensor(t[k0:k0 + J][:len(t) - 1 - k0], device=x_BHWC.device)
        hi = torch.tensor(t[k0 + 1:k0 + 1 + len(lo)], device=x_BHWC.device)
        known_NBD = rank_BD[None] < lo[:, None, None]
        target_NBD = ~known_NBD & (rank_BD[None] < hi[:, None, None])
        nats += _hole_scores(model, x_BHWC, mask_BHWC, tokens_BT, lengths_B, known_NBD, target_NBD).sum().double()
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
            hole = hole_HW if hole_HW is not None else ~center_mask(1, H)[0].all(-1)
            hole = hole.to(x_BHWC.device)
            if hole.shape != (H, H) or not bool(hole.any()):
                raise ValueError(f"the profile's hole must be a non-empty bool [{H},{H}] pixel mask")
            mask_BHWC = ~hole[None, :, :, None].expand(B, H, H, 3)
            _, rank_BD, M = _random_order(mask_BHWC, generator, shared=False)
            if sums is None:
                points = np.unique(np.round(np.linspace(0, M - 1, min(num_points, M))).astype(int))
                sums, counts = np.zeros(len(points)), np.zeros(len(points))
            J = max(1, max_batch // B)
            for j0 in range(0, len(points), J):
                ts = torch.as_tensor(points[j0:j0 + J], device=x_BHWC.device)
                known_NBD = rank_BD[None] < ts[:, None, None]
                target_NBD = ~known_NBD & (rank_BD[None] < M)
                nats_NB = _hole_scores(model, x_BHWC, mask_BHWC, tokens_BT, lengths_B, known_NBD, target_NBD)
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
        out = {
            "bits_per_dim": orderless_bits(model, x_BHWC, tokens_BT, lengths_B, num_masks, generator),
            "center_bits_true_caption": center_bits(model, x_BHWC, tokens_BT, lengths_B),
            "center_bits_shuffled_caption": center_bits(model, x_BHWC, tokens_BT, lengths_B, shuffle_captions=True),
        }
        if exact:
            out["exact_bits_per_dim"] = exact_center_bits(model, x_BHWC, tokens_BT, lengths_B, generator,
                                                          exact_chunk)
        return out
    finally:
        model.train(was_training)
