"""Typed configuration: one dataclass per component, composed into `Config`, with named presets.

A config comes from a preset (`debug`, `small`, `base`, `large`), optionally a YAML file holding a
partial tree, and `key=value` overrides (`model.width=128`). Unknown keys are an error naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "bf16", "fp32")  # onade.precision resolves "auto"; kept here, free of torch
NUM_CHANNELS = 3  # RGB
NUM_LEVELS = 256  # values of a subpixel (uint8): the head's softmax is this wide


MASK_KINDS = ("orderless", "bernoulli", "box", "center", "contiguish")
STRATEGIES = ("independent-gibbs", "ancestral-gibbs", "ancestral", "maskgit", "greedy", "antigreedy")
CHANNEL_ORDERS = ("joint", "sequence")  # SampleConfig.channels
HOLE_REVEALS = ("subpixels", "pixels")  # MaskConfig.hole_reveal
HEADS = ("softmax", "logistic")  # model.head
LAYOUTS = ("auto", "on", "off")  # model.channels_last
# How a model computes, not what it computes: the same weights load and give the same function either way, so
# a run may resume with them changed (e.g. on GPUs after CPUs) and an export may drop them.
LAYOUT_KEYS = ("channels_last", "activation_checkpointing")


class ConfigError(ValueError):
    """A user-supplied configuration is wrong; the message says which key and how to fix it."""


@dataclass
class ModelConfig:
    image_size: int = 32  # side of the square images it trains on and fills, in pixels
    width: int = 64  # channels of every conv block
    num_blocks: int = 6  # residual blocks, each a dilated 3x3 conv and a plain 3x3 conv
    # Dilation of each block's first conv, cycled over the blocks; the receptive field must cover
    # the whole image so every hidden subpixel can see every observed one.
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16)
    input_mode: str = "embedding"  # "embedding" (per-channel tables) or "onehot" (771 channels: 3x256 one-hot and the mask)
    embed_dim: int = 16  # per colour channel; the three are concatenated
    coord_channels: bool = True  # two input channels holding each pixel's row and column
    # The head also reads the pixel's own input embedding (its observed channels, hidden tokens for the rest):
    # p(G | R of the same pixel) then needs no trip through the conv stack, so a sampler drawing a pixel's
    # channels in sequence (SampleConfig.channels) gets colours that agree. False in models saved without it.
    own_pixel: bool = False
    # The output head: "softmax" (256 logits per subpixel) or "logistic", a discretized mixture of `mixtures`
    # logistics per subpixel (PixelCNN++, onade.mixture): neighbouring values share probability mass.
    head: str = "softmax"
    mixtures: int = 10  # components of the logistic head
    norm_groups: int = 8  # GroupNorm groups; must divide width
    vocab_size: int = 512  # set from the tokenizer that ships with the data
    text_dim: int = 64  # width of the caption reader's states
    text_layers: int = 1  # stacked QRNN layers in the caption reader
    qrnn_kernel: int = 2  # width, in tokens, of each QRNN layer's causal convolution
    bidirectional: bool = True  # read the caption both ways (half the states each)
    merge_every: int = 2  # an attention merger after every k blocks (0 = no caption conditioning)
    num_heads: int = 1  # attention heads of each merger; must divide width and text_dim
    activation_checkpointing: bool = False  # recompute each block in the backward pass: less memory, more time
    # NHWC activations. "auto": on a CPU, where they measured faster (1.09-1.94x for small and base,
    # docs/benchmarks.md), not on CUDA, where no GPU has measured them yet; "on"/"off" force it (true/false are
    # read as on/off).
    channels_last: str = "auto"


def default_mask_weights() -> dict[str, float]:
    # Orderless masks train every conditional and keep an unbiased NLL estimate (loss_orderless); the rest
    # are the holes users fill: the centre (every preset's default hole and the job's `center` mask),
    # boxes anywhere (`box:` masks) and blobs (hand-drawn mask PNGs). Spending most steps on the hole
    # families would starve the orderless conditionals that sampling far from a hole's border relies on.
    return {"orderless": 0.4, "center": 0.3, "box": 0.2, "contiguish": 0.1}


@dataclass
class MaskConfig:
    # Mixture weights over MASK_KINDS; kinds left out have weight 0.
    weights: dict[str, float] = field(default_factory=default_mask_weights)
    per_pixel: bool = False  # hide whole pixels instead of single subpixels
    contiguish_size: int = 3  # neighbourhood over which the "contiguish" Bernoulli is conjoined
    min_box_fraction: float = 0.25  # box side range, as a fraction of the image side
    max_box_fraction: float = 0.75  # upper end of the box side range
    # Fraction of centre and box masks that hide only part of the hole (masks._partly_revealed): the
    # conditionals Gibbs and ancestral sampling ask for. The rest hide the whole hole (the one-shot fill).
    hole_orderless: float = 0.5
    # How a partly hidden hole is drawn: "subpixels" (a uniform subset of its subpixels) or "pixels" (of whole
    # pixels, some showing a prefix of their channels, R or R and G): what ancestral sampling with channels in
    # sequence asks for.
    hole_reveal: str = "subpixels"


@dataclass
class DataConfig:
    max_tokens: int = 32  # caption tokens kept; longer captions are cut
    global_batch_size: int = 32  # split over workers and gradient-accumulation steps
    random_flip: bool = True  # training flips half the images left to right
    # Read by nothing (kept so configs saved with it still load): the pipeline reshuffles the shard order every
    # epoch (seeded by train.seed), not samples.
    shuffle_buffer: int = 256


@dataclass
class TrainConfig:
    steps: int = 300  # optimizer steps of the whole run (the LR schedule ends here)
    lr: float = 2e-3  # peak AdamW learning rate, reached after warmup_steps
    min_lr_ratio: float = 0.1  # the cosine decay ends at lr x this
    warmup_steps: int = 20  # linear warmup from 0 to lr
    weight_decay: float = 0.01  # AdamW's, on tensors of 2+ dims (matrices, kernels, tables), not gains or biases
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW's
    grad_clip: float = 1.0  # gradient norm clipping (DeepSpeed's gradient_clipping)
    micro_batch_size: int = 0  # per worker; 0 = global_batch_size / world_size (no accumulation)
    zero_stage: int = 2  # DeepSpeed ZeRO stage; ray_jobs.train takes 1-3 (cluster/deepspeed/zero{stage}.json)
    precision: str = "auto"  # "auto" (bf16 where the hardware has it), "bf16" or "fp32"
    loss: str = "orderless"  # "orderless" (unbiased NLL estimate) or "mean" (a plain mean over the batch's hidden subpixels)
    # Exported and validated weights are an EMA of the trained ones (onade.ema); 0 = no EMA.
    ema_decay: float = 0.999
    # Share of training examples whose caption is replaced by the empty one, so the same network also
    # models p(hole | border) and sampling can use classifier-free guidance (SampleConfig.guidance).
    caption_dropout: float = 0.1
    log_every: int = 10  # steps between progress lines and metrics rows
    # Periodic validation scores the cheap metrics on val_batches fixed batches per worker; the exact
    # chain-rule NLL (one forward pass per hole subpixel per image) runs once, at the end, on
    # val_exact_images fixed images in all.
    val_every: int = 100
    val_batches: int = 4  # per worker, at every validation
    val_exact_images: int = 16  # in all, once at the end (0 = skip)
    # At the end, the loss profile that plans budgeted sampling (onade.plans) is measured on this many fixed
    # validation images in all: 64 forward passes each, a twelfth of the exact NLL's cost at 32 px.
    profile_images: int = 32
    checkpoint_every: int = 100  # steps between checkpoints (one is also written at the end)
    keep_checkpoints: int = 2  # the latest this many checkpoints are kept
    seed: int = 0  # worker w of n draws from seed * n + w; also orders the shards


@dataclass
class SampleConfig:
    """Every setting of one inpainting run (onade.inpaint, ray_jobs.inpaint); see onade.sampling."""
    # The default, from bench/sample.py --quality (docs/benchmarks.md): ancestral sampling in 32 passes planned
    # from the loss profile scores within 0.01 bit of the exact NLL and followed captions better than independent
    # Gibbs with one sweep per hole subpixel (769 passes for a 16x16 hole), at 33x its images/s in onade.inpaint
    # and 25.5x in the inpainting job. Its draws are not the model's own: a pixel's channels in sequence, each
    # from its nucleus top_p 0.3, give fills with the data's texture where the model's draws (channels "joint",
    # top_p 1) give specks (bench/sampler_ablation.py, docs/benchmarks.md), at 0.25-1 bit of KL from the model
    # per drawn subpixel. A model trained longer keeps more texture at a wider nucleus (0.4 on Twemoji after 43
    # minutes on a 2-CPU Xeon).
    strategy: str = "ancestral"
    # The budget of forward passes. Gibbs strategies: the number of sweeps. ancestral: passes planned from
    # the model's loss profile (onade.plans); maskgit, greedy, antigreedy: passes on MaskGIT's cosine
    # schedule. 0: one sweep per hole subpixel (Gibbs), or `chunk` subpixels per pass.
    steps: int = 32
    temperature: float = 1.0  # divides the logits before each draw (0 = the most likely value)
    # Nucleus sampling: each subpixel draws from its most likely values whose probabilities (after temperature)
    # add up to top_p, renormalised. 1 = the whole distribution.
    top_p: float = 0.3
    # ancestral (the other strategies ignore it): "joint" draws a pass's subpixels together, a pixel's channels as
    # independent as any two; "sequence" plans the passes over pixels and splits each into three, R, then G given
    # R, then B given both, so a pass costs three forward passes (steps // 3 pixel passes within the budget;
    # 1 or 2 steps draw jointly).
    channels: str = "sequence"

    @property
    def by_pixel(self) -> bool:
        """Whether an ancestral fill draws a pixel's channels in sequence: `channels` "sequence" within a budget
        of at least one pixel pass (3 forward passes); 1 or 2 passes draw them jointly."""
        return self.strategy == "ancestral" and self.channels == "sequence" and not 0 < self.steps < NUM_CHANNELS
    # ancestral: after the planned passes, this many Gibbs sweeps, each redrawing a random pmin share of the
    # hole's pixels (whole pixels, one forward pass) given everything else: a lone pixel that disagrees with
    # all its neighbours gets redrawn knowing them. Passes beyond `steps`.
    polish: int = 0
    final_temperature: float = 0.0  # 0 = no annealing; else geometric schedule to this value
    # Gibbs strategies: sweep n of N hides each hole subpixel with p_n = max(pmin, pmax - (pmax - pmin) n / (alpha N))
    # (Yao et al. 2014's annealed schedule).
    pmin: float = 0.1
    pmax: float = 0.9  # see pmin
    alpha: float = 0.7  # see pmin: the fraction of the sweeps over which p falls from pmax to pmin
    # Subpixels per forward pass: ancestral, maskgit, greedy and antigreedy with steps = 0; ancestral-gibbs's
    # blocks always.
    chunk: int = 1
    init: str = "model"  # "model" (one-shot sample) or "uniform" noise, for the Gibbs strategies
    precision: str = "auto"  # "auto" (bf16 where the hardware has it), "bf16" or "fp32"
    # Classifier-free guidance: logits l_u + s (l_c - l_u), l_u with the empty caption. 1 = unguided.
    guidance: float = 1.0
    # maskgit: the Gumbel noise added to the log-probability of each sample when ranking them, times
    # (1 - the fraction of passes done) (MaskGIT's choice temperature, annealed to 0).
    confidence_noise: float = 4.5

    def validate(self, where: str = "") -> "SampleConfig":
        """Raise ConfigError (a ValueError) naming the setting that is out of range (`where`: its prefix)."""
        k = where
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown inpainting strategy ({k}strategy) {self.strategy!r}; "
                              f"choose from {STRATEGIES}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ConfigError(f"{k}steps must be a non-negative integer (the budget of forward passes; 0 = one per "
                              f"hole subpixel), got {self.steps!r}")
        if self.temperature < 0 or self.final_temperature < 0:
            raise ConfigError(f"{k}temperature and {k}final_temperature must be >= 0 (0 = most likely value), "
                              f"got {self.temperature}, {self.final_temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{k}top_p must be in (0, 1] (1 = no nucleus cut), got {self.top_p}")
        if self.channels not in CHANNEL_ORDERS:
            raise ConfigError(f"{k}channels must be one of {CHANNEL_ORDERS}, got {self.channels!r}")
        if not isinstance(self.polish, int) or isinstance(self.polish, bool) or self.polish < 0:
            raise ConfigError(f"{k}polish must be an integer >= 0 (Gibbs sweeps after the fill), got {self.polish!r}")
        if self.polish and self.strategy != "ancestral":
            raise ConfigError(f"{k}polish sweeps follow the ancestral strategy's fill, not {self.strategy}'s")
        if not 0 < self.pmin <= self.pmax <= 1:
            raise ConfigError(f"need 0 < {k}pmin <= {k}pmax <= 1, got pmin={self.pmin} pmax={self.pmax}")
        if self.alpha <= 0:
            raise ConfigError(f"{k}alpha must be > 0 (fraction of the steps over which p falls), got {self.alpha}")
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ConfigError(f"{k}chunk (subpixels per forward pass) must be an integer >= 1, got {self.chunk!r}")
        if self.chunk != 1 and self.steps and self.strategy in ("ancestral", "maskgit", "greedy", "antigreedy"):
            raise ConfigError(f"{k}chunk must be 1 when {self.strategy} has a budget of {k}steps {self.steps} "
                              f"planned passes: set {k}steps 0 for {self.chunk} subpixels per pass")
        if self.init not in ("model", "uniform"):
            raise ConfigError(f"{k}init must be 'model' (one-shot sample) or 'uniform' (noise), got {self.init!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{k}precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.guidance >= 0:
            raise ConfigError(f"{k}guidance must be >= 0 (1 = unguided, 0 = ignore the caption), "
                              f"got {self.guidance}")
        if not self.confidence_noise >= 0:
            raise ConfigError(f"{k}confidence_noise must be >= 0, got {self.confidence_noise}")
        return self


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> "Config":
        m, t, s = self.model, self.train, self.sample
        if m.channels_last not in LAYOUTS:
            raise ConfigError(f"model.channels_last must be one of {LAYOUTS}, got {m.channels_last!r}")
        if m.input_mode not in ("embedding", "onehot"):
            raise ConfigError(f"model.input_mode must be 'embedding' or 'onehot', got {m.input_mode!r}")
        if m.head not in HEADS:
            raise ConfigError(f"model.head must be one of {HEADS}, got {m.head!r}")
        if not isinstance(m.mixtures, int) or isinstance(m.mixtures, bool) or m.mixtures < 1:
            raise ConfigError(f"model.mixtures must be a positive integer (the logistic head's components), "
                              f"got {m.mixtures!r}")
        if m.width % m.norm_groups or m.width % max(m.num_heads, 1):
            raise ConfigError("model.width must be divisible by model.norm_groups and model.num_heads")
        if m.text_dim % max(m.num_heads, 1):
            raise ConfigError("model.text_dim must be divisible by model.num_heads")
        if not m.dilations or min(m.dilations) < 1:
            raise ConfigError("model.dilations must be a non-empty list of positive integers")
        if receptive_field(m) < 2 * m.image_size - 1:
            raise ConfigError(
                f"receptive field {receptive_field(m)} does not cover a {m.image_size}px image corner to corner "
                f"(needs {2 * m.image_size - 1}): add blocks or larger model.dilations")
        for kind, w in self.masks.weights.items():
            if kind not in MASK_KINDS:
                raise ConfigError(f"masks.weights has unknown mask kind {kind!r}; choose from {MASK_KINDS}")
            if w < 0:
                raise ConfigError(f"masks.weights.{kind} must be >= 0, got {w}")
        if sum(self.masks.weights.values()) <= 0:
            raise ConfigError("masks.weights must give some mask kind a positive weight")
        if self.masks.hole_reveal not in HOLE_REVEALS:
            raise ConfigError(f"masks.hole_reveal must be {' or '.join(map(repr, HOLE_REVEALS))}, "
                              f"got {self.masks.hole_reveal!r}")
        if not 0 <= self.masks.hole_orderless <= 1:
            raise ConfigError(f"masks.hole_orderless must be in [0, 1], got {self.masks.hole_orderless}")
        if t.loss not in ("orderless", "mean"):
            raise ConfigError(f"train.loss must be 'orderless' or 'mean', got {t.loss!r}")
        if t.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {t.precision!r}")
        if not 0 <= t.caption_dropout < 1:
            raise ConfigError(f"train.caption_dropout must be in [0, 1) (0 = never drop), got {t.caption_dropout}")
        if t.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"train.zero_stage must be 0..3, got {t.zero_stage}")
        if not 0 <= t.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1) (0 = no EMA), got {t.ema_decay}")
        if t.ema_decay and t.zero_stage == 3:
            raise ConfigError("train.ema_decay needs whole weights on every worker, which ZeRO-3 partitions away: "
                              "set train.ema_decay=0 or train.zero_stage=2")
        if t.val_exact_images < 0 or t.profile_images < 0:
            raise ConfigError(f"train.val_exact_images and train.profile_images must be >= 0, got "
                              f"{t.val_exact_images}, {t.profile_images}")
        s.validate("sample.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def receptive_field(m: ModelConfig) -> int:
    """Side of the square every output sees: a 3x3 stem, then per block a dilated 3x3 and a plain 3x3 conv."""
    rf = 3
    for i in range(m.num_blocks):
        rf += 2 * m.dilations[i % len(m.dilations)] + 2
    return rf


def _preset_debug() -> Config:
    return Config(
        # A merger after every block and no caption dropout: in 600 steps (bench/quality.py, the offset variant,
        # docs/benchmarks.md) a caption dropout of 0.1 trained a border-only path this tiny net then leaned on,
        # and the caption was worth 2.1 bits per hole subpixel (3.3 with a merger per block); without it, 5.6.
        # Set train.caption_dropout=0.1 to sample a debug model with guidance.
        model=ModelConfig(image_size=32, width=32, num_blocks=6, dilations=(1, 2, 4, 8, 16), embed_dim=8,
                          text_dim=32, merge_every=1, own_pixel=True),
        data=DataConfig(global_batch_size=16),
        # A short run: an EMA half-life of ~70 steps; 4 exact-NLL images (~7 s on 2 CPU workers, beside ~5 s for
        # the end-of-run loss profile), so validation stays within 10% of a 600-step run.
        train=TrainConfig(steps=200, lr=3e-3, warmup_steps=10, val_every=100, checkpoint_every=100, ema_decay=0.99,
                          val_exact_images=4, caption_dropout=0.0),
    )


def _preset_small() -> Config:
    return Config(
        # Width 128 in 5 blocks with a merger after each: on Twemoji at 600 steps (docs/benchmarks.md) 2.479
        # held-out bits per subpixel in 311 s where 96 x 8 with a merger every 2 blocks gave 2.586 in 314 s
        # (deeper, 64 x 18: 2.767 in 434 s); the caption worth 0.51 bit.
        model=ModelConfig(image_size=32, width=128, num_blocks=5, dilations=(1, 2, 4, 8, 16), embed_dim=16,
                          text_dim=96, merge_every=1, num_heads=2, own_pixel=True),
        # Chosen with bench/quality.py on Twemoji under a 15-minute, 2-CPU budget (docs/benchmarks.md): this
        # orderless-heavier mixture, batch 16 and EMA 0.995 took held-out bits per subpixel from 2.51 (default
        # mixture, batch 32, EMA 0.99, same lr and time) to 2.23, below lossless PNG (2.45), the caption still
        # worth 0.63 bit.
        # Holes revealed by whole pixels, as the default sampler asks for them: on Twemoji at 1,100 steps its
        # fills at top_p 0.3 had 1.45-1.58% specks at roughness 0.82 of the originals' (two seeds) where
        # "subpixels" gave 1.78% at 0.80, at the same held-out bits (docs/benchmarks.md).
        masks=MaskConfig(weights={"orderless": 0.6, "center": 0.2, "box": 0.15, "contiguish": 0.05},
                         hole_reveal="pixels"),
        data=DataConfig(global_batch_size=16),
        # 4 exact-NLL images: with 16 a 1,200-step run on 2 CPUs spent 24% of its time validating.
        # No caption dropout: on Twemoji at 1,100 steps the caption was worth 0.64-0.65 bit on unseen subjects
        # against 0.43 with 0.1, at the same held-out bits, fills still within issue 26's bounds
        # (docs/benchmarks.md). Guidance needs it: --set train.caption_dropout=0.1.
        train=TrainConfig(steps=5000, lr=3e-3, warmup_steps=200, val_every=500, checkpoint_every=500,
                          ema_decay=0.995, val_exact_images=4, caption_dropout=0.0),
    )


def _preset_base() -> Config:
    # The seed's task: 64x64 images with a 32x32 hole; ~45M parameters.
    return Config(
        model=ModelConfig(image_size=64, width=384, num_blocks=16, dilations=(1, 2, 4, 8, 16), embed_dim=32,
                          text_dim=256, text_layers=2, merge_every=4, num_heads=4),
        data=DataConfig(global_batch_size=128, max_tokens=48),
        train=TrainConfig(steps=200_000, lr=5e-4, warmup_steps=2000, val_every=2000, checkpoint_every=2000,
                          keep_checkpoints=3, ema_decay=0.9999, val_exact_images=64),
    )


def _preset_large() -> Config:
    # Hundreds of millions of parameters: meant for ZeRO-3 on multi-GPU nodes.
    return Config(
        model=ModelConfig(image_size=64, width=1024, num_blocks=24, dilations=(1, 2, 4, 8, 16), embed_dim=64,
                          text_dim=512, text_layers=3, merge_every=4, num_heads=8, norm_groups=32,
                          activation_checkpointing=True),
        data=DataConfig(global_batch_size=512, max_tokens=64),
        # No EMA: ZeRO-3 partitions the weights it would average (see Config.validate).
        train=TrainConfig(steps=400_000, lr=3e-4, warmup_steps=5000, zero_stage=3, val_every=5000,
                          checkpoint_every=5000, keep_checkpoints=3, ema_decay=0.0, val_exact_images=64),
    )


PRESETS = {"debug": _preset_debug, "small": _preset_small, "base": _preset_base, "large": _preset_large}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]().validate()


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's annotated type, or raise naming the key."""
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if tp is str and isinstance(value, bool):  # YAML reads on/off/true/false as booleans
            return "on" if value else "off"
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [v for v in value.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                value = [value]
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) != len(args):
                raise ValueError(value)
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError(value)
            _, vt = typing.get_args(tp)
            return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
        if origin in (typing.Union, types.UnionType):
            return value
    except (TypeError, ValueError, json.JSONDecodeError) as e:
        raise ConfigError(f"config key {key!r}: cannot use {value!r} as {getattr(tp, '__name__', tp)}") from e
    return value


