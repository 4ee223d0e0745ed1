r"""Inpaint every image of a folder (local or S3) with a trained onade checkpoint, on a Ray actor pool.

Locally (starts a local Ray when RAY_ADDRESS is unset):

    python -m ray_jobs.inpaint --checkpoint runs/debug1/export --input photos/ --output inpainted/ --animate

On a cluster (one GPU per actor; 30 images x 4 samples = 120 rows per forward pass, what half of a 24 GB
GPU holds for `base`: docs/gpus.md):

    ray job submit --working-dir . -- python -m ray_jobs.inpaint \
        --checkpoint s3://bucket/runs/base1/export --input s3://bucket/photos --output s3://bucket/inpainted \
        --workers 8 --gpus-per-worker 1 --batch-size 30 --samples 4

Sampler settings are one onade.config.SampleConfig (see onade.sampling): --strategy, --steps (the budget of
forward passes), --temperature, --final-temperature, --chunk, --precision and --guidance override its
defaults, and each results line records the strategy, steps, guidance, forward passes and precision used.
For example, ancestral sampling in 32 passes (sized from the checkpoint's loss profile when it ships one),
following the caption twice as hard as unguided sampling:

    python -m ray_jobs.inpaint --checkpoint runs/guided/export --input photos/ --output inpainted/ \
        --strategy ancestral --steps 32 --guidance 2

(guidance needs a model trained with caption dropout: `--set train.caption_dropout=0.1` for debug and small).

Inputs are found recursively (png, jpg, webp, bmp, gif, tiff, pnm) and turned upright by their EXIF
orientation. --fit context (default): each image's hole gets a square window with as much context again
(onade.holes), resized to the model size, inpainted, and the sample pasted back into the hole only, at the
image's own size: every pixel outside the hole keeps the decoded input's bytes (--feather PX blends the
edge; a hole longer than the image's shorter side is an error row, never tiled). --fit crop: the model-size
centre crop, written at the model size. Masks are in image coordinates: --mask center (the central square of
half the shorter side), box:X,Y,W,H (pixels), box:0.25,0.25,0.5,0.5 (fractions of the sides),
random-box[:SEED] (a box per image), or a folder of mask PNGs at the same relative paths and the images'
sizes (white = hide). Captions come from a sidecar `<stem>.txt` (its first non-blank line), or from
--captions FILE.jsonl ({"file": "relative/path.jpg", "caption": "..."}); no caption means an empty one.

Outputs, at each input's relative path under --output: `<stem>.png` (`<stem>.<k>.png` for --samples K;
--format jpg|webp), `<stem>.masked.png` (the hole as a checkerboard), `<stem>.thumb.jpg`, `<stem>.gif` with
--animate; one line per input in `results.jsonl` (with the window and how it maps back) and a gallery,
`index.html`, `index-2.html`, ... Sample k of an input is drawn from a seed of (--seed, its relative path,
k), so outputs are the same whatever --batch-size, --workers or resume. Every file is written whole or not
at all; running again skips inputs whose outputs are all there and were made with the same settings, so a
killed job resumes. A bad input becomes an error line; the job exits 0 unless every input failed.

Inputs are untrusted (data/untrusted.py): a key or entry that is not a plain relative path (`..`, a leading
`/`, ...), a symlink out of the input folder, an image over --max-image-pixels, an oversized caption file or
caption becomes an error line, and nothing is read or written for it; nothing is written outside --output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time

from data.images import FORMATS
from data.untrusted import DEFAULT_MAX_IMAGE_PIXELS
from onade.config import SampleConfig
from ray_jobs.cli import add_sampler_flags, describe_sampler, sample_config
from ray_jobs.devices import check_gpus_per_process, warn_idle_gpus
from ray_jobs.inpaint_inputs import FITS, JobOptions, decode_batch, list_tree, mask_table, read_captions_jsonl
from ray_jobs.outputs import INDEX, RESULTS, OutputClaims, OutputNames, error_record, write_batch, write_gallery
from ray_jobs.ray_env import init_ray, print_versions

# The settings of the last run that wrote into an output folder: outputs without a results line (a killed
# run writes results.jsonl only at its end) count as done only when they were made with today's settings.
SETTINGS = ".onade-inpaint.json"
IGNORED_EXTENSIONS = (".txt", ".json", ".jsonl", ".html")
IO_CPUS = 0.25  # each decode or write task's share of a CPU


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.inpaint", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="exported checkpoint: a folder or s3://bucket/prefix")
    p.add_argument("--input", required=True, help="folder or s3:// prefix of images (searched recursively)")
    p.add_argument("--output", required=True, help="folder or s3:// prefix for the outputs")
    p.add_argument("--captions", help="JSONL of {\"file\": ..., \"caption\": ...} (default: sidecar .txt files)")
    p.add_argument("--mask", default="center", metavar="SPEC",
                   help="center | box:X,Y,W,H (image pixels) | box:0.25,0.25,0.5,0.5 (fractions of the sides) | "
                        "random-box[:SEED] | MASK_DIR of mask PNGs (default center)")
    p.add_argument("--fit", choices=FITS, default="context",
                   help="context: inpaint a window around the hole and paste it back into the image at its own "
                        "size (default); crop: the model-size centre crop")
    p.add_argument("--format", choices=sorted(FORMATS), default="png",
                   help="of the results and masked previews (default png; jpg is lossy outside the hole too)")
    p.add_argument("--feather", type=int, default=0, metavar="PX",
                   help="blend the sample in over PX pixels inside the hole's edge (default 0: a hard edge)")
    add_sampler_flags(p)
    p.add_argument("--samples", type=int, default=1, help="samples per image (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", action="store_true",
                   help="the inputs' holes hold the true content: report its texture beside the samples'")
    p.add_argument("--batch-size", type=int, default=64, help="images per actor call (default 64)")
    p.add_argument("--max-forward-batch", type=int, default=0, metavar="ROWS",
                   help="rows per forward pass, a guided sample counting two (default: what half the device's free "
                        "memory holds, onade.memory); a batch of --batch-size x --samples runs in pieces of this "
                        "many, and a piece that runs out of memory is halved, with the same samples")
    p.add_argument("--workers", type=int, default=1, help="actors in the pool (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0,
                   help="GPUs per actor, at most 1 (0.5: two actors share a GPU); 0 = CPU actors")
    p.add_argument("--accelerator-type", default=None, metavar="TYPE",
                   help="GPU type each actor needs (e.g. A10G): steers the autoscaler to that node type")
    p.add_argument("--cpus-per-worker", type=float, default=0,
                   help="default: 1 with GPUs; on CPU the node's CPUs shared out, leaving some for decoding")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                   help=f"larger images become error rows, refused from their header (default "
                        f"{DEFAULT_MAX_IMAGE_PIXELS:,}); files over 4 bytes per pixel are not read")
    p.add_argument("--animate", action="store_true", help="also write <stem>.gif of the sampling chain")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    args = p.parse_args(argv)
    if args.max_forward_batch < 0:
        p.error("--max-forward-batch must be >= 0 (0: from the free memory)")
    for flag in ("samples", "batch_size", "workers", "max_image_pixels"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.feather < 0:
        p.error("--feather must be >= 0")
    try:
        check_gpus_per_process(args.gpus_per_worker, "--gpus-per-worker", shareable=True)
    except ValueError as e:
        p.error(str(e))
    if args.feather and args.fit != "context":
        p.error("--feather blends a sample pasted back into its image: it needs --fit context")
    args.sample = sample_config(p, args)
    return args


def guidance_warning(guidance: float, caption_dropout: float, option: str = "--guidance") -> str | None:
    """The warning for classifier-free guidance (a scale other than 1) on a model trained without caption dropout
    (its export's train.caption_dropout): guidance mixes in the model's logits for the empty caption, which such a
    model never saw in training. None when guidance is off or the model learnt the empty caption. `option` names
    the setting as the user gave it (the job's flag, the server's form field)."""
    if guidance == 1 or caption_dropout > 0:
        return None
    return (f"warning: {option} {guidance:g}, but this model was trained with train.caption_dropout 0: guidance "
            "needs a model trained with train.caption_dropout > 0 (it never saw the empty caption guidance compares "
            f"against); expect worse samples than {option} 1")


# ---- selecting the work (driver only, before any Ray work) ----------------------------------------

def _rel(url: str, root: str) -> str:
    from data import storage

    if storage.is_s3(url):
        return url[len(root.rstrip("/")) + 1:]
    return os.path.relpath(url, root).replace(os.sep, "/")


def error_row(url: str, rel: str, error: str, sample: SampleConfig) -> dict:
    return error_record({"input": url, "rel": rel}, error, sample, seconds=0.0)


def _nested(inner: str, outer: str) -> str | None:
    """inner's path relative to outer when it lies inside it (an output folder inside the input folder
    must not become input on the next run), else None."""
    from data import storage

    if not storage.is_s3(inner) and not storage.is_s3(outer):
        inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    inner, outer = inner.rstrip("/"), outer.rstrip("/")
    return _rel(inner, outer) if inner.startswith(outer + "/") else None


def _same_or_inside(inner: str, outer: str) -> bool:
    from data import storage

    if storage.is_s3(inner) != storage.is_s3(outer):
        return False
    if not storage.is_s3(inner):
        inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    return inner.rstrip("/") == outer.rstrip("/") or _nested(inner, outer) is not None


def caption_table(args, files: dict[str, str], sample: SampleConfig) -> tuple[dict[str, str], list[dict]]:
    """{rel: caption} from --captions for the inputs listed, and an error row per line that cannot be used
    (nothing without --captions: each input's sidecar .txt is read as it is decoded)."""
    if not args.captions:
        return {}, []
    captions, bad_lines = read_captions_jsonl(args.captions, args.input, set(files))
    if bad_lines:
        print(f"warning: {len(bad_lines)} line(s) of {args.captions} cannot be used (see results.jsonl)",
              file=sys.stderr)
    return captions, [error_row(args.captions, where, why, sample) for where, why in bad_lines]


def input_problem(rel: str, ext: str, unsafe: dict, bad_masks: dict[str, str], captions_file: str | None) -> str:
    """Why the input at `rel` cannot be used, known before reading it ("" if none)."""
    from data.images import IMAGE_EXTENSIONS

    stem = os.path.splitext(rel)[0]
    if not ext.endswith(IMAGE_EXTENSIONS):
        return f"not an image (extension {ext or 'none'!r}); images are " + ", ".join(IMAGE_EXTENSIONS)
    if stem + ".txt" in unsafe and not captions_file:
        return f"caption file {stem}.txt not read: {unsafe[stem + '.txt'][1]}"
    if stem in bad_masks:
        return f"mask file not read: {bad_masks[stem]}"
    return ""


def resumed_row(prev: dict | None, url: str, rel: str, outs, caption: str, sample: SampleConfig,
                settings: str) -> dict:
    """The result line of an input already done: the earlier run's line when there is one (it has the caption,
    steps and timing)."""
    if prev and prev.get("status") == "ok":
        return dict(prev, resumed=True)
    return {"input": url, "rel": rel, "outputs": outs.all(), "files": outs.files(), "caption": caption,
            "strategy": sample.strategy, "status": "ok", "settings": settings, "resumed": True}


def select_work(args, opts, previous: dict[str, dict], folder_settings: str | None = None):
    """Split the input tree into (rows to inpaint, result lines already known). Every entry gets a row:
    unusable ones (unsafe names, symlinks out of the input, not images) an error row, and nothing is
    read or written for them. An input is done when all its outputs exist and were made with these settings
    (its line in `previous` says so, or, without one, `folder_settings`: SETTINGS of the last run)."""
    from data import storage

    sample = opts.sample_config()
    settings = opts.fingerprint()
    files, unsafe = list_tree(args.input)
    if not files and not unsafe and not storage.is_s3(args.input) and not os.path.isdir(args.input):
        raise ValueError(f"--input {args.input!r} does not exist")
    out_rel = _nested(args.output, args.input)

    def in_output(rel: str) -> bool:
        return bool(out_rel) and (rel + "/").startswith(out_rel + "/")

    captions, known = caption_table(args, files, sample)
    masks, bad_masks = mask_table(args.mask) if opts.mask == "dir" else ({}, {})
    done_outputs = set(list_tree(args.output)[0])
    known += [error_row(url, rel, f"not read: {why}", sample) for rel, (url, why) in sorted(unsafe.items())
              if not in_output(rel)]
    claims = OutputClaims()
    todo = []
    for rel, url in sorted(files.items()):
        name = rel.rsplit("/", 1)[-1]
        ext = os.path.splitext(name)[1].lower()
        if name.startswith(".") or in_output(rel) or ext in IGNORED_EXTENSIONS:
            continue
        problem = input_problem(rel, ext, unsafe, bad_masks, args.captions)
        if not problem:
            outs = OutputNames.of(rel, opts)
            problem = claims.clash(outs.all())
        if problem:
            known.append(error_row(url, rel, problem, sample))
            continue
        claims.claim(outs.all(), rel)
        prev = previous.get(url)
        made_here = (prev.get("settings") if prev else folder_settings) == settings
        if made_here and all(o in done_outputs for o in outs.all()):
            known.append(resumed_row(prev, url, rel, outs, captions.get(rel, ""), sample, settings))
            continue
        stem = os.path.splitext(rel)[0]
        sidecar = files.get(stem + ".txt", "") if not args.captions else ""
        todo.append({"input": url, "rel": rel, "caption": captions.get(rel, ""), "caption_url": sidecar,
                     "mask_url": masks.get(stem, "")})
    return todo, known


def read_previous(output: str) -> dict[str, dict]:
    from data import storage

    url = storage.join(output, RESULTS)
    if not storage.exists(url):
        return {}
    prev = {}
    for line in storage.read_bytes(url).decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            prev[rec["input"]] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return prev


# ---- Ray ----------------------------------------------------------------------------------------

def inpaint_pipeline(todo: list[dict], args, opts):
    """The job's Ray Dataset: decode (CPU tasks) -> model (the actor pool) -> paste back and write (CPU tasks)
    -> result lines."""
    import ray
    import ray.data

    from ray_jobs.inpaint_actor import InpaintActor

    o = opts.to_dict()
    ds = ray.data.from_items(todo, override_num_blocks=max(1, math.ceil(len(todo) / args.batch_size)))
    # Decoding and writing are light: small CPU slices keep them running beside actors that hold most CPUs.
    ds = ds.map_batches(decode_batch, fn_kwargs={"opts": o}, batch_size=args.batch_size, batch_format="numpy",
                        num_cpus=IO_CPUS)
    # Ray Data restarts a dead pool actor and retries its batch (max_restarts=-1, max_task_retries=-1 are
    # its defaults for actor pools); every output is written atomically, so a retry finds nothing half-written.
    ds = ds.map_batches(
        InpaintActor, fn_constructor_kwargs={"opts": o}, batch_size=args.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=args.workers), num_cpus=cpus_per_actor(args),
        num_gpus=args.gpus_per_worker or None,
        **({"accelerator_type": args.accelerator_type} if args.accelerator_type else {}))
    return ds.map_batches(write_batch, fn_kwargs={"opts": o}, batch_size=args.batch_size, batch_format="numpy",
                          num_cpus=IO_CPUS)


