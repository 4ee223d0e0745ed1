"""The network: (image with hidden subpixels, mask, caption) -> a 256-way distribution for every subpixel.

It knows nothing of how masks are drawn, of how the loss weighs them or of samplers.

Shapes: B batch, H/W image side, C = 3 colour channels, K = 256 levels, D conv width, T tokens,
P selected pixels. `observed_BHWC` is True where a subpixel is observed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from onade.caption import AttentionMerger, CaptionReader
from onade import mixture
from onade.config import NUM_CHANNELS, NUM_LEVELS, Config, ModelConfig, get_preset
from onade.loss import hidden_nats


class ValueEmbedding(nn.Module):
    """Each subpixel's value, or a per-channel "hidden" token (index 256), looked up in a learned table per
    channel; the three channel embeddings are concatenated. This computes what the seed's first layer
    computes on one-hot(3x256) + mask, without materialising 771 input channels, and a hidden subpixel's
    true value never reaches the network."""

    def __init__(self, dim: int):
        super().__init__()
        self.table = nn.Embedding(NUM_CHANNELS * (NUM_LEVELS + 1), dim)
        self.out_channels = NUM_CHANNELS * dim
        offsets = torch.arange(NUM_CHANNELS) * (NUM_LEVELS + 1)
        self.register_buffer("offsets_C", offsets, persistent=False)

    def forward(self, x_BHWC: torch.Tensor, observed_BHWC: torch.Tensor) -> torch.Tensor:
        idx_BHWC = torch.where(observed_BHWC, x_BHWC.long(), NUM_LEVELS) + self.offsets_C
        e_BHWCE = self.table(idx_BHWC)
        return e_BHWCE.flatten(3).permute(0, 3, 1, 2)


class OneHotInput(nn.Module):
    """The seed's input: one-hot(3x256) of observed values concatenated with the mask (771 channels).
    Kept for comparison (bench/model.py); `ValueEmbedding` is the default."""

    out_channels = NUM_CHANNELS * NUM_LEVELS + NUM_CHANNELS

    def forward(self, x_BHWC: torch.Tensor, observed_BHWC: torch.Tensor) -> torch.Tensor:
        m_BHWC = observed_BHWC.to(torch.float32)
        onehot_BHWCK = F.one_hot(torch.where(observed_BHWC, x_BHWC.long(), 0), NUM_LEVELS) * m_BHWC[..., None]
        return torch.cat([onehot_BHWCK.flatten(3), m_BHWC], dim=-1).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    def __init__(self, width: int, dilation: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.norm2 = nn.GroupNorm(groups, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, h_BDHW: torch.Tensor) -> torch.Tensor:
        r = self.conv1(F.silu(self.norm1(h_BDHW)))
        r = self.conv2(F.silu(self.norm2(r)))
        return h_BDHW + r


class Caption(NamedTuple):
    """A batch's captions as the mergers read them: the reader's states [B,T,E] (None for a model without
    caption conditioning) and each caption's length (0: no caption)."""
    states_BTE: torch.Tensor | None
    lengths_B: torch.Tensor


