"""Quality per CPU-second: train on one dataset, then score held-out images beside lossless PNG and WebP.

    python -m bench.quality --data synthetic --preset debug --steps 600          # issue 9's acceptance
    python -m bench.quality --data twemoji --preset small --steps 1500           # real images ([bench] extra)
    python -m bench.quality --data twemoji --preset small --steps 1500 --set train.precision=fp32

Datasets, both built here (nothing is downloaded at run time):
  synthetic  data.synthetic's `offset` variant: shapes that extend past the centre hole at varying
             positions, with per-subpixel noise whose entropy, log2(5) = 2.32 bits, is the floor of the
             centre hole's NLL given border and caption (data/synthetic.py). Validation images are new draws.
  twemoji    bench/real_images.py: Twemoji artwork (CC-BY 4.0) captioned with its CLDR names, split so that
             validation subjects are unseen in training (pip install -e ".[bench]").

Steps: images -> shards (data.make_shards) -> `ray_jobs.train` (2 CPU workers by default, the preset's
validation and export) -> `ray_jobs.evaluate` on the validation shards -> the centre hole of the first
validation images filled by the inpainting job's default sampler -> OUT/report.json and OUT/index.html (a
gallery: original, masked, fill). Printed: bits per subpixel of the whole image (the orderless estimate, comparable
to a lossless codec's size), beside PNG and WebP of the same images; the one-shot centre NLL with the
true and a shuffled caption (their difference is what the caption is worth); the exact chain-rule NLL
of the centre hole; the run's wall time against its training steps' time; how the fills look (hole
roughness over the originals', speck rates: onade.texture) and, on synthetic data, the fraction of fills
whose centre has the caption's colour.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script, bench/data.py would shadow `data`


def build_images(args, root: Path) -> dict:
    """OUT/images/{train,val}: PNGs with sidecar captions. Returns what was built."""
    if args.data == "synthetic":
        from data.synthetic import OFFSET_FLOOR_BITS, write_synthetic

        write_synthetic(root / "train", args.train_images, image_size=args.image_size, seed=0, variant="offset")
        # Other indices of the same generator: images never seen in training.
        metas = write_synthetic(root / "val", args.val_images, image_size=args.image_size, seed=0,
                                start=args.train_images, variant="offset")
        return {"dataset": "synthetic offset variant", "floor_bits": OFFSET_FLOOR_BITS,
                "val_colours": {m.name: m.colour for m in metas}}
    from bench.real_images import write_split

    return {"dataset": "twemoji", **write_split(root, image_size=args.image_size)}


def shards(images: Path, out: Path, image_size: int) -> str:
    from data.make_shards import main as make_shards

    code = make_shards([str(images), str(out), "--image-size", str(image_size), "--shard-size", "1000",
                        "--no-progress"])
    if code != 0:
        raise SystemExit(f"make_shards failed for {images} (exit {code})")
    return str(out)


def fill_gallery(args, export: str, val_dir: Path, out: Path, colours: dict | None) -> dict:
    """The centre holes of the first validation images filled by the inpainting job's default sampler
    (onade.config.SampleConfig, the export's loss profile), --fill-samples times each: how the fills look
    (onade.texture: hole roughness over the originals', speck rates) and, on synthetic data, the share whose
    centre has the caption's colour; and a gallery of the first sample."""
    import onade
    from data.synthetic import COLOURS
    from onade.masks import observed_except_center
    from onade.metrics import centre_colour
    from onade.texture import Texture, sample_quality, texture

    loaded = onade.load_checkpoint(export)
    paths = sorted(val_dir.glob("*.png"))[: args.fill_images]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8").splitlines()[0] for p in paths]
    tokens, lengths = loaded.tokenizer.encode_batch(captions, loaded.config.data.max_tokens)
    observed = observed_except_center(len(paths), x.shape[1])
    hidden = ~observed[0].all(-1)
    sums, stats, hits, draws = Texture(), {}, [], []
    tic = time.perf_counter()
    for s in range(args.fill_samples):
        filled = torch.cat([onade.inpaint(loaded.model, x[i:i + 64], observed[i:i + 64], tokens[i:i + 64],
                                          lengths[i:i + 64], seed=1000 * s + i, profile=loaded.profile,
                                          stats=stats)[0] for i in range(0, len(x), 64)])
        sums += texture(filled, hidden)
        draws.append(filled)
        if colours:
            hits += [g == colours[p.stem] for g, p in zip(centre_colour(filled.numpy(), COLOURS), paths)]
    seconds = time.perf_counter() - tic
    result = {"fill_images": len(paths), "fill_samples": args.fill_samples, "fill_seconds": round(seconds, 1),
              "fill_settings": dataclasses.asdict(onade.SampleConfig()),
              "fill_forward_passes": stats.get("forward_passes"),
              **{f"fill_{k}": v for k, v in sample_quality(sums, texture(x, hidden)).items()}}
    if colours:
        result["fill_caption_colour_share"] = float(np.mean(hits))
    masked = torch.where(observed, x, torch.full_like(x, 128))
    scale = max(1, 96 // x.shape[1])
    (out / "gallery").mkdir(exist_ok=True)
    rows = []
    for i, p in enumerate(paths):
        cells = []
        for kind, img in (("original", x[i]), ("masked", masked[i]), ("fill", draws[0][i])):
            name = f"gallery/{p.stem}.{kind}.png"
            Image.fromarray(img.numpy()).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(
                out / name)
            cells.append(f'<td><img src="{name}" alt="{kind}"></td>')
        rows.append(f"<tr>{''.join(cells)}<td>{html.escape(captions[i])}</td></tr>")
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>onade quality</title><table>"
        "<tr><th>original</th><th>masked</th><th>fill (the job's default sampler)</th><th>caption</th></tr>"
        + "\n".join(rows) + "</table>\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["synthetic", "twemoji"], default="synthetic")
    p.add_argument("--preset", default="debug")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--train-images", type=int, default=8000, help="synthetic only")
    p.add_argument("--val-images", type=int, default=256, help="synthetic only")
    p.add_argument("--eval-images", type=int, default=0, help="validation images to evaluate (0 = all)")
    p.add_argument("--exact-images", type=int, default=32)
    p.add_argument("--fill-images", type=int, default=64, help="validation images whose centre hole is filled")
    p.add_argument("--fill-samples", type=int, default=2, help="fills per image")
    p.add_argument("--out", default="bench_out/quality")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training config override")
    args = p.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    from bench.real_images import codec_bits
    from ray_jobs import evaluate, train

    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    built = build_images(args, out / "images")
    colours = built.pop("val_colours", None)
    codecs = codec_bits(out / "images" / "val")
    data = {s: shards(out / "images" / s, out / "shards" / s, args.image_size) for s in ("train", "val")}

    sets = [f"model.image_size={args.image_size}", *args.set]
    tic = time.perf_counter()
    metrics = train.main(["--data", data["train"], "--val-data", data["val"], "--output", str(out / "runs"),
                          "--name", "run", "--preset", args.preset, "--steps", str(args.steps),
                          "--workers", str(args.workers), "--cpus-per-worker", str(args.cpus_per_worker),
                          *sum((["--set", s] for s in sets), [])])
    wall = time.perf_counter() - tic
    scored = evaluate.main(["--checkpoint", metrics["export"], "--data", data["val"],
                            "--num-images", str(args.eval_images), "--exact-images", str(args.exact_images)])
    sampled = fill_gallery(args, metrics["export"], out / "images" / "val", out, colours) if args.fill_images else {}

    report = {
        "data": built, "preset": args.preset, "steps": args.steps, "workers": args.workers, "sets": sets,
        "precision": scored["precision"],
        "run_wall_s": round(wall, 1), "train_steps_s": metrics.get("train_s"),
        "run_over_train_steps": round(wall / metrics["train_s"], 2) if metrics.get("train_s") else None,
        "val_s": metrics.get("val_s"), "checkpoint_s": metrics.get("checkpoint_s"),
        "samples_per_s": metrics.get("samples_per_s"),
        "bits_per_subpixel": scored["bits_per_dim"],
        "png_bits_per_subpixel": codecs["png_bits_per_subpixel"],
        "webp_bits_per_subpixel": codecs["webp_bits_per_subpixel"],
        "center_bits_true_caption": scored["center_bits_true_caption"],
        "center_bits_shuffled_caption": scored["center_bits_shuffled_caption"],
        "caption_worth_bits": scored["center_bits_shuffled_caption"] - scored["center_bits_true_caption"],
        "exact_center_bits": scored.get("exact_center_bits"), "num_images": scored["num_images"],
        **sampled, **({"gallery": str(out / "index.html")} if sampled else {}),
    }
    if "floor_bits" in built:
        report["center_bits_over_floor"] = scored["center_bits_true_caption"] - built["floor_bits"]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
