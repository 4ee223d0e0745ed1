"""Damaged shards among good ones: the tar reader stops at the damage and says where (no Ray), and through
shard_dataset on a real S3 server the good shards' samples all arrive, the samples before each damage too,
and every unreadable shard is named with its reason and the samples read from it."""

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from data import sources, storage
from data.make_shards import make_shards
from data.shard_reader import ShardDamaged
from data.synthetic import write_synthetic
from data.untrusted import MAX_TEXT_MEMBER_BYTES
from ray_jobs.data import (iter_tar_rows, make_skip_counter, read_shard, shard_dataset, skip_summary,
                           skip_summary_named, tokenizer_for)
from tests.helpers import tar_bytes

SIZE = 16
T = 8
SAMPLES = [(f"{i:03d}", os.urandom(600), f"caption {i}".encode()) for i in range(5)]
MEMBERS = [m for key, img, txt in SAMPLES for m in ((f"{key}.png", img), (f"{key}.txt", txt))]
GOOD = tar_bytes(MEMBERS)


def _offset(data: bytes, name: str) -> int:
    """Where the header of member `name` starts."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmember(name).offset


def _with(data: bytes, at: int, patch: bytes) -> bytes:
    return data[:at] + patch + data[at + len(patch):]


def _rows(data: bytes) -> tuple[list[dict], Exception | None]:
    rows = []
    try:
        for row in iter_tar_rows(io.BytesIO(data), "mem://x.tar"):
            rows.append(row)
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return rows, e
    return rows, None


# ---- the tar reader, no Ray ---------------------------------------------------------------------------

DAMAGE = {
    # name: (shard bytes, samples before the damage, the error's type and words)
    "cut inside a member": (tar_bytes(MEMBERS, cut_inside="003.png"), 3, (tarfile.ReadError, "unexpected end")),
    "bad header checksum": (_with(GOOD, _offset(GOOD, "003.png") + 20, b"\xff" * 40), 2,
                            (ShardDamaged, "bad checksum at byte")),
    "cut at a member boundary": (GOOD[:_offset(GOOD, "003.png")], 2, (ShardDamaged, "without the end-of-archive")),
    "cut inside a header": (GOOD[:_offset(GOOD, "003.png") + 100], 2, (ShardDamaged, "truncated header")),
    "zeroed header": (_with(GOOD, _offset(GOOD, "003.png"), bytes(512)), 3, (ShardDamaged, "after an end-of")),
    "garbage": (np.random.default_rng(0).bytes(5000), 0, (ShardDamaged, "invalid header at byte 0")),
    "empty": (b"", 0, (ShardDamaged, "at byte 0 without the end-of-archive")),
    # (000 is yielded without its txt, which comes after 001: preprocess_batch skips it as "no caption")
    "non-contiguous sample": (tar_bytes([MEMBERS[0], MEMBERS[2], MEMBERS[1]]), 0, (ShardDamaged, "not contiguous")),
    "duplicate member": (tar_bytes([MEMBERS[0], MEMBERS[0], MEMBERS[1]]), 0, (ShardDamaged, "appears twice")),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_reader_yields_the_samples_before_the_damage_then_raises(case):
    data, before, (kind, words) = DAMAGE[case]
    rows, error = _rows(data)
    assert isinstance(error, kind) and words in str(error), error
    # Complete samples only: the one being read at the damage may be cut, and is dropped.
    assert [(r["__key__"], r["png"], r["txt"]) for r in rows if "txt" in r] == SAMPLES[:before]


@pytest.mark.parametrize("case", DAMAGE)
def test_the_resharder_reads_the_same_samples_and_names_the_same_damage(case, tmp_path):
    """make_shards' source of shards (data.sources.iter_tar) uses the same reader: the samples before the damage,
    then a row with the error, and one for the sample the damage cut if it was being read."""
    data, before, (kind, words) = DAMAGE[case]
    (tmp_path / "x.tar").write_bytes(data)
    items = list(sources.iter_tar(str(tmp_path / "x.tar")))
    assert [(i.source, i.data, i.captions) for i in items if i.skip is None] == [
        (f"x.tar#{key}", img, [txt.decode()]) for key, img, txt in SAMPLES[:before]]
    (damage,) = [i for i in items if i.source.startswith("x.tar#after-")]
    assert damage.skip.startswith(f"corrupt or truncated shard ({kind.__name__}: ") and words in damage.skip
    assert all(i.skip for i in items[items.index(damage) + 1:])


def test_reader_on_an_intact_shard_reads_only_the_columns_used_and_marks_oversized_members():
    rows, error = _rows(GOOD)
    assert error is None and [(r["__key__"], r["png"], r["txt"]) for r in rows] == SAMPLES
    assert {r["__url__"] for r in rows} == {"mem://x.tar"}
    big = tar_bytes([("a.png", b"img"), ("a.json", b"{}"), ("a.txt", b"x" * (MAX_TEXT_MEMBER_BYTES + 1)),
                     ("b.PNG", b"img2"), ("b.txt", b"fine"), ("noext", b"?")])
    rows, error = _rows(big)
    assert error is None
    assert rows[0].keys() == {"__key__", "__url__", "png", "__skip__"}  # json never read; txt over its limit
    assert "over the limit of 1000000" in rows[0]["__skip__"]
    assert rows[1] == {"__key__": "b", "__url__": "mem://x.tar", "png": b"img2", "txt": b"fine"}


class _FlakyFS:
    """Serves `data` like pyarrow's open_input_stream, the first `fail_opens` streams breaking after `at` bytes
    with `error` (an S3 error message Ray's DataContext.retried_io_errors lists as transient, or another)."""

    def __init__(self, data: bytes, at: int, fail_opens: int, error: str):
        self.data, self.at, self.fail_opens, self.error, self.opens = data, at, fail_opens, error, 0

    def open_input_stream(self, path, buffer_size=None):
        self.opens += 1
        flaky = self.opens <= self.fail_opens
        fs = self

        class Stream(io.BytesIO):
            def read(self, n=-1):
                if flaky and self.tell() + (n if n >= 0 else len(fs.data)) > fs.at:
                    raise OSError(fs.error)
                return super().read(n)

        return Stream(self.data)


def test_transient_errors_restart_the_shard_without_repeating_samples(monkeypatch):
    monkeypatch.setattr("ray_jobs.data.RETRY_DELAY_S", 0.0)
    members = [m for i in range(40) for m in ((f"{i:03d}.png", os.urandom(2000)), (f"{i:03d}.txt", b"c"))]
    data = tar_bytes(members)
    keys = [f"{i:03d}" for i in range(40)]
    transient = "AWS Error NETWORK_CONNECTION during GetObject operation"
    fs = _FlakyFS(data, len(data) // 2, fail_opens=2, error=transient)
    assert [r["__key__"] for r in read_shard(fs, "b/k.tar", "s3://b/k.tar")] == keys and fs.opens == 3
    # Not transient (or still failing after READ_ATTEMPTS): what was read, then the shard ends, no raise.
    fs = _FlakyFS(data, len(data) // 2, fail_opens=1, error="Access Denied")
    got = [r["__key__"] for r in read_shard(fs, "b/k.tar", "s3://b/k.tar")]
    assert fs.opens == 1 and 0 < len(got) < 40 and got == keys[:len(got)]
    fs = _FlakyFS(data, len(data) // 2, fail_opens=99, error=transient)
    got = [r["__key__"] for r in read_shard(fs, "b/k.tar", "s3://b/k.tar")]
    assert fs.opens == 3 and 0 < len(got) < 40 and got == keys[:len(got)]


# ---- through Ray Data, shards on S3 --------------------------------------------------------------------

def _digest(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def _samples(data: bytes) -> list[tuple[str, str]]:
    """(key, image digest) of each sample of an intact shard, in order."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            if m.name.endswith(".png"):
                out.append((m.name[:-4], _digest(np.asarray(Image.open(tar.extractfile(m)).convert("RGB")))))
    return out


@pytest.fixture(scope="module")
def damaged(s3_server, tmp_path_factory):
    """Five 8-sample shards on S3, then: #1 cut inside its 4th sample's image, #2 garbage, #3 with the header of
    its 6th sample's first member overwritten. (#4 is deleted by the test, after shard_dataset listed it.)"""
    root = tmp_path_factory.mktemp("images")
    write_synthetic(root, 40, image_size=SIZE, seed=3)
    prefix = s3_server.url("bad-shards", "set")
    make_shards(str(root), prefix, image_size=SIZE, shard_size=8, workers=1, progress=False)
    urls = [storage.join(prefix, f"shard-{i:06d}.tar") for i in range(5)]
    original = [storage.read_bytes(u) for u in urls]
    samples = [_samples(d) for d in original]
    assert [len(s) for s in samples] == [8] * 5
    with tarfile.open(fileobj=io.BytesIO(original[1])) as tar:
        cut = tar.getmember(f"{samples[1][3][0]}.png").offset_data + 50
    storage.write_bytes_atomic(urls[1], original[1][:cut])
    storage.write_bytes_atomic(urls[2], np.random.default_rng(1).bytes(len(original[2])))
    first = min(m.offset for m in tarfile.open(fileobj=io.BytesIO(original[3]))
                if m.name.startswith(samples[3][5][0] + "."))
    storage.write_bytes_atomic(urls[3], _with(original[3], first, b"\x00garbage" * 8))
    return {"prefix": prefix, "urls": urls, "samples": samples}


@pytest.fixture(scope="module")
def ray_env(s3_server, ray_local):
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray_local


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bad_shards_are_named_and_the_rest_of_the_data_flows(damaged, ray_env):
    import ray

    tok = tokenizer_for(damaged["prefix"])
    counter = make_skip_counter("bad-shards-test")
    ds = shard_dataset(damaged["prefix"], SIZE, T, tok, train=False, skip_counter=counter)
    train = shard_dataset(damaged["prefix"], SIZE, T, tok, train=True, seed=5, skip_counter=counter)
    storage.delete(damaged["urls"][4])  # gone between listing and reading (a lifecycle rule, a wrong rm)
    rows = [img for b in ds.iter_batches(batch_size=5, batch_format="numpy") for img in b["image"]]
    s = damaged["samples"]
    # Validation keeps the shard order: shard 0, the 3 samples before the cut, the 4 before the bad header
    # (the 5th was being read when the damage came: it may be incomplete, so it is dropped).
    assert [_digest(i) for i in rows] == [d for _, d in s[0] + s[1][:3] + s[3][:4]]
    summary = skip_summary(counter)
    assert summary["total"] == 0 and summary["num_bad_shards"] == 4
    bad = {storage.basename(b["shard"]): b for b in summary["bad_shards"]}
    assert set(bad) == {f"shard-00000{i}.tar" for i in (1, 2, 3, 4)}
    assert bad["shard-000001.tar"]["shard"] == damaged["urls"][1]  # the full URL, to find it
    assert {k: (b["samples_read"], b["reason"].split(":")[0]) for k, b in bad.items()} == {
        "shard-000001.tar": (3, "ReadError"), "shard-000002.tar": (0, "ShardDamaged"),
        "shard-000003.tar": (4, "ShardDamaged"), "shard-000004.tar": (0, "FileNotFoundError")}
    assert "unexpected end of data" in bad["shard-000001.tar"]["reason"]
    assert "at byte 0" in bad["shard-000002.tar"]["reason"]

    # Training (shuffled shards, another epoch of the same counter): the same samples, the same 4 bad shards
    # recorded once each; read by name from a task that holds no handle, as a Ray Train worker does.
    assert sum(len(b["length"]) for b in train.iter_batches(batch_size=16, batch_format="numpy")) == 8 + 3 + 4
    named = ray.get(ray.remote(skip_summary_named).remote("bad-shards-test"))
    assert named == skip_summary(counter) and named["num_bad_shards"] == 4
    assert make_skip_counter("bad-shards-test")._actor_id == counter._actor_id  # get_if_exists
    assert skip_summary_named("no-such-run") is None
