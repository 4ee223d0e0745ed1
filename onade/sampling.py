"""Inpainting samplers: fill the hidden subpixels of a batch from a trained orderless NADE.

    images_BHWC, chain_FBHWC = onade.inpaint(model, x_BHWC, observed_BHWC, tokens_BT, lengths_B,
                                             strategy="ancestral", steps=32, profile=loaded.profile)

Every setting comes from one `SampleConfig` (onade.config): `inpaint(..., config=cfg)`, with keyword
arguments naming SampleConfig fields overriding it for this call. `steps` is the budget of forward passes.

Strategies (onade.config.STRATEGIES); the hole is every subpixel where `observed_BHWC` is False:
- independent-gibbs (Yao et al. 2014): fill the hole (one-shot model sample, or uniform noise), then for
  n = 0..N-1 hide each hole subpixel with probability p_n = gibbs_schedule(n, N, ...) and resample all the
  hidden ones at once from the model's conditionals. p_n is the fraction *resampled*, falling from pmax to
  pmin over the first alpha*N steps: big moves first, then ever finer corrections. N = steps (0: the
  number of the example's own hole subpixels; examples that finish early wait, sampling nothing).
- ancestral-gibbs: the same outer loop, but each hidden block is resampled ancestrally (a random order, k =
  `chunk` subpixels per forward pass), so every block is an exact draw from its conditional when k = 1.
- ancestral: orderless-NADE ancestral sampling in a random order. With steps = K it takes K passes whose
  sizes come from the model's loss profile by OA-ARDM's dynamic programme (onade.plans.step_plan; equal
  chunks when no profile is given); with steps = 0, `chunk` subpixels per pass. channels "sequence" orders
  pixels instead and splits each planned pass in three forward passes, R, then G given R, then B given both
  (K // 3 planned passes); `polish` Gibbs sweeps then redraw a pmin share of the hole's pixels given all
  the rest, each in one pass.
- maskgit (Chang et al. 2022): K passes; each samples every hidden subpixel, keeps the most confident
  (log-probability of the sample plus Gumbel noise annealed to 0) in the number MaskGIT's cosine schedule
  reveals (onade.plans.cosine_plan), and hides the rest again.
- greedy / antigreedy: like maskgit, but each pass fills the hidden subpixels whose predictive entropy is
  lowest (greedy) or highest (antigreedy); steps = 0 means `chunk` subpixels per pass.
Every schedule is the example's own: a small hole may need fewer passes than its batch's largest, and the
temperature annealing (final_temperature > 0) and maskgit's noise run over the example's own passes.

Every draw divides the logits by `temperature` and, with top_p < 1, keeps each subpixel's nucleus: its most
likely values holding top_p of the probability. A 256-way softmax trained for minutes leaves a little
probability on every value; drawn at temperature 1 that tail is where lone off-colour pixels come from
(bench/sampler_ablation.py).

Classifier-free guidance (`guidance` = s != 1): every pass runs the body on the batch twice over, with
the captions and with empty ones, in one batched forward, and samples from l_u + s (l_c - l_u). s = 1
runs the captioned half alone: exactly the unguided sampler.

Seeds: `seed` is one int per example, or one int s for the batch (example b then gets example_seeds(s, B)[b],
from numpy's SeedSequence(s, spawn_key=(b,))). Example b's random numbers on the device are counter-based
(onade.counter_rng): a pure function of its key (from its seed), the draw (named by the strategy's step and
chunk, never by a running count) and the position in its row, computed for the whole batch in one vectorised
call per draw; the host-side Gibbs block sizes come from a numpy generator of its own. Sorts that could tie
are stable. So its numbers depend on its seed, its hole and the settings alone, never on the batch size, its
position or its neighbours; its sample too, up to the network's rounding: on CPU in fp32 oneDNN may round a
row ~1e-6 apart at another batch size, while bf16 autocast measured bitwise batch-invariant. On GPUs cuDNN
picks its kernels by shape, so there a sample is reproducible at the same batch shape, not across them.

Every strategy runs the output head only where it needs logits (the pixels it samples; the whole hole for
the confidence strategies, which rank it), and reads the caption once per call (the reader's states are
reused by every pass). It draws on the model's device, and the loop never waits on the device (pass sizes
are known on the host before the loop). Observed subpixels never change.

Shapes: B batch, H/W image side, C = 3 channels, K = 256 levels, D = H*W*C subpixels of an image, S = the
batch's largest hole in subpixels, M subpixels sampled in one pass (padded; `valid_BM` says which are real:
a prefix of each row), R the subpixels of the hole's pixels, F recorded frames, E feature width.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from onade.config import NUM_CHANNELS, NUM_LEVELS, SampleConfig
from onade.counter_rng import uniforms as counter_uniforms
from onade.plans import LossProfile, cosine_plan, step_plan, uniform_plan
from onade.precision import autocast, resolve_precision

_UNKNOWN_VALUE = 127  # what a not-yet-sampled hole subpixel shows in recorded frames (never seen by the model)
SEED_LIMIT = 2 ** 63  # seeds are ints in [0, 2**63)


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


def example_seeds(seed: int | Sequence[int], batch_size: int) -> list[int]:
    """The seed of every example of a batch, each an int in [0, 2**63): `seed` itself when it is a sequence of
    `batch_size` ints, else 63 bits of SeedSequence(seed, spawn_key=(b,)) (the b-th child of SeedSequence(seed))
    for example b. Example b run alone with seed=[example_seeds(s, B)[b]] gets its sample in the batch."""
    def checked(s, what: str) -> int:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or not 0 <= s < SEED_LIMIT:
            raise ValueError(f"{what} must be an int in [0, 2**63), got {s!r}")
        return int(s)

    if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        s = checked(seed, "seed")
        return [int(np.random.SeedSequence(s, spawn_key=(b,)).generate_state(1, np.uint64)[0]) >> 1
                for b in range(batch_size)]
    if isinstance(seed, (torch.Tensor, np.ndarray)):
        seed = seed.tolist()
    if not isinstance(seed, Sequence) or isinstance(seed, (str, bytes)):
        raise ValueError(f"seed must be an int or a sequence of one int per example (batch of {batch_size}), "
                         f"got {type(seed).__name__}")
    if len(seed) != batch_size:
        raise ValueError(f"seed has {len(seed)} values but the batch has {batch_size} examples: give one seed per "
                         f"example, or one int for the whole batch")
    return [checked(s, f"seed[{b}]") for b, s in enumerate(seed)]


def inpaint(model: torch.nn.Module, x_BHWC: torch.Tensor, observed_BHWC: torch.Tensor, tokens_BT: torch.Tensor,
            lengths_B: torch.Tensor, config: SampleConfig | None = None, *, seed: int | Sequence[int] = 0,
            record_every: int = 0, profile: LossProfile | None = None, stats: dict | None = None,
            measure_kl: bool = False, on_frame: Callable[[torch.Tensor], None] | None = None,
            **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Inpaint the hidden subpixels (observed_BHWC False) of a batch.

    Settings come from `config` (a SampleConfig; its defaults when None); keyword arguments naming its
    fields (strategy=, steps=, temperature=, guidance=, ...) override them for this call, and any other
    keyword is an error. `seed` is one int per example (its sample then depends on nothing else in the
    batch) or one int for the batch (see example_seeds). `profile` (onade.plans.LossProfile, shipped with an
    export as Loaded.profile) plans the passes of `ancestral` with steps > 0. When `stats` is a dict it
    receives `forward_passes`, and with `measure_kl` (work on every pass: off in the job) `draw_kl_bits`: the
    mean over the subpixels drawn of KL(the distribution drawn from || the model's conditional), in bits, what
    temperature and top_p trade for their looks (ancestral and Gibbs draws; 0 for the confidence strategies,
    which are not measured).

    Returns `images_BHWC` (uint8, on x's device) and `chain_FBHWC` (uint8, CPU): the state after the initial
    fill (Gibbs) or before the first pass (ancestral, confidence; unknown subpixels grey), then every
    `record_every`-th step, then the final images; empty (F = 0) when record_every is 0. The draws use
    fp32 probabilities in every precision. With `on_frame`, each frame (uint8 [B,H,W,C] on the device) goes to
    on_frame as it is recorded instead of into the chain (then empty): a caller can stream a long chain without
    holding it, or stop the run by raising.
    """
    cfg = resolve_settings(config, settings)
    if not isinstance(record_every, int) or record_every < 0:
        raise ValueError(f"record_every must be an integer >= 0 (0 = no chain), got {record_every!r}")
    if profile is not None and not isinstance(profile, LossProfile):
        raise ValueError(f"profile must be an onade.plans.LossProfile (Loaded.profile), got {type(profile).__name__}")
    device = next(model.parameters()).device
    _check_batch(x_BHWC, observed_BHWC, tokens_BT, lengths_B)
    seeds = example_seeds(seed, x_BHWC.shape[0])
    resolved = resolve_precision(cfg.precision, device)
    with torch.inference_mode(), autocast(resolved, device):
        sampler = _Sampler(model, x_BHWC.to(device), observed_BHWC.to(device), tokens_BT.to(device),
                           lengths_B.to(device), cfg, seeds, record_every, profile)
        sampler.on_frame = on_frame
        if measure_kl:
            sampler.kl_sums = torch.zeros(2, dtype=torch.float64, device=device)
        images_BHWC = sampler.run()
        chain = sampler.frames
    if stats is not None:
        stats["forward_passes"] = sampler.passes
        if measure_kl:
            bits, draws = sampler.kl_sums.tolist()
            stats["draw_kl_bits"] = bits / draws if draws else 0.0
    chain_FBHWC = (torch.stack(chain).cpu() if chain
                   else torch.empty((0, *x_BHWC.shape), dtype=torch.uint8))
    return images_BHWC.to(x_BHWC.device), chain_FBHWC


