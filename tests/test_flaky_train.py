"""Training on a flaky object store (tests/fixtures/flaky_s3.py): shards, checkpoints and run files in S3 behind
the fault-injecting proxy, faults armed while Ray Train uploads checkpoints, while a resumed run reads one back,
and while one is exported.

A run is not reproducible in general, even on a clean store (ray_jobs/data.py draws each batch's crops, flips
and captions from fresh entropy, and the training stream does not keep the read tasks' order). So the shards
here hold one image and caption 64 times, without flips: every batch is the same whatever the order, masks are
seeded, and a run under faults must reach the weights of a clean run. Also compared: a checkpoint exported
under faults and through the clean store (byte for byte), and the resumed run's step, optimizer and loss.
"""

import json
import math

import pytest
import torch

from data import storage

pytestmark = pytest.mark.slow

STEPS, MORE = 20, 25
# --max-failures 0: no worker-group restart may paper over a fault that escaped the retries.
TINY = ["--preset", "debug", "--workers", "1", "--cpus-per-worker", "1", "--no-export", "--max-failures", "0",
        "--set", "model.image_size=16", "--set", "data.global_batch_size=8", "--set", "train.log_every=5",
        "--set", "train.warmup_steps=5", "--set", "train.checkpoint_every=10", "--set", "train.keep_checkpoints=3",
        "--set", "data.random_flip=false"]



@pytest.fixture(scope="module")
def shards(flaky_s3_endpoint, tmp_path_factory):
    """One synthetic image and its first caption, 64 times: batches that do not depend on the read order."""
    import shutil

    from data.make_shards import main as make_shards
    from data.synthetic import write_synthetic
    from tests.fixtures.train_data import IMAGE_SIZE

    folder = tmp_path_factory.mktemp("uniform")
    (sample,) = write_synthetic(folder, 1, image_size=IMAGE_SIZE)
    (folder / f"{sample.name}.txt").write_text(sample.captions[0] + "\n")
    for i in range(1, 64):
        shutil.copy(folder / f"{sample.name}.png", folder / f"copy_{i:03d}.png")
        shutil.copy(folder / f"{sample.name}.txt", folder / f"copy_{i:03d}.txt")
    url = flaky_s3_endpoint.url("flaky-train", "shards", "train")
    assert make_shards([str(folder), url, "--image-size", str(IMAGE_SIZE), "--shard-size", "16", "--workers", "1",
                        "--no-progress"]) == 0
    return {"train": url}


def read_jsonl(url: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(url).decode().splitlines() if line.strip()]


def snapshot(prefix: str) -> dict[str, bytes]:
    return {url[len(prefix):]: storage.read_bytes(url) for url in storage.list_files(prefix, recursive=True)}


@pytest.mark.timeout(60)
def test_a_file_smaller_than_an_s3_error_is_read_back_through_a_503(flaky_s3_endpoint, tmp_path):
    """pyarrow's copy_files (Ray's Checkpoint.as_directory) gives up on a file smaller than the 503's XML at the
    first 503; storage.download_from_fs retries it. When pyarrow fixes this, the first half fails: then
    resume.restoring can go back to Checkpoint.as_directory."""
    import pyarrow.fs as pafs

    flaky = flaky_s3_endpoint
    prefix = flaky.url("flaky-train", "small", tmp_path.name)
    files = {"latest": b"deepspeed", "deepspeed/big.pt": bytes(range(256)) * 64}
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(prefix, name), data)
    fs, path = storage.pyarrow_fs(prefix)
    flaky.arm(1.0, kinds=("503",), only=r"^GET .*/latest$", once=True, slow=0)
    with pytest.raises(OSError, match="Failed to flush response stream"):
        pafs.copy_files(f"{path}/latest", str(tmp_path / "copied"), source_filesystem=fs)
    flaky.arm(1.0, kinds=("500", "503"), once=True, slow=0)  # every request fails once: listing included
    try:
        with storage.local_dir(fs, path) as d:
            assert {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()} == files
    finally:
        flaky.disarm()
    assert flaky.faults >= 4, flaky.log  # the listing, both HEADs and both GETs


