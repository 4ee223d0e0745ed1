"""Recovery of a training run on a real multi-node Ray (`ray.cluster_utils.Cluster`, 2 nodes of 3 CPUs, one
training worker on each): how long from losing a worker to training again, and how many steps are lost,
when a worker process is killed and when its node is drained for preemption with a deadline.

    python -m bench.train --recovery                  # (bench/train.py runs this module)
    python -m bench.recovery --checkpoint-every 20 --deadline-s 10

kill   SIGKILL one training worker: Ray Train restarts the group on the same 2 nodes from the last
       checkpoint; steps since it are lost.
drain  drain one node (reason PREEMPTION, deadline now + --deadline-s) under `--workers 1-2`, and take it
       away at the deadline as a cloud does: the loop checkpoints at the notice, Ray Train stops the group
       at the deadline and goes on with 1 worker. Ray's AutoscalingCoordinator, which tells Ray Train what
       the cluster holds, keeps its own 20 s refresh here: what users get.
Reported per event: seconds to the first optimizer step after it, and steps lost (the last step logged
before the restart minus the step resumed from). The ratio is drain / kill seconds; the drain waits for
the deadline by design, so "seconds past the deadline" is printed too.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

NODE_CPUS, WORKER_CPUS = 3, 2


def _rows(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise RuntimeError(f"no {what} within {timeout} s")


def _train_in_thread(shards: str, out: Path, name: str, workers: str, args) -> tuple[threading.Thread, Path]:
    from ray_jobs.train import main

    argv = ["--preset", "debug", "--set", f"model.image_size={args.image_size}", "--set", "data.global_batch_size=8",
            "--set", "train.log_every=1", "--set", f"train.checkpoint_every={args.checkpoint_every}",
            "--set", "train.ema_decay=0", "--no-export", "--data", shards, "--output", str(out), "--name", name,
            "--workers", workers, "--cpus-per-worker", str(WORKER_CPUS), "--steps", "1000000",
            "--stop-file", str(out / f"{name}.STOP")]
    thread = threading.Thread(target=main, args=(argv,), daemon=True)
    thread.start()
    return thread, out / name / "metrics.jsonl"


def _after(metrics: Path, t0: float) -> dict:
    """Seconds from t0 to the first step logged after the restart, and the steps the restart lost."""
    resume = _wait(lambda: [r for r in _rows(metrics) if r.get("event") == "resume" and r["time"] > t0], 300,
                   "restart")[0]
    first = _wait(lambda: [r for r in _rows(metrics) if "loss" in r and r["time"] > resume["time"]], 120,
                  "step after the restart")[0]
    return {"seconds": round(first["time"] - t0, 1), "steps_lost": resume.get("steps_lost"),
            "resumed_at": resume["step"], "world_size": resume["world_size"]}


def _stop(thread: threading.Thread, out: Path, name: str) -> None:
    (out / f"{name}.STOP").touch()
    thread.join(timeout=300)


def measure_kill(shards: str, out: Path, args) -> dict:
    import psutil

    thread, metrics = _train_in_thread(shards, out, "kill", "2", args)
    _wait(lambda: any(r.get("event") == "checkpoint" for r in _rows(metrics)), 300, "a checkpoint")
    # Half-way to the next checkpoint: a kill loses about half a checkpoint interval on average.
    last = max(r["step"] for r in _rows(metrics) if r.get("event") == "checkpoint")
    _wait(lambda: any(r.get("step", 0) >= last + args.checkpoint_every // 2 for r in _rows(metrics)), 120, "steps")
    victims = [p for p in psutil.Process().children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline())]
    t0 = time.time()
    victims[-1].kill()
    result = _after(metrics, t0)
    _stop(thread, out, "kill")
    return result


def measure_drain(cluster, shards: str, out: Path, args) -> dict:
    from tests.fixtures.ray_cluster import spot_preemption

    thread, metrics = _train_in_thread(shards, out, "drain", "1-2", args)
    start = _wait(lambda: [r for r in _rows(metrics) if r.get("event") in ("start", "resume")
                           and r["world_size"] == 2], 300, "2 workers")[-1]
    _wait(lambda: any(r.get("step", 0) >= start["step"] + args.checkpoint_every // 2 and "loss" in r
                      for r in _rows(metrics)), 120, "steps")
    node = next(n for n in cluster.worker_nodes if n.node_id == start["node_ids"][1])
    t0 = time.time()
    reclaim = spot_preemption(cluster, node, args.deadline_s, "bench")
    result = _after(metrics, t0)
    reclaim.wait(timeout=60)
    result["seconds_past_deadline"] = round(result["seconds"] - args.deadline_s, 1)
    _stop(thread, out, "drain")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint-every", type=int, default=20)
    p.add_argument("--deadline-s", type=float, default=10)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--images", type=int, default=512)
    args = p.parse_args(argv)
    from bench.train import build_data
    from tests.fixtures.ray_cluster import multi_node_cluster

    with tempfile.TemporaryDirectory(prefix="bench_recovery_") as tmp:
        shards = build_data(Path(tmp, "data"), args.images, args.image_size)
        with multi_node_cluster(nodes=2, node_cpus=NODE_CPUS, start_timeout_s=15, short_tick=False) as cluster:
            kill = measure_kill(shards, Path(tmp, "runs"), args)
            print(f"kill:  training again {kill['seconds']} s after the kill, {kill['steps_lost']} steps lost "
                  f"(resumed at {kill['resumed_at']} on {kill['world_size']} workers)", flush=True)
            drain = measure_drain(cluster, shards, Path(tmp, "runs"), args)
            print(f"drain: training again {drain['seconds']} s after the notice ({drain['seconds_past_deadline']} s "
                  f"past the {args.deadline_s:g} s deadline), {drain['steps_lost']} steps lost (resumed at "
                  f"{drain['resumed_at']} on {drain['world_size']} worker)", flush=True)
    ratio = drain["seconds"] / kill["seconds"]
    print(f"ratio drain/kill seconds to training again: {ratio:.2f}; steps lost: drain {drain['steps_lost']} vs "
          f"kill {kill['steps_lost']} (checkpoint every {args.checkpoint_every})")
    return {"kill": kill, "drain": drain, "ratio": ratio}


if __name__ == "__main__":
    main()