def _merge(obj: Any, tree: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full!r} is a section; give it a mapping, not {value!r}")
            _merge(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def apply_overrides(cfg: Config, tree: dict[str, Any] | None = None, sets: list[str] | None = None) -> Config:
    """Merge a partial tree (e.g. from YAML) and `key=value` strings into cfg, then validate."""
    if tree:
        _merge(cfg, tree, "")
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. model.width=128), got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        nested: dict[str, Any] = {parts[-1]: _parse_scalar(value.strip())}
        for p in reversed(parts[:-1]):
            nested = {p: nested}
        _merge(cfg, nested, "")
    return cfg.validate()


def _parse_scalar(text: str) -> Any:
    try:
        import yaml

        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - any unparsable value stays a string and is coerced by type
        return text


def load_config(preset: str = "debug", path: str | Path | None = None, sets: list[str] | None = None) -> Config:
    cfg = get_preset(preset)
    tree = None
    if path is not None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        tree = yaml.safe_load(p.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    return apply_overrides(cfg, tree, sets)


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a config saved with `to_dict` (e.g. from an exported checkpoint)."""
    return apply_overrides(Config(), tree)


def num_hole_side(image_size: int) -> int:
    """The default centre hole: half the image side, as in the seed (32x32 of 64x64)."""
    return max(1, image_size // 2)


__all__ = [
    "Config", "ModelConfig", "MaskConfig", "DataConfig", "TrainConfig", "SampleConfig", "ConfigError",
    "PRESETS", "get_preset", "load_config", "apply_overrides", "config_from_dict", "receptive_field",
    "MASK_KINDS", "STRATEGIES", "CHANNEL_ORDERS", "LAYOUTS", "LAYOUT_KEYS", "num_hole_side",
]
