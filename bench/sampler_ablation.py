"""Which sampler settings give fills with the data's texture: every variant on the same held-out images.

    python -m bench.quality --data twemoji --preset small --steps 1240 --out bench_out/tw   # a model and images
    python -m bench.sampler_ablation --checkpoint bench_out/tw/runs/run/export --images bench_out/tw/images/val

For each variant (SampleConfig settings over MODEL_DRAWS, the model's own draws) the centre hole of every image is filled
with `onade.inpaint` (seed 0, --samples per image) and scored with onade.metrics.texture: hole roughness
over the originals' (about 1 is the data's texture), the speck rate beside the originals', forward passes per
image, images/s and what the draws trade for their looks: KL(the distribution drawn from || the model's
conditional) in bits per drawn subpixel (onade.inpaint's stats; 0 at temperature 1 without a nucleus cut),
all measured in this run. On bench.quality's synthetic images (names img_NNNNN, the
`offset` variant) it also gives the share of samples whose centre has the caption's colour.
Prints a markdown table and writes it as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script, bench/data.py would shadow `data`

# The model's own draws (the defaults until 2026-12-07): every variant below changes some of these.
MODEL_DRAWS = dict(strategy="ancestral", steps=32, channels="joint", temperature=1.0, top_p=1.0)
VARIANTS = {
    # name: SampleConfig settings over MODEL_DRAWS
    "ancestral 32, joint channels, T 1": dict(strategy="ancestral", steps=32, channels="joint", temperature=1.0),
    "ancestral 32, channels in sequence": dict(strategy="ancestral", steps=32, channels="sequence"),
    "joint, T 0.8": dict(strategy="ancestral", steps=32, channels="joint", temperature=0.8),
    "joint, T 0.6": dict(strategy="ancestral", steps=32, channels="joint", temperature=0.6),
    "joint, T 0.5": dict(strategy="ancestral", steps=32, channels="joint", temperature=0.5),
    "joint, T 0.4": dict(strategy="ancestral", steps=32, channels="joint", temperature=0.4),
    "joint, top-p 0.9": dict(strategy="ancestral", steps=32, channels="joint", top_p=0.9),
    "joint, top-p 0.7": dict(strategy="ancestral", steps=32, channels="joint", top_p=0.7),
    "joint, top-p 0.5": dict(strategy="ancestral", steps=32, channels="joint", top_p=0.5),
    "joint, T 0.8, top-p 0.8": dict(strategy="ancestral", steps=32, channels="joint", temperature=0.8, top_p=0.8),
    "sequence, T 0.8": dict(strategy="ancestral", steps=32, channels="sequence", temperature=0.8),
    "sequence, top-p 0.9": dict(strategy="ancestral", steps=32, channels="sequence", top_p=0.9),
    "sequence, top-p 0.7": dict(strategy="ancestral", steps=32, channels="sequence", top_p=0.7),
    "sequence, top-p 0.5": dict(strategy="ancestral", steps=32, channels="sequence", top_p=0.5),
    "sequence, T 0.5": dict(strategy="ancestral", steps=32, channels="sequence", temperature=0.5),
    "sequence, top-p 0.7, 96 passes": dict(strategy="ancestral", steps=96, channels="sequence", top_p=0.7),
    "sequence, top-p 0.4": dict(strategy="ancestral", steps=32, channels="sequence", top_p=0.4),
    "sequence, top-p 0.35": dict(strategy="ancestral", steps=32, channels="sequence", top_p=0.35),
    "sequence, top-p 0.3": dict(strategy="ancestral", steps=32, channels="sequence", top_p=0.3),
    "sequence, top-p 0.27": dict(strategy="ancestral", steps=32, channels="sequence", top_p=0.27),
    "sequence, top-p 0.25": dict(strategy="ancestral", steps=32, channels="sequence", top_p=0.25),
    "sequence, top-p 0.2": dict(strategy="ancestral", steps=32, channels="sequence", top_p=0.2),
    "sequence, T 0.8, top-p 0.3": dict(strategy="ancestral", steps=32, channels="sequence", temperature=0.8,
                                       top_p=0.3),
    "sequence 24 + polish 8, top-p 0.3": dict(strategy="ancestral", steps=24, channels="sequence", polish=8,
                                              top_p=0.3),
    "sequence 24 + polish 8": dict(strategy="ancestral", steps=24, channels="sequence", polish=8),
    "sequence 24 + polish 8, top-p 0.5": dict(strategy="ancestral", steps=24, channels="sequence", polish=8,
                                              top_p=0.5),
    "sequence 24 + polish 8, top-p 0.7": dict(strategy="ancestral", steps=24, channels="sequence", polish=8,
                                              top_p=0.7),
    "sequence 24 + polish 8 at pmin 0.25, top-p 0.5": dict(strategy="ancestral", steps=24, channels="sequence",
                                                           polish=8, pmin=0.25, top_p=0.5),
    "joint, 16 passes": dict(strategy="ancestral", steps=16, channels="joint"),
    "joint, 96 passes": dict(strategy="ancestral", steps=96, channels="joint"),
    "sequence, 96 passes": dict(strategy="ancestral", steps=96, channels="sequence"),
    "joint, equal chunks (no profile)": dict(strategy="ancestral", steps=32, channels="joint", plan="uniform"),
    "maskgit 32": dict(strategy="maskgit", steps=32, channels="joint"),
    "independent Gibbs 32": dict(strategy="independent-gibbs", steps=32, channels="joint"),
    "joint, guidance 2": dict(strategy="ancestral", steps=32, channels="joint", guidance=2.0),
    "sequence, guidance 2": dict(strategy="ancestral", steps=32, channels="sequence", guidance=2.0),
}


def load_images(folder: Path, n: int):
    paths = sorted(folder.glob("*.png"))[:n] if n else sorted(folder.glob("*.png"))
    if not paths:
        raise SystemExit(f"no PNG images in {folder}")
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8").splitlines()[0] for p in paths]
    return paths, x, captions


def synthetic_colours(paths) -> list[str] | None:
    """The caption's colour of each of bench.quality's synthetic (offset variant) images, else None."""
    from data.synthetic import make_sample

    if not all(p.stem.startswith("img_") and p.stem[4:].isdigit() for p in paths):
        return None
    return [make_sample(int(p.stem[4:]), 32, 0, "offset")[1].colour for p in paths]


def run_variant(loaded, x, observed, tokens, lengths, settings: dict, samples: int, batch: int):
    """(samples [S,N,H,W,3], forward passes per image, seconds, KL of the draws from the model in bits per
    drawn subpixel)."""
    import onade

    settings = {**MODEL_DRAWS, **settings}
    profile = None if settings.pop("plan", "dp") == "uniform" else loaded.profile
    if settings.get("guidance", 1.0) != 1.0 and loaded.config.train.caption_dropout == 0:
        return None
    out, passes, seconds, kl = [], 0, 0.0, []
    for s in range(samples):
        chunks = []
        for i in range(0, len(x), batch):
            stats = {}
            tic = time.perf_counter()
            y, _ = onade.inpaint(loaded.model, x[i:i + batch], observed[i:i + batch], tokens[i:i + batch],
                                 lengths[i:i + batch], seed=1000 * s + i, profile=profile, stats=stats, measure_kl=True,
                                 **settings)
            seconds += time.perf_counter() - tic
            passes = stats["forward_passes"]
            kl.append(stats["draw_kl_bits"])
            chunks.append(y)
        out.append(torch.cat(chunks))
    return torch.stack(out), passes, seconds, float(np.mean(kl))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="a folder of PNGs with .txt caption sidecars")
    p.add_argument("--num-images", type=int, default=0, help="the first N (0 = all)")
    p.add_argument("--samples", type=int, default=2, help="samples per image and variant")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--only", default="", help="';'-separated substrings (names hold commas): run the variants "
                                              "whose name has one")
    p.add_argument("--out", default="bench_out/sampler_ablation.json")
    args = p.parse_args(argv)

    import onade
    from data.synthetic import COLOURS
    from onade.masks import observed_except_center
    from onade.metrics import centre_colour, sample_quality, texture

    loaded = onade.load_checkpoint(args.checkpoint)
    paths, x, captions = load_images(Path(args.images), args.num_images)
    tokens, lengths = loaded.tokenizer.encode_batch(captions, loaded.config.data.max_tokens)
    observed = observed_except_center(len(x), x.shape[1])
    hidden = ~observed[0].all(-1)
    originals = texture(x, hidden)
    colours = synthetic_colours(paths)
    wanted = [w for w in args.only.split(";") if w]
    rows = []
    print(f"{len(x)} images, {args.samples} samples each; originals: roughness {originals.roughness:.2f}, "
          f"speck rate {100 * originals.speck_rate:.2f}%", flush=True)
    print("| variant | passes | roughness ratio | speck rate (originals) | caption colour | KL bits | images/s |")
    print("|---|---|---|---|---|---|---|")
    for name, settings in VARIANTS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        got = run_variant(loaded, x, observed, tokens, lengths, settings, args.samples, args.batch_size)
        if got is None:
            print(f"| {name} | skipped: guidance needs a model trained with train.caption_dropout > 0 ||||||")
            continue
        samples, passes, seconds, kl = got
        figures = sample_quality(texture(samples.flatten(0, 1), hidden), originals)
        row = {"variant": name, "settings": {**MODEL_DRAWS, **settings}, "forward_passes": passes, "draw_kl_bits": kl, **figures,
               "images_per_s": samples.shape[0] * samples.shape[1] / seconds}
        if colours:
            got_colours = [c for s in samples for c in centre_colour(s.numpy(), COLOURS)]
            row["caption_colour_share"] = float(np.mean([g == c for g, c in zip(got_colours, colours * len(samples))]))
        rows.append(row)
        colour = f"{100 * row['caption_colour_share']:.1f}%" if colours else "-"
        print(f"| {name} | {passes} | {row['roughness_ratio']:.3f} | {100 * row['speck_rate']:.2f}% "
              f"({100 * row['speck_rate_originals']:.2f}%) | {colour} | {kl:.3f} | {row['images_per_s']:.1f} |",
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "images": len(x), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