@pytest.fixture(scope="module")
def flaky_run(flaky_s3_endpoint, ray_local, shards):
    """A run trained STEPS steps with 10% of S3 requests failing, then resumed to MORE steps with every object
    read failing once (small files included: DeepSpeed's `latest` is 9 bytes, train_state.json ~80, smaller than
    a 500's XML, which pyarrow alone does not retry; see storage.download_from_fs). Returns the run's URL and
    the faults each phase saw."""
    from ray_jobs.train import main

    flaky = flaky_s3_endpoint
    output = flaky.url("flaky-train", "runs")
    argv = [*TINY, "--data", shards["train"], "--output", output, "--name", "flaky"]
    faults = {}
    flaky.arm(0.1, seed=11)
    try:
        assert main([*argv, "--steps", str(STEPS)])["step"] == STEPS
    finally:
        flaky.disarm()
    faults["train"] = dict(flaky.counts)
    flaky.log.clear()
    flaky.arm(1.0, only=r"^GET ", once=True, slow=0)
    try:
        assert main([*argv, "--steps", str(MORE)])["step"] == MORE
    finally:
        flaky.disarm()
    faults["resume_reads"] = [request for _, request, *fault in flaky.log if fault]
    return storage.join(output, "flaky"), faults


@pytest.mark.timeout(300)
def test_a_run_on_a_flaky_store_reaches_a_clean_runs_weights(flaky_run, flaky_s3_endpoint, shards, tmp_path):
    """The same STEPS steps without faults: the consolidated weights of both step-STEPS checkpoints agree."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from onade.export_format import DS_TAG
    from ray_jobs.train_checkpoints import list_checkpoints
    from ray_jobs.train import main

    run, _ = flaky_run
    output = flaky_s3_endpoint.url("flaky-train", "runs")
    assert main([*TINY, "--data", shards["train"], "--output", output, "--name", "clean",
                 "--steps", str(STEPS)])["step"] == STEPS
    weights = []
    for name in (run, storage.join(output, "clean")):
        local = tmp_path / storage.basename(name)
        storage.download_dir(dict(list_checkpoints(name))[STEPS], local)
        weights.append(get_fp32_state_dict_from_zero_checkpoint(str(local), tag=DS_TAG))
    flaky, clean = weights
    assert flaky.keys() == clean.keys()
    for k in clean:
        torch.testing.assert_close(flaky[k], clean[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.timeout(300)
def test_training_on_a_flaky_store_checkpoints_resumes_and_learns(flaky_run):
    from ray_jobs.train_checkpoints import list_checkpoints, read_train_state

    run, faults = flaky_run
    assert sum(faults["train"].get(k, 0) for k in ("drop", "500", "503")) > 0, faults
    # The resumed run's reads each failed once, the checkpoint's small files among them: the state file (read
    # first by the driver, list_checkpoints) and `latest` (read by the training worker's restore only).
    failed = {r.rpartition("/checkpoint_00000020/")[2] for r in faults["resume_reads"]}
    assert {"latest", "train_state.json"} <= failed, faults["resume_reads"]
    # Every checkpoint is complete, its state where the run was.
    checkpoints = list_checkpoints(run)
    assert [s for s, _ in checkpoints] == [10, STEPS, MORE]
    assert [read_train_state(url).step for _, url in checkpoints] == [10, STEPS, MORE]
    rows = read_jsonl(storage.join(run, "metrics.jsonl"))
    resume = [r for r in rows if r.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == resume[0]["adam_step"] == STEPS, resume
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == [5, 10, 15, 20, 25] and all(map(math.isfinite, losses.values())), losses
    # It learns, and the resumed run goes on from the trained weights (a fresh model's loss is the first one's).
    assert losses[STEPS] < losses[5] - 0.5 and losses[MORE] < losses[5] - 0.5, losses


@pytest.mark.timeout(120)
@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_a_checkpoint_exported_on_a_flaky_store_equals_its_clean_export(flaky_run, flaky_s3_endpoint, weights):
    """"raw" consolidates the trained weights from the ZeRO files (zero_to_fp32); "ema" ships the average."""
    from ray_jobs.train_checkpoints import export_checkpoint, list_checkpoints

    flaky = flaky_s3_endpoint
    run, _ = flaky_run
    checkpoint = dict(list_checkpoints(run))[STEPS]
    clean_url, faulty_url = (storage.join(run, "exports", weights, kind) for kind in ("clean", "faulty"))
    export_checkpoint(checkpoint, clean_url, weights)
    flaky.arm(0.1, seed=13)  # the export's requests are sequential: the same ones fail every time
    try:
        export_checkpoint(checkpoint, faulty_url, weights)
    finally:
        flaky.disarm()
    assert flaky.faults > 0, "the proxy must have failed some requests"
    clean = snapshot(clean_url)
    assert sorted(clean) == ["/config.json", "/model.safetensors", "/tokenizer.model"]
    assert snapshot(faulty_url) == clean
