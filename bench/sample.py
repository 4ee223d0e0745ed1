"""Inpainting speed, each against its natural baseline measured side by side in one run.

    python bench/sample.py                                  # debug preset, CPU, everything
    python bench/sample.py --preset base --batch-size 64 --device cuda --skip-job
    python bench/sample.py --skip-samplers --skip-job       # only bf16 vs fp32 (debug and small)

0. Images/s of `onade.inpaint` (independent Gibbs over the centre hole) in bf16 autocast / in fp32, per
   preset in --precision-presets; rounds alternate the two and the best of each counts (target >= 3x
   for `small` on a CPU with AMX/AVX512-BF16).

1. Seconds per sampler step (one forward pass of the body, the head only at the sampled subpixels, the
   draw) / seconds of one bare `model(...)` forward of the same model and batch (both in the precision
   "auto" resolves to), per strategy. A sampler
   doing one pass per step cannot beat 1.0 unless it saves on the head, which runs only where it samples.
   Each strategy's runs alternate with bare forwards of the same batch, and the minimum over rounds of
   each is used (the least disturbed by other load on a shared machine).
2. Images/s of `ray_jobs.inpaint` with 1 actor / images/s of the same work (decode, `onade.inpaint`,
   PNG writing) in one plain process, same checkpoint, batch and steps.
3. Peak memory of the whole job (driver + Ray processes) for a folder of N and of 4N images: it streams.
4. With --quality, on a model trained on the synthetic `centre` variant (whose hole's colour only the
   caption tells; --checkpoint, or trained here): bits per hole subpixel of K-pass ancestral sampling
   (onade.metrics.budget_bits) with the DP plan and with equal chunks, K = 1 ... the hole size (the exact
   NLL); caption adherence (onade.metrics.caption_adherence) and images/s of every budgeted strategy
   against K, guidance swept at --guidance-passes; independent Gibbs at one sweep per hole subpixel (the
   previous default); and ray_jobs.inpaint at its default against the previous default on one folder.

    python bench/sample.py --quality --skip-samplers --skip-job --precision-presets ''

5. With --fit: images/s of `ray_jobs.inpaint` on --fit-size JPEGs (a window around the centre hole resized
   to the model, the sample pasted back, PNGs written at full size) / on model-size PNGs, --fit-preset
   (small), same sampler; and the share of the actors' time spent in the model (target >= 80%).

    python bench/sample.py --fit --skip-samplers --skip-job --precision-presets '' --batch-size 32 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Run as a script, bench/ would shadow the repo's `data` package with bench/data.py.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import onade  # noqa: E402
from onade.masks import observed_except_center  # noqa: E402
from onade.precision import autocast, resolve_precision  # noqa: E402

STRATEGY_RUNS = {
    # strategy: options giving a run of a few tens of passes (seconds per pass does not depend on the count)
    # 100 steps: enough for the schedule's shape (most steps resample few subpixels) to show.
    "independent-gibbs": dict(steps=100),
    "ancestral-gibbs": dict(steps=2, chunk=64),
    "ancestral": dict(steps=32),
    "maskgit": dict(steps=32),
    "greedy": dict(steps=32),
    "antigreedy": dict(steps=32),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(model, batch, device, reps=3) -> float:
    times = []
    with torch.inference_mode(), autocast(resolve_precision("auto", device), device):
        model(*batch)
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            model(*batch)
            _sync(device)
            times.append(time.perf_counter() - t)
    return min(times)


def bench_samplers(args) -> list[tuple[str, float, float, float]]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = onade.build_model(args.preset).to(device).eval()
    S, B = model.cfg.image_size, args.batch_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, generator=g).to(device)
    observed = observed_except_center(B, S, device=device)
    tokens = torch.randint(4, model.cfg.vocab_size, (B, 12), generator=g).to(device)
    lengths = torch.full((B,), 12).to(device)
    batch = (x, observed, tokens, lengths)
    passes = []
    hook = model.stem.register_forward_hook(lambda *a: passes.append(1))
    rows = []
    try:
        for strategy, kw in STRATEGY_RUNS.items():
            times, bares = [], []
            for _ in range(args.rounds):
                before = bare_forward(model, batch, device)
                passes.clear()
                t = time.perf_counter()
                onade.inpaint(model, *batch, strategy=strategy, seed=0, **kw)
                _sync(device)
                elapsed = time.perf_counter() - t
                n = len(passes)
                after = bare_forward(model, batch, device)
                times.append(elapsed / n)
                bares.append((before + after) / 2)
            # The minimum over rounds is the least disturbed by other load on a shared machine.
            step, bare = min(times), min(bares)
            rows.append((strategy, step, bare, step / bare))
            print(f"  {strategy:18s} {step * 1e3:8.1f} ms/step  bare forward {bare * 1e3:8.1f} ms  "
                  f"ratio {rows[-1][3]:.3f}", flush=True)
    finally:
        hook.remove()
    return rows


def bench_precision(args) -> dict:
    """bf16 / fp32 images/s of onade.inpaint per preset."""
    device = torch.device(args.device)
    out = {"auto_resolves_to": resolve_precision("auto", device)}
    for preset in filter(None, args.precision_presets.split(",")):
        torch.manual_seed(0)
        model = onade.build_model(preset).to(device).eval()
        S, B = model.cfg.image_size, args.batch_size
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, generator=g).to(device)
        tokens = torch.randint(4, model.cfg.vocab_size, (B, 12), generator=g)
        batch = (x, observed_except_center(B, S, device=device), tokens, torch.full((B,), 12))
        best = {"fp32": 0.0, "bf16": 0.0}
        for _ in range(args.rounds):
            for precision in best:
                t = time.perf_counter()
                onade.inpaint(model, *batch, strategy="independent-gibbs", steps=args.precision_steps, seed=0,
                              precision=precision)
                _sync(device)
                best[precision] = max(best[precision], B / (time.perf_counter() - t))
        out[preset] = {"fp32_images_per_s": round(best["fp32"], 2), "bf16_images_per_s": round(best["bf16"], 2),
                       "bf16_over_fp32": round(best["bf16"] / best["fp32"], 2)}
        print(f"  {preset}: {out[preset]}", flush=True)
    return out


# ---- the Ray job ------------------------------------------------------------------------------------

def make_checkpoint(root: Path, preset: str) -> str:
    from data.synthetic import make_sample
    from onade.tokenizer import Tokenizer

    cfg = onade.get_preset(preset)
    captions = [c for i in range(200) for c in make_sample(i, cfg.model.image_size)[1].captions]
    tok = Tokenizer.train(captions, None, vocab_size=256)
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    return str(onade.save_checkpoint(root / "ckpt", onade.build_model(cfg), cfg.validate(), tok))


def direct_images_per_second(ckpt: str, folder: Path, out: Path, args) -> float:
    """The job's work in one plain process: decode, tokenize, onade.inpaint, write PNGs."""
    import numpy as np
    from PIL import Image

    from data.images import encode, load
    from onade.holes import HoleSpec

    loaded = onade.load_checkpoint(ckpt)
    S = loaded.config.model.image_size
    hidden = torch.from_numpy(HoleSpec.parse("center").hidden(S, S))[..., None].expand(S, S, 3)
    files = sorted(folder.glob("*.png"))
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i in range(0, len(files), args.batch_size):
        chunk = files[i:i + args.batch_size]
        images = np.stack([np.asarray(load(f.read_bytes(), S)[0]) for f in chunk])
        caps = [f.with_suffix(".txt").read_text().splitlines()[0] for f in chunk]
        tokens, lengths = loaded.tokenizer.encode_batch(caps, loaded.config.data.max_tokens)
        x = torch.from_numpy(images)
        result, _ = onade.inpaint(loaded.model, x, ~hidden.expand(len(chunk), -1, -1, -1), tokens, lengths,
                                  steps=args.job_steps)
        for f, img in zip(chunk, result.numpy()):
            (out / f.name).write_bytes(encode(Image.fromarray(img)))
    return len(files) / (time.perf_counter() - t)


