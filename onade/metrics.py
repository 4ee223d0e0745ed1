"""Evaluation, all in bits per subpixel.

- `orderless_bits`: the orderless-NADE loss averaged over random orderless masks (an unbiased estimate of
  the NLL of a random ordering of the whole image).
- `exact_hole_bits`: the exact NLL of a hole under one random ordering, by the chain rule: one conditional per
  hole subpixel, evaluated in batched chunks of prefixes so it takes (hole size / chunk) forward passes.
- `center_bits`: one-shot NLL of the centre hole given the border and the caption; with captions shuffled
  across the batch, the difference is what the caption is worth.

Random masks and orderings are drawn from a CPU generator and then moved to the model's device, so a
given seed scores the same masks on CPU and GPU.
"""

from __future__ import annotations

import math

import torch

from onade.config import MaskConfig
from onade.loss import nade_loss
from onade.masks import center_mask, sample_masks

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
    num_hidden_B = (~mask_BHWC).flatten(1).sum(1)
    if bool((num_hidden_B != num_hidden_B[0]).any()):
        raise ValueError("exact_hole_bits needs the same number of hidden subpixels in every example")
    M = int(num_hidden_B[0])
    if M == 0:
        raise ValueError("exact_hole_bits needs a mask that hides at least one subpixel")
    device = x_BHWC.device
    key_D = torch.rand(H * W * C, generator=generator).to(device)
    key_BD = key_D.expand(B, -1).masked_fill(mask_BHWC.flatten(1), float("inf"))
    order_BM = key_BD.argsort(dim=1)[:, :M]  # flat subpixel index of the j-th variable revealed
    rank_BD = torch.full((B, H * W * C), M, device=device, dtype=torch.long)
    rank_BD.scatter_(1, order_BM, torch.arange(M, device=device).expand(B, M))
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
