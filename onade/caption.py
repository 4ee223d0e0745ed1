"""Caption reader (word-level Quasi-RNN) and the attention merger that feeds it into the ConvNet.

Shapes: B batch, T tokens, D text width, N = H*W feature positions, C conv width, G heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def reverse_padded(x_BTD: torch.Tensor, lengths_B: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length; padding stays at the end."""
    B, T = x_BTD.shape[:2]
    t_T = torch.arange(T, device=x_BTD.device)
    src_BT = lengths_B[:, None] - 1 - t_T[None, :]
    src_BT = torch.where(src_BT >= 0, src_BT, t_T[None, :].expand(B, T))
    return torch.gather(x_BTD, 1, src_BT[..., None].expand_as(x_BTD))


class QRNNLayer(nn.Module):
    """Quasi-RNN (Bradbury et al. 2016): a causal conv1d gives candidate z and gates f, o; then fo-pooling
    c_t = f_t c_{t-1} + (1 - f_t) z_t, h_t = o_t c_t. Causal, so trailing padding never reaches real tokens."""

    def __init__(self, dim_in: int, dim: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(dim_in, 3 * dim, kernel)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        gates_B3DT = self.conv(F.pad(x_BTD.transpose(1, 2), (self.kernel - 1, 0)))
        z_BDT, f_BDT, o_BDT = gates_B3DT.chunk(3, dim=1)
        z_BDT, f_BDT, o_BDT = torch.tanh(z_BDT), torch.sigmoid(f_BDT), torch.sigmoid(o_BDT)
        c_BD = torch.zeros_like(z_BDT[..., 0])
        hs = []
        for t in range(z_BDT.shape[-1]):
            c_BD = f_BDT[..., t] * c_BD + (1 - f_BDT[..., t]) * z_BDT[..., t]
            hs.append(o_BDT[..., t] * c_BD)
        return torch.stack(hs, dim=1)


class CaptionReader(nn.Module):
    """Token embedding + stacked (optionally bidirectional) QRNN layers -> states [B,T,D]."""

    def __init__(self, vocab_size: int, dim: int, num_layers: int = 1, kernel: int = 2, bidirectional: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.bidirectional = bidirectional
        half = dim // 2 if bidirectional else dim
        self.fwd = nn.ModuleList(QRNNLayer(dim, half, kernel) for _ in range(num_layers))
        self.bwd = nn.ModuleList(QRNNLayer(dim, dim - half, kernel) for _ in range(num_layers)) if bidirectional else None
        self.dim = dim

    def forward(self, tokens_BT: torch.Tensor, lengths_B: torch.Tensor) -> torch.Tensor:
        T = tokens_BT.shape[1]
        valid_BT1 = (torch.arange(T, device=tokens_BT.device)[None, :] < lengths_B[:, None])[..., None]
        h_BTD = self.embed(tokens_BT.clamp(0, self.embed.num_embeddings - 1)) * valid_BT1
        for i, layer in enumerate(self.fwd):
            out_BTD = layer(h_BTD)
            if self.bwd is not None:
                back_BTD = reverse_padded(self.bwd[i](reverse_padded(h_BTD, lengths_B)), lengths_B)
                out_BTD = torch.cat([out_BTD, back_BTD], dim=-1)
            h_BTD = out_BTD * valid_BT1
        return h_BTD


class AttentionMerger(nn.Module):
    """Adds to each feature vector f a convex combination of caption states z_t, weighted by
    softmax_t(f^T W z_t) over the caption's real tokens. W starts as the identity, so at initialisation
    a feature attends to the states it already resembles."""

    def __init__(self, width: int, text_dim: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.W = nn.Parameter(torch.eye(width, text_dim))
        self.value = nn.Linear(text_dim, width)
        # Starting the added term at zero keeps an untrained merger from disturbing the conv body.
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def forward(self, f_BCHW: torch.Tensor, z_BTD: torch.Tensor, lengths_B: torch.Tensor) -> torch.Tensor:
        # Written out rather than F.scaled_dot_product_attention: over a caption's dozen tokens torch 2.13's
        # CPU SDPA kernel took 1.5x these matmuls in bf16, and onade.inpaint ran 0.78x (debug) and 0.94x
        # (small) as fast with it (bench.model --compare attention times both). tests/test_model.py checks
        # this against SDPA.
        B, C, H, W = f_BCHW.shape
        T, G = z_BTD.shape[1], self.num_heads
        f_BNC = f_BCHW.flatten(2).transpose(1, 2)
        q_BGNd = (f_BNC @ self.W).view(B, H * W, G, -1).transpose(1, 2)
        k_BGTd = z_BTD.view(B, T, G, -1).transpose(1, 2)
        # Scaled like dot-product attention so the softmax is not saturated at initialisation.
        score_BGNT = q_BGNd @ k_BGTd.transpose(-1, -2) / math.sqrt(q_BGNd.shape[-1])
        valid_BT = torch.arange(T, device=z_BTD.device)[None, :] < lengths_B[:, None]
        has_text_B = lengths_B > 0
        # An empty caption has no token to attend to: its row keeps finite scores (no NaN) and its weights
        # are zeroed, so the merger adds nothing.
        hide_BT = ~valid_BT & has_text_B[:, None]
        score_BGNT = score_BGNT.masked_fill(hide_BT[:, None, None, :], float("-inf"))
        attn_BGNT = torch.softmax(score_BGNT, dim=-1) * has_text_B[:, None, None, None]
        v_BGTc = self.value(z_BTD).view(B, T, G, -1).transpose(1, 2)
        out_BNC = (attn_BGNT @ v_BGTc).transpose(1, 2).reshape(B, H * W, C)
        return f_BCHW + out_BNC.transpose(1, 2).reshape(B, C, H, W)


def caption_drops(batch_size: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Caption dropout for classifier-free guidance: which captions of a batch become the empty one (bool [B],
    on the CPU; None when p is 0, drawing nothing). An empty caption is length 0, which the mergers read as
    "no caption": they add nothing. Drawn on the CPU generator, so it does not depend on the device."""
    if p <= 0:
        return None
    return torch.rand(batch_size, generator=generator) < p
