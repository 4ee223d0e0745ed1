"""The GPU acceptance command: every CUDA path of the project, run once, as one table of PASS/FAIL.

    python -m bench.gpu_check                  # on a GPU machine: one worker / actor per GPU it has
    python -m bench.gpu_check --device cpu     # the same checks at their smallest, on CPUs (a test runs this)

Checks, in order (each a row of the table, with its figures):
  precision   a DeepSpeed engine built as a training worker builds it (ray_jobs.engine, one rank): the dtype
              the first convolution computes in, for train.precision bf16 and fp32 (bf16 must really run:
              DeepSpeed switches off an autocast opened around its forward), and train steps/s of each, with
              peak memory, for --presets (small and base on a GPU); what precision "auto" picks on this device
  train       `ray_jobs.train`: debug for 50 steps (20 with --device cpu), one worker per GPU, ZeRO-2; the start
              event's forward dtype
  resume      that run resumed on CPU workers (another device kind and worker count), and a run started on
              CPU workers resumed on the GPUs; ZeRO-3 `large` for 2 steps where the GPUs' memory allows
  evaluate    `ray_jobs.evaluate` with one actor per GPU (--gpus-per-worker 1) on generated shards
  inpaint     `ray_jobs.inpaint` with --gpus-per-worker 1 on a generated folder, and again with
              --max-forward-batch 2 (a forced split): every image done both times; on CPU the bytes must match
              (on GPUs cuDNN may round another batch shape differently: reported, not required)
Exits 1 if any check fails. With --device cpu every GPU becomes a CPU worker or actor and the cross-device
resumes become worker-count changes; the whole run takes about 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Row:
    check: str
    result: str  # PASS, FAIL or SKIP
    figures: str


class Checks:
    def __init__(self):
        self.rows: list[Row] = []

    def add(self, check: str, ok: bool | None, figures: str) -> None:
        result = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append(Row(check, result, figures))
        print(f"[{result}] {check}: {figures}", flush=True)

    def guard(self, check: str, fn, *args) -> object:
        """Run one check; an exception is that check's FAIL, and the rest still run."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - any failure is reported in the table
            traceback.print_exc()
            self.add(check, False, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            return None

    def table(self) -> str:
        width = max(len(r.check) for r in self.rows)
        lines = [f"{'check':<{width}}  result  figures", f"{'-' * width}  ------  -------"]
        lines += [f"{r.check:<{width}}  {r.result:<6}  {r.figures}" for r in self.rows]
        return "\n".join(lines)

    @property
    def failed(self) -> bool:
        return any(r.result == "FAIL" for r in self.rows)


# ---- precision: an engine as the training worker builds it -------------------------------------------------

def check_precision(checks: Checks, args, device: torch.device) -> None:
    import torch.distributed as dist

    from onade.precision import resolve_precision
    from ray_jobs.ray_env import free_port

    checks.add("precision auto", True, f"resolves to {resolve_precision('auto', device)} on {describe(device)}")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        for preset in args.presets.split(","):
            rates, dtypes, peaks = {}, {}, {}
            try:
                for precision in ("fp32", "bf16"):
                    rates[precision], dtypes[precision], peaks[precision] = engine_steps(preset, precision, device,
                                                                                         args)
            except torch.OutOfMemoryError:
                checks.add(f"bf16 training forward ({preset})", None,
                           f"out of memory at --batch {args.batch} in {precision}: pass a smaller --batch")
                continue
            ok = dtypes["bf16"] == "bfloat16" and dtypes["fp32"] == "float32"
            mem = "" if device.type != "cuda" else (f", peak {peaks['bf16'] / 2**30:.2f} vs {peaks['fp32'] / 2**30:.2f}"
                                                    " GiB")
            checks.add(f"bf16 training forward ({preset})", ok,
                       f"conv computes in {dtypes['bf16']} (fp32 run: {dtypes['fp32']}); {rates['bf16']:.1f} vs "
                       f"{rates['fp32']:.1f} samples/s = {rates['bf16'] / rates['fp32']:.2f}x{mem}")
    finally:
        dist.destroy_process_group()


def engine_steps(preset: str, precision: str, device: torch.device, args) -> tuple[float, str | None, int]:
    """(samples/s, the conv's compute dtype, peak bytes) of train steps through a one-rank ZeRO-2 engine."""
    from onade.config import load_config
    from onade.model import build_model
    from onade.precision import ComputeDtype
    from ray_jobs.engine import build_engine, deepspeed_config, load_zero_json, split_batch
    from ray_jobs.train_draws import DrawStream
    from ray_jobs.train_loop import train_step

    batch = args.batch
    cfg = load_config(preset, sets=[f"data.global_batch_size={batch}", "train.caption_dropout=0"])
    split = split_batch(batch, 1)
    torch.manual_seed(0)
    engine = build_engine(build_model(cfg), cfg, deepspeed_config(load_zero_json(2), split, 1.0, precision), device)
    S = cfg.model.image_size
    data = {"image": torch.randint(0, 256, (batch, S, S, 3), dtype=torch.uint8, device=device),
            "tokens": torch.randint(4, cfg.model.vocab_size, (batch, 12), device=device),
            "length": torch.full((batch,), 10, device=device)}
    draws = DrawStream(cfg.masks, batch, S, torch.Generator().manual_seed(0), device=device)
    probe = ComputeDtype(engine.module)
    try:
        for _ in range(2):  # warm-up: kernel selection, allocator
            train_step(engine, [data], draws, cfg.train.loss)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.train_steps):
            tic = time.perf_counter()
            train_step(engine, [data], draws, cfg.train.loss)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - tic)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        return batch / statistics.median(times), probe.close(), peak
    finally:  # also after an out-of-memory error: the later checks need this GPU's memory back
        probe.close()
        draws.close()
        del engine, data
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---- the jobs, through their main(argv) on one local Ray ----------------------------------------------------

