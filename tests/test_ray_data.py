"""ray_jobs.data against shards in a real S3 server over HTTP and in a local folder, read by real Ray Data."""

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from data import storage
from data.make_shards import make_shards
from data.shard_spec import expand_braces, resolve_shards, split_top_level
from data.synthetic import write_synthetic
from onade.tokenizer import Tokenizer
from ray_jobs.data import make_skip_counter, shard_dataset, skip_summary, tokenizer_for
from tests.awkward_inputs import write_awkward_cases
from tests.helpers import tar_bytes

SIZE = 32
T = 12


def _digest(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def shards(s3_server, tmp_path_factory):
    """24 synthetic images + the awkward cases as 8-sample shards, on S3 and in a local folder."""
    root = tmp_path_factory.mktemp("images")
    write_synthetic(root, 24, image_size=SIZE, seed=11)
    write_awkward_cases(root)
    prefix = s3_server.url("ray-data", "shards")
    make_shards(str(root), prefix, image_size=SIZE, shard_size=8, workers=1, progress=False)
    local = str(tmp_path_factory.mktemp("local") / "shards")
    storage.download_dir(prefix, local)
    manifest = json.loads(storage.read_bytes(storage.join(prefix, "manifest.json")))
    expected = []  # (image digest, first caption, all captions, image) per sample, from the shard bytes
    for shard in manifest["shards"]:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(storage.join(prefix, shard["name"])))) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in sorted(members.items()):
            if name.endswith(".png"):
                img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                caps = members[name[:-4] + ".txt"].decode().split("\n")
                expected.append((_digest(img), caps[0], caps, img))
    return {"prefix": prefix, "local": local, "manifest": manifest, "expected": expected}


