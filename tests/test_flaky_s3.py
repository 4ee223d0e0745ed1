"""The jobs on a flaky object store (tests/fixtures/flaky_s3.py: 10% of S3 requests dropped or answered 500/503,
some delayed): each run's outputs equal a clean run's, byte for byte, through the same endpoint. Retries are
pyarrow's own, from AWS_MAX_ATTEMPTS, plus data.storage's for the reads pyarrow does not retry."""

import json
import pickle
import urllib.parse
from pathlib import Path

import pytest

from data import storage
from data.make_shards import make_shards
from data.synthetic import write_synthetic

BLOB = bytes(range(256)) * 16  # 4 KiB: over S3's error body, so a failed ranged GET is retried (see below)


def snapshot(prefix: str) -> dict[str, bytes]:
    """Every object under `prefix`: its bytes by key relative to it."""
    return {url[len(prefix):]: storage.read_bytes(url) for url in storage.list_files(prefix, recursive=True)}


def clear(prefix: str) -> None:
    for url in storage.list_files(prefix, recursive=True):
        storage.delete(url)


def twice(flaky, prefix: str, job, seed: int = 0) -> tuple[dict, dict]:
    """Run `job()` clean, then again into the same `prefix` emptied, with `flaky` (a FlakyS3) failing 10% of
    requests; returns both snapshots of `prefix` (the faulty one read after the proxy is clean again)."""
    job()
    clean = snapshot(prefix)
    clear(prefix)
    flaky.arm(0.1, seed=seed)
    try:
        job()
    finally:
        flaky.disarm()
    return clean, snapshot(prefix)


# ---- retries come from the AWS configuration -------------------------------------------------------------

@pytest.mark.timeout(120)
def test_aws_max_attempts_is_honoured_by_storage_and_a_pickled_filesystem(flaky_s3_endpoint, monkeypatch):
    flaky = flaky_s3_endpoint
    url = flaky.url("attempts/blob.bin")
    storage.write_bytes_atomic(url, BLOB)
    # Every request fails until three have: a request succeeds exactly when it may be tried four times.
    # 500s and 503s only: curl itself resends a request whose reused connection was dropped before any reply,
    # which the count would not see.
    for attempts, ok in ((1, False), (3, False), (4, True), (10, True)):
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", str(attempts))
        flaky.arm(1.0, max_faults=3, slow=0, kinds=("500", "503"))
        if ok:
            assert storage.read_bytes(url) == BLOB
        else:
            with pytest.raises(storage.StorageError, match="attempts/blob.bin"):
                storage.read_bytes(url)
        assert flaky.faults == min(attempts, 3), (attempts, flaky.log)
    # pyarrow's S3 client reads neither variable; pyarrow_fs passes them on, and they survive pickling (Ray
    # sends the filesystem to its workers).
    for attempts, ok in ((3, False), (4, True)):
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", str(attempts))
        fs, path = storage.pyarrow_fs(url)
        fs = pickle.loads(pickle.dumps(fs))
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        flaky.arm(1.0, max_faults=3, slow=0, kinds=("503",))
        if ok:
            assert fs.open_input_stream(path).read() == BLOB
        else:
            with pytest.raises(OSError, match="503"):
                fs.open_input_stream(path).read()
        assert flaky.faults == 3, (attempts, flaky.log)


def test_retry_mode_defaults_to_standard_unless_the_user_sets_one(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert storage.retry_settings() == ("standard", 3)
    fs, _ = storage.pyarrow_fs("s3://bucket/key")
    assert (fs._kwargs["retry_mode"], fs._kwargs["max_attempts"]) == ("standard", 3)
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    assert storage.retry_settings() == ("legacy", 7)
    fs, _ = storage.pyarrow_fs("s3://bucket/key")
    assert (fs._kwargs["retry_mode"], fs._kwargs["max_attempts"]) == ("legacy", 7)
    # ~/.aws/config's profile, as botocore reads it, when the environment says nothing
    config = tmp_path / "config"
    config.write_text("[profile p]\nretry_mode = standard\nmax_attempts = 6\nregion = eu-west-3\n"
                      "endpoint_url = http://127.0.0.1:1234\n")
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "p")
    assert storage.retry_settings() == ("standard", 6)
    assert storage.endpoint_url() == "http://127.0.0.1:1234"
    fs, _ = storage.pyarrow_fs("s3://bucket/key")
    assert fs.region == "eu-west-3"


def test_an_s3_write_is_one_put_or_one_multipart_upload(flaky_s3_endpoint):
    """S3 makes a PUT, and a multipart upload once completed, visible whole: no temporary key, copy or delete."""
    flaky = flaky_s3_endpoint
    url = flaky.url("direct/small.bin")
    flaky.log.clear()
    storage.write_bytes_atomic(url, BLOB)
    assert [r for _, r, *_ in flaky.log] == ["PUT /onade-test/direct/small.bin"]
    flaky.log.clear()
    storage.write_bytes_atomic(flaky.url("direct/big.bin"), bytes(21 * 1024 * 1024))  # pyarrow's parts: 10 MiB
    calls = sorted((r.split()[0], urllib.parse.urlsplit(r.split()[1]).path,
                    tuple(sorted(urllib.parse.parse_qs(urllib.parse.urlsplit(r.split()[1]).query, True))))
                   for _, r, *_ in flaky.log)
    path = "/onade-test/direct/big.bin"
    assert calls == [("POST", path, ("uploadId",)), ("POST", path, ("uploads",))] + \
        [("PUT", path, ("partNumber", "uploadId"))] * 3  # create, three parts, complete