def peak_job_memory(ckpt: str, folder: Path, out: Path, args) -> float:
    """Peak RSS (GiB) of the job's whole process tree, sampled every 0.2 s, for a run in a fresh process."""
    import psutil

    cmd = [sys.executable, "-m", "ray_jobs.inpaint", "--checkpoint", ckpt, "--input", str(folder), "--output",
           str(out), "--steps", "1", "--batch-size", str(args.batch_size), "--no-progress"]
    env = dict(os.environ, RAY_ADDRESS="")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return peak / 2 ** 30


def bench_job(args) -> dict:
    from data.synthetic import write_synthetic
    from ray_jobs import inpaint as job

    with tempfile.TemporaryDirectory(prefix="onade_bench_") as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(root, args.preset)
        size = onade.get_preset(args.preset).model.image_size
        write_synthetic(root / "images", args.job_images, image_size=size)
        direct = direct_images_per_second(ckpt, root / "images", root / "direct", args)
        print(f"  direct onade.inpaint: {direct:.2f} images/s", flush=True)
        summary = job.main(["--checkpoint", ckpt, "--input", str(root / "images"), "--output", str(root / "job"),
                            "--steps", str(args.job_steps), "--batch-size", str(args.batch_size), "--workers", "1",
                            "--no-progress"])
        ray_ips = summary["images_per_second"]
        print(f"  ray job, 1 actor:     {ray_ips:.2f} images/s  ratio {ray_ips / direct:.3f}", flush=True)
        out = {"direct": direct, "job": ray_ips, "ratio": ray_ips / direct}
        if args.memory:
            n = args.job_images
            write_synthetic(root / "more", 4 * n, image_size=size)
            small = peak_job_memory(ckpt, root / "images", root / "mem_small", args)
            large = peak_job_memory(ckpt, root / "more", root / "mem_large", args)
            print(f"  peak memory of the job: {small:.2f} GiB for {n} images, {large:.2f} GiB for {4 * n}",
                  flush=True)
            out.update(mem_small=small, mem_large=large)
        return out