@pytest.fixture(scope="module")
def ray_env(s3_server, ray_local):
    """Ray started after the S3 variables are set, so its workers reach the same server."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray_local


def collect(ds, batch_size=7):
    rows = []
    for batch in ds.iter_torch_batches(batch_size=batch_size):
        assert set(batch) == {"image", "tokens", "length"}  # no string columns reach torch
        assert batch["image"].dtype.is_floating_point is False and str(batch["image"].dtype) == "torch.uint8"
        assert str(batch["tokens"].dtype) == "torch.int64" and str(batch["length"].dtype) == "torch.int64"
        for img, tok, n in zip(batch["image"].numpy(), batch["tokens"].numpy(), batch["length"].numpy()):
            rows.append((img, tok, int(n)))
    return rows


# ---- spec resolution (no Ray needed) -----------------------------------------------------------------

def test_brace_expansion():
    assert expand_braces("s-{000..003}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar", "s-003.tar"]
    assert expand_braces("s-{8..11}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("{a,b}/x-{0..1}.tar") == ["a/x-0.tar", "a/x-1.tar", "b/x-0.tar", "b/x-1.tar"]
    assert expand_braces("x-{00..04..2}.tar") == ["x-00.tar", "x-02.tar", "x-04.tar"]
    assert expand_braces("{a,{b,c}}") == ["a", "b", "c"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert split_top_level("a-{1,2}.tar, b.tar") == ["a-{1,2}.tar", "b.tar"]
    assert expand_braces("x-{7}.tar") == ["x-{7}.tar"]  # as bash: no comma or range, no expansion
    with pytest.raises(ValueError, match="unbalanced"):
        expand_braces("s-{000..003.tar")
    with pytest.raises(ValueError, match="typo"):
        expand_braces("s-{0..99999999}.tar")


def test_resolve_shards_every_spec_form(shards, s3_server):
    prefix, names = shards["prefix"], [s["name"] for s in shards["manifest"]["shards"]]
    full = [storage.join(prefix, n) for n in names]
    last = len(names) - 1
    assert resolve_shards(prefix) == full
    assert resolve_shards(prefix + "/") == full
    assert resolve_shards(storage.join(prefix, "manifest.json")) == full
    assert resolve_shards(f"{prefix}/shard-{{000000..{last:06d}}}.tar") == full
    assert resolve_shards(f"{full[1]},{full[0]}") == [full[1], full[0]]
    assert resolve_shards(full[:2]) == full[:2]
    local = resolve_shards(shards["local"])
    assert [storage.basename(u) for u in local] == names
    with pytest.raises(ValueError, match=r"1 of 2 shards do not exist: .*shard-999999\.tar"):
        resolve_shards(f"{prefix}/shard-{{000000,999999}}.tar")
    with pytest.raises(ValueError, match="mixes local paths and s3"):
        resolve_shards([full[0], local[0]])
    with pytest.raises(ValueError, match="no shards"):
        resolve_shards(storage.join(prefix, "nothing-here"))
    # A manifest whose shards were deleted is caught before Ray starts reading.
    broken = s3_server.url("ray-data", "broken")
    storage.write_bytes_atomic(storage.join(broken, "manifest.json"), json.dumps(shards["manifest"]).encode())
    with pytest.raises(ValueError, match=f"{len(names)} of {len(names)} shards do not exist"):
        resolve_shards(broken)


def test_tokenizer_ships_with_the_shards(shards):
    tok = tokenizer_for(shards["prefix"])
    assert tok == Tokenizer.from_file(f"{shards['local']}/tokenizer.model")
    assert tokenizer_for(f"{shards['prefix']}/shard-{{000000..000001}}.tar") == tok
    with pytest.raises(ValueError, match="no tokenizer.model"):
        tokenizer_for(storage.join(shards["prefix"], "elsewhere"))


# ---- reading through Ray Data ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(180)
def test_validation_rows_are_exact_and_deterministic(shards, ray_env):
    tok = tokenizer_for(shards["prefix"])
    expected = sorted((d, tuple(tok.encode_batch_numpy([c], T)[0][0])) for d, c, _, _ in shards["expected"])
    ds = shard_dataset(shards["prefix"], SIZE, T, tok, train=False)
    rows = collect(ds)
    assert len(rows) == shards["manifest"]["num_samples"] == len(expected)
    for img, tokens, n in rows:
        assert img.shape == (SIZE, SIZE, 3) and tokens.shape == (T,)
        assert 0 < n <= T and (tokens[n:] == Tokenizer.pad_id).all()
    # Exact pixels (PNG is lossless end to end) and the first caption, for every sample.
    assert sorted((_digest(img), tuple(tokens)) for img, tokens, _ in rows) == expected
    again = collect(shard_dataset(shards["prefix"], SIZE, T, tok, train=False), batch_size=5)
    assert [(_digest(i), tuple(t)) for i, t, _ in again] == [(_digest(i), tuple(t)) for i, t, _ in rows]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_training_crops_flips_and_samples_captions(shards, ray_env):
    tok = tokenizer_for(shards["prefix"])
    by_digest = {}
    for _, _, caps, img in shards["expected"]:
        by_digest.setdefault(_digest(img), set()).update(tuple(tok.encode_batch_numpy([c], T)[0][0]) for c in caps)
        by_digest.setdefault(_digest(img[:, ::-1]), set()).update(
            tuple(tok.encode_batch_numpy([c], T)[0][0]) for c in caps)
    plain = {_digest(img) for *_, img in shards["expected"]}
    flipped = {_digest(img[:, ::-1]) for *_, img in shards["expected"]} - plain
    rows = collect(shard_dataset(shards["prefix"], SIZE, T, tok, train=True, seed=1))
    assert len(rows) == shards["manifest"]["num_samples"]
    seen_flipped = seen_plain = 0
    for img, tokens, _ in rows:
        d = _digest(img)
        assert d in by_digest, "a training image must be a sample or its mirror image"
        assert tuple(tokens) in by_digest[d], "the caption must be one of the sample's captions"
        seen_flipped += d in flipped
        seen_plain += d in plain and d not in flipped
    assert seen_flipped > 0 and seen_plain > 0
    # A smaller training size takes random crops of the stored images.
    crops = collect(shard_dataset(shards["prefix"], 24, T, tok, train=True))
    assert {c[0].shape for c in crops} == {(24, 24, 3)}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_corrupt_samples_inside_shards_are_counted_and_skipped(shards, ray_env, s3_server):
    good = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (10, 200, 30)).save(good, format="PNG")
    members = [
        ("000.png", good.getvalue()), ("000.txt", b"a green field"),
        ("001.png", good.getvalue()[:50]), ("001.txt", b"truncated png"),
        ("002.png", b"not a png at all"), ("002.txt", b"garbage bytes"),
        ("003.png", good.getvalue()), ("003.txt", b"  \n "),
        ("004.txt", b"no image at all"),
        ("005.jpg", _jpeg()), ("005.txt", b"a jpeg sample\nsecond caption"),
    ]
    url = s3_server.url("ray-data", "corrupt", "shard-000000.tar")
    storage.write_bytes_atomic(url, tar_bytes(members))
    tok = tokenizer_for(shards["prefix"])
    counter = make_skip_counter()
    spec = f"{url},{storage.join(shards['prefix'], 'shard-000000.tar')}"
    rows = collect(shard_dataset(spec, SIZE, T, tok, train=False, skip_counter=counter))
    assert len(rows) == 2 + 8
    summary = skip_summary(counter)
    assert summary["total"] == 4
    assert summary["by_reason"] == {"undecodable image (UnidentifiedImageError)": 1, "no caption": 1, "no image": 1,
                                    **{k: 1 for k in summary["by_reason"] if k.startswith("undecodable image (O")}}
    assert {e["sample"] for e in summary["examples"]} == {f"shard-000000.tar#00{i}" for i in (1, 2, 3, 4)}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (200, 10, 10)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_brace_pattern_and_local_folder_read_the_same_samples(shards, ray_env):
    tok = tokenizer_for(shards["local"])
    last = len(shards["manifest"]["shards"]) - 1
    pattern = f"{shards['prefix']}/shard-{{000000..{last:06d}}}.tar"
    from_s3 = sorted(_digest(i) for i, _, _ in collect(shard_dataset(pattern, SIZE, T, tok, train=False)))
    from_local = sorted(_digest(i) for i, _, _ in collect(shard_dataset(shards["local"], SIZE, T, tok, train=False)))
    assert from_s3 == from_local == sorted(d for d, *_ in shards["expected"])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_training_shard_order_is_shuffled_per_epoch_reproducibly_and_validation_keeps_it(ray_env, tmp_path):
    import ray.data

    from ray_jobs.data import read_shards

    urls = []
    for i in range(8):
        urls.append(str(tmp_path / f"s{i}.tar"))
        (tmp_path / f"s{i}.tar").write_bytes(tar_bytes([("a.png", b"x"), ("a.txt", b"y")]))
    ctx = ray.data.DataContext.get_current()
    before, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        def epochs(ds, n):
            return [[storage.basename(u) for b in ds.iter_batches(batch_format="numpy") for u in b["__url__"]]
                    for _ in range(n)]

        names = [f"s{i}.tar" for i in range(8)]
        first = epochs(read_shards(urls, shuffle_seed=3), 3)
        assert all(sorted(e) == names for e in first) and len({tuple(e) for e in first}) == 3
        assert first != [names] * 3
        assert epochs(read_shards(urls, shuffle_seed=3), 3) == first  # the same seed, the same epochs
        assert epochs(read_shards(urls, shuffle_seed=4), 1)[0] != first[0]
        assert epochs(read_shards(urls), 2) == [names, names]
    finally:
        ctx.execution_options.preserve_order = before


def test_flips_keep_captions_true(tmp_path):
    from ray_jobs.data import flip_keeps_caption, preprocess_batch

    assert not flip_keeps_caption("Leftwards arrow") and not flip_keeps_caption("person walking facing right")
    assert flip_keeps_caption("a red square on white") and flip_keeps_caption("bright sunrise")
    asymmetric = np.zeros((8, 8, 3), np.uint8)
    asymmetric[:, :4] = 255  # white left half
    png = io.BytesIO()
    Image.fromarray(asymmetric).save(png, format="PNG")
    captions = ["left arrow", "a white and black square"]
    batch = {"__key__": np.array(["a", "b"], dtype=object), "png": np.array([png.getvalue()] * 2, dtype=object),
             "txt": np.array([c.encode() for c in captions], dtype=object)}
    tok = Tokenizer.train(captions * 4, tmp_path / "tok.model", vocab_size=40)
    flipped = {c: 0 for c in captions}
    for _ in range(40):
        out = preprocess_batch(batch, image_size=8, max_tokens=8, tokenizer=tok, train=True)
        for caption, img in zip(captions, out["image"]):
            flipped[caption] += bool(img[0, 0, 0] == 0)
    assert flipped["left arrow"] == 0 and 5 < flipped["a white and black square"] < 35
