"""Inpainting samplers: fill the hidden subpixels of a batch from a trained orderless NADE.

    images_BHWC, chain_FBHWC = onade.inpaint(model, x_BHWC, mask_BHWC, tokens_BT, lengths_B,
                                             strategy="independent-gibbs", seed=0)

Strategies (onade.config.STRATEGIES); the hole is every subpixel where `mask_BHWC` is False:
- independent-gibbs (Yao et al. 2014): fill the hole (one-shot model sample, or uniform noise), then for
  n = 0..N-1 hide each hole subpixel with probability p_n = gibbs_schedule(n, N, ...) and resample all the
  hidden ones at once from the model's conditionals. p_n is the fraction *resampled*, falling from pmax to
  pmin over the first alpha*N steps: big moves first, then ever finer corrections.
- ancestral-gibbs: the same outer loop, but each hidden block is resampled ancestrally (a random order, k
  subpixels per forward pass), so every block is an exact draw from its conditional when k = 1.
- ancestral: orderless-NADE ancestral sampling: a random order over the hole, k subpixels per forward pass.
  `steps` does not apply: it takes ceil(hole / k) passes.
- greedy / antigreedy: like ancestral, but each pass fills the k hidden subpixels whose predictive
  entropy is lowest (greedy) or highest (antigreedy).

Every strategy does one forward pass of the network body per step and runs the output head only where it
needs logits (the pixels it samples; the whole hole for greedy/antigreedy, which rank it by entropy). It
draws on the model's device from one seeded torch.Generator, and the loop never waits on the device (block
sizes are drawn on the host before the loop). Observed subpixels never change.

Shapes: B batch, H/W image side, C = 3 channels, K = 256 levels, D = H*W*C subpixels of an image,
S = the batch's largest hole in subpixels, M subpixels sampled in one pass (padded; `valid_BM` says which
are real), F recorded frames, E feature width.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from onade.config import STRATEGIES, SampleConfig
from onade.precision import autocast, resolve_precision

NUM_LEVELS = 256
NUM_CHANNELS = 3
_UNKNOWN_VALUE = 127  # what a not-yet-sampled hole subpixel shows in recorded frames (never seen by the model)


def gibbs_schedule(n: int, num_steps: int, pmin: float = 0.1, pmax: float = 0.9, alpha: float = 0.7) -> float:
    """Fraction of the hole resampled at Gibbs step n of num_steps (Yao et al. 2014):
    p_n = max(pmin, pmax - (pmax - pmin) * n / (alpha * N))."""
    return max(pmin, pmax - (pmax - pmin) * n / (alpha * num_steps))


def temperature_schedule(n: int, num_steps: int, temperature: float = 1.0, final_temperature: float = 0.0) -> float:
    """Sampling temperature at step n: constant when final_temperature is 0, else geometric from
    `temperature` at the first step to `final_temperature` at the last (annealing towards the mode)."""
    if final_temperature <= 0 or temperature <= 0 or num_steps <= 1:
        return temperature
    return temperature * (final_temperature / temperature) ** (n / (num_steps - 1))


def inpaint(model: torch.nn.Module, x_BHWC: torch.Tensor, mask_BHWC: torch.Tensor, tokens_BT: torch.Tensor,
            lengths_B: torch.Tensor, strategy: str = "independent-gibbs", steps: int | None = None,
            temperature: float = 1.0, seed: int = 0, record_every: int = 0, *,
            pmin: float | None = None, pmax: float | None = None, alpha: float | None = None,
            chunk: int | None = None, init: str | None = None, final_temperature: float | None = None,
            precision: str | None = None, config: SampleConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inpaint the hidden subpixels (mask False) of a batch.

    Returns `images_BHWC` (uint8, on x's device) and `chain_FBHWC` (uint8, CPU): the state after the initial
    fill (Gibbs) or before the first pass (ancestral, confidence; unknown subpixels grey), then every
    `record_every`-th step, then the final images; empty (F = 0) when record_every is 0.

    `steps` is the number of Gibbs sweeps N (default: the number of hole subpixels); the ancestral and
    confidence strategies ignore it and fill the whole hole. Options left as None come from `config`
    (a SampleConfig; its defaults otherwise): pmin, pmax, alpha (the schedule), chunk (subpixels per forward
    pass in ancestral, ancestral-gibbs, greedy and antigreedy), init ("model" or "uniform", the Gibbs
    starting fill), final_temperature (0 = no annealing) and precision ("auto": the network's body in bf16
    where the hardware runs it fast, onade.precision; "bf16"; "fp32"). The draws use fp32 probabilities in
    every precision.
    """
    cfg = config or SampleConfig()
    opts = _Options(
        strategy=strategy, steps=cfg.steps if steps is None else steps, temperature=temperature,
        final_temperature=cfg.final_temperature if final_temperature is None else final_temperature,
        pmin=cfg.pmin if pmin is None else pmin, pmax=cfg.pmax if pmax is None else pmax,
        alpha=cfg.alpha if alpha is None else alpha, chunk=cfg.chunk if chunk is None else chunk,
        init=cfg.init if init is None else init, record_every=record_every)
    opts.validate()
    device = next(model.parameters()).device
    _check_batch(x_BHWC, mask_BHWC, tokens_BT, lengths_B)
    resolved = resolve_precision(cfg.precision if precision is None else precision, device)
    with torch.inference_mode(), autocast(resolved, device):
        sampler = _Sampler(model, x_BHWC.to(device), mask_BHWC.to(device), tokens_BT.to(device),
                           lengths_B.to(device), opts, seed)
        images_BHWC = sampler.run()
        chain = sampler.frames
    chain_FBHWC = (torch.stack(chain).cpu() if chain
                   else torch.empty((0, *x_BHWC.shape), dtype=torch.uint8))
    return images_BHWC.to(x_BHWC.device), chain_FBHWC


