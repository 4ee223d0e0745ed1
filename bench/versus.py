"""This checkout against an earlier commit, side by side in one run: the same measurement, alternating trees.

    python -m bench.versus --base 1742009 sample       # onade.inpaint images/s per strategy, debug and small
    python -m bench.versus --base 1742009 step         # train_step samples/s through a one-rank ZeRO-2 engine
    python -m bench.versus --base e48393f data         # make_shards images/s; shard reading + preprocessing rows/s

The base commit is checked out with `git worktree add --detach` into a temporary folder (removed after).
Each round runs one measuring process per tree, in alternating order, with that tree first on sys.path;
the best of each tree counts (the least disturbed on a shared machine) and the ratio new / base is printed.
The measuring code lives here and adapts to the base's API where it differs (train_step before the
GPU-path rework took the mask config and generators; after it, a DrawStream; issue 24 renamed
center_mask, plan_batches and moved free_port).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {"ancestral32": dict(strategy="ancestral", steps=32), "gibbs20": dict(strategy="independent-gibbs", steps=20),
              "maskgit16": dict(strategy="maskgit", steps=16),
              "ancestral32-guided": dict(strategy="ancestral", steps=32, guidance=2.0)}


def measure_sample(presets: list[str], reps: int, batch: int) -> dict[str, float]:
    import torch

    import onade
    from onade.config import get_preset
    try:
        from onade.masks import observed_except_center
    except ImportError:  # before issue 24
        from onade.masks import center_mask as observed_except_center

    out = {}
    for preset in presets:
        torch.manual_seed(0)
        cfg = get_preset(preset)
        model = onade.build_model(cfg).eval()
        S = cfg.model.image_size
        x = torch.randint(0, 256, (batch, S, S, 3), dtype=torch.uint8)
        tokens, lengths = torch.randint(4, cfg.model.vocab_size, (batch, 12)), torch.full((batch,), 10)
        for name, kw in STRATEGIES.items():
            best = 0.0
            for _ in range(reps):
                tic = time.perf_counter()
                onade.inpaint(model, x, observed_except_center(batch, S), tokens, lengths, seed=0, **kw)
                best = max(best, batch / (time.perf_counter() - tic))
            out[f"{preset} {name} images/s"] = best
    return out


def measure_step(presets: list[str], reps: int, batch: int) -> dict[str, float]:
    os.environ["DS_ACCELERATOR"] = "cpu"
    import torch
    import torch.distributed as dist

    try:
        from data.local_s3 import free_port  # before issue 24 (ray_env then had another free_port)
    except ImportError:
        from ray_jobs.ray_env import free_port
    from onade.config import load_config
    from onade.model import build_model
    from onade.precision import resolve_precision
    from ray_jobs import engine as eng
    from ray_jobs.train_loop import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.set_num_threads(1)  # one Ray worker's share on this machine
    drawn = "draws" in inspect.signature(train_step).parameters
    out = {}
    for preset in presets:
        cfg = load_config(preset, sets=[f"data.global_batch_size={batch}"])
        split_batch = getattr(eng, "split_batch", None) or eng.plan_batches  # plan_batches before issue 24
        precision, split = resolve_precision("auto", "cpu"), split_batch(batch, 1)
        torch.manual_seed(0)
        if drawn:
            from ray_jobs.train_draws import DrawStream

            ds = eng.deepspeed_config(eng.load_zero_json(2), split, 1.0, precision)
            engine = eng.build_engine(build_model(cfg), cfg, ds, torch.device("cpu"))
        else:
            engine = eng.build_engine(build_model(cfg), cfg, eng.deepspeed_config(eng.load_zero_json(2), split, 1.0))
        S = cfg.model.image_size
        data = {"image": torch.randint(0, 256, (batch, S, S, 3), dtype=torch.uint8),
                "tokens": torch.randint(4, 60, (batch, 12)), "length": torch.full((batch,), 10)}
        masks, captions = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        if drawn:
            draws = DrawStream(cfg.masks, batch, S, masks, cfg.train.caption_dropout, captions)
            step = lambda: float(train_step(engine, [data], draws, cfg.train.loss).loss)  # noqa: E731
        else:
            step = lambda: train_step(engine, [data], cfg.masks, cfg.train.loss, masks, precision, None,  # noqa: E731
                                      cfg.train.caption_dropout, captions).loss
        for _ in range(3):
            step()
        times = []
        for _ in range(reps):
            tic = time.perf_counter()
            step()
            times.append(time.perf_counter() - tic)
        out[f"{preset} train_step samples/s"] = batch / statistics.median(times)
        del engine
    dist.destroy_process_group()
    return out


def measure_data(presets: list[str], reps: int, images: int) -> dict[str, float]:
    """make_shards on one worker (decode, crop, encode, tar, tokenizer), then every shard read back through
    the training reader and preprocessed (decode, crop, flip, tokenize) as a Ray Data batch would be."""
    import numpy as np

    from data import make_shards, synthetic
    from ray_jobs import data as rd

    best_write = best_read = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.write_synthetic(f"{tmp}/src", images, image_size=64, seed=0)
        for r in range(reps):
            dest = f"{tmp}/shards{r}"
            tic = time.perf_counter()
            make_shards.main([f"{tmp}/src", dest, "--image-size", "32", "--workers", "1", "--shard-size", "250",
                              "--no-progress"])
            best_write = max(best_write, images / (time.perf_counter() - tic))
            tok, rows = rd.tokenizer_for(dest), 0
            tic = time.perf_counter()
            for shard in sorted(Path(dest).glob("*.tar")):
                with open(shard, "rb") as f:
                    samples = list(rd.iter_tar_rows(f, str(shard)))
                batch = {k: np.array([s.get(k) for s in samples], dtype=object)
                         for k in ("__key__", "__url__", "png", "txt")}
                out = rd.preprocess_batch(batch, image_size=32, max_tokens=32, tokenizer=tok, train=True)
                rows += len(out["image"])
            best_read = max(best_read, rows / (time.perf_counter() - tic))
    return {"make_shards images/s": best_write, "read + preprocess rows/s": best_read}


MEASURES = {"sample": (measure_sample, 2, 64), "step": (measure_step, 12, 16), "data": (measure_data, 2, 2000)}


def run_tree(tree: Path, what: str, presets: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", what, "--tree", str(tree),
                           "--presets", presets], cwd=tree, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"measuring {what} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=sorted(MEASURES))
    p.add_argument("--base", help="the commit to compare against (e.g. 1742009)")
    p.add_argument("--presets", default="debug,small")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # inside one tree
    p.add_argument("--tree", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        fn, reps, batch = MEASURES[args.what]
        result = fn(args.presets.split(","), reps, batch)
        print(json.dumps(result))
        return result
    if not args.base:
        p.error("--base COMMIT is required")
    base = Path(tempfile.mkdtemp(prefix="onade_base_"))
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(base), args.base], cwd=ROOT, check=True,
                   capture_output=True)
    best: dict[str, dict[str, float]] = {"base": {}, "this": {}}
    try:
        for r in range(args.rounds):
            order = [("base", base), ("this", ROOT)]
            for label, tree in order if r % 2 == 0 else order[::-1]:
                for key, value in run_tree(tree, args.what, args.presets).items():
                    best[label][key] = max(best[label].get(key, 0.0), value)
                print(f"round {r + 1} {label}: done", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    print(f"{'measure':<36} {args.base:>10} {'this':>10} {'this/base':>10}  (load {os.getloadavg()[0]:.1f})")
    for key in best["base"]:
        a, b = best["base"][key], best["this"][key]
        print(f"{key:<36} {a:>10.2f} {b:>10.2f} {b / a:>10.3f}")
    return best


if __name__ == "__main__":
    if "--measure" in sys.argv:  # the measured tree first: its onade, data and ray_jobs, not this checkout's
        sys.path[0] = sys.argv[sys.argv.index("--tree") + 1]
    main()