def events(run: Path, name: str) -> list[dict]:
    return [r for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())
            if r.get("event") == name]


def train(argv: list[str]) -> dict:
    from ray_jobs.train import main

    return main(argv)


def check_training(checks: Checks, args, root: Path, shards: str, gpus: int) -> str | None:
    """Train, resume across device kinds; returns the export of the first run (for evaluate and inpaint)."""
    from onade.precision import resolve_precision

    runs = root / "runs"
    on_gpu = ["--workers", str(gpus), "--gpus-per-worker", "1"] if gpus else ["--workers", "2"]
    on_cpu = ["--workers", "1" if not gpus else "2", "--gpus-per-worker", "0"]
    common = ["--data", shards, "--output", str(runs)]
    # A global batch that splits over the GPU workers and over 1 or 2 CPU workers.
    base = [*common, "--preset", "debug", "--set", "train.log_every=10", "--set", "train.checkpoint_every=25",
            "--set", f"data.global_batch_size={16 * max(1, gpus)}"]
    where = f"{gpus} GPU worker(s)" if gpus else "2 CPU workers"
    t0 = time.perf_counter()
    final = train([*base, "--name", "first", "--steps", str(args.steps), *on_gpu, "--no-export"])
    start = events(runs / "first", "start")[0]
    device = torch.device("cuda", 0) if gpus else torch.device("cpu")
    want = "bfloat16" if resolve_precision("auto", device) == "bf16" else "float32"
    checks.add("train debug, ZeRO-2", final.get("step") == args.steps and start["forward_dtype"] == want,
               f"{where}: {args.steps} steps in {time.perf_counter() - t0:.0f} s, device {start['device']}, "
               f"precision {start['precision']}, forward {start['forward_dtype']}, loss {final.get('loss', 0):.3f}")

    t0 = time.perf_counter()
    more = args.steps + 10
    final = train([*base, "--name", "first", "--steps", str(more), *on_cpu])
    resume = events(runs / "first", "resume")[-1]
    ok = final.get("step") == more and (resume["step"], resume["adam_step"]) == (args.steps, args.steps)
    checks.add("resume on CPU workers" if gpus else "resume on another worker count", ok,
               f"from step {resume['step']} on {resume['world_size']} worker(s) ({resume['device']}), Adam step "
               f"{resume['adam_step']}, to {final.get('step')} in {time.perf_counter() - t0:.0f} s")
    export = final.get("export")

    if not gpus:
        checks.add("resume a CPU checkpoint on GPUs", None, "no GPU here")
        checks.add("ZeRO-3 large, 2 steps", None, "no GPU here (tests/test_large_zero3.py runs it on CPU)")
        return export
    t0 = time.perf_counter()
    train([*base, "--name", "cpu_first", "--steps", "20", *on_cpu, "--no-export"])
    final = train([*base, "--name", "cpu_first", "--steps", "30", *on_gpu, "--no-export"])
    resume = events(runs / "cpu_first", "resume")[-1]
    ok = final.get("step") == 30 and resume["step"] == 20 and resume["forward_dtype"] == want
    checks.add("resume a CPU checkpoint on GPUs", ok,
               f"from step {resume['step']} on {resume['world_size']} GPU worker(s), forward "
               f"{resume['forward_dtype']}, to {final.get('step')} in {time.perf_counter() - t0:.0f} s")
    check_large(checks, common, gpus)
    return export


