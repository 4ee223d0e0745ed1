"""`ray job submit` of the training entry point to a `ray start --head` cluster on 127.0.0.1, exactly as a
user would launch it; `ray job logs` must show the loop's metrics lines."""

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.mark.timeout(300)
def test_ray_job_submit_runs_debug_preset_to_completion(ray_head, local_shards, tmp_path):
    env = ray_head.job_env()
    job_id = f"onade-train-{uuid.uuid4().hex[:8]}"
    submit = [RAY, "job", "submit", "--submission-id", job_id, "--",
              sys.executable, "-m", "ray_jobs.train", "--data", local_shards["train"], "--output", str(tmp_path),
              "--name", "job", "--preset", "debug", "--workers", "2", "--steps", "20",
              "--set", "model.image_size=16", "--set", "data.global_batch_size=8", "--set", "train.log_every=10",
              "--set", "train.checkpoint_every=20"]
    done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logs = subprocess.run([RAY, "job", "logs", job_id], env=env, capture_output=True, text=True, timeout=60)
    assert logs.returncode == 0, logs.stderr[-2000:]
    lines = [line for line in logs.stdout.splitlines() if "step 20 " in line and "loss" in line]
    assert lines, logs.stdout[-3000:]
    assert "samples_per_s" in lines[0]
    assert (tmp_path / "job" / "export" / "model.safetensors").is_file()
    status = subprocess.run([RAY, "job", "status", job_id], env=env, capture_output=True, text=True, timeout=60)
    assert "succeeded" in (status.stdout + status.stderr).lower()
