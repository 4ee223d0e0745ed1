"""Training across nodes: a `ray.cluster_utils.Cluster` with two worker nodes (separate raylets), one
training worker on each (STRICT_SPREAD), gloo between them, checkpoints in a shared local folder."""

import json

import pytest

TINY = ["--preset", "debug", "--set", "model.image_size=16", "--set", "data.global_batch_size=8",
        "--set", "train.log_every=10", "--set", "train.val_batches=1"]


@pytest.mark.timeout(240)
def test_one_training_worker_on_each_of_two_nodes(ray_two_nodes, local_shards, tmp_path):
    import onade
    from ray_jobs.train import main

    metrics = main([*TINY, "--data", local_shards["train"], "--val-data", local_shards["val"],
                    "--output", str(tmp_path), "--name", "nodes", "--workers", "2", "--cpus-per-worker", "1",
                    "--placement-strategy", "STRICT_SPREAD", "--steps", "20", "--set", "train.checkpoint_every=10",
                    "--set", "train.val_every=20"])
    assert metrics["step"] == 20 and metrics["val_num_images"] == 8
    rows = [json.loads(line) for line in (tmp_path / "nodes" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r.get("event") == "start")
    assert (start["world_size"], start["num_nodes"]) == (2, 2)
    loaded = onade.load_checkpoint(tmp_path / "nodes" / "export")
    assert loaded.config.model.image_size == 16
