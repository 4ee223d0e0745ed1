"""The orderless-NADE training loss, in bits per subpixel.

With D subpixels of which d are observed (and the observed set uniform given d, d uniform in 0..D-1), the
NLL of the image under a random ordering is D * E[-log p(x_next | x_observed)], and the next variable is
uniform over the D-d hidden ones. So  D/(D-d) * sum_hidden CE  is an unbiased estimate of that NLL
(Uria et al. 2014); dividing by D and ln 2 gives bits per subpixel. Per example this is the mean CE over
its hidden subpixels; the seed instead averaged over all hidden subpixels of the batch at once ("mean").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSS_KINDS = ("orderless", "mean")


def hidden_nats(logits_BHWCK: torch.Tensor, x_BHWC: torch.Tensor, observed_BHWC: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in nats of every hidden subpixel [B,H,W,3]; zero where observed."""
    ce = F.cross_entropy(logits_BHWCK.float().flatten(0, -2), x_BHWC.long().flatten(), reduction="none")
    return ce.view(x_BHWC.shape) * (~observed_BHWC)


def example_bits(nats_BHWC: torch.Tensor, observed_BHWC: torch.Tensor) -> torch.Tensor:
    """Each example's mean cross-entropy over its hidden subpixels, in bits [B] (0 where nothing is hidden),
    from the nats of every hidden subpixel (`hidden_nats`, or the model's forward with score=True).
    For an orderless mask this is the unbiased per-subpixel NLL estimate; for a whole centre hole it is the
    one-shot centre NLL."""
    num_hidden_B = (~observed_BHWC).flatten(1).sum(1)
    return nats_BHWC.flatten(1).sum(1) / num_hidden_B.clamp(min=1) / math.log(2)


def per_example_bits(logits_BHWCK: torch.Tensor, x_BHWC: torch.Tensor, observed_BHWC: torch.Tensor) -> torch.Tensor:
    """`example_bits` from logits."""
    return example_bits(hidden_nats(logits_BHWCK, x_BHWC, observed_BHWC), observed_BHWC)


def loss_from_nats(nats_BHWC: torch.Tensor, observed_BHWC: torch.Tensor, kind: str = "orderless") -> torch.Tensor:
    """Scalar loss in bits per subpixel from every hidden subpixel's nats; see the module docstring for the two
    kinds."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
    if kind == "orderless":
        return example_bits(nats_BHWC, observed_BHWC).mean()
    return nats_BHWC.sum() / (~observed_BHWC).sum().clamp(min=1) / math.log(2)


def nade_loss(logits_BHWCK: torch.Tensor, x_BHWC: torch.Tensor, observed_BHWC: torch.Tensor,
              kind: str = "orderless") -> torch.Tensor:
    """`loss_from_nats` from logits."""
    return loss_from_nats(hidden_nats(logits_BHWCK, x_BHWC, observed_BHWC), observed_BHWC, kind)