def resolve_settings(config: SampleConfig | None, settings: dict) -> SampleConfig:
    """`config` (or the defaults) with `settings` (SampleConfig field names) overriding it, validated."""
    if config is not None and not isinstance(config, SampleConfig):
        raise ValueError(f"config must be an onade.config.SampleConfig, got {type(config).__name__}")
    names = {f.name for f in dataclasses.fields(SampleConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"unknown inpainting setting(s) {unknown}; SampleConfig has {sorted(names)}")
    return dataclasses.replace(config or SampleConfig(), **settings).validate()


@functools.lru_cache(maxsize=64)
def _cached_step_plan(bits: tuple[float, ...], num_passes: int, hole_size: int) -> tuple[int, ...]:
    """step_plan, once per (profile, budget, hole size) in a process: an actor plans once, not per batch
    (about a second for a 3072-subpixel hole)."""
    return tuple(step_plan(LossProfile(list(bits)), num_passes, hole_size))


def planned_passes(config: SampleConfig, hole_size: int) -> int:
    """Forward passes a run of `config` makes for a hole of `hole_size` subpixels, known before it starts
    (ancestral-gibbs excepted: its count depends on the drawn block sizes; this gives its sweeps).
    Gibbs strategies add one pass for the initial fill when init is "model"."""
    o = config
    if hole_size <= 0:
        return 0
    if o.strategy in ("independent-gibbs", "ancestral-gibbs"):
        return (o.steps or hole_size) + (o.init == "model")
    if o.by_pixel:  # a hole of whole pixels: hole_size / 3 of them
        pixels = math.ceil(hole_size / NUM_CHANNELS)
        return NUM_CHANNELS * (min(o.steps // NUM_CHANNELS, pixels) if o.steps else math.ceil(pixels / o.chunk)) \
            + o.polish
    return (min(o.steps, hole_size) if o.steps else math.ceil(hole_size / o.chunk)) + o.polish


def _check_batch(x_BHWC, observed_BHWC, tokens_BT, lengths_B) -> None:
    if x_BHWC.dim() != 4 or x_BHWC.shape[-1] != NUM_CHANNELS or x_BHWC.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [B,H,W,3], got {x_BHWC.dtype} {tuple(x_BHWC.shape)}")
    if observed_BHWC.shape != x_BHWC.shape or observed_BHWC.dtype != torch.bool:
        raise ValueError(f"observed must be bool shaped like the images {tuple(x_BHWC.shape)} (True = observed), "
                         f"got {observed_BHWC.dtype} {tuple(observed_BHWC.shape)}")
    if tokens_BT.dim() != 2 or tokens_BT.shape[0] != x_BHWC.shape[0] or lengths_B.shape != (x_BHWC.shape[0],):
        raise ValueError(f"tokens must be [B,T] and lengths [B] with B={x_BHWC.shape[0]}, "
                         f"got {tuple(tokens_BT.shape)} and {tuple(lengths_B.shape)}")


def _draw_weights(logits_NK: torch.Tensor, temperature: float = 1.0, inv_temperature_N: torch.Tensor | None = None,
                  top_p: float = 1.0) -> torch.Tensor:
    """The unnormalised probabilities a draw samples from [N, K]: the softmax at the temperature (per-row
    reciprocals `inv_temperature_N`, else the scalar; 0 = the most likely value alone), cut to each row's
    nucleus when top_p < 1: its smallest set of most likely values holding top_p of the probability (values
    tied with the least likely kept one are kept too)."""
    if inv_temperature_N is not None:
        logits_NK = logits_NK * inv_temperature_N[:, None]
    elif temperature <= 0:
        return torch.nn.functional.one_hot(logits_NK.argmax(-1), logits_NK.shape[-1]).float()
    elif temperature != 1:
        logits_NK = logits_NK * (1.0 / temperature)
    probs_NK = torch.softmax(logits_NK, dim=-1)
    if top_p < 1:
        sorted_NK = probs_NK.sort(dim=-1, descending=True).values
        # A value is kept when the more likely ones hold less than top_p: always at least the first.
        kept_N1 = ((sorted_NK.cumsum(-1) - sorted_NK) < top_p).sum(-1, keepdim=True)
        probs_NK = torch.where(probs_NK >= sorted_NK.gather(-1, kept_N1 - 1), probs_NK, 0.0)
    return probs_NK


def _draw(logits_NK: torch.Tensor, u_N: torch.Tensor, temperature: float = 1.0,
          inv_temperature_N: torch.Tensor | None = None, top_p: float = 1.0) -> torch.Tensor:
    """One categorical draw per row from its uniform u in [0, 1), on the logits' device, from _draw_weights.
    Inverse-CDF sampling needs one uniform per row instead of Gumbel-max's K, and measured twice as fast on CPU.
    Per-row temperatures (all > 0) come as `inv_temperature_N`, reciprocals computed on the host in float64 and
    stored in fp32: the very factor the scalar path multiplies by, so a row draws the same value whichever path
    its batch takes (a device-side 1/t or division may round apart)."""
    if inv_temperature_N is None and temperature <= 0:
        return logits_NK.argmax(-1)
    return _draw_from(_draw_weights(logits_NK, temperature, inv_temperature_N, top_p), u_N)


def _draw_from(weights_NK: torch.Tensor, u_N: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws from unnormalised probabilities (consumed: their cumsum is taken in place)."""
    cdf_NK = weights_NK.cumsum_(-1)
    u_N1 = u_N[:, None] * cdf_NK[:, -1:]
    # right=True: a zero-probability level has cdf equal to its predecessor's, so it can never be chosen.
    return torch.searchsorted(cdf_NK, u_N1, right=True).squeeze(1).clamp_(max=cdf_NK.shape[-1] - 1)


def _kl_bits(logits_NK: torch.Tensor, weights_NK: torch.Tensor) -> torch.Tensor:
    """KL(q || p) in bits per row, q the draw's distribution (weights, normalised), p the model's softmax."""
    q_NK = weights_NK / weights_NK.sum(-1, keepdim=True)
    log_ratio_NK = torch.log(q_NK.clamp(min=1e-30)) - torch.log_softmax(logits_NK, -1)
    return torch.where(q_NK > 0, q_NK * log_ratio_NK, 0.0).sum(-1) / math.log(2)


def _draw_id(draw: tuple) -> int:
    """A 32-bit counter word naming one draw of a run (its kind and step), the same for an example whatever
    its batch. Distinct draws of a run collide with probability 2**-32 per pair."""
    return int.from_bytes(hashlib.blake2b(repr(draw).encode(), digest_size=4).digest(), "little")


def _set(t_BD: torch.Tensor, sub_BM: torch.Tensor, valid_BM: torch.Tensor, value_BM) -> None:
    """t[b, sub[b, m]] = value[b, m] where valid[b, m]. Padded entries write to a scratch column: a padded
    index may equal a valid one of the same row, and of two writes to one index either may land."""
    D = t_BD.shape[1]
    value_BM = torch.as_tensor(value_BM, dtype=t_BD.dtype, device=t_BD.device).expand_as(sub_BM)
    with_scratch_BD = torch.cat([t_BD, t_BD[:, :1]], dim=1)
    with_scratch_BD.scatter_(1, torch.where(valid_BM, sub_BM, D), value_BM)
    t_BD.copy_(with_scratch_BD[:, :D])


class _Sampler:
    def __init__(self, model, x_BHWC, observed_BHWC, tokens_BT, lengths_B, cfg: SampleConfig, seeds: list[int],
                 record_every: int, profile: LossProfile | None):
        self.model, self.cfg, self.record_every, self.profile = model, cfg, record_every, profile
        self.shape = x_BHWC.shape
        B = x_BHWC.shape[0]
        if cfg.guidance == 1:
            self.tokens_BT, self.lengths_B = tokens_BT, lengths_B
        elif cfg.guidance == 0:  # the unconditional model alone
            self.tokens_BT, self.lengths_B = tokens_BT, torch.zeros_like(lengths_B)
        else:  # captioned rows, then the same rows with the empty caption: one forward of 2B
            self.tokens_BT = torch.cat([tokens_BT, tokens_BT])
            self.lengths_B = torch.cat([lengths_B, torch.zeros_like(lengths_B)])
        self.observed_BD = observed_BHWC.reshape(B, -1)
        self.x_in_BD = x_BHWC.reshape(B, -1)
        self.device = x_BHWC.device
        self.caption = model.read_caption(self.tokens_BT, self.lengths_B)  # once: every pass reuses it
        # From two children of SeedSequence(each example's seed): the key of its counter-based numbers on the
        # device, and a numpy generator for the Gibbs block sizes, drawn on the host so each pass knows its
        # shapes without asking the device.
        children = [np.random.SeedSequence(s).spawn(2) for s in seeds]
        self.keys_B2 = torch.tensor(np.array([d.generate_state(2, np.uint32) for d, _ in children], np.int64),
                                    device=self.device).view(B, 2)
        self.rngs = [np.random.default_rng(host) for _, host in children]
        self.frames: list[torch.Tensor] = []
        self.on_frame = None  # inpaint's on_frame
        self.last_frame: torch.Tensor | None = None
        self.passes = 0
        self.kl_sums = None  # [bits, draws] of KL(draw || model) when measured (inpaint's stats)
        # The hole of every example as a padded list of subpixel indices [B,S]; the one host sync of a run.
        hidden_BD = ~self.observed_BD
        self.hole_count = hidden_BD.sum(1).tolist()
        S = max(self.hole_count) if self.hole_count else 0
        self.hole_BS = torch.argsort((~hidden_BD).to(torch.uint8), dim=1, stable=True)[:, :S]
        self.hole_valid_BS = torch.arange(S, device=self.device)[None] < hidden_BD.sum(1)[:, None]
        self.num_hole = S
        self.x_BD = torch.where(self.observed_BD, self.x_in_BD, torch.full_like(self.x_in_BD, _UNKNOWN_VALUE))

    # ---- pieces ---------------------------------------------------------------------------------------

    def pixel_logits(self, observed_BD: torch.Tensor, pix_BM: torch.Tensor) -> torch.Tensor:
        """One forward pass of the body; the head runs only at the pixels pix_BM. -> fp32 logits [B,M,C,K]."""
        B, H, W, C = self.shape
        x_BHWC, observed_BHWC = self.x_BD.view(self.shape), observed_BD.view(self.shape)
        guided = self.tokens_BT.shape[0] != B
        if guided:
            x_BHWC, observed_BHWC, pix_BM = (torch.cat([t, t]) for t in (x_BHWC, observed_BHWC, pix_BM))
        feats_BHWE = self.model.features(x_BHWC, observed_BHWC, self.caption)
        self.passes += 1
        E = feats_BHWE.shape[-1]
        f_BME = feats_BHWE.reshape(-1, H * W, E).gather(1, pix_BM[..., None].expand(-1, -1, E))
        logits_BMCK = self.model.head(f_BME).float()
        if not guided:
            return logits_BMCK
        cond, uncond = logits_BMCK[:B], logits_BMCK[B:]
        return uncond + self.cfg.guidance * (cond - uncond)

    def logits(self, observed_BD: torch.Tensor, sub_BM: torch.Tensor) -> torch.Tensor:
        """Logits [B,M,K] of the subpixels sub_BM, from one forward pass."""
        B, M = sub_BM.shape
        pix_BM = torch.div(sub_BM, NUM_CHANNELS, rounding_mode="floor")
        logits_NK = self.pixel_logits(observed_BD, pix_BM).reshape(-1, NUM_LEVELS)
        # Row (b, m, c) of the flattened [B*M*C, K] logits; selecting whole rows is a cheap contiguous copy.
        row_N = torch.arange(B * M, device=sub_BM.device) * NUM_CHANNELS + (sub_BM - pix_BM * NUM_CHANNELS).flatten()
        return logits_NK.index_select(0, row_N).view(B, M, NUM_LEVELS)

    def uniforms(self, width: int, *draw) -> torch.Tensor:
        """[B, width] uniforms in [0, 1) for the draw named `draw` (e.g. ("sample", n, j)): row b's entries are
        a function of example b's key, the draw and the position alone (onade.counter_rng), so its valid prefix
        never depends on the padded width or on the other examples."""
        return counter_uniforms(self.keys_B2, _draw_id(draw), width)

    def anneal(self, num_steps_B: Sequence[int]) -> None:
        """Tables [N, B] of each example's temperature at its step n, annealed over its own N_b steps (host), and
        of their reciprocals (device, once: building it per pass would make the loop wait on the device)."""
        o = self.cfg
        self.temperature_NB = self.inv_temperature_NB = None
        if not (o.final_temperature > 0 and o.temperature > 0):
            return  # not annealed: every entry would be o.temperature, which draw_settings uses directly
        self.temperature_NB = np.array([[temperature_schedule(n, N, o.temperature, o.final_temperature)
                                         for N in num_steps_B] for n in range(max(num_steps_B, default=0))])
        if self.temperature_NB.size:
            self.inv_temperature_NB = torch.as_tensor(1.0 / self.temperature_NB).float().to(self.device)

    def draw_settings(self, n: int | None, counts: Sequence[int], width: int) -> dict:
        """_draw's temperature for a [B, width] pass at step n (None: the initial fill): one float when every
        drawing example has the same (always, without annealing), else per-row reciprocals (all > 0)."""
        top_p = self.cfg.top_p
        if n is None or self.inv_temperature_NB is None:
            return dict(temperature=self.cfg.temperature, top_p=top_p)
        drawing = {float(t) for t, count in zip(self.temperature_NB[n], counts) if count}
        if len(drawing) <= 1:
            return dict(temperature=drawing.pop() if drawing else self.cfg.temperature, top_p=top_p)
        return dict(inv_temperature_N=self.inv_temperature_NB[n][:, None].expand(-1, width).flatten(), top_p=top_p)

    def sample(self, observed_BD, sub_BM, valid_BM, counts: Sequence[int], n: int | None, j: int | str = 0) -> None:
        """Resample the subpixels sub_BM (where valid: the first counts[b] of row b) given everything observed_BD
        shows, at step n's temperatures (chunk j of the step)."""
        logits_BMK = self.logits(observed_BD, sub_BM)
        u_BM = self.uniforms(sub_BM.shape[1], "sample", -1 if n is None else n, j)
        logits_NK = logits_BMK.reshape(-1, NUM_LEVELS)
        settings = self.draw_settings(n, counts, sub_BM.shape[1])
        if self.kl_sums is None:
            v_BM = _draw(logits_NK, u_BM.flatten(), **settings).view(sub_BM.shape)
        else:
            weights_NK = _draw_weights(logits_NK, **settings)
            kl_BM = _kl_bits(logits_NK, weights_NK).view(sub_BM.shape)
            self.kl_sums += torch.stack([torch.where(valid_BM, kl_BM, 0.0).sum(), valid_BM.sum()]).double()
            v_BM = _draw_from(weights_NK, u_BM.flatten()).view(sub_BM.shape)
        _set(self.x_BD, sub_BM, valid_BM, v_BM.to(torch.uint8))

    def random_order(self, n: int = -1) -> torch.Tensor:
        """The hole in a uniformly random order per example [B,S] (padding last), drawn for step n."""
        keys_BS = torch.where(self.hole_valid_BS, self.uniforms(self.num_hole, "order", n), 2.0)
        # Stable: fp32 uniforms tie now and then, and a tie must break the same way whatever the padded width.
        return self.hole_BS.gather(1, keys_BS.argsort(dim=1, stable=True))

    def record(self, n: int, force: bool = False) -> None:
        every = self.record_every
        if every and (force or n % every == 0):
            frame = self.x_BD.view(self.shape).clone()
            if self.on_frame is None:
                self.frames.append(frame)
            else:
                self.on_frame(frame)
            self.last_frame = frame

    def block_sizes(self, num_steps_B: Sequence[int]) -> np.ndarray:
        """Subpixels resampled per step and example [N,B] ~ Binomial(hole, p_n) (0 once an example's N_b steps
        are done), from each example's own host rng: together with a uniform subset of that size this is exactly
        "hide each hole subpixel with probability p_n", with sizes known up front."""
        o = self.cfg
        m_NB = np.zeros((max(num_steps_B, default=0), len(num_steps_B)), np.int64)
        schedules = {}
        for b, (rng, hole, N) in enumerate(zip(self.rngs, self.hole_count, num_steps_B)):
            if hole and N:
                if N not in schedules:
                    schedules[N] = np.array([gibbs_schedule(n, N, o.pmin, o.pmax, o.alpha) for n in range(N)])
                m_NB[:N, b] = rng.binomial(hole, schedules[N])
        return m_NB

    def pass_bounds(self, plan, sizes: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
        """Per example, the boundaries of its passes [B, K+1] (host) and its number of passes: `plan(m)` gives
        one example's 0 = t_0 < ... < t_k = m for its hole of m variables (`sizes`, default its subpixels);
        examples with fewer passes (a smaller hole) repeat their last boundary."""
        sizes = self.hole_count if sizes is None else sizes
        plans = {m: plan(m) for m in set(sizes) if m > 0}
        K = max(len(p) - 1 for p in plans.values())
        bounds_BK = np.zeros((len(sizes), K + 1), np.int64)
        for b, m in enumerate(sizes):
            if m:
                p = plans[m]
                bounds_BK[b, :len(p)], bounds_BK[b, len(p):] = p, p[-1]
        return bounds_BK, [len(plans[m]) - 1 if m else 0 for m in sizes]

    def planned(self, steps: int | None = None):
        """The plan of the ancestral and confidence strategies: `steps` passes (default the config's; from the
        loss profile for ancestral, read at the fraction of the hole known, MaskGIT's cosine schedule
        otherwise), or `chunk` variables per pass when steps is 0."""
        o = self.cfg
        steps = o.steps if steps is None else steps
        if not steps:
            return lambda m: list(range(0, m, o.chunk)) + [m]
        if o.strategy != "ancestral":
            return lambda m: cosine_plan(m, steps)
        if self.profile is None:
            return lambda m: uniform_plan(m, steps)
        bits = tuple(self.profile.bits)
        return lambda m: list(_cached_step_plan(bits, steps, m))

    # ---- strategies -----------------------------------------------------------------------------------

    def run(self) -> torch.Tensor:
        o = self.cfg
        if self.num_hole == 0:
            self.record(0)
        elif o.strategy in ("independent-gibbs", "ancestral-gibbs"):
            self.gibbs(block_chunk=o.chunk if o.strategy == "ancestral-gibbs" else None)
        elif o.strategy == "ancestral":
            self.ancestral_by_pixel() if o.by_pixel else self.ancestral()
            self.polish()
        else:
            self.confidence(o.strategy)
        if self.record_every and (self.last_frame is None or not torch.equal(self.last_frame,
                                                                              self.x_BD.view(self.shape))):
            self.record(0, force=True)
        # Observed subpixels are only ever written with their own values; this makes it a guarantee.
        return torch.where(self.observed_BD, self.x_in_BD, self.x_BD).view(self.shape)

    def initial_fill(self) -> None:
        valid_BS = self.hole_valid_BS
        if self.cfg.init == "uniform":
            noise_BS = (self.uniforms(self.num_hole, "noise") * NUM_LEVELS).to(torch.uint8)
            _set(self.x_BD, self.hole_BS, valid_BS, noise_BS)
        else:
            self.sample(self.observed_BD, self.hole_BS, valid_BS, self.hole_count, None)

    def gibbs(self, block_chunk: int | None) -> None:
        num_steps_B = [self.cfg.steps or m for m in self.hole_count]  # N_b: steps 0 means the example's hole
        m_NB = self.block_sizes(num_steps_B)
        self.anneal(num_steps_B)
        m_dev_NB = torch.as_tensor(m_NB, device=self.device)
        self.initial_fill()
        self.record(0)
        arange_S = torch.arange(self.num_hole, device=self.device)
        for n in range(m_NB.shape[0]):
            M = int(m_NB[n].max())
            if M == 0:
                self.record(n + 1)
                continue
            block_BM = self.random_order(n)[:, :M]
            in_block_BM = arange_S[None, :M] < m_dev_NB[n][:, None]
            # The network sees everything but the block: observed subpixels and the current hole values.
            observed_BD = torch.ones_like(self.observed_BD)
            _set(observed_BD, block_BM, in_block_BM, False)
            k = M if block_chunk is None else block_chunk
            for j in range(0, M, k):
                sub_Bk, valid_Bk = block_BM[:, j:j + k], in_block_BM[:, j:j + k]
                self.sample(observed_BD, sub_Bk, valid_Bk, np.clip(m_NB[n] - j, 0, k).tolist(), n, j)
                if block_chunk is not None:
                    _set(observed_BD, sub_Bk, valid_Bk, True)
            self.record(n + 1)

    def ranked_passes(self, order_BV: torch.Tensor, sizes: Sequence[int], plan):
        """The planned passes over each example's variables in the order `order_BV` (its first sizes[b] are
        its own): anneals over each example's passes, records the start, then yields (n, counts_B, items_BW,
        valid_BW) per pass n, items_BW the variables of ranks bounds[b, n] .. bounds[b, n+1]-1 (valid where
        they are a real rank of the pass). The caller draws them and records pass n + 1."""
        bounds_BK, num_passes_B = self.pass_bounds(plan, sizes)
        self.anneal(num_passes_B)
        start_dev_BK = torch.as_tensor(bounds_BK, device=self.device)
        self.record(0)
        for n in range(bounds_BK.shape[1] - 1):
            counts_B = bounds_BK[:, n + 1] - bounds_BK[:, n]
            width = int(counts_B.max())
            if width == 0:
                continue
            rank_BW = start_dev_BK[:, n:n + 1] + torch.arange(width, device=self.device)
            valid_BW = rank_BW < start_dev_BK[:, n + 1:n + 2]
            yield n, counts_B, order_BV.gather(1, rank_BW.clamp(max=order_BV.shape[1] - 1)), valid_BW

    def ancestral(self) -> None:
        observed_BD = self.observed_BD.clone()
        for n, counts_B, sub_BW, valid_BW in self.ranked_passes(self.random_order(), self.hole_count,
                                                                  self.planned()):
            self.sample(observed_BD, sub_BW, valid_BW, counts_B.tolist(), n)
            _set(observed_BD, sub_BW, valid_BW, True)
            self.record(n + 1)

    @functools.cached_property
    def hole_pixels(self) -> tuple[torch.Tensor, list[int]]:
        """The hole's pixels (any channel hidden) [B, H*W], and how many each example has (host)."""
        hidden_BP = (~self.observed_BD).view(self.shape[0], -1, NUM_CHANNELS).any(-1)
        return hidden_BP, hidden_BP.sum(1).tolist()

    def ancestral_by_pixel(self) -> None:
        """channels "sequence": ancestral over the hole's pixels in a random order, each planned pass split in
        three forward passes, one per channel, so a pixel's G is drawn given its R and its B given both."""
        C = NUM_CHANNELS
        hidden_BP, pixels_B = self.hole_pixels
        keys_BP = torch.where(hidden_BP, self.uniforms(hidden_BP.shape[1], "pixel order"), 2.0)
        order_BP = keys_BP.argsort(dim=1, stable=True)[:, :max(pixels_B)]  # stable: see random_order
        observed_BD = self.observed_BD.clone()
        for n, counts_B, pix_BW, in_pass_BW in self.ranked_passes(order_BP, pixels_B,
                                                                   self.planned(self.cfg.steps // C)):
            for c in range(C):
                sub_BW = pix_BW * C + c
                valid_BW = in_pass_BW & ~observed_BD.gather(1, sub_BW)  # a partly hidden pixel's known channel
                self.sample(observed_BD, sub_BW, valid_BW, counts_B.tolist(), n, c)
                _set(observed_BD, sub_BW, valid_BW, True)
            self.record(n + 1)

    def polish(self) -> None:
        """`polish` Gibbs sweeps over the filled hole: each hides a Binomial(pixels, pmin) set of the hole's
        pixels (from the example's host rng, a random set from its counter-based numbers) and redraws them at
        once given everything else."""
        C = NUM_CHANNELS
        hidden_BP, pixels_B = self.hole_pixels
        arange_P = torch.arange(hidden_BP.shape[1], device=self.device)
        for k in range(self.cfg.polish):
            counts_B = [int(rng.binomial(p, self.cfg.pmin)) if p else 0 for rng, p in zip(self.rngs, pixels_B)]
            M = max(counts_B)
            if M == 0:
                continue
            keys_BP = torch.where(hidden_BP, self.uniforms(hidden_BP.shape[1], "polish order", k), 2.0)
            pix_BM = keys_BP.argsort(dim=1, stable=True)[:, :M]
            in_block_BM = arange_P[None, :M] < torch.as_tensor(counts_B, device=self.device)[:, None]
            sub_BR = (pix_BM[..., None] * C + torch.arange(C, device=self.device)).flatten(1)
            valid_BR = in_block_BM.repeat_interleave(C, dim=1) & ~self.observed_BD.gather(1, sub_BR)
            observed_BD = torch.ones_like(self.observed_BD)
            _set(observed_BD, sub_BR, valid_BR, False)
            self.sample(observed_BD, sub_BR, valid_BR, counts_B, None, f"polish {k}")
            self.record(0, force=True)

    def confidence(self, strategy: str) -> None:
        """maskgit, greedy, antigreedy: every pass scores the whole hole and fills the pass's count of the
        best-ranked pending subpixels."""
        o = self.cfg
        B = self.shape[0]
        bounds_BK, num_passes_B = self.pass_bounds(self.planned())
        self.anneal(num_passes_B)
        counts_BK = np.diff(bounds_BK, axis=1)
        # maskgit's noise scale [K, B]: annealed to 0 over each example's own passes.
        noise_KB = torch.tensor([[o.confidence_noise * (1 - (n + 1) / K) if K else 0.0 for K in num_passes_B]
                                 for n in range(counts_BK.shape[1])], device=self.device)
        count_dev_BK = torch.as_tensor(counts_BK, device=self.device)
        observed_BD = self.observed_BD.clone()
        # The head runs once per hole pixel (not per subpixel): rows R = P*C are the subpixels of the
        # hole's pixels, some of which may be observed (a partly hidden pixel). Example b's are the first
        # rows_B[b] of its row.
        hidden_BP, pixels_B = self.hole_pixels
        rows_B = [NUM_CHANNELS * p for p in pixels_B]
        P = max(rows_B) // NUM_CHANNELS
        pix_BP = torch.argsort((~hidden_BP).to(torch.uint8), dim=1, stable=True)[:, :P]
        sub_BR = (pix_BP[..., None] * NUM_CHANNELS + torch.arange(NUM_CHANNELS, device=self.device)).flatten(1)
        R = sub_BR.shape[1]
        in_hole_BR = ~observed_BD.gather(1, sub_BR)
        self.record(0)
        for n in range(counts_BK.shape[1]):
            counts_B = counts_BK[:, n].tolist()
            width = max(counts_B)
            if width == 0:
                continue
            logits_BRK = self.pixel_logits(observed_BD, pix_BP).flatten(1, 2)
            pending_BR = in_hole_BR & ~observed_BD.gather(1, sub_BR)
            if strategy == "maskgit":
                # One draw holds both the samples' uniforms and the Gumbel noise's: [B, R, 2].
                u_BR2 = self.uniforms(2 * R, "confidence", n).view(B, R, 2)
                v_BR = _draw(logits_BRK.reshape(-1, NUM_LEVELS), u_BR2[..., 0].flatten(),
                             **self.draw_settings(n, counts_B, R)).view(B, R)
                logp_BR = torch.log_softmax(logits_BRK, -1).gather(-1, v_BR[..., None]).squeeze(-1)
                gumbel_BR = -torch.log(-torch.log(u_BR2[..., 1].clamp(1e-20, 1 - 1e-7)))
                score_BR = logp_BR + noise_KB[n][:, None] * gumbel_BR
            else:
                logp_BRK = torch.log_softmax(logits_BRK, dim=-1)
                entropy_BR = -(logp_BRK.exp() * logp_BRK).sum(-1)
                score_BR = -entropy_BR if strategy == "greedy" else entropy_BR
            # Subpixels already known rank last. A stable sort (not topk) breaks ties by position, the same
            # whatever the padded width; pending subpixels (finite scores) come first, so the valid picks of a
            # row are a prefix of it.
            score_BR = torch.where(pending_BR, score_BR, -math.inf)
            pick_Bk = score_BR.sort(dim=1, descending=True, stable=True).indices[:, :width]
            sub_Bk = sub_BR.gather(1, pick_Bk)
            valid_Bk = pending_BR.gather(1, pick_Bk) & (torch.arange(width, device=self.device)[None]
                                                         < count_dev_BK[:, n:n + 1])
            if strategy == "maskgit":
                v_Bk = v_BR.gather(1, pick_Bk)
            else:
                picked_BkK = logits_BRK.gather(1, pick_Bk[..., None].expand(-1, -1, NUM_LEVELS))
                v_Bk = _draw(picked_BkK.reshape(-1, NUM_LEVELS), self.uniforms(width, "confidence", n).flatten(),
                             **self.draw_settings(n, counts_B, width)).view(sub_Bk.shape)
            _set(self.x_BD, sub_Bk, valid_Bk, v_Bk.to(torch.uint8))
            _set(observed_BD, sub_Bk, valid_Bk, True)
            self.record(n + 1)


__all__ = ["inpaint", "resolve_settings", "planned_passes", "gibbs_schedule", "temperature_schedule", "step_plan",
           "example_seeds", "SEED_LIMIT"]
