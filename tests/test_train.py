"""End-to-end training as a user starts it locally: `python -m ray_jobs.train`, which starts its own Ray
(`ray_jobs.ray_env.init_ray`; its CPUs and temp dir pinned through Ray's own environment variables), real
DeepSpeed on CPU with 2 gloo workers, shards and checkpoints in a real S3 server (moto on 127.0.0.1).

One run trains the debug model for 100 steps (ZeRO-2) with one truncated shard among its shards; its console
is checked too (issue #9, "a quiet console"). The test process holds a second Ray meanwhile (the `ray_local`
fixture): with two Ray instances on a host, Ray's State API client cannot guess which one it belongs to.
Resume is tested in test_resume_any_size.py (other worker counts, with the EMA) and test_flaky_train.py (the
same count, from S3 under faults); lost and drained nodes in test_elastic.py.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import torch

from data import storage

pytestmark = pytest.mark.slow

STEPS = 100


TINY = ["--preset", "debug", "--workers", "2", "--cpus-per-worker", "0.5",
        "--set", "model.image_size=16", "--set", "data.global_batch_size=8", "--set", "train.log_every=10",
        "--set", "train.val_batches=1", "--set", "train.warmup_steps=5"]


@pytest.fixture(scope="module")
def shards(s3_server, tmp_path_factory):
    from tests.fixtures.train_data import build_shards

    return build_shards(tmp_path_factory.mktemp("images"), s3_server.url("shards"))


def read_jsonl(url: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(url).decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def truncated_shard(shards, s3_server) -> str:
    """A copy of a training shard cut in the middle of a sample, beside the good ones."""
    first = storage.list_files(shards["train"], suffix=".tar")[0]
    data = storage.read_bytes(first)
    url = s3_server.url("shards", "broken", "shard-cut.tar")
    storage.write_bytes_atomic(url, data[: len(data) // 2 + 100])
    return url


def run_entrypoint(argv: list[str], timeout: float) -> str:
    """`python -m ray_jobs.train ARGV` with no RAY_ADDRESS, so it starts a local Ray of 2 CPUs in a short temp
    dir of its own (Ray's unix socket paths must stay under 107 characters): its console, stdout and stderr."""
    ray_tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({
        "DS_ACCELERATOR": "cpu",
        "RAY_TMPDIR": ray_tmp,
        "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 2}),
        "RAY_DEDUP_LOGS": "0",  # count every line, not one per 5 s window
    })
    proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.train", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        console, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started: the driver and the Ray it launched
        console, _ = proc.communicate()
        pytest.fail(f"training did not finish in {timeout} s:\n" + console[-3000:])
    finally:
        if proc.poll() is None:  # interrupted otherwise (pytest-timeout, Ctrl-C): stop what this test started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, console[-3000:]
    return console


@pytest.fixture(scope="module")
def trained(s3_server, ray_local, shards, truncated_shard):
    """A 100-step ZeRO-2 run with everything in S3, one training shard truncated: (run url, the metrics of
    its last console line, its console)."""
    console = run_entrypoint([*TINY, "--data", f"{shards['train']},{truncated_shard}", "--val-data", shards["val"],
                              "--output", s3_server.url("runs"), "--name", "e2e", "--steps", str(STEPS),
                              "--set", "train.checkpoint_every=50", "--set", "train.val_every=50",
                              "--set", "train.keep_checkpoints=1"], timeout=240)
    (final,) = [line for line in console.splitlines() if line.startswith("final ")]
    return s3_server.url("runs", "e2e"), json.loads(final[len("final "):]), console


@pytest.mark.timeout(360)
def test_two_workers_zero2_loss_falls_and_everything_lands_in_s3(trained, truncated_shard):
    from ray_jobs.train_checkpoints import list_checkpoints

    run, metrics, _ = trained
    assert metrics["step"] == STEPS
    rows = read_jsonl(storage.join(run, "metrics.jsonl"))
    start = next(r for r in rows if r.get("event") == "start")
    from onade import resolve_precision

    assert (start["world_size"], start["zero_stage"], start["micro_batch"]) == (2, 2, 4)
    assert start["precision"] == resolve_precision("auto", "cpu")  # bf16 on a CPU with AMX/AVX512-BF16
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == STEPS // 10
    assert sum(losses[-2:]) / 2 < losses[0] - 1.5, losses
    # The default mixture, each kind's loss logged on its own.
    assert all({"loss_orderless", "loss_center", "loss_box", "loss_contiguish"} <= set(r) for r in rows if "loss" in r)
    val = [r for r in rows if "val_bits_per_dim" in r]
    assert [r["step"] for r in val] == [50, 100]
    # The truncated shard is named once, with the samples read before the cut; training went on.
    (bad,) = [r for r in rows if r.get("event") == "bad_shard"]
    assert bad["shard"] == truncated_shard and 0 < bad["samples_read"] < 64, bad
    assert metrics["bad_shards"] == 1
    assert val[-1]["val_bits_per_dim"] < val[0]["val_bits_per_dim"]
    assert all(r["val_num_images"] == 8 for r in val)  # 1 batch of 4 on each of 2 workers
    # The costly exact NLL runs once, at the end, on the debug preset's val_exact_images (4: 2 per worker).
    assert "val_exact_center_bits" not in val[0] and val[-1]["val_exact_num_images"] == 4
    # So does the loss profile the export ships (its time is in val_s): non-increasing in what is known.
    assert "val_profile_bits_first" not in val[0]
    assert val[-1]["val_profile_bits_first"] >= val[-1]["val_profile_bits_last"] > 0
    assert {"train_s", "val_s", "checkpoint_s"} <= set(val[-1])
    assert storage.exists(storage.join(run, "samples", "step_00000100.png"))
    assert storage.list_files(storage.join(run, "tb"))
    # Retention keeps the last of the checkpoints at 50 and 100, and deletes the other from S3.
    assert [s for s, _ in list_checkpoints(run)] == [100]
    assert not storage.list_files(storage.join(run, "checkpoint_00000050"), recursive=True)


FLOODS = {
    # Ray Train's placement-group cleaner, once a second when the local Ray serves no State API.
    "cleaner": "Failed to query Ray Train Controller actor state",
    # Ray Train's per-rank, per-report INFO line that LoggingConfig(log_level="WARNING") misses.
    "report": "Reporting training result",
    # The same cleaner's thread dying when its State API client picks no cluster (a second Ray on the host).
    "traceback": "Traceback (most recent call last)",
}


@pytest.mark.timeout(360)
def test_the_console_shows_progress_and_the_bad_shard_not_ray_train_floods(trained, truncated_shard):
    _, _, console = trained
    lines = console.splitlines()
    flooded = {name: sum(text in line for line in lines) for name, text in FLOODS.items()}
    assert flooded == {name: 0 for name in FLOODS}, console[-3000:]
    progress = [line for line in lines if re.search(r"\bstep \d+ .*\bloss \d", line)]
    assert [int(re.search(r"\bstep (\d+)", line).group(1)) for line in progress] == list(range(10, STEPS + 1, 10))
    assert any(truncated_shard in line for line in lines), console[-3000:]  # a real warning is shown


@pytest.mark.timeout(360)
def test_export_loads_from_s3_without_deepspeed_and_predicts(trained, shards):
    import onade
    from onade.metrics import center_bits
    from ray_jobs.train_checkpoints import load_export

    run, metrics, _ = trained
    assert metrics["export"] == storage.join(run, "export")
    loaded = load_export(metrics["export"])
    assert loaded.config.model.image_size == 16
    assert loaded.config.model.vocab_size == loaded.tokenizer.vocab_size
    assert loaded.train_step == STEPS  # the checkpoint's step, in the weights file's metadata
    # The loss profile of the exported (EMA) weights, measured at the end of training over the 8x8 centre hole
    # on train.profile_images (32: capped at the 4 + 4 validation images held).
    assert loaded.profile is not None
    assert (loaded.profile.hole_size, loaded.profile.image_size, loaded.profile.num_images) == (192, 16, 8)
    assert all(a >= b for a, b in zip(loaded.profile.bits, loaded.profile.bits[1:]))
    # The trained export beats an untrained model of the same shape on the same held-out images.
    from ray_jobs.data import shard_dataset

    ds = shard_dataset(shards["val"], 16, loaded.config.data.max_tokens, loaded.tokenizer, train=False)
    batch = ds.take_batch(16)
    x, tokens, lengths = (torch.tensor(batch[k]) for k in ("image", "tokens", "length"))
    fresh = onade.build_model(loaded.config).eval()
    assert center_bits(loaded.model, x, tokens, lengths) < center_bits(fresh, x, tokens, lengths) - 1.0
    # The exact NLL of the trained model, in bf16 as in fp32 (same ordering): within 0.02 bit.
    from onade.masks import observed_except_center
    from onade.metrics import exact_hole_bits
    from onade.precision import autocast

    def exact(precision):
        with autocast(precision, "cpu"):
            return exact_hole_bits(loaded.model, x[:8], observed_except_center(8, 16), tokens[:8], lengths[:8],
                                   generator=torch.Generator().manual_seed(0))

    assert exact("bf16") == pytest.approx(exact("fp32"), abs=0.02)

    # Any kept checkpoint can be exported again on its own, without Ray; a rotated-out one is refused.
    from ray_jobs.train import main

    again = storage.join(run, "export_again")
    assert main(["--output", storage.dirname(run), "--name", "e2e", "--export-only", "--checkpoint-step", "100",
                 "--export-to", again])["export"] == again
    reloaded = load_export(again)
    assert reloaded.profile == loaded.profile
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, reloaded.model.state_dict()[name]), name
    # The export is the EMA (debug: ema_decay 0.99); the trained weights are in the checkpoint too.
    raw_url = storage.join(run, "export_raw")
    main(["--output", storage.dirname(run), "--name", "e2e", "--export-only", "--export-weights", "raw",
          "--export-to", raw_url])
    raw_loaded = load_export(raw_url)
    raw = raw_loaded.model
    assert raw_loaded.profile is None  # the profile is the EMA's: it ships with the EMA weights only
    assert not torch.equal(raw.head_proj.weight, loaded.model.head_proj.weight)
    assert center_bits(raw, x, tokens, lengths) < center_bits(fresh, x, tokens, lengths) - 1.0
    with pytest.raises(ValueError, match=r"no checkpoint at step 50; kept steps: \[100\]"):
        main(["--output", storage.dirname(run), "--name", "e2e", "--export-only", "--checkpoint-step", "50"])


@pytest.mark.timeout(30)
def test_workers_holding_every_cpu_of_a_local_ray_are_refused(ray_local, tmp_path):
    from ray_jobs.train import check_cpus_left_for_data, parse_args

    def args(cpus: str):
        return parse_args(["--data", "x", "--output", str(tmp_path), "--name", "x", "--workers", "2",
                           "--cpus-per-worker", cpus])

    with pytest.raises(ValueError, match="leaving none for the data pipeline"):
        check_cpus_left_for_data(args("1"))  # the module's Ray has 2 CPUs
    check_cpus_left_for_data(args("0.5"))