class ONADE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.input = ValueEmbedding(cfg.embed_dim) if cfg.input_mode == "embedding" else OneHotInput()
        in_ch = self.input.out_channels + (2 if cfg.coord_channels else 0)
        self.stem = nn.Conv2d(in_ch, cfg.width, 3, padding=1)
        self.blocks = nn.ModuleList(
            ResBlock(cfg.width, cfg.dilations[i % len(cfg.dilations)], cfg.norm_groups) for i in range(cfg.num_blocks)
        )
        self.reader = None
        self.mergers = nn.ModuleDict()
        if cfg.merge_every > 0:
            self.reader = CaptionReader(cfg.vocab_size, cfg.text_dim, cfg.text_layers, cfg.qrnn_kernel, cfg.bidirectional)
            for i in range(cfg.merge_every - 1, cfg.num_blocks, cfg.merge_every):
                self.mergers[str(i)] = AttentionMerger(cfg.width, cfg.text_dim, cfg.num_heads)
        self.out_norm = nn.GroupNorm(cfg.norm_groups, cfg.width)
        own = self.input.out_channels if cfg.own_pixel else 0
        per_channel = mixture.PARAMS * cfg.mixtures if cfg.head == "logistic" else NUM_LEVELS
        self.head_proj = nn.Linear(cfg.width + own, NUM_CHANNELS * per_channel)

    def _coords(self, h_BDHW: torch.Tensor) -> torch.Tensor:
        B, _, H, W = h_BDHW.shape
        ys = torch.linspace(-1, 1, H, device=h_BDHW.device, dtype=h_BDHW.dtype)
        xs = torch.linspace(-1, 1, W, device=h_BDHW.device, dtype=h_BDHW.dtype)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([yy, xx])[None].expand(B, 2, H, W)

    def read_caption(self, tokens_BT, lengths_B) -> Caption:
        """The caption states every merger attends to. A sampler reads them once and reuses them every pass."""
        return Caption(self.reader(tokens_BT, lengths_B) if self.reader is not None else None, lengths_B)

    def features(self, x_BHWC, observed_BHWC, caption: Caption) -> torch.Tensor:
        """Per-pixel features [B,H,W,D] before the output head (with model.own_pixel, the pixel's own input
        embedding is their last channels)."""
        h = own = self.input(x_BHWC, observed_BHWC).to(self.stem.weight.dtype)
        if self.cfg.coord_channels:
            h = torch.cat([h, self._coords(h)], dim=1)
        if nhwc(self.cfg.channels_last, h.device):
            h = h.contiguous(memory_format=torch.channels_last)
        h_BDHW = self.stem(h)
        for i, block in enumerate(self.blocks):
            if self.cfg.activation_checkpointing and self.training:
                # No RNG state to keep: nothing in a block draws random numbers (preserve_rng_state=True would
                # save and restore the CPU's and every device's generator state around each block).
                h_BDHW = checkpoint(block, h_BDHW, use_reentrant=False, preserve_rng_state=False)
            else:
                h_BDHW = block(h_BDHW)
            merger = self.mergers[str(i)] if str(i) in self.mergers else None
            if merger is not None:
                h_BDHW = merger(h_BDHW, caption.states_BTE, caption.lengths_B)
        out_BDHW = F.silu(self.out_norm(h_BDHW))
        if self.cfg.own_pixel:
            out_BDHW = torch.cat([out_BDHW, own.to(out_BDHW.dtype)], dim=1)
        return out_BDHW.permute(0, 2, 3, 1)

    def head(self, feats_xD: torch.Tensor) -> torch.Tensor:
        """Features [..., D] -> logits [..., 3, 256] (the logistic head's are normalised log-probabilities)."""
        out = self._head_outputs(feats_xD)
        return mixture.log_probs(out, self.cfg.mixtures) if self.cfg.head == "logistic" else out

    def _head_outputs(self, feats_xD: torch.Tensor) -> torch.Tensor:
        """[..., 3, 256] logits, or the logistic head's [..., 3, 3K] mixture parameters."""
        return self.head_proj(feats_xD).unflatten(-1, (NUM_CHANNELS, -1))

    def forward(self, x_BHWC, observed_BHWC, tokens_BT, lengths_B, score: bool = False) -> torch.Tensor:
        """Logits [B,H,W,3,256], fp32. With `score`, instead the nats of each hidden subpixel's true value
        [B,H,W,3] (0 where observed), what training needs: the logistic head then computes one value's bin,
        not 256."""
        self._check_inputs(x_BHWC, observed_BHWC, tokens_BT, lengths_B)
        feats = self.features(x_BHWC, observed_BHWC, self.read_caption(tokens_BT, lengths_B))
        if not score:
            return self.head(feats).float()
        if self.cfg.head == "logistic":
            return mixture.nats(self._head_outputs(feats), x_BHWC, self.cfg.mixtures) * (~observed_BHWC)
        return hidden_nats(self.head(feats), x_BHWC, observed_BHWC)

    def logits_at(self, x_BHWC, observed_BHWC, tokens_BT, lengths_B, where_BHW) -> torch.Tensor:
        """Logits [P,3,256] only at the pixels where `where_BHW` is True (in `nonzero()` order). The head is
        the most expensive layer when few subpixels are hidden, so samplers and losses use this."""
        self._check_inputs(x_BHWC, observed_BHWC, tokens_BT, lengths_B)
        feats_BHWD = self.features(x_BHWC, observed_BHWC, self.read_caption(tokens_BT, lengths_B))
        return self.head(feats_BHWD[where_BHW]).float()

    def _check_inputs(self, x_BHWC, observed_BHWC, tokens_BT, lengths_B) -> None:
        if x_BHWC.dim() != 4 or x_BHWC.shape[-1] != NUM_CHANNELS:
            raise ValueError(f"x must be [B,H,W,3] uint8, got shape {tuple(x_BHWC.shape)}")
        if observed_BHWC.shape != x_BHWC.shape or observed_BHWC.dtype != torch.bool:
            raise ValueError(f"observed must be a bool tensor shaped like x {tuple(x_BHWC.shape)} (True = observed), "
                             f"got {observed_BHWC.dtype} {tuple(observed_BHWC.shape)}")
        if tokens_BT.dim() != 2 or lengths_B.shape != (x_BHWC.shape[0],):
            raise ValueError(f"tokens must be [B,T] and lengths [B] with B={x_BHWC.shape[0]}, "
                             f"got {tuple(tokens_BT.shape)} and {tuple(lengths_B.shape)}")


def nhwc(channels_last: str, device: torch.device) -> bool:
    """Whether activations go channels-last: model.channels_last "on", or "auto" on a CPU (see ModelConfig)."""
    return channels_last == "on" or (channels_last == "auto" and device.type == "cpu")


def build_model(spec: str | Config | ModelConfig = "debug") -> ONADE:
    """A model from a preset name, a full `Config` or a `ModelConfig`."""
    if isinstance(spec, str):
        spec = get_preset(spec)
    if isinstance(spec, Config):
        spec = spec.model
    if not isinstance(spec, ModelConfig):
        raise ValueError(f"build_model takes a preset name, Config or ModelConfig, got {type(spec).__name__}")
    return ONADE(spec)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
