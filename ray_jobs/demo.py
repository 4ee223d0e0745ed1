"""`make demo`: the whole pipeline on a laptop in minutes, ending with a gallery of inpainted images.

    make demo                               # = .venv/bin/python -m ray_jobs.demo
    python -m ray_jobs.demo --dest s3://my-bucket/onade-demo --out demo_out

On a cluster (shards and the run go to the bucket; the gallery is written under --out on the head node):

    ray job submit --working-dir . -- python -m ray_jobs.demo --dest s3://my-bucket/onade-demo

Steps: write a synthetic captioned dataset (the shape and colour in each image's centre are only known from
its caption) as train / val / held-back folders; build WebDataset shards of train and val with
`data.make_shards` into --dest (default: $DEST or $ONADE_DEMO_BUCKET; without either, a local S3 server on
127.0.0.1 that lives as long as the demo); train the `debug` preset with `ray_jobs.train` (2 CPU workers,
DeepSpeed); copy the run's export to --out/export (the local S3 server goes away with the demo); inpaint the
held-back folder with `ray_jobs.inpaint --animate`; print the path of index.html and the library call that
loads the model:

    import onade
    ckpt = onade.load_checkpoint("demo_out/export")
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
from pathlib import Path

IMAGE_SIZE = 32


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m ray_jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="local folder for the images and the gallery")
    p.add_argument("--dest", default=os.environ.get("DEST") or os.environ.get("ONADE_DEMO_BUCKET"),
                   help="where shards and the run go: s3://bucket/prefix or a folder (default: a local S3 server)")
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--val-images", type=int, default=256)
    p.add_argument("--heldout-images", type=int, default=12)
    p.add_argument("--steps", type=int, default=1000, help="training steps (debug preset)")
    p.add_argument("--workers", type=int, default=2, help="training workers (CPU, DeepSpeed)")
    p.add_argument("--samples", type=int, default=2, help="inpainted samples per held-back image")
    p.add_argument("--inpaint-steps", type=int, default=None,
                   help="forward passes per image (default: the inpainting job's, onade.config.SampleConfig)")
    return p.parse_args(argv)


@contextlib.contextmanager
def storage_root(dest: str | None, out: Path):
    """The demo's storage: the user's, else a local S3 server, else (no moto installed) a local folder."""
    if dest:
        yield dest.rstrip("/")
        return
    try:
        from data.local_s3 import local_s3_server
    except ImportError:
        yield str(out / "store")
        return
    with local_s3_server("onade-demo") as s3:
        print(f"local S3 server at {s3.endpoint_url} (bucket {s3.bucket}; set DEST=s3://... to use yours)",
              flush=True)
        yield s3.url("demo")


def stage(name: str):
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from data import storage
    from data.make_shards import main as make_shards
    from data.synthetic import write_synthetic
    from onade.export_format import EXPORT_DIR
    from ray_jobs import inpaint, train

    out = Path(args.out).resolve()
    images = out / "images"
    t_start = t = stage(f"synthetic dataset -> {images}")
    splits = {"train": args.train_images, "val": args.val_images, "heldout": args.heldout_images}
    start = 0
    for split, n in splits.items():
        # Disjoint index ranges: the held-back images were never seen in training.
        write_synthetic(images / split, n, image_size=IMAGE_SIZE, seed=0, start=start)
        start += n
    print(f"   {splits} images in {time.perf_counter() - t:.0f}s", flush=True)

    with storage_root(args.dest, out) as root, _ray_cleanup():
        shards = {s: storage.join(root, "shards", s) for s in ("train", "val")}
        t = stage(f"shards -> {storage.join(root, 'shards')}")
        for split, url in shards.items():
            rc = make_shards([str(images / split), url, "--image-size", str(IMAGE_SIZE), "--shard-size", "1000",
                              "--no-progress"])
            if rc != 0:
                raise SystemExit(f"demo: data.make_shards failed for {split} (exit {rc})")
        print(f"   {time.perf_counter() - t:.0f}s", flush=True)

        t = stage(f"training the debug preset, {args.workers} CPU workers, {args.steps} steps")
        runs = storage.join(root, "runs")
        # Validation, checkpoints and run-file uploads cost seconds each on 2 CPUs: do them once, at the end.
        metrics = train.main(["--data", shards["train"], "--val-data", shards["val"], "--output", runs,
                              "--name", "demo", "--preset", "debug", "--workers", str(args.workers),
                              "--steps", str(args.steps),
                              "--set", "train.log_every=50", "--set", f"train.val_every={args.steps}",
                              "--set", f"train.checkpoint_every={args.steps}", "--set", "train.val_batches=1"])
        checkpoint = metrics.get("export") or storage.join(runs, "demo", EXPORT_DIR)
        export = keep_export(checkpoint, out / EXPORT_DIR)
        print(f"   {time.perf_counter() - t:.0f}s; checkpoint {checkpoint}, kept in {export}", flush=True)

        t = stage("inpainting the held-back images")
        # From the run's export, not the local copy: on a cluster the actors run on other nodes than --out's.
        # The job resumes into a folder that holds outputs; the demo's gallery is of this run's model.
        shutil.rmtree(out / "inpainted", ignore_errors=True)
        summary = inpaint.main(["--checkpoint", checkpoint, "--input", str(images / "heldout"),
                                "--output", str(out / "inpainted"), "--animate", "--samples", str(args.samples),
                                *(["--steps", str(args.inpaint_steps)] if args.inpaint_steps is not None else []),
                                "--batch-size", "32",
                                # Annealing towards the mode makes the short-trained model commit to one shape.
                                "--final-temperature", "0.3"])
        print(f"   {time.perf_counter() - t:.0f}s", flush=True)
    print(f"\ndemo finished in {(time.perf_counter() - t_start) / 60:.1f} min. Open the gallery:\n{summary['index']}\n"
          f"The trained model, in Python:\n    import onade\n"
          f'    ckpt = onade.load_checkpoint("{shown_path(export)}")', flush=True)
    return summary["index"]


def keep_export(url: str, local: Path) -> Path:
    """Copy the export at `url` (in the demo's storage, maybe a local S3 server that ends with the demo) to the
    local folder `local`, replacing whatever an earlier demo left there, so no stale file outlives its model."""
    from data import storage

    if not storage.is_s3(url) and Path(url).resolve() == local.resolve():
        return local
    shutil.rmtree(local, ignore_errors=True)
    storage.download_dir(url, local)
    return local


def shown_path(path: Path) -> str:
    """`path` as a user types it where they ran the demo: relative below the current folder, else absolute."""
    relative = os.path.relpath(path)
    return path.as_posix() if Path(relative).parts[0] == ".." else Path(relative).as_posix()


@contextlib.contextmanager
def _ray_cleanup():
    """The stages share the Ray instance the first one starts; stop it before the S3 server goes away."""
    try:
        yield
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    from ray_jobs.cli import run

    run(main)
