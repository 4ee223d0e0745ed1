"""Elastic training on a real multi-node Ray (`ray.cluster_utils.Cluster`, one raylet per node) through
`ray_jobs.train.main --workers 1-2`: the run starts on two nodes, checkpoints at a preemption notice when
one is drained with a deadline (and taken away at the deadline, as a cloud does) and goes on without it,
grows onto a node that arrives, then loses that node outright and goes on from its last checkpoint.
`--max-failures 1` holds only the node loss: growing and the preemption do not count. Each node holds one
training worker (2 CPUs of its 3) and leaves a CPU to Ray Data. Where Ray places the run's skip counter is
up to Ray (2 of 3 nodes are taken away), so the test asserts it is on the driver's node."""

import json
import threading
import time

import pytest

from tests.fixtures.ray_cluster import NODE_CPUS, spot_preemption

pytestmark = pytest.mark.slow

WORKER_CPUS = 2
TINY = ["--preset", "debug", "--set", "model.image_size=16", "--set", "data.global_batch_size=8",
        "--set", "train.log_every=1", "--set", "train.checkpoint_every=10", "--no-export"]


def _rows(path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out


def _wait_for(what: str, predicate, thread, result, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        assert thread.is_alive(), f"the run ended while waiting for {what}: {result}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def _registered_steps(run) -> list[int]:
    """Steps of the checkpoints Ray Train registered (its snapshot file), which is what a restart resumes
    from: a checkpoint uploaded by workers that die before the controller's next poll is not among them."""
    try:
        results = json.loads((run / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return [int(r["checkpoint_dir_name"].rpartition("_")[2]) for r in results]


def _node_of_rank(cluster, rank_nodes: list[str], rank: int):
    return next(n for n in cluster.worker_nodes if n.node_id == rank_nodes[rank])


@pytest.mark.timeout(600)
def test_elastic_run_is_drained_grows_loses_a_node_and_finishes(elastic_cluster, local_shards, tmp_path):
    from ray.util.state import list_actors

    from ray_jobs.train_checkpoints import list_checkpoints, read_train_state
    from ray_jobs.train import main

    cluster = elastic_cluster
    out = tmp_path / "runs"
    metrics_file = out / "elastic" / "metrics.jsonl"
    result: dict = {}

    def run():
        try:
            result["metrics"] = main([*TINY, "--data", local_shards["train"], "--output", str(out), "--name", "elastic",
                                      "--workers", "1-2", "--cpus-per-worker", str(WORKER_CPUS), "--steps", "100000",
                                      "--elastic-check-s", "2", "--max-failures", "1",
                                      "--stop-file", str(tmp_path / "STOP")])
        except BaseException as e:  # surfaced by the assertions below
            result["error"] = e

    def events(name: str, after: float = 0.0) -> list[dict]:
        return [r for r in _rows(metrics_file) if r.get("event") == name and r["time"] > after]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        start = _wait_for("start", lambda: events("start"), thread, result, 180)[0]
        assert start["world_size"] == 2 and start["num_nodes"] == 2
        # The run's skip counter lives on the driver's node: on a worker node it would die with it.
        counters = list_actors(filters=[("class_name", "=", "SkipCounter"), ("state", "=", "ALIVE")])
        assert [a.node_id for a in counters] == [cluster.head_node.node_id]

        # One node is drained for preemption with a deadline: a checkpoint at the notice, then 1 worker.
        _wait_for("a checkpoint", lambda: events("checkpoint"), thread, result, 120)
        drained = time.time()
        reclaim = spot_preemption(cluster, _node_of_rank(cluster, start["node_ids"], 1), deadline_s=10)
        notice = _wait_for("a preemption notice", lambda: events("preemption_notice", drained), thread, result, 60)[0]
        after_drain = _wait_for("a restart without the drained node",
                                lambda: events("resume", notice["time"]), thread, result, 180)[0]
        assert after_drain["world_size"] == 1 and after_drain["step"] == notice["step"]
        assert after_drain["steps_lost"] == 0  # checkpointed at the notice: nothing since it is lost
        reclaim.wait(timeout=30)

        # A node arrives once the run has checkpointed on 1 worker: it grows onto it from that checkpoint.
        _wait_for("a checkpoint on 1 worker", lambda: events("checkpoint", after_drain["time"]), thread, result, 120)
        cluster.add_node(num_cpus=NODE_CPUS)
        grown = _wait_for("growth to 2 workers", lambda: [r for r in events("resume", after_drain["time"])
                                                          if r["world_size"] == 2], thread, result, 180)[0]
        assert grown["resumed_from_world_size"] == 1 and grown["num_nodes"] == 2

        # That node is lost without notice: the run goes on with 1 worker from its last checkpoint.
        _wait_for("a checkpoint on 2 workers that Ray registered",
                  lambda: any(s > grown["step"] for s in _registered_steps(out / "elastic")), thread, result, 120)
        survivor = after_drain["node_ids"][0]
        newcomer = next(i for i, n in enumerate(grown["node_ids"]) if n != survivor)
        lost = _node_of_rank(cluster, grown["node_ids"], newcomer)
        killed = time.time()
        cluster.remove_node(lost, allow_graceful=False)
        after_loss = _wait_for("a restart after the node loss", lambda: events("resume", killed), thread, result,
                               240)[0]
        assert after_loss["world_size"] == 1 and after_loss["step"] > grown["step"]
        _wait_for("steps after the node loss", lambda: any("loss" in r and r["time"] > after_loss["time"]
                                                           for r in _rows(metrics_file)), thread, result, 60)
    finally:
        (tmp_path / "STOP").touch()
        thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in result, result
    assert result["metrics"]["step"] > after_loss["step"]
    # The EMA (debug's 0.99, with ZeRO-2) came back at every restart and went on: one update per step.
    (step, last), = list_checkpoints(str(out / "elastic"))[-1:]
    assert step == result["metrics"]["step"] and read_train_state(last).ema_updates == step