def check_large(checks: Checks, common: list[str], gpus: int) -> None:
    from onade.config import get_preset
    from onade.model import build_model, num_parameters

    with torch.device("meta"):
        params = num_parameters(build_model(get_preset("large").model))
    # ZeRO-3 keeps fp32 weights, gradients and Adam's two moments, 16 bytes per parameter, split over the GPUs;
    # the activations of a micro-batch of 4 (activation checkpointing) come on top: ask for twice that.
    need = 2 * 16 * params / gpus
    free = min(torch.cuda.mem_get_info(i)[0] for i in range(gpus))
    if free < need:
        checks.add("ZeRO-3 large, 2 steps", None, f"needs ~{need / 2**30:.0f} GiB per GPU, {free / 2**30:.0f} free")
        return
    t0 = time.perf_counter()
    batch = 4 * gpus
    final = train([*common, "--name", "large", "--preset", "large", "--steps", "2", "--workers", str(gpus),
                   "--gpus-per-worker", "1", "--no-export", "--set", "model.image_size=32",
                   "--set", f"data.global_batch_size={batch}", "--set", "train.checkpoint_every=2"])
    checks.add("ZeRO-3 large, 2 steps", final.get("step") == 2,
               f"{params / 1e6:.0f} M parameters on {gpus} GPU(s), batch {batch}, {time.perf_counter() - t0:.0f} s")


def check_evaluate(checks: Checks, args, export: str, shards: str, gpus: int) -> None:
    from ray_jobs.evaluate import main

    t0 = time.perf_counter()
    workers = ["--workers", str(gpus), "--gpus-per-worker", "1"] if gpus else ["--workers", "1"]
    result = main(["--checkpoint", export, "--data", shards, "--num-images", str(args.eval_images), "--exact-images",
                   "2", *workers])
    values = [result[k] for k in ("bits_per_dim", "center_bits_true_caption", "exact_center_bits")]
    ok = result["num_images"] == args.eval_images and all(0 < v < 9 for v in values)
    checks.add("evaluate", ok, f"{result['num_images']} images, {result['precision']}, bits/subpixel {values[0]:.3f}, "
                               f"exact {values[2]:.3f}, {time.perf_counter() - t0:.0f} s")


