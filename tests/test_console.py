"""The console of a local training run: the loop's progress lines and Ray's real warnings, not Ray Train's
two floods (issue #9, "a quiet console"). `python -m ray_jobs.train` runs as a user would start it, so the
local Ray is the one `ray_jobs.ray_env.init_ray` starts; its CPUs and temp dir are pinned through Ray's own
environment variables. The test process holds a second Ray (the `ray_local` fixture) meanwhile: with two Ray
instances on a host, Ray's State API client cannot guess which one it belongs to.
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

STEPS = 10
FLOODS = {
    # Ray Train's placement-group cleaner, once a second when the local Ray serves no State API.
    "cleaner": "Failed to query Ray Train Controller actor state",
    # Ray Train's per-rank, per-report INFO line that LoggingConfig(log_level="WARNING") misses.
    "report": "Reporting training result",
    # The same cleaner's thread dying when its State API client picks no cluster (a second Ray on the host).
    "traceback": "Traceback (most recent call last)",
}


@pytest.mark.timeout(240)
def test_local_training_console_shows_progress_lines_not_ray_train_floods(local_shards, ray_local, tmp_path):
    # A short temp dir of its own (Ray's unix socket paths must stay under 107 characters) and 2 CPUs.
    ray_tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({
        "DS_ACCELERATOR": "cpu",
        "RAY_TMPDIR": ray_tmp,
        "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 2}),
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # a faster controller poll shortens the run's start and end
        "RAY_DEDUP_LOGS": "0",  # count every line, not one per 5 s window
    })
    cmd = [sys.executable, "-m", "ray_jobs.train", "--data", local_shards["train"], "--output", str(tmp_path),
           "--name", "quiet", "--preset", "debug", "--workers", "2", "--cpus-per-worker", "0.5",
           "--steps", str(STEPS), "--set", "model.image_size=16", "--set", "data.global_batch_size=8",
           "--set", "train.log_every=10", "--set", f"train.checkpoint_every={STEPS}", "--no-export"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        console, _ = proc.communicate(timeout=220)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started: the driver and the Ray it launched
        console, _ = proc.communicate()
        pytest.fail("training did not finish in 220 s:\n" + console[-3000:])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, console[-3000:]

    flooded = {name: sum(text in line for line in console.splitlines()) for name, text in FLOODS.items()}
    assert flooded == {name: 0 for name in FLOODS}, console[-3000:]
    progress = [line for line in console.splitlines() if re.search(r"\bstep \d+ .*\bloss \d", line)]
    assert any(f"step {STEPS} " in line for line in progress), console[-3000:]
