"""Resume at another worker count through `ray_jobs.train.main`: real Ray, real DeepSpeed ZeRO-3 on CPU, every
parameter partitioned (`--zero-config`: the debug model's are all under the shipped persistence threshold). Two
workers train and checkpoint; copies of the run resume on one and on three workers (DeepSpeed's universal
checkpoint, converted on resume), and the loss, step, LR schedule and Adam's step carry on, and every rank
saves its partition afterwards (DeepSpeed#7546). The three-worker resume also switches the layout as a GPU run
might (channels_last on, activation checkpointing), and then resumes once more with the CPU's layout. ZeRO-1 2 -> 1 and ZeRO-2 2 -> 1 and 2 -> 3 ranks are tested
without Ray in test_universal.py (to float rounding), and the elastic run resumes ZeRO-2 through the job."""

import json
import shutil
import statistics

import pytest

from ray_jobs.engine import lr_factor

pytestmark = pytest.mark.slow

BASE_STEPS, MORE_STEPS = 20, 26
# 12 splits over 1, 2 and 3 workers; logging every step shows the step-to-step noise of the loss.
TINY = ["--preset", "debug", "--set", "model.image_size=16", "--set", "data.global_batch_size=12",
        "--set", "train.log_every=1", "--set", "train.warmup_steps=5", "--set", "train.checkpoint_every=10",
        "--no-export"]


def rows(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]


# What a GPU run may set where the CPU run did not: layout only (onade.config.LAYOUT_KEYS), never a resume blocker.
GPU_LAYOUT = ["--set", "model.channels_last=on", "--set", "model.activation_checkpointing=true"]

# ZeRO-3 partitions the weights an EMA would average: Config.validate refuses the two together.
ZERO3 = ["--set", "train.zero_stage=3", "--set", "train.ema_decay=0"]


@pytest.fixture(scope="module")
def zero3_json(tmp_path_factory) -> str:
    """The shipped ZeRO-3 settings, but partitioning every parameter: at debug size all of them are under the
    shipped stage3_param_persistence_threshold, and would stay whole on every rank."""
    from ray_jobs.engine import load_zero_json

    ds = load_zero_json(3)
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path_factory.mktemp("zero") / "zero3_partition_all.json"
    path.write_text(json.dumps(ds))
    return str(path)


@pytest.fixture(scope="module")
def two_worker_run(ray_local, local_shards, zero3_json, tmp_path_factory):
    """A run trained by 2 workers to BASE_STEPS under ZeRO-3, checkpointed at 10 and 20: its output folder."""
    from ray_jobs.train import main

    out = tmp_path_factory.mktemp("zero3")
    metrics = main([*TINY, "--data", local_shards["train"], "--output", str(out), "--name", "base", "--workers", "2",
                    *ZERO3, "--zero-config", zero3_json, "--steps", str(BASE_STEPS)])
    assert metrics["step"] == BASE_STEPS
    start = next(r for r in rows(out / "base") if r.get("event") == "start")
    assert start["zero3_partitioned_share"] == 1.0
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("workers", [1, 3])
def test_a_two_worker_checkpoint_resumes_on_another_worker_count(two_worker_run, workers, local_shards,
                                                                 zero3_json):
    from onade.config import load_config
    from ray_jobs.train_checkpoints import list_checkpoints, read_train_state
    from ray_jobs.train import main

    out = two_worker_run
    name = f"on{workers}"
    shutil.copytree(out / "base", out / name)  # the run as two workers left it
    stored = sorted(p.name for p in (out / name / "checkpoint_00000020" / "deepspeed").iterdir())
    layout = GPU_LAYOUT if workers == 3 else []
    metrics = main([*TINY, "--data", local_shards["train"], "--output", str(out), "--name", name,
                    "--workers", str(workers), *ZERO3, "--zero-config", zero3_json, "--steps", str(MORE_STEPS),
                    *layout])
    assert metrics["step"] == MORE_STEPS

    log = rows(out / name)
    resume = next(r for r in log if r.get("event") == "resume")
    assert (resume["step"], resume["world_size"], resume["resumed_from_world_size"]) == (BASE_STEPS, workers, 2)
    assert resume["adam_step"] == BASE_STEPS  # Adam's moments came back, not a fresh optimizer
    assert resume["zero3_partitioned_share"] == 1.0  # every parameter was split over the ranks, and is again
    losses = {r["step"]: r["loss"] for r in log if "loss" in r}
    before = [losses[s] for s in range(BASE_STEPS - 9, BASE_STEPS + 1)]
    noise = statistics.stdev(b - a for a, b in zip(before, before[1:]))
    jump = losses[BASE_STEPS + 1] - losses[BASE_STEPS]
    # A fresh model starts near 8 bits; a lost optimizer state jumps too. Within 4 sigma of the step noise:
    assert abs(jump) <= 4 * noise, (jump, noise, before)
    assert losses[1] - losses[BASE_STEPS] > 4 * noise  # so a restart from scratch would fail the line above

    # The LR continues the schedule of a MORE_STEPS run from step 21 on: no second warm-up.
    t = load_config("debug", None, []).train
    after = [r for r in log if "lr" in r and r["time"] > resume["time"]]
    assert [r["step"] for r in after] == list(range(BASE_STEPS + 1, MORE_STEPS + 1))
    for r in after:
        assert r["lr"] == pytest.approx(t.lr * lr_factor(r["step"], 5, MORE_STEPS, t.min_lr_ratio), rel=1e-6)

    # The stored checkpoint is as two workers wrote it; the new one is written by `workers` ranks.
    assert sorted(p.name for p in (out / name / "checkpoint_00000020" / "deepspeed").iterdir()) == stored
    (last_step, last), = [c for c in list_checkpoints(str(out / name)) if c[0] == MORE_STEPS]
    state = read_train_state(last)
    assert state.world_size == workers
    optim = sorted((out / name / "checkpoint_00000026" / "deepspeed").glob("*optim_states.pt"))
    assert len(optim) == workers
    # Adam counted one step per step after the resume, in every parameter group (its bias correction uses it).
    assert adam_steps(optim) == {MORE_STEPS}
    if layout:  # and back to the CPU's layout, on as many workers as wrote the checkpoint
        metrics = main([*TINY, "--data", local_shards["train"], "--output", str(out), "--name", name,
                        "--workers", str(workers), *ZERO3, "--zero-config", zero3_json, "--steps", str(MORE_STEPS + 2)])
        assert metrics["step"] == MORE_STEPS + 2
        back = [r for r in rows(out / name) if r.get("event") == "resume"][-1]
        assert (back["step"], back["adam_step"]) == (MORE_STEPS, MORE_STEPS)


def adam_steps(files) -> set[int]:
    """Adam's step counters in DeepSpeed ZeRO optimizer-state files, over every rank and parameter group."""
    import torch

    steps = set()
    for f in files:
        states = torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        states = states.get("optimizer_state_dict", states)  # ZeRO-3 nests the torch optimizer's state dict
        steps |= {int(s["step"]) for s in states["state"].values()}
    return steps