def cpus_per_actor(args) -> float:
    if args.cpus_per_worker > 0:
        return args.cpus_per_worker
    if args.gpus_per_worker > 0:
        return 1.0
    import ray

    total = ray.cluster_resources().get("CPU", 1.0)
    # Leave CPU to the decode and write tasks or the pipeline stalls (Ray Data needs free CPU for them).
    return max(0.25, (total - 2 * IO_CPUS) / args.workers)


def run_pool(todo: list[dict], args, opts, results, counts: dict) -> float:
    """Inpaint `todo` on a Ray actor pool (started here when none is running), each result line written to
    `results` as it arrives and counted; the seconds it took."""
    import ray
    from tqdm import tqdm

    started = init_ray() is not None
    try:
        warn_idle_gpus(args.gpus_per_worker)
        ray.data.DataContext.get_current().enable_progress_bars = False
        if args.gpus_per_worker <= 0:
            total = ray.cluster_resources().get("CPU", 1.0)
            opts.threads = max(1, int(total // args.workers))
        ds = inpaint_pipeline(todo, args, opts)
        t0 = time.perf_counter()
        bar = tqdm(total=len(todo), unit="img", desc="inpainting", file=sys.stderr, dynamic_ncols=True,
                   disable=args.no_progress)
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            rec["rel"] = _rel(rec["input"], args.input)
            results.write(json.dumps(rec, ensure_ascii=False) + "\n")
            results.flush()
            counts["done" if rec["status"] == "ok" else "failed"] += 1
            bar.update(1)
        bar.close()
        return time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()


# ---- main ---------------------------------------------------------------------------------------

def job_options(args):
    """The stages' JobOptions from the flags, once the folders, the checkpoint and --mask are checked."""
    from data import storage, untrusted
    from onade.holes import HoleSpec
    from ray_jobs.train_checkpoints import read_config

    for flag in ("input", "output", "mask"):
        untrusted.check_s3_root(getattr(args, flag), f"--{flag}")
    if _same_or_inside(args.input, args.output):
        raise ValueError(f"--output {args.output!r} is --input or contains it: outputs could overwrite inputs and "
                         "be read as inputs next time; use another folder (one inside --input is fine)")
    cfg = read_config(args.checkpoint)  # the driver never needs the weights
    warning = guidance_warning(args.sample.guidance, cfg.train.caption_dropout)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    mask = args.mask
    if storage.is_s3(mask) or os.path.isdir(mask):
        mask = "dir"
    else:
        try:
            HoleSpec.parse(mask)
        except ValueError as e:
            raise ValueError(f"--mask {e}; or an existing folder of mask PNGs") from None
    storage.check_writable(args.output)
    return JobOptions(checkpoint=args.checkpoint, input=args.input, output=args.output,
                      image_size=cfg.model.image_size, mask=mask, mask_dir=args.mask if mask == "dir" else "",
                      fit=args.fit, format=args.format, feather=args.feather, max_pixels=args.max_image_pixels,
                      sample=dataclasses.asdict(args.sample), samples=args.samples, seed=args.seed,
                      animate=args.animate, max_forward_batch=args.max_forward_batch, reference=args.reference)


def read_folder_settings(output: str) -> str | None:
    """The settings of the last run that wrote into `output` (its SETTINGS file), None if unknown."""
    from data import storage

    url = storage.join(output, SETTINGS)
    if storage.exists(url):
        with contextlib.suppress(ValueError, AttributeError, storage.StorageError):
            return json.loads(storage.read_bytes(url, max_bytes=1 << 16)).get("settings")
    return None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    print_versions()
    from data import storage, untrusted

    opts = job_options(args)
    folder_settings = read_folder_settings(args.output)
    todo, known = select_work(args, opts, read_previous(args.output), folder_settings)
    if not todo and not known:
        raise ValueError(f"no images under {args.input!r}")
    skipped = sum(1 for r in known if r.get("resumed"))
    print(f"inpainting {len(todo)} image(s) from {args.input} ({describe_sampler(args.sample)}; "
          f"{skipped} already done, {len(known) - skipped} not images) -> {args.output}", flush=True)

    if todo:
        untrusted.write_output(args.output, SETTINGS, json.dumps({"settings": opts.fingerprint(),
                                                                 "options": opts.to_dict()}, indent=1).encode())
    tmp = tempfile.mkdtemp(prefix="onade_inpaint_")
    counts = {"done": 0, "failed": len(known) - skipped, "skipped": skipped}
    elapsed = 0.0
    try:
        results_path = os.path.join(tmp, RESULTS)
        with open(results_path, "w", encoding="utf-8") as results:
            for rec in known:
                results.write(json.dumps(rec, ensure_ascii=False) + "\n")
            if todo:
                elapsed = run_pool(todo, args, opts, results, counts)
        with open(results_path, "rb") as f:
            storage.write_file_atomic(storage.join(args.output, RESULTS), f)
        summary = (f"{counts['done']} done, {counts['skipped']} skipped (already done), {counts['failed']} failed; "
                   f"{counts['done'] / elapsed if elapsed else 0.0:.2f} images/s; {describe_sampler(args.sample)}")
        pages = os.path.join(tmp, "gallery")
        write_gallery(pages, results_path, summary)
        storage.upload_dir(pages, args.output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    index_url = storage.join(args.output, INDEX)
    print(summary)
    print(f"results: {storage.join(args.output, RESULTS)}\ngallery: {index_url}", flush=True)
    return dict(counts, images_per_second=counts["done"] / elapsed if elapsed else 0.0, seconds=elapsed,
                index=index_url, results=storage.join(args.output, RESULTS))


def exit_code(summary: dict) -> int:
    """0 unless every input failed: some bad files in a large folder are expected, and recorded."""
    return 1 if summary["failed"] and not summary["done"] and not summary["skipped"] else 0


if __name__ == "__main__":
    from ray_jobs.cli import run

    run(main, exit_code)