def _photos(folder: Path, n: int, width: int, height: int, fmt: str) -> None:
    """n smooth, different pictures (gradients and discs) with a caption each."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    ys, xs = np.mgrid[0:height, 0:width]
    for i in range(n):
        rng = np.random.default_rng(i)
        a = np.stack([(xs * rng.uniform(0.1, 0.3) + ys * rng.uniform(0.1, 0.3) + 80 * c) % 256 for c in range(3)], -1)
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.1, 0.4) * min(width, height)
        a[(xs - cx) ** 2 + (ys - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
        options = {"quality": 90} if fmt == "jpg" else {}
        Image.fromarray(a.astype(np.uint8)).save(folder / f"p{i:04d}.{fmt}", **options)
        (folder / f"p{i:04d}.txt").write_text("a disc on a gradient\n")


def bench_fit(args) -> dict:
    """ray_jobs.inpaint on photos (--fit context: window, resize, paste back at full size, PNG at full size)
    against the same job on model-size PNGs (nothing to resize or paste), same model, count and sampler; and
    how the actors spend their time (results.jsonl: model_seconds of seconds)."""
    import json

    from ray_jobs import inpaint as job

    S = onade.get_preset(args.fit_preset).model.image_size
    w, h = args.fit_size
    out = {"preset": args.fit_preset, "images": args.fit_images, "photo_size": [w, h], "model_size": S,
           "runs": {}}
    with tempfile.TemporaryDirectory(prefix="onade_bench_fit_") as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(root, args.fit_preset)
        _photos(root / "photos", args.fit_images, w, h, "jpg")
        _photos(root / "model_size", args.fit_images, S, S, "png")
        for rnd in range(args.rounds):
            for name in ("model_size", "photos"):
                dest = root / f"out_{name}_{rnd}"
                summary = job.main(["--checkpoint", ckpt, "--input", str(root / name), "--output", str(dest),
                                    "--batch-size", str(args.batch_size), "--no-progress"])
                rows = [json.loads(line) for line in (dest / "results.jsonl").read_text().splitlines()]
                ok = [r for r in rows if r["status"] == "ok"]
                assert len(ok) == args.fit_images, [r.get("error") for r in rows if r["status"] != "ok"][:3]
                actor = sum(r["seconds"] for r in ok)
                model = sum(r["model_seconds"] for r in ok)
                got = {"images_per_second": summary["images_per_second"], "model_share_of_actor": model / actor,
                       "model_share_of_wall": model / summary["seconds"],
                       "write_seconds_per_image": sum(r["write_seconds"] for r in ok) / len(ok)}
                best = out["runs"].get(name)
                if best is None or got["images_per_second"] > best["images_per_second"]:
                    out["runs"][name] = got
                print(f"  round {rnd} {name:10s}: {got['images_per_second']:.2f} images/s, model "
                      f"{got['model_share_of_actor']:.1%} of the actor's time, {got['model_share_of_wall']:.1%} of "
                      f"the wall time, write {got['write_seconds_per_image'] * 1000:.0f} ms/image", flush=True)
    runs = out["runs"]
    out["photos_over_model_size"] = runs["photos"]["images_per_second"] / runs["model_size"]["images_per_second"]
    print(f"  photos / model-size images/s: {out['photos_over_model_size']:.3f} (best of {args.rounds} rounds each)")
    return out


# ---- quality per forward pass (a trained model) ---------------------------------------------------------

def trained_checkpoint(args, root: Path) -> str:
    """--checkpoint, or a `debug` model trained here on the synthetic centre variant (the caption alone tells
    the shape's colour) with caption dropout 0.1 (as `base` and `large`; debug's and small's 0 leave guidance
    untrained), through ray_jobs.train on 2 CPU workers."""
    if args.checkpoint:
        return args.checkpoint
    from bench.quality import shards
    from data.synthetic import write_synthetic
    from ray_jobs import train

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    write_synthetic(root / "train", args.train_images, variant="centre")
    write_synthetic(root / "val", 256, start=10 ** 6, variant="centre")
    data = {k: shards(root / k, root / f"shards_{k}", 32) for k in ("train", "val")}
    metrics = train.main(["--data", data["train"], "--val-data", data["val"], "--output", str(root / "runs"),
                          "--name", "run", "--preset", "debug", "--steps", str(args.train_steps), "--workers", "2",
                          "--cpus-per-worker", "0.5", "--set", "train.caption_dropout=0.1"])
    print(f"  trained debug for {args.train_steps} steps in {metrics.get('train_s', 0):.0f} s; reuse it with "
          f"--checkpoint {metrics['export']}", flush=True)
    return metrics["export"]


def _eval_images(loaded, n: int, start: int = 2 * 10 ** 6):
    """n unseen centre-variant images: (x, tokens, lengths, caption colours, backgrounds)."""
    import numpy as np

    from data.synthetic import make_sample

    S = loaded.config.model.image_size
    images, metas = zip(*[make_sample(i, S, variant="centre") for i in range(start, start + n)])
    tokens, lengths = loaded.tokenizer.encode_batch([m.captions[0] for m in metas], loaded.config.data.max_tokens)
    return (torch.from_numpy(np.stack(images)), tokens, lengths, [m.colour for m in metas],
            [m.background for m in metas])


def adherence(images: torch.Tensor, colours, backgrounds) -> dict:
    from data.synthetic import COLOURS, STRIPE
    from onade.metrics import caption_adherence

    return {k: round(v, 4) for k, v in caption_adherence(images.numpy(), colours, backgrounds, COLOURS,
                                                         (STRIPE,)).items()}


def bench_budgets(args, ckpt: str) -> dict:
    """Bits (ancestral with the DP plan vs equal chunks) and caption adherence (every strategy) against
    forward passes, with and without guidance."""
    from onade.metrics import budget_bits, loss_profile
    from onade.plans import step_plan, uniform_plan

    loaded = onade.load_checkpoint(ckpt)
    model, S = loaded.model, loaded.config.model.image_size
    x, tokens, lengths, colours, backgrounds = _eval_images(loaded, args.quality_images)
    observed = observed_except_center(len(x), S)
    M = int((~observed[0]).sum())
    profile = loaded.profile
    if profile is None:
        px, pt, pl, _, _ = _eval_images(loaded, 16, start=3 * 10 ** 6)
        profile = loss_profile(model, [(px, pt, pl)], generator=torch.Generator().manual_seed(0))
    out: dict = {"checkpoint": ckpt, "hole": M, "images": len(x), "bits": [], "adherence": []}
    print(f"bits per hole subpixel against forward passes ({args.bits_images} images, {M}-subpixel centre hole):")
    print(f"  {'passes':>6} {'DP plan':>8} {'uniform':>8}")
    n = args.bits_images
    batches = [(x[i:i + 16], observed[i:i + 16], tokens[i:i + 16], lengths[i:i + 16]) for i in range(0, n, 16)]

    def bits(plan):
        with autocast(resolve_precision("auto", "cpu"), torch.device("cpu")):
            return sum(budget_bits(model, *b, plan, generator=torch.Generator().manual_seed(i))
                       for i, b in enumerate(batches)) / len(batches)
    for K in [int(k) for k in args.budgets.split(",")] + [M]:
        dp = bits(step_plan(profile, K, M))
        uni = dp if K in (1, M) else bits(uniform_plan(M, K))
        out["bits"].append({"passes": K, "dp_bits": round(dp, 4), "uniform_bits": round(uni, 4)})
        print(f"  {K:>6} {dp:>8.4f} {uni:>8.4f}", flush=True)
    exact = out["bits"][-1]["dp_bits"]
    print(f"caption adherence against passes (onade.metrics.caption_adherence: hit = share of samples whose "
          f"hole shows the caption's colour most; purity = share of the shape's pixels in that colour); real "
          f"images: {adherence(x, colours, backgrounds)}")
    runs = [("ancestral-DP", dict(strategy="ancestral"), profile),
            ("ancestral-uniform", dict(strategy="ancestral"), None), ("maskgit", dict(strategy="maskgit"), None),
            ("greedy", dict(strategy="greedy"), None),
            ("independent-gibbs", dict(strategy="independent-gibbs"), None)]
    for name, kw, prof in runs:
        for K in [int(k) for k in args.adherence_passes.split(",")]:
            for s in [float(g) for g in args.guidance.split(",")] if K == args.guidance_passes else [1.0]:
                t = time.perf_counter()
                images, _ = onade.inpaint(model, x, observed, tokens, lengths, steps=K, guidance=s, seed=0,
                                          profile=prof, **kw)
                row = {"strategy": name, "passes": K, "guidance": s,
                       "adherence": adherence(images, colours, backgrounds),
                       "images_per_s": round(len(x) / (time.perf_counter() - t), 2)}
                out["adherence"].append(row)
                print(f"  {name:18s} {K:>5} passes  guidance {s:<4} hit {row['adherence']['hit']:.3f} purity "
                      f"{row['adherence']['purity']:.3f}  {row['images_per_s']:8.2f} images/s", flush=True)
    t = time.perf_counter()
    images, _ = onade.inpaint(model, x, observed, tokens, lengths, strategy="independent-gibbs", steps=M, seed=0)
    base = {"strategy": "independent-gibbs", "passes": M, "guidance": 1.0,
            "adherence": adherence(images, colours, backgrounds),
            "images_per_s": round(len(x) / (time.perf_counter() - t), 2)}
    out["adherence"].append(base)
    print(f"  {'independent-gibbs':18s} {M:>5} passes  guidance 1.0  hit {base['adherence']['hit']:.3f} purity "
          f"{base['adherence']['purity']:.3f}  {base['images_per_s']:8.2f} images/s   (the previous default)",
          flush=True)
    out["exact_bits"] = exact
    return out


def bench_job_default(args, ckpt: str) -> dict:
    """ray_jobs.inpaint at its default settings against the previous default (independent Gibbs, one sweep
    per hole subpixel) on the same folder: images/s and caption adherence of the written samples."""
    import numpy as np
    from PIL import Image

    from data.synthetic import write_synthetic
    from ray_jobs import inpaint as job

    out = {}
    with tempfile.TemporaryDirectory(prefix="onade_bench_") as tmp:
        root = Path(tmp)
        metas = write_synthetic(root / "images", args.job_images, start=4 * 10 ** 6, variant="centre")
        for name, flags in (("default", []), ("previous default", ["--strategy", "independent-gibbs",
                                                                   "--steps", "0"])):
            summary = job.main(["--checkpoint", ckpt, "--input", str(root / "images"), "--output",
                                str(root / name.replace(" ", "_")), "--batch-size", str(args.batch_size),
                                "--workers", "1", "--no-progress", *flags])
            samples = np.stack([np.asarray(Image.open(root / name.replace(" ", "_") / f"{m.name}.png"))
                                for m in metas])
            got = adherence(torch.from_numpy(samples), [m.colour for m in metas], [m.background for m in metas])
            out[name] = {"images_per_s": round(summary["images_per_second"], 3), "adherence": got}
            print(f"  job, {name:16s}: {summary['images_per_second']:.3f} images/s, adherence {got}", flush=True)
    out["speedup"] = round(out["default"]["images_per_s"] / out["previous default"]["images_per_s"], 1)
    print(f"  new default / previous default: {out['speedup']}x images/s")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="debug")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=3, help="repeats per strategy (minimums are printed)")
    p.add_argument("--job-images", type=int, default=256)
    p.add_argument("--job-steps", type=int, default=50,
                   help="Gibbs steps per image in the job comparison (enough work to amortise actor start-up)")
    p.add_argument("--precision-presets", default="debug,small", help="presets for bf16 vs fp32 ('' = skip)")
    p.add_argument("--precision-steps", type=int, default=20, help="Gibbs steps per bf16/fp32 round")
    p.add_argument("--skip-job", action="store_true")
    p.add_argument("--quality", action="store_true",
                   help="bits and caption adherence against forward passes, and the job's default vs the previous "
                        "one, on a trained model (--checkpoint, or one trained here for --train-steps)")
    p.add_argument("--checkpoint", help="an exported model trained on the synthetic centre variant")
    p.add_argument("--skip-budgets", action="store_true", help="with --quality: only the job's default vs previous")
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--quality-images", type=int, default=128, help="images for the adherence figures")
    p.add_argument("--bits-images", type=int, default=32, help="images for the bits table")
    p.add_argument("--budgets", default="1,2,4,8,16,32,64,256", help="passes for the bits table (+ full)")
    p.add_argument("--adherence-passes", default="8,16,32,64")
    p.add_argument("--guidance", default="1,1.5,2,3")
    p.add_argument("--guidance-passes", type=int, default=16, help="the budget at which guidance is swept")
    p.add_argument("--out", default="bench_out/sample_quality.json")
    p.add_argument("--skip-samplers", action="store_true")
    p.add_argument("--fit", action="store_true",
                   help="job images/s on photos (--fit context, pasted back) vs on model-size PNGs")
    p.add_argument("--fit-preset", default="small")
    p.add_argument("--fit-images", type=int, default=192, help="several batches: decoding and writing overlap the model")
    p.add_argument("--fit-size", type=int, nargs=2, default=(1024, 768), metavar=("W", "H"))
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the job's peak memory for N and 4N images")
    args = p.parse_args(argv)
    print(f"onade.inpaint, preset {args.preset}, batch {args.batch_size}, {args.device}, "
          f"{torch.get_num_threads()} threads, centre hole")
    if args.precision_presets:
        print(f"bf16 / fp32 images/s, independent Gibbs, {args.precision_steps} steps:")
        bench_precision(args)
    if not args.skip_samplers:
        bench_samplers(args)
    if args.quality:
        import json

        root = Path(args.out).parent / "sample_train"
        if not args.checkpoint:
            shutil.rmtree(root, ignore_errors=True)
        ckpt = trained_checkpoint(args, root)
        result = {"budgets": bench_budgets(args, ckpt)} if not args.skip_budgets else {}
        print(f"ray_jobs.inpaint at its default vs the previous default, {args.job_images} images:")
        result["job"] = bench_job_default(args, ckpt)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.fit:
        import json

        print(f"ray_jobs.inpaint on {args.fit_size[0]}x{args.fit_size[1]} JPEGs vs model-size PNGs, preset "
              f"{args.fit_preset}, {args.fit_images} images, batch {args.batch_size}, the job's default sampler:")
        result = bench_fit(args)
        out = Path(args.out).with_name("sample_fit.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    if not args.skip_job:
        print(f"ray_jobs.inpaint vs one process: {args.job_images} images, {args.job_steps} steps, "
              f"batch {args.batch_size}")
        bench_job(args)


if __name__ == "__main__":
    main()
