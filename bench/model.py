"""Forward+backward samples/s of the embedding input vs. the seed's one-hot(3x256)+mask input, same body.

    python bench/model.py                       # debug and small presets, CPU
    python bench/model.py --presets base --batch-size 32 --device cuda

Both variants are timed in alternating rounds within one run (this machine is noisy); the medians and
their ratio are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from onade.config import get_preset
from onade.loss import nade_loss
from onade.masks import sample_masks
from onade.model import build_model, num_parameters


def step_time(model, batch, opt) -> float:
    x, mask, tokens, lengths = batch
    t = time.perf_counter()
    loss = nade_loss(model(x, mask, tokens, lengths), x, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["debug", "small"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.presets:
        cfg = get_preset(name)
        models = {mode: build_model(dataclasses.replace(cfg.model, input_mode=mode)).to(args.device)
                  for mode in ("embedding", "onehot")}
        opts = {m: torch.optim.AdamW(models[m].parameters(), lr=1e-4) for m in models}
        S, B = cfg.model.image_size, args.batch_size
        x = torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, device=args.device)
        mask = sample_masks(cfg.masks, B, S, device=args.device)
        tokens = torch.randint(4, cfg.model.vocab_size, (B, 16), device=args.device)
        lengths = torch.full((B,), 12, device=args.device)
        batch = (x, mask, tokens, lengths)
        for m in models:  # warm-up
            step_time(models[m], batch, opts[m])
        times = {m: [] for m in models}
        for _ in range(args.rounds):
            for m in models:
                times[m].append(statistics.median(step_time(models[m], batch, opts[m])
                                                  for _ in range(args.steps_per_round)))
        rate = {m: B / statistics.median(times[m]) for m in models}
        print(f"{name:6s} params emb={num_parameters(models['embedding']) / 1e6:.2f}M "
              f"onehot={num_parameters(models['onehot']) / 1e6:.2f}M | samples/s "
              f"embedding={rate['embedding']:.1f} onehot={rate['onehot']:.1f} "
              f"ratio={rate['embedding'] / rate['onehot']:.2f}x")


if __name__ == "__main__":
    main()
