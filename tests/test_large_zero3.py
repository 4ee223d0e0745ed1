"""The `large` preset at its real width and depth (hundreds of millions of parameters, ZeRO-3, activation
checkpointing, bf16 autocast where the CPU has it) for a few steps on 2 CPU workers through
`ray_jobs.train.main`: the partitioned path runs at the size it was built for. Images are cut to 16 px and
the global batch to 2 so a step takes seconds on a CPU. The checkpoint (weights and Adam's moments, about
5.6 GB) is deleted at the end. The export path (zero_to_fp32) is tested at debug size in test_train.py."""

import json
import shutil

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_large_preset_trains_checkpoints_and_exports_under_zero3_on_two_workers(ray_local, local_shards, tmp_path):
    from onade import resolve_precision
    from ray_jobs.train import main

    try:
        metrics = main(["--preset", "large", "--data", local_shards["train"], "--output", str(tmp_path),
                        "--name", "large", "--workers", "2", "--steps", "2", "--set", "model.image_size=16",
                        "--set", "data.global_batch_size=2", "--no-export",
                        "--set", "train.log_every=1", "--set", "train.warmup_steps=1"])
        assert metrics["step"] == 2
        rows = [json.loads(line) for line in (tmp_path / "large" / "metrics.jsonl").read_text().splitlines()]
        start = next(r for r in rows if r.get("event") == "start")
        assert (start["zero_stage"], start["world_size"], start["micro_batch"]) == (3, 2, 1)
        assert start["precision"] == resolve_precision("auto", "cpu")
        assert start["parameters"] > 100_000_000
        assert start["zero3_partitioned_share"] > 0.99  # the shipped threshold keeps only small tensors whole
        losses = [r["loss"] for r in rows if "loss" in r]
        assert len(losses) == 2 and all(0 < x < 9 for x in losses)  # finite bits per subpixel (8 = uniform)
        optim = list((tmp_path / "large" / "checkpoint_00000002" / "deepspeed").glob("*optim_states.pt"))
        assert len(optim) == 2  # each rank saved its partition
    finally:
        shutil.rmtree(tmp_path / "large", ignore_errors=True)
