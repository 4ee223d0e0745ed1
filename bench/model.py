"""Forward+backward samples/s of two variants of the network, same body and batch: the embedding input vs.
the seed's one-hot(3x256)+mask input (--compare input), NHWC vs. NCHW activations (--compare layout), or the
attention mergers through F.scaled_dot_product_attention vs. the written-out attention they use
(--compare attention; tests/test_model.py keeps the SDPA version).

    python bench/model.py                       # debug and small presets, CPU
    python bench/model.py --presets base --batch-size 32 --device cuda
    python bench/model.py --compare layout --presets small base --batch-size 4 --precision bf16
    python -m bench.model --compare attention --presets small base   # -m: it imports tests.test_model

Both variants are timed in alternating rounds within one run (this machine is noisy); the medians and
their ratio are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import torch

from onade.config import get_preset
from onade.loss import nade_loss
from onade.masks import draw_observed
from onade.model import build_model, num_parameters
from onade.precision import autocast

VARIANTS = {"input": {"embedding": dict(input_mode="embedding"), "onehot": dict(input_mode="onehot")},
            "layout": {"nhwc": dict(channels_last="on"), "nchw": dict(channels_last="off")},
            "attention": {"sdpa": {}, "hand": {}}}


def build_variant(model_cfg, compare: str, variant: str):
    model = build_model(dataclasses.replace(model_cfg, **VARIANTS[compare][variant]))
    if variant == "sdpa":
        from tests.test_model import sdpa_attention

        for merger in model.mergers.values():
            merger.forward = functools.partial(sdpa_attention, merger)
    return model


def step_time(model, batch, opt, precision: str = "fp32") -> float:
    x, observed, tokens, lengths = batch
    t = time.perf_counter()
    with autocast(precision, x.device):
        logits = model(x, observed, tokens, lengths)
    loss = nade_loss(logits, x, observed)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def merger_time(merger, f_BCHW, z_BTD, lengths_B, precision: str) -> float:
    """Forward+backward seconds of one attention merger alone (the whole step hides it behind the convs)."""
    t = time.perf_counter()
    with autocast(precision, f_BCHW.device):
        out = merger(f_BCHW, z_BTD, lengths_B)
    out.float().square().mean().backward()
    if f_BCHW.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def compare_mergers(models: dict, B: int, S: int, lengths_B, args) -> str:
    """samples/s of the first merger of each model, alternating rounds as for the whole step."""
    cfg = next(iter(models.values())).cfg
    f_BCHW = torch.randn(B, cfg.width, S, S, device=args.device, requires_grad=True)
    z_BTD = torch.randn(B, 16, cfg.text_dim, device=args.device, requires_grad=True)
    mergers = {m: models[m].mergers[next(iter(models[m].mergers))] for m in models}
    for m in mergers:  # warm-up
        merger_time(mergers[m], f_BCHW, z_BTD, lengths_B, args.precision)
    times = {m: [] for m in mergers}
    for _ in range(args.rounds):
        for m in mergers:
            times[m].append(statistics.median(merger_time(mergers[m], f_BCHW, z_BTD, lengths_B, args.precision)
                                              for _ in range(args.steps_per_round)))
    rate = {m: B / statistics.median(times[m]) for m in mergers}
    first, second = mergers
    return f"one merger alone samples/s {first}={rate[first]:.1f} {second}={rate[second]:.1f} " \
           f"ratio={rate[first] / rate[second]:.2f}x"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["debug", "small"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--compare", choices=sorted(VARIANTS), default="input")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.presets:
        cfg = get_preset(name)
        models = {m: build_variant(cfg.model, args.compare, m).to(args.device) for m in VARIANTS[args.compare]}
        opts = {m: torch.optim.AdamW(models[m].parameters(), lr=1e-4) for m in models}
        S, B = cfg.model.image_size, args.batch_size
        x = torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, device=args.device)
        observed = draw_observed(cfg.masks, B, S, device=args.device)[0]
        tokens = torch.randint(4, cfg.model.vocab_size, (B, 16), device=args.device)
        lengths = torch.full((B,), 12, device=args.device)
        batch = (x, observed, tokens, lengths)
        for m in models:  # warm-up
            step_time(models[m], batch, opts[m], args.precision)
        times = {m: [] for m in models}
        for _ in range(args.rounds):
            for m in models:
                times[m].append(statistics.median(step_time(models[m], batch, opts[m], args.precision)
                                                  for _ in range(args.steps_per_round)))
        rate = {m: B / statistics.median(times[m]) for m in models}
        first, second = models
        params = " ".join(f"{m}={num_parameters(models[m]) / 1e6:.2f}M" for m in models)
        print(f"{name:6s} {args.precision} params {params} | samples/s {first}={rate[first]:.1f} "
              f"{second}={rate[second]:.1f} ratio={rate[first] / rate[second]:.2f}x")
        if args.compare == "attention" and models[first].mergers:
            print(f"{name:6s} {args.precision} {compare_mergers(models, B, S, lengths, args)}")


if __name__ == "__main__":
    main()