class _Options:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown inpainting strategy {self.strategy!r}; choose from {STRATEGIES}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer (0 = number of hole subpixels), got {self.steps!r}")
        if self.temperature < 0 or self.final_temperature < 0:
            raise ValueError(f"temperatures must be >= 0 (0 = most likely value), got {self.temperature}, "
                             f"{self.final_temperature}")
        if not 0 < self.pmin <= self.pmax <= 1:
            raise ValueError(f"need 0 < pmin <= pmax <= 1, got pmin={self.pmin} pmax={self.pmax}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (fraction of the steps over which p falls), got {self.alpha}")
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"chunk (subpixels per forward pass) must be an integer >= 1, got {self.chunk!r}")
        if self.init not in ("model", "uniform"):
            raise ValueError(f"init must be 'model' (one-shot sample) or 'uniform' (noise), got {self.init!r}")
        if not isinstance(self.record_every, int) or self.record_every < 0:
            raise ValueError(f"record_every must be an integer >= 0 (0 = no chain), got {self.record_every!r}")


def _check_batch(x_BHWC, mask_BHWC, tokens_BT, lengths_B) -> None:
    if x_BHWC.dim() != 4 or x_BHWC.shape[-1] != NUM_CHANNELS or x_BHWC.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [B,H,W,3], got {x_BHWC.dtype} {tuple(x_BHWC.shape)}")
    if mask_BHWC.shape != x_BHWC.shape or mask_BHWC.dtype != torch.bool:
        raise ValueError(f"mask must be bool shaped like the images {tuple(x_BHWC.shape)} (True = observed), "
                         f"got {mask_BHWC.dtype} {tuple(mask_BHWC.shape)}")
    if tokens_BT.dim() != 2 or tokens_BT.shape[0] != x_BHWC.shape[0] or lengths_B.shape != (x_BHWC.shape[0],):
        raise ValueError(f"tokens must be [B,T] and lengths [B] with B={x_BHWC.shape[0]}, "
                         f"got {tuple(tokens_BT.shape)} and {tuple(lengths_B.shape)}")