@pytest.mark.timeout(120)
def test_folders_go_up_and_down_whole_on_a_flaky_store(flaky_s3, tmp_path):
    """Small files included: a 500/503 carries an XML body bigger than they are (see storage.download_dir)."""
    src = tmp_path / "src"
    write_synthetic(src / "a", 12, image_size=16)  # PNGs and their one-line captions
    prefix = flaky_s3.url("folders", tmp_path.name)
    assert len(storage.upload_dir(src, prefix)) == 24
    got = storage.download_dir(prefix, tmp_path / "back")
    assert {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()} == \
        {p.relative_to(tmp_path / "back").as_posix(): p.read_bytes() for p in map(Path, got)}
    assert flaky_s3.faults > 0, "the proxy must have failed some requests"


# ---- every job, clean and flaky ----------------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_make_shards_on_a_flaky_store_writes_what_a_clean_run_writes(flaky_s3_endpoint, tmp_path):
    flaky = flaky_s3_endpoint
    images = tmp_path / "images"
    write_synthetic(images, 40, image_size=16, seed=3)
    built, resharded = flaky.url(tmp_path.name, "built"), flaky.url(tmp_path.name, "resharded")
    options = dict(image_size=16, vocab_size=64, workers=1, progress=False)

    # Local images -> S3 (writes), then S3 shards -> S3 shards of another size (reads too).
    clean, faulty = twice(flaky, built, lambda: make_shards(str(images), built, shard_size=8, **options))
    faults = flaky.faults
    assert faulty == clean and len(clean) == 5 + 3  # 5 shards, manifest, skipped.jsonl, tokenizer
    clean2, faulty2 = twice(flaky, resharded, lambda: make_shards(built, resharded, shard_size=16, **options),
                            seed=1)
    assert faulty2 == clean2 and len(clean2) == 3 + 3
    assert faults > 0 and flaky.faults > 0, "the proxy must have failed some requests"


@pytest.fixture(scope="module")
def on_s3(flaky_s3_endpoint, local_shards, tmp_path_factory):
    """The validation shards and an export made for them (as tests/test_evaluate.py does), copied to S3
    through the clean proxy."""
    from tests.fixtures.train_data import caption_sensitive_export

    export = caption_sensitive_export(local_shards, tmp_path_factory.mktemp("export"))
    root = flaky_s3_endpoint.url("flaky-jobs")
    storage.upload_dir(local_shards["val"], storage.join(root, "val"))
    storage.upload_dir(export, storage.join(root, "export"))
    return {"val": storage.join(root, "val"), "export": storage.join(root, "export")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_evaluate_on_a_flaky_store_gives_a_clean_runs_numbers(flaky_s3_endpoint, ray_local, on_s3, tmp_path):
    """The checkpoint is read by the driver and by every actor, the shards by Ray Data's read tasks."""
    from ray_jobs.evaluate import main

    out = tmp_path / "metrics.json"
    argv = ["--checkpoint", on_s3["export"], "--data", on_s3["val"], "--batch-size", "8", "--exact-images", "0",
            "--precision", "fp32", "--workers", "1", "--output", str(out)]
    main(argv)
    clean = out.read_bytes()
    out.unlink()
    flaky_s3_endpoint.arm(0.1, seed=6)  # its first fault is on request 1, made by the driver
    try:
        main(argv)
    finally:
        flaky_s3_endpoint.disarm()
    assert out.read_bytes() == clean
    assert flaky_s3_endpoint.faults > 0, "the proxy must have failed some requests"
    # Ray's workers went through it too: the shard is only read by a Ray Data task.
    assert any("shard-000000.tar" in request for _, request, *_ in flaky_s3_endpoint.log)


def timed(key: str) -> bool:
    """A results.jsonl field that is a timing (`seconds`, `write_seconds`, ...): it differs from run to run, and
    so do the gallery pages that show them."""
    return key.endswith("seconds") or key.endswith("per_second")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_inpaint_on_a_flaky_store_writes_what_a_clean_run_writes(flaky_s3_endpoint, ray_local, on_s3, tmp_path):
    from ray_jobs import inpaint

    src = tmp_path / "in"
    write_synthetic(src, 4, image_size=24, seed=5)
    prefix = flaky_s3_endpoint.url("flaky-inpaint", tmp_path.name)
    storage.upload_dir(src, storage.join(prefix, "in"))
    out = storage.join(prefix, "out")
    argv = ["--checkpoint", on_s3["export"], "--input", storage.join(prefix, "in"), "--output", out,
            "--steps", "4", "--samples", "2", "--animate", "--no-progress"]
    clean, faulty = twice(flaky_s3_endpoint, out, lambda: inpaint.main(argv), seed=3)
    assert flaky_s3_endpoint.faults > 0, "the proxy must have failed some requests"

    def comparable(objects: dict) -> dict:
        kept = {k: v for k, v in objects.items() if not k.endswith(".html") and not k.endswith("results.jsonl")}
        rows = objects["/results.jsonl"].decode().splitlines()
        kept["results"] = sorted(json.dumps({k: v for k, v in json.loads(r).items() if not timed(k)},
                                            sort_keys=True) for r in rows)
        return kept

    assert len(clean) >= 4 * 5  # 2 samples, masked, thumbnail and animation per image
    assert comparable(faulty) == comparable(clean)
