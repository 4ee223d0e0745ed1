"""data.make_shards on real files: every awkward input, exact pixels, determinism, other sources, interruption, S3."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import storage
from data.images import BACKGROUND
from data.local_s3 import ENV as S3_ENV
from data.make_shards import main, make_shards
from data.synthetic import write_synthetic
from onade.tokenizer import Tokenizer
from tests.awkward_inputs import write_awkward_cases
from tests.helpers import tar_bytes

SIZE = 32
NUM_SYNTHETIC = 20
ROOT = Path(__file__).resolve().parents[1]


def read_shard(data: bytes) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def read_all(dest: str) -> dict[str, dict]:
    """key -> {"image": uint8 [H,W,3], "meta": json, "txt": str, "ext": image member} over every shard."""
    manifest = json.loads(storage.read_bytes(storage.join(dest, "manifest.json")))
    out = {}
    for shard in manifest["shards"]:
        for key, members in read_shard(storage.read_bytes(storage.join(dest, shard["name"]))).items():
            ext = next(e for e in members if e not in ("json", "txt"))
            out[key] = {"image": np.asarray(Image.open(io.BytesIO(members[ext]))), "ext": ext,
                        "meta": json.loads(members["json"]), "txt": members["txt"].decode()}
    return out


def by_source(samples: dict[str, dict]) -> dict[str, dict]:
    return {s["meta"]["source"]: s for s in samples.values()}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    synth = write_synthetic(root, NUM_SYNTHETIC, image_size=SIZE, seed=5)
    cases = write_awkward_cases(root)
    return root, synth, cases


@pytest.fixture(scope="module")
def built(src, tmp_path_factory):
    root, _, _ = src
    dest = str(tmp_path_factory.mktemp("dest") / "shards")
    summary = make_shards(str(root), dest, image_size=SIZE, shard_size=8, workers=1, progress=False)
    return dest, summary


def test_outputs_manifest_and_keys(src, built):
    _, synth, cases = src
    dest, summary = built
    usable = NUM_SYNTHETIC + sum(1 for c in cases if c.skip is None)
    manifest = json.loads(Path(dest, "manifest.json").read_text())
    assert summary.num_samples == manifest["num_samples"] == usable
    assert manifest["image_size"] == SIZE and manifest["image_format"] == "png" and manifest["tool_version"]
    names = sorted(os.listdir(dest))
    shard_names = [f"shard-{i:06d}.tar" for i in range(-(-usable // 8))]
    assert names == sorted(shard_names + ["manifest.json", "skipped.jsonl", "tokenizer.model"])
    assert [s["name"] for s in manifest["shards"]] == shard_names
    assert [s["num_samples"] for s in manifest["shards"]] == [8] * (usable // 8) + ([usable % 8] if usable % 8 else [])
    for s in manifest["shards"]:
        assert storage.sha256_of(str(Path(dest, s["name"]))) == s["sha256"]
        assert Path(dest, s["name"]).stat().st_size == s["bytes"]
    samples = read_all(dest)
    assert sorted(samples) == [f"{i:09d}" for i in range(usable)]
    for s in samples.values():
        assert s["ext"] == "png" and s["image"].shape == (SIZE, SIZE, 3) and s["image"].dtype == np.uint8
        assert s["txt"].split("\n") == s["meta"]["captions"]
    tok = Tokenizer.from_file(Path(dest, "tokenizer.model"))
    assert tok.vocab_size == manifest["tokenizer"]["vocab_size"]
    assert Tokenizer.unk_id not in tok.encode(synth[0].captions[0])


def test_every_unused_input_is_listed_with_its_reason(src, built):
    _, _, cases = src
    dest, summary = built
    skipped = [json.loads(line) for line in Path(dest, "skipped.jsonl").read_text().splitlines()]
    got = {s["source"]: s["reason"] for s in skipped}
    expected = {c.path: c.skip for c in cases if c.skip}
    assert set(got) == set(expected)
    for path, phrase in expected.items():
        assert phrase in got[path], (path, got[path])
    assert summary.num_skipped == len(expected)
    used = set(by_source(read_all(dest)))
    inputs = {c.path for c in cases if not c.path.endswith(".txt")} | {f"img_{i:05d}.png" for i in range(NUM_SYNTHETIC)}
    assert used | (set(got) - {"orphan.txt"}) == inputs and not used & set(got)  # nothing silently dropped


def test_png_round_trip_is_exact(src, built):
    root, _, _ = src
    samples = by_source(read_all(built[0]))
    for i in range(NUM_SYNTHETIC):
        name = f"img_{i:05d}.png"
        original = np.asarray(Image.open(root / name))
        assert np.array_equal(samples[name]["image"], original), name
        assert samples[name]["meta"]["original_size"] == [SIZE, SIZE]
        assert samples[name]["meta"]["captions"] == (root / f"img_{i:05d}.txt").read_text().splitlines()


def test_awkward_images_become_rgb_correctly(built):
    s = by_source(read_all(built[0]))
    gray = s["gray.png"]["image"]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert gray[..., 0].std() > 10  # a gradient survived, not a flat fill
    rgba = s["rgba.png"]["image"]
    assert (rgba[:, :14] == BACKGROUND).all()  # transparent half composited on the background, no hidden green
    assert (np.abs(rgba[:, 18:].astype(int) - (200, 30, 30)) <= 2).all()
    pal = s["palette_alpha.png"]["image"]
    assert (pal[:, :14] == BACKGROUND).all() and (pal[:, 18:] == (0, 0, 255)).all()
    rot = s["exif_rotated.jpg"]
    assert rot["meta"]["original_size"] == [20, 40]  # upright: 20 wide, 40 high
    top, bottom = rot["image"][:12].reshape(-1, 3).mean(0), rot["image"][-12:].reshape(-1, 3).mean(0)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # red above blue once EXIF is applied
    g16 = s["gray16.png"]["image"][..., 0].astype(int)
    assert g16.max() >= 240 and g16.min() <= 15 and s["gray16.png"]["meta"]["original_mode"] == "I;16"
    assert s["cmyk.jpg"]["meta"]["original_mode"] == "CMYK"
    assert s["float.tif"]["image"].std() > 10
    assert s["tiny.bmp"]["meta"]["original_size"] == [5, 3]
    assert s["nested/deeper/nested.png"]["meta"]["captions"] == ["found in a nested folder"]
    assert s["multi_caption.png"]["txt"] == "first caption\nsecond caption"
    assert s["unicode.png"]["meta"]["captions"] == ["un café très coloré ☕"]


def test_deterministic_whatever_the_worker_count(src, built, tmp_path):
    root, _, _ = src
    dest, _ = built
    other = str(tmp_path / "again")
    make_shards(str(root), other, image_size=SIZE, shard_size=8, workers=2, progress=False)
    assert sorted(os.listdir(other)) == sorted(os.listdir(dest))
    for name in os.listdir(dest):
        assert Path(other, name).read_bytes() == Path(dest, name).read_bytes(), name


def test_pad_mode_and_lossless_webp(src, tmp_path):
    root, _, _ = src
    pad = str(tmp_path / "pad")
    assert main([str(root), pad, "--image-size", str(SIZE), "--resize", "pad", "--format", "webp", "--workers", "1",
                 "--no-progress"]) == 0
    s = by_source(read_all(pad))
    wide = s["wide.png"]["image"]  # 48x16 -> 32x11 strip, padded above and below
    assert s["wide.png"]["ext"] == "webp" and (wide[:10] == BACKGROUND).all() and (wide[-10:] == BACKGROUND).all()
    assert np.array_equal(s["img_00000.png"]["image"], np.asarray(Image.open(root / "img_00000.png")))


def test_jsonl_captions(tmp_path):
    root = tmp_path / "imgs"
    write_synthetic(root, 4, image_size=16, seed=1)
    for p in root.glob("*.txt"):
        p.unlink()
    (root / "sub").mkdir()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(root / "sub" / "x.png")
    lines = [
        json.dumps({"file": "img_00000.png", "caption": "zero"}),
        json.dumps({"file": "img_00000.png", "captions": ["zero again", " "]}),
        json.dumps({"file": str(root / "img_00001.png"), "captions": ["one\n  caption"]}),
        json.dumps({"file": "sub/x.png", "caption": "nested"}),
        "{not json",
        json.dumps({"caption": "no file key"}),
        json.dumps({"file": "missing.png", "caption": "gone"}),
    ]
    caps = tmp_path / "caps.jsonl"
    caps.write_text("\n".join(lines) + "\n")
    dest = str(tmp_path / "out")
    summary = make_shards(str(root), dest, captions=str(caps), image_size=16, workers=1, progress=False)
    s = by_source(read_all(dest))
    assert {k: v["meta"]["captions"] for k, v in s.items()} == {
        "img_00000.png": ["zero", "zero again"], "img_00001.png": ["one caption"], "sub/x.png": ["nested"]}
    got = {j["source"]: j["reason"] for j in map(json.loads, Path(dest, "skipped.jsonl").read_text().splitlines())}
    assert set(got) == {"caps.jsonl:5", "caps.jsonl:6", "img_00002.png", "img_00003.png", "missing.png"}
    assert "bad captions line" in got["caps.jsonl:5"] and "file not found" in got["missing.png"]
    assert "no caption" in got["img_00002.png"]
    assert summary.num_samples == 3


def test_coco_captions(tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    write_synthetic(coco / "val2017", 3, image_size=16, seed=2)
    images = [{"id": 7, "file_name": "img_00002.png"}, {"id": 3, "file_name": "img_00000.png"},
              {"id": 5, "file_name": "img_00001.png"}]
    anns = [{"id": 11, "image_id": 3, "caption": "second of zero"}, {"id": 10, "image_id": 3, "caption": "zero"},
            {"id": 12, "image_id": 7, "caption": "two"}, {"id": 13, "image_id": 99, "caption": "no such image"}]
    (coco / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    dest = str(tmp_path / "out")
    assert main([str(coco / "annotations" / "captions_val2017.json"), dest, "--image-size", "16", "--workers", "1",
                 "--no-progress"]) == 0
    s = by_source(read_all(dest))
    assert [v["meta"]["captions"] for _, v in sorted(s.items())] == [["zero", "second of zero"], ["two"]]
    got = [json.loads(j) for j in Path(dest, "skipped.jsonl").read_text().splitlines()]
    assert [g["source"] for g in got] == ["img_00001.png", "captions_val2017.json#annotation-13"]


def _jpg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 24), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_reshards_img2dataset_style_shards(tmp_path):
    shards = tmp_path / "laion"
    shards.mkdir()
    (shards / "00000.tar").write_bytes(tar_bytes([
        ("000000000.jpg", _jpg((255, 0, 0))), ("000000000.txt", b"a red thing"),
        ("000000000.json", json.dumps({"caption": "a red thing", "url": "http://x"}).encode()),
        ("000000001.jpg", _jpg((0, 255, 0))), ("000000001.json", json.dumps({"caption": "only json"}).encode()),
        ("000000002.jpg", _jpg((0, 0, 255))), ("000000002.json", json.dumps({"url": "no caption"}).encode()),
        ("000000003.jpg", _jpg((5, 5, 5))[:300]), ("000000003.txt", b"corrupt image"),
        ("000000004.txt", b"caption without image"),
    ]))
    (shards / "00001.tar").write_bytes(tar_bytes([
        ("000000010.jpg", _jpg((9, 9, 9))), ("000000010.txt", b"dark"),
        ("000000011.jpg", _jpg((200, 200, 200))), ("000000011.txt", b"cut off"),
    ], cut_inside="000000011.jpg"))
    (shards / "00000.parquet").write_bytes(b"PAR1")  # img2dataset writes these beside the tars
    dest = str(tmp_path / "out")
    summary = make_shards(str(shards / "{00000..00001}.tar"), dest, image_size=16, workers=1, progress=False)
    s = by_source(read_all(dest))
    assert {k: v["meta"]["captions"] for k, v in s.items()} == {
        "00000.tar#000000000": ["a red thing"], "00000.tar#000000001": ["only json"], "00001.tar#000000010": ["dark"]}
    assert tuple(s["00000.tar#000000000"]["image"][8, 8]) == pytest.approx((254, 0, 0), abs=2)
    got = {j["source"]: j["reason"] for j in map(json.loads, Path(dest, "skipped.jsonl").read_text().splitlines())}
    assert "no caption" in got["00000.tar#000000002"] and "corrupt image" in got["00000.tar#000000003"]
    assert "no image" in got["00000.tar#000000004"]
    assert any("truncated shard" in r for r in got.values())
    assert summary.num_samples == 3
    # The folder itself (only tars at the top) is recognised as shards too.
    again = str(tmp_path / "again")
    assert make_shards(str(shards), again, image_size=16, workers=1, progress=False).num_samples == 3


def test_bad_arguments_and_empty_inputs_are_clear_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path), str(tmp_path / "out"), "--shard-size", "0", "--no-progress"]) == 2
    assert "--shard-size" in capsys.readouterr().err
    empty = tmp_path / "only_junk"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"")
    (empty / "a.txt").write_text("caption")
    with pytest.raises(ValueError, match="no usable samples"):
        make_shards(str(empty), str(tmp_path / "out2"), progress=False)
    assert "empty file" in Path(tmp_path / "out2" / "skipped.jsonl").read_text()
    assert not Path(tmp_path / "out2" / "manifest.json").exists()


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    write_synthetic(root, 800, image_size=16, seed=9)
    reference = str(tmp_path_factory.mktemp("ref") / "out")
    make_shards(str(root), reference, image_size=16, shard_size=8, workers=1, progress=False)
    return root, reference


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_interrupted_run_leaves_no_partial_shard_and_rerun_finishes(many, tmp_path):
    root, reference = many
    dest = tmp_path / "out"
    cmd = [sys.executable, "-m", "data.make_shards", str(root), str(dest), "--image-size", "16", "--shard-size", "8",
           "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (dest / "shard-000002.tar").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "make_shards ended before it could be killed"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)  # as hard as a crash or a pre-empted node
    finally:
        proc.kill()
        proc.wait()
    present = sorted(p.name for p in dest.iterdir() if p.name.endswith(".tar"))
    assert not (dest / "manifest.json").exists()
    assert 3 <= len(present) < 100, "the kill should land mid-run"
    for name in present:  # whatever has a final name is complete and exactly what a clean run writes
        assert (dest / name).read_bytes() == Path(reference, name).read_bytes(), name

    summary = make_shards(str(root), str(dest), image_size=16, shard_size=8, workers=1, progress=False)
    assert summary.num_reused >= len(present) - 1
    assert sorted(os.listdir(dest)) == sorted(os.listdir(reference))  # no .partial leftovers
    for name in os.listdir(reference):
        assert (dest / name).read_bytes() == Path(reference, name).read_bytes(), name


# ---- S3 over HTTP ----------------------------------------------------------------------------------


def test_s3_dest_matches_local_dest_and_keeps_credentials_out(src, built, s3_prefix, capsys):
    root, _, _ = src
    dest, _ = built
    assert main([str(root), s3_prefix, "--image-size", str(SIZE), "--shard-size", "8", "--workers", "2"]) == 0
    out = capsys.readouterr()
    assert "make_shards:" in out.out and "samples in" in out.out
    keys = storage.list_files(s3_prefix, recursive=True)
    assert sorted(storage.basename(k) for k in keys) == sorted(os.listdir(dest))  # no temporary keys left
    for name in os.listdir(dest):
        assert storage.read_bytes(storage.join(s3_prefix, name)) == Path(dest, name).read_bytes(), name
    secrets = (S3_ENV["AWS_SECRET_ACCESS_KEY"], S3_ENV["AWS_ACCESS_KEY_ID"])
    texts = [out.out, out.err] + [storage.read_bytes(k).decode("utf-8", "replace") for k in keys
                                  if k.endswith((".json", ".jsonl"))]
    assert not any(s in t for s in secrets for t in texts)


def test_s3_rerun_replaces_bad_shards(src, s3_prefix):
    root = src[0]
    small = str(root / "nested")
    first = make_shards(small, s3_prefix, image_size=16, shard_size=1, workers=1, progress=False)
    assert first.num_samples == 1 and first.num_reused == 0
    good = storage.read_bytes(storage.join(s3_prefix, "shard-000000.tar"))
    # What an interrupted run could leave (S3 objects are written whole, so no partial ones): a shard from a
    # different earlier build, whose content no longer matches, and no manifest.
    storage.write_bytes_atomic(storage.join(s3_prefix, "shard-000000.tar"), b"stale")
    storage.delete(storage.join(s3_prefix, "manifest.json"))
    again = make_shards(small, s3_prefix, image_size=16, shard_size=1, workers=1, progress=False)
    assert again.num_reused == 0
    assert storage.read_bytes(storage.join(s3_prefix, "shard-000000.tar")) == good
    names = sorted(storage.basename(k) for k in storage.list_files(s3_prefix))
    assert names == ["manifest.json", "shard-000000.tar", "skipped.jsonl", "tokenizer.model"]
    third = make_shards(small, s3_prefix, image_size=16, shard_size=1, workers=1, progress=False)
    assert third.num_reused == 1  # identical shard already in place: not uploaded again


def test_s3_errors_name_the_problem_without_credentials(src, s3_server, capsys, monkeypatch):
    root = str(src[0] / "nested")
    assert main([root, "s3://no-such-bucket-here/x", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no-such-bucket-here" in err and "does not exist" in err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert main([root, s3_server.url("x"), "--no-progress"]) == 2
    err2 = capsys.readouterr().err
    assert "unreachable" in err2 and "AWS_ENDPOINT_URL" in err2
    assert not any(s in e for s in S3_ENV.values() if "secret" in s or "key" in s for e in (err, err2))


def test_large_objects_are_uploaded_in_parts(s3_prefix):
    from tests.fixtures.s3 import s3_client

    # pyarrow uploads parts of 10 MiB
    data = np.random.default_rng(0).integers(0, 256, 21 * 1024 * 1024, dtype=np.uint8).tobytes()
    url = storage.join(s3_prefix, "big.tar")
    storage.write_bytes_atomic(url, data)
    bucket, key = storage.split_s3(url)
    head = s3_client().head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    assert storage.read_bytes(url) == data
    assert storage.list_files(s3_prefix) == [url]  # written in place: no other key


class FailingSource(io.RawIOBase):
    def __init__(self, fail_at: int):
        self.sent, self.fail_at = 0, fail_at

    def readable(self):
        return True

    def readinto(self, b):
        if self.sent >= self.fail_at:
            raise OSError("disk gone")
        n = min(len(b), self.fail_at - self.sent)
        b[:n] = bytes(n)
        self.sent += n
        return n


def test_an_s3_write_whose_source_fails_leaves_no_partial_object(s3_prefix):
    """pyarrow cannot abort an upload (closing completes it), so storage deletes what a failed write completed."""
    url = storage.join(s3_prefix, "cut.tar")
    with pytest.raises(OSError, match="disk gone"):  # past one 10 MiB part: a multipart upload is under way
        storage.write_file_atomic(url, FailingSource(12 * 1024 * 1024))
    assert storage.list_files(s3_prefix) == []


def test_a_failed_overwrite_of_up_to_one_part_keeps_the_old_object(s3_prefix):
    """A source that fails within one part fails before the upload starts: the object it would replace stays."""
    url = storage.join(s3_prefix, "results.jsonl")
    storage.write_bytes_atomic(url, b"the old results\n")
    for fail_at in (0, 1 << 20, storage.ONE_PUT_BYTES):
        with pytest.raises(OSError, match="disk gone"):
            storage.write_file_atomic(url, FailingSource(fail_at))
        assert storage.read_bytes(url) == b"the old results\n"


def test_s3_errors_say_what_to_fix(s3_server, monkeypatch):
    """pyarrow's errors, translated in one place (data.s3_fs.storage_error): a missing bucket or object, and the
    denials a store answers (moto accepts any key, so those messages are pyarrow's own text)."""
    from data import s3_fs

    with pytest.raises(storage.StorageError, match="bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-here/x")
    with pytest.raises(storage.StorageError, match="no such object"):
        storage.read_bytes(s3_server.url("nothing-here"))
    denied = OSError("When reading information for key 'k' in bucket 'b': AWS Error ACCESS_DENIED during "
                     "HeadObject operation: No response body.")
    assert "access denied (ACCESS_DENIED)" in str(s3_fs.storage_error(denied, "s3://b/k", "read"))
    forbidden = OSError("AWS Error UNKNOWN (HTTP status 403) during GetObject operation: No response body.")
    assert "access denied (HTTP 403)" in str(s3_fs.storage_error(forbidden, "s3://b/k", "read"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")  # an instance role may be tried: it configures nothing
    assert "no AWS credentials are configured" in str(s3_fs.storage_error(denied, "s3://b/k", "read"))


# ---- --val-fraction: a train/val split from one folder ------------------------------------------------------------

def test_the_split_is_a_stable_hash_of_each_inputs_name_and_holds_out_about_the_fraction():
    from data.make_shards import split_of

    names = [f"photos/{i:05d}.jpg" for i in range(20_000)]
    for fraction in (0.05, 0.2, 0.5):
        held = sum(split_of(n, fraction) == "val" for n in names) / len(names)
        assert held == pytest.approx(fraction, abs=0.01)
    # Nested: what a smaller fraction holds out, a larger one holds out too; 0 holds out nothing.
    assert {n for n in names if split_of(n, 0.05) == "val"} <= {n for n in names if split_of(n, 0.2) == "val"}
    assert all(split_of(n, 0.0) == "train" for n in names[:1000])
    assert split_of("caf\udce9.png", 0.5) in ("train", "val")  # a non-UTF-8 file name, as os.listdir gives it


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_a_val_fraction_outside_0_1_is_a_value_error_saying_the_range(bad, tmp_path):
    with pytest.raises(ValueError, match=r"--val-fraction must be in \[0, 1\): the share of inputs held out"):
        make_shards(str(tmp_path), str(tmp_path / "out"), val_fraction=bad)


def _sources(dest: str) -> set[str]:
    return {s["meta"]["source"] for s in read_all(dest).values()}


def test_val_fraction_writes_train_and_val_sets_usable_by_training_disjoint_stable_and_deterministic(tmp_path, capsys):
    from data.make_shards import split_of
    from ray_jobs.data import iter_tar_rows, preprocess_batch, tokenizer_for
    from ray_jobs.train import check_inputs, parse_args

    root = tmp_path / "photos"
    write_synthetic(root, 60, image_size=16, seed=4)
    (root / "bad.png").write_bytes(b"not a png")  # a skipped input goes to its split's skipped.jsonl
    (root / "bad.txt").write_text("a caption\n")
    dest = str(tmp_path / "shards")
    assert main([str(root), dest, "--image-size", "16", "--shard-size", "8", "--val-fraction", "0.25",
                 "--workers", "1", "--no-progress"]) == 0
    train, val = storage.join(dest, "train"), storage.join(dest, "val")
    out = capsys.readouterr().out
    counts = {s: len(_sources(storage.join(dest, s))) for s in ("train", "val")}
    assert (f"make_shards: 60 samples (png 16x16) split by --val-fraction 0.25: train {counts['train']} in "
            f"{-(-counts['train'] // 8)} shards -> {train}, val {counts['val']} in {-(-counts['val'] // 8)} shards -> "
            f"{val}; skipped 1 (1 not an image), listed in each split's skipped.jsonl; tokenizer vocab ") in out
    assert f"train with: python -m ray_jobs.train --data {train} --val-data {val}" in out
    # Disjoint, everything usable in one of them, each input where its name's hash puts it: about a quarter in val.
    by_split = {s: _sources(storage.join(dest, s)) for s in ("train", "val")}
    assert not by_split["train"] & by_split["val"] and len(by_split["train"] | by_split["val"]) == 60
    assert all(split_of(name, 0.25) == split for split, names in by_split.items() for name in names)
    assert 8 <= len(by_split["val"]) <= 22
    bad_split = split_of("bad.png", 0.25)
    assert "bad.png" in Path(dest, bad_split, "skipped.jsonl").read_text()
    assert Path(dest, {"train": "val", "val": "train"}[bad_split], "skipped.jsonl").read_text() == ""
    manifests = {s: json.loads(Path(dest, s, "manifest.json").read_text()) for s in ("train", "val")}
    assert manifests["val"]["split"]["name"] == "val" and manifests["val"]["num_samples"] == len(by_split["val"])
    assert manifests["train"]["image_size"] == manifests["val"]["image_size"] == 16

    # One tokenizer, trained on train's captions only (in the order written), beside both sets.
    tok_bytes = Path(dest, "train", "tokenizer.model").read_bytes()
    assert Path(dest, "val", "tokenizer.model").read_bytes() == tok_bytes
    train_captions = [c for s in sorted(read_all(train).items()) for c in s[1]["meta"]["captions"]]
    assert Tokenizer.train(train_captions, None, vocab_size=512).to_bytes() == tok_bytes
    assert manifests["val"]["tokenizer"]["trained_on"] == "train"
    # What training does with them, before Ray: both sets resolve, the tokenizer is --data's; and the val set's
    # samples go through the pipeline's decode with it.
    args = parse_args(["--data", train, "--val-data", val, "--output", str(tmp_path / "runs"), "--name", "x"])
    train_urls, val_urls, tok = check_inputs(args)
    assert tok.to_bytes() == tok_bytes == tokenizer_for(val).to_bytes()
    assert len(train_urls) == len(manifests["train"]["shards"]) and len(val_urls) == len(manifests["val"]["shards"])
    rows = []
    for url in val_urls:
        with open(url, "rb") as f:
            rows += list(iter_tar_rows(f, url))
    batch = {k: np.array([r.get(k) for r in rows], dtype=object) for k in ("__key__", "__url__", "png", "txt")}
    decoded = preprocess_batch(batch, image_size=16, max_tokens=16, tokenizer=tok, train=False)
    assert decoded["image"].shape == (len(by_split["val"]), 16, 16, 3) and (decoded["length"] > 0).all()

    # The same inputs give the same bytes; inputs added later leave every earlier one in its split.
    again = str(tmp_path / "again")
    assert main([str(root), again, "--image-size", "16", "--shard-size", "8", "--val-fraction", "0.25",
                 "--workers", "1", "--no-progress"]) == 0
    for split in ("train", "val"):
        for name in os.listdir(Path(dest, split)):
            assert Path(again, split, name).read_bytes() == Path(dest, split, name).read_bytes(), (split, name)
    write_synthetic(root / "more", 30, image_size=16, seed=8)
    grown = str(tmp_path / "grown")
    make_shards(str(root), grown, image_size=16, shard_size=8, workers=1, progress=False, val_fraction=0.25)
    for split in ("train", "val"):
        assert by_split[split] <= _sources(storage.join(grown, split))


def test_a_split_left_empty_is_an_error_saying_which_and_what_to_do(tmp_path):
    from data.make_shards import split_of

    root = tmp_path / "few"
    write_synthetic(root, 3, image_size=16, seed=2)
    assert all(split_of(f"img_{i:05d}.png", 0.01) == "train" for i in range(3))
    with pytest.raises(ValueError, match=r"--val-fraction 0.01 left the val split empty \(3 usable samples in all\): "
                                         r"raise it, or add inputs"):
        make_shards(str(root), str(tmp_path / "out"), image_size=16, workers=1, progress=False, val_fraction=0.01)