def _draw(logits_NK: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """One categorical draw per row, on the logits' device. Inverse-CDF sampling needs one uniform per row
    instead of Gumbel-max's K, and measured twice as fast on CPU; temperature 0 takes the most likely value."""
    if temperature <= 0:
        return logits_NK.argmax(-1)
    cdf_NK = torch.softmax(logits_NK if temperature == 1 else logits_NK / temperature, dim=-1).cumsum_(-1)
    u_N1 = torch.rand((logits_NK.shape[0], 1), generator=generator, device=logits_NK.device) * cdf_NK[:, -1:]
    # right=True: a zero-probability level has cdf equal to its predecessor's, so it can never be chosen.
    return torch.searchsorted(cdf_NK, u_N1, right=True).squeeze(1).clamp_(max=logits_NK.shape[-1] - 1)


def _set(t_BD: torch.Tensor, sub_BM: torch.Tensor, valid_BM: torch.Tensor, value_BM) -> None:
    """t[b, sub[b, m]] = value[b, m] where valid[b, m]; padded entries write back what is already there."""
    value_BM = torch.as_tensor(value_BM, dtype=t_BD.dtype, device=t_BD.device).expand_as(sub_BM)
    t_BD.scatter_(1, sub_BM, torch.where(valid_BM, value_BM, t_BD.gather(1, sub_BM)))


class _Sampler:
    def __init__(self, model, x_BHWC, mask_BHWC, tokens_BT, lengths_B, opts: _Options, seed: int):
        self.model, self.tokens_BT, self.lengths_B, self.opts = model, tokens_BT, lengths_B, opts
        self.shape = x_BHWC.shape
        B = x_BHWC.shape[0]
        self.mask_BD = mask_BHWC.reshape(B, -1)
        self.x_in_BD = x_BHWC.reshape(B, -1)
        self.device = x_BHWC.device
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        # Block sizes are drawn on the host so each pass knows its shapes without asking the device.
        self.host_rng = np.random.default_rng(seed)
        self.frames: list[torch.Tensor] = []
        # The hole of every example as a padded list of subpixel indices [B,S]; the one host sync of a run.
        hidden_BD = ~self.mask_BD
        self.hole_count = hidden_BD.sum(1).tolist()
        S = max(self.hole_count) if self.hole_count else 0
        self.hole_BS = torch.argsort((~hidden_BD).to(torch.uint8), dim=1, stable=True)[:, :S]
        self.hole_valid_BS = torch.arange(S, device=self.device)[None] < hidden_BD.sum(1)[:, None]
        self.num_hole = S
        self.x_BD = torch.where(self.mask_BD, self.x_in_BD, torch.full_like(self.x_in_BD, _UNKNOWN_VALUE))

    # ---- pieces ---------------------------------------------------------------------------------------

    def pixel_logits(self, mask_BD: torch.Tensor, pix_BM: torch.Tensor) -> torch.Tensor:
        """One forward pass of the body; the head runs only at the pixels pix_BM. -> logits [B,M,C,K]."""
        B, H, W, C = self.shape
        feats_BHWE = self.model.features(self.x_BD.view(self.shape), mask_BD.view(self.shape),
                                         self.tokens_BT, self.lengths_B)
        E = feats_BHWE.shape[-1]
        f_BME = feats_BHWE.reshape(B, H * W, E).gather(1, pix_BM[..., None].expand(-1, -1, E))
        return self.model.head(f_BME).float()

    def logits(self, mask_BD: torch.Tensor, sub_BM: torch.Tensor) -> torch.Tensor:
        """Logits [B,M,K] of the subpixels sub_BM, from one forward pass."""
        B, M = sub_BM.shape
        pix_BM = torch.div(sub_BM, NUM_CHANNELS, rounding_mode="floor")
        logits_NK = self.pixel_logits(mask_BD, pix_BM).reshape(-1, NUM_LEVELS)
        # Row (b, m, c) of the flattened [B*M*C, K] logits; selecting whole rows is a cheap contiguous copy.
        row_N = torch.arange(B * M, device=sub_BM.device) * NUM_CHANNELS + (sub_BM - pix_BM * NUM_CHANNELS).flatten()
        return logits_NK.index_select(0, row_N).view(B, M, NUM_LEVELS)

    def sample(self, mask_BD, sub_BM, valid_BM, temperature) -> None:
        """Resample the subpixels sub_BM (where valid) given everything mask_BD shows."""
        logits_BMK = self.logits(mask_BD, sub_BM)
        v_BM = _draw(logits_BMK.reshape(-1, NUM_LEVELS), temperature, self.gen).view(sub_BM.shape)
        _set(self.x_BD, sub_BM, valid_BM, v_BM.to(torch.uint8))

    def random_order(self) -> torch.Tensor:
        """The hole in a uniformly random order per example [B,S] (padding last)."""
        keys_BS = torch.rand(self.hole_BS.shape, generator=self.gen, device=self.device)
        keys_BS = torch.where(self.hole_valid_BS, keys_BS, 2.0)
        return self.hole_BS.gather(1, keys_BS.argsort(dim=1))

    def record(self, n: int, force: bool = False) -> None:
        every = self.opts.record_every
        if every and (force or n % every == 0):
            self.frames.append(self.x_BD.view(self.shape).clone())

    def block_sizes(self, num_steps: int) -> tuple[np.ndarray, torch.Tensor]:
        """Subpixels resampled per step and example [N,B] ~ Binomial(hole, p_n): together with a uniform subset
        of that size this is exactly "hide each hole subpixel with probability p_n", with sizes known up front."""
        o = self.opts
        p_N = np.array([gibbs_schedule(n, num_steps, o.pmin, o.pmax, o.alpha) for n in range(num_steps)])
        m_NB = self.host_rng.binomial(np.array(self.hole_count)[None, :], p_N[:, None])
        return m_NB, torch.as_tensor(m_NB, device=self.device)

    # ---- strategies -----------------------------------------------------------------------------------

    def run(self) -> torch.Tensor:
        o = self.opts
        if self.num_hole == 0:
            self.record(0)
        elif o.strategy in ("independent-gibbs", "ancestral-gibbs"):
            self.gibbs(block_chunk=o.chunk if o.strategy == "ancestral-gibbs" else None)
        elif o.strategy == "ancestral":
            self.ancestral()
        else:
            self.confidence(lowest_first=o.strategy == "greedy")
        if o.record_every and (not self.frames or not torch.equal(self.frames[-1], self.x_BD.view(self.shape))):
            self.record(0, force=True)
        # Observed subpixels are only ever written with their own values; this makes it a guarantee.
        return torch.where(self.mask_BD, self.x_in_BD, self.x_BD).view(self.shape)

    def initial_fill(self) -> None:
        valid_BS = self.hole_valid_BS
        if self.opts.init == "uniform":
            noise_BS = torch.randint(0, NUM_LEVELS, self.hole_BS.shape, generator=self.gen, device=self.device)
            _set(self.x_BD, self.hole_BS, valid_BS, noise_BS.to(torch.uint8))
        else:
            self.sample(self.mask_BD, self.hole_BS, valid_BS, self.opts.temperature)

    def gibbs(self, block_chunk: int | None) -> None:
        o = self.opts
        num_steps = o.steps or self.num_hole
        m_NB, m_dev_NB = self.block_sizes(num_steps)
        self.initial_fill()
        self.record(0)
        arange_S = torch.arange(self.num_hole, device=self.device)
        for n in range(num_steps):
            M = int(m_NB[n].max())
            if M == 0:
                self.record(n + 1)
                continue
            temperature = temperature_schedule(n, num_steps, o.temperature, o.final_temperature)
            block_BM = self.random_order()[:, :M]
            in_block_BM = arange_S[None, :M] < m_dev_NB[n][:, None]
            # The network sees everything but the block: observed subpixels and the current hole values.
            mask_BD = torch.ones_like(self.mask_BD)
            _set(mask_BD, block_BM, in_block_BM, False)
            k = M if block_chunk is None else block_chunk
            for j in range(0, M, k):
                sub_Bk, valid_Bk = block_BM[:, j:j + k], in_block_BM[:, j:j + k]
                self.sample(mask_BD, sub_Bk, valid_Bk, temperature)
                if block_chunk is not None:
                    _set(mask_BD, sub_Bk, valid_Bk, True)
            self.record(n + 1)

    def ancestral(self) -> None:
        o, k, S = self.opts, self.opts.chunk, self.num_hole
        num_passes = math.ceil(S / k)
        order_BS = self.random_order()
        mask_BD = self.mask_BD.clone()
        self.record(0)
        for n, j in enumerate(range(0, S, k)):
            sub_Bk, valid_Bk = order_BS[:, j:j + k], self.hole_valid_BS[:, j:j + k]
            self.sample(mask_BD, sub_Bk, valid_Bk, temperature_schedule(n, num_passes, o.temperature,
                                                                        o.final_temperature))
            _set(mask_BD, sub_Bk, valid_Bk, True)
            self.record(n + 1)

    def confidence(self, lowest_first: bool) -> None:
        o, k, S = self.opts, self.opts.chunk, self.num_hole
        B = self.shape[0]
        num_passes = math.ceil(S / k)
        mask_BD = self.mask_BD.clone()
        # The head runs once per hole pixel (not per subpixel): rows R = P*C are the subpixels of the
        # hole's pixels, some of which may be observed (a partly hidden pixel).
        hidden_BP = (~mask_BD).view(B, -1, NUM_CHANNELS).any(-1)
        P = int(hidden_BP.sum(1).max())
        pix_BP = torch.argsort((~hidden_BP).to(torch.uint8), dim=1, stable=True)[:, :P]
        sub_BR = (pix_BP[..., None] * NUM_CHANNELS + torch.arange(NUM_CHANNELS, device=self.device)).flatten(1)
        in_hole_BR = ~mask_BD.gather(1, sub_BR)
        # Subpixels already known sort last: +inf entropy when the lowest come first, -inf otherwise.
        done = math.inf if lowest_first else -math.inf
        self.record(0)
        for n, j in enumerate(range(0, S, k)):
            width = min(k, S - j)
            logits_BRK = self.pixel_logits(mask_BD, pix_BP).flatten(1, 2)
            logp_BRK = torch.log_softmax(logits_BRK, dim=-1)
            entropy_BR = -(logp_BRK.exp() * logp_BRK).sum(-1)
            pending_BR = in_hole_BR & ~mask_BD.gather(1, sub_BR)
            entropy_BR = torch.where(pending_BR, entropy_BR, done)
            pick_Bk = entropy_BR.topk(width, dim=1, largest=not lowest_first).indices
            sub_Bk = sub_BR.gather(1, pick_Bk)
            valid_Bk = pending_BR.gather(1, pick_Bk)
            temperature = temperature_schedule(n, num_passes, o.temperature, o.final_temperature)
            picked_BkK = logits_BRK.gather(1, pick_Bk[..., None].expand(-1, -1, NUM_LEVELS))
            v_Bk = _draw(picked_BkK.reshape(-1, NUM_LEVELS), temperature, self.gen).view(sub_Bk.shape)
            _set(self.x_BD, sub_Bk, valid_Bk, v_Bk.to(torch.uint8))
            _set(mask_BD, sub_Bk, valid_Bk, True)
            self.record(n + 1)

__all__ = ["inpaint", "gibbs_schedule", "temperature_schedule"]