def check_inpaint(checks: Checks, args, export: str, root: Path, gpus: int) -> None:
    from data.synthetic import write_synthetic
    from ray_jobs.inpaint import main

    folder = root / "photos"
    n = args.inpaint_images
    write_synthetic(folder, n, image_size=48, seed=3)
    workers = ["--workers", str(gpus), "--gpus-per-worker", "1"] if gpus else ["--workers", "1"]
    base = ["--checkpoint", export, "--input", str(folder), "--batch-size", "8", "--samples", "2", "--no-progress",
            *workers]
    outs = {}
    for label, extra in (("whole", []), ("split", ["--max-forward-batch", "2"])):
        t0 = time.perf_counter()
        summary = main([*base, "--output", str(root / f"out_{label}"), *extra])
        outs[label] = {p.relative_to(root / f"out_{label}"): p.read_bytes()
                       for p in sorted((root / f"out_{label}").rglob("*.png")) if not p.name.endswith(".masked.png")}
        checks.add(f"inpaint ({label})", summary["done"] == n and summary["failed"] == 0,
                   f"{summary['done']} done, {summary['failed']} failed, {summary['images_per_second']:.1f} images/s, "
                   f"{time.perf_counter() - t0:.0f} s" + (", 2 rows per forward pass" if extra else ""))
    same = outs["whole"] == outs["split"] and len(outs["whole"]) == 2 * n
    checks.add("inpaint split = unsplit bytes", same if not gpus else (None if not same else True),
               "identical" if same else "differ (expected only from cuDNN's shape-dependent kernels on GPUs)")


# ---- main ----------------------------------------------------------------------------------------------------

def describe(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} (compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB)"
    return "CPU"




def build_shards(root: Path, num: int, seed: int) -> str:
    from data.make_shards import main as make_shards
    from data.synthetic import write_synthetic

    write_synthetic(root / f"images_{seed}", num, image_size=32, seed=seed)
    out = str(root / f"shards_{seed}")
    assert make_shards([str(root / f"images_{seed}"), out, "--image-size", "32", "--shard-size", "256",
                        "--workers", "1", "--no-progress"]) == 0
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--presets", help="for the precision check (default: small,base on a GPU, small on CPU)")
    p.add_argument("--batch", type=int, default=16,
                   help="examples per train step in the precision check (default 16: base's micro-batch on 8 GPUs; "
                        "base needs ~0.73 GB per example in fp32)")
    p.add_argument("--train-steps", type=int, help="timed steps per precision (default 20 on a GPU, 3 on CPU)")
    p.add_argument("--steps", type=int, help="steps of the debug training run (default 50 on a GPU, 20 on CPU)")
    p.add_argument("--keep", metavar="DIR", help="keep the runs, shards and outputs here")
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    args.presets = args.presets or ("small,base" if gpu else "small")
    args.train_steps = args.train_steps or (20 if gpu else 3)
    args.steps = args.steps or (50 if gpu else 20)
    # Images evaluated and inpainted: on CPU (a test runs this) the fewest that still make a batch split.
    args.eval_images, args.inpaint_images = (64, 16) if gpu else (32, 8)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checks = Checks()
    if args.device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"  # before anything imports DeepSpeed
        gpus, device = 0, torch.device("cpu")
    else:
        from ray_jobs.devices import cuda_problem

        problem = cuda_problem()
        if problem:
            print(f"FAIL: {problem}\n(on a machine without GPUs: python -m bench.gpu_check --device cpu)")
            return 1
        gpus, device = torch.cuda.device_count(), torch.device("cuda", 0)
    import ray

    from ray_jobs.ray_env import init_ray

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {gpus} GPU(s), device {describe(device)}",
          flush=True)
    root = Path(args.keep or tempfile.mkdtemp(prefix="onade_gpu_check_"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        checks.guard("precision", check_precision, checks, args, device)
        shards = build_shards(root, 512, 0)
        init_ray(state_api=True)
        export = checks.guard("train and resume", check_training, checks, args, root, shards, gpus)
        if export:
            val = build_shards(root, 96, 1)
            checks.guard("evaluate", check_evaluate, checks, args, export, val, gpus)
            checks.guard("inpaint", check_inpaint, checks, args, export, root, gpus)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{checks.table()}\n\n{'FAIL' if checks.failed else 'PASS'} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
