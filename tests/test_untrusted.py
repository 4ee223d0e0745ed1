"""The rules for inputs other people fill (data/untrusted.py), and make_shards and the training job under them.
The inpainting job's end-to-end checks are in test_inpaint_job.py."""

import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import images, storage, untrusted
from data.make_shards import make_shards
from ray_jobs.outputs import href, write_gallery
from tests.hostile_inputs import SECRET_CAPTION, png_bomb, write_hostile_folder


@pytest.mark.parametrize("rel", ["a.png", "a/b/c.png", "we ird #1 ?q=2 %41 ü.png", "..a.png", "a..b/c.png", ".hidden"])
def test_plain_relative_paths_pass(rel):
    assert untrusted.safe_rel(rel) == rel


@pytest.mark.parametrize("rel,why", [
    ("../x.png", "'..'"), ("a/../../x.png", "'..'"), ("a/..", "'..'"), ("/etc/x.png", "absolute"),
    ("a//b.png", "an empty segment"), ("a/./b.png", "'.'"), ("a/", "an empty segment"), ("..\\x.png", "backslash"),
    ("a\nb.png", "control"), ("a\0b.png", "control"), ("", "empty"), ("x" * 201 + ".png", "at most 200"),
])
def test_names_that_could_climb_collide_or_break_are_refused(rel, why):
    with pytest.raises(untrusted.UnsafeInput, match=why):
        untrusted.safe_rel(rel)


def test_run_names_and_s3_roots():
    assert untrusted.check_run_name("base-1.v2") == "base-1.v2"
    for bad in ("../x", "a/b", "/abs", "..", ""):
        with pytest.raises(ValueError, match="--name"):
            untrusted.check_run_name(bad)
    untrusted.check_s3_root("s3://b/runs/x/", "--output")
    untrusted.check_s3_root("../local/../ok", "--output")  # local paths are the user's own to choose
    with pytest.raises(ValueError, match="--output 's3://b/runs/../x'"):
        untrusted.check_s3_root("s3://b/runs/../x", "--output")


def test_the_walk_reports_every_entry_that_may_not_be_read(tmp_path):
    write_hostile_folder(tmp_path / "in", tmp_path / "outside")
    problems = {e.rel: e.problem for e in untrusted.walk_local(str(tmp_path / "in"))}
    refused = {"link_out.png": "symlink pointing outside", "cap_out.txt": "symlink pointing outside",
               "linkdir": "symlinked folder pointing outside", "broken.png": "broken symlink",
               "fifo.png": "not a regular file", "caf\\udce9.png": "name is not valid UTF-8"}
    assert {rel for rel, why in problems.items() if why} == set(refused)
    for rel, why in refused.items():
        assert why in problems[rel]
    assert problems["link_in.png"] == "" and problems["ok/a.png"] == ""  # a symlink inside is followed
    assert not any(rel.startswith("linkdir/") for rel in problems)  # the folder symlink is not descended


def test_read_refuses_a_symlink_swapped_in_after_listing_and_bounds_sizes(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    (root / "a.png").write_bytes(b"12345")
    assert untrusted.read(str(root / "a.png"), str(root), 5) == b"12345"
    big = os.urandom(300_000)  # several reads
    (root / "big.png").write_bytes(big)
    assert untrusted.read(str(root / "big.png"), str(root), 300_000) == big
    with pytest.raises(untrusted.UnsafeInput, match="is 5 bytes; the limit is 4 bytes"):
        untrusted.read(str(root / "a.png"), str(root), 4)
    (root / "a.png").unlink()
    os.symlink(outside / "secret.png", root / "a.png")  # listed as a file, a symlink by the time it is read
    with pytest.raises(untrusted.UnsafeInput, match="resolves outside"):
        untrusted.read(str(root / "a.png"), str(root), 100)
    os.mkfifo(root / "f.png")
    done = threading.Event()

    def read_fifo():
        with pytest.raises(untrusted.UnsafeInput, match="not a regular file"):
            untrusted.read(str(root / "f.png"), str(root), 100)
        done.set()

    threading.Thread(target=read_fifo, daemon=True).start()
    assert done.wait(10), "reading a FIFO blocked"


def test_read_bounds_s3_objects_before_their_bytes_arrive(s3_prefix):
    storage.write_bytes_atomic(f"{s3_prefix}/in/a.txt", b"x" * 1000)
    assert untrusted.read(f"{s3_prefix}/in/a.txt", f"{s3_prefix}/in", 1000) == b"x" * 1000
    with pytest.raises(untrusted.UnsafeInput, match="1 KB; the limit is 999 bytes"):
        untrusted.read(f"{s3_prefix}/in/a.txt", f"{s3_prefix}/in", 999)
    with pytest.raises(untrusted.UnsafeInput, match="'..'"):
        untrusted.read(f"{s3_prefix}/in/../in/a.txt", f"{s3_prefix}/in", 1000)


def test_lines_never_hold_more_than_one_bounded_line():
    data = b"short\n" + b"y" * 100 + b"\n\nlast"
    assert list(untrusted.lines(io.BytesIO(data), max_line=10)) == [(1, b"short"), (2, None), (3, b""), (4, b"last")]
    big = io.BytesIO(b"z" * (3 << 16) + b"\nok\n")  # longer than a read chunk
    assert list(untrusted.lines(big, max_line=1000)) == [(1, None), (2, b"ok")]


def test_outputs_are_never_written_through_a_symlink_in_the_output(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "sub")
    (elsewhere / "victim.png").write_bytes(b"keep")
    os.symlink(elsewhere / "victim.png", out / "x.png")
    assert untrusted.write_output(str(out), "a/b.png", b"data") == str(out / "a/b.png")
    assert (out / "a/b.png").read_bytes() == b"data"
    with pytest.raises(untrusted.UnsafeInput, match="'sub' in the output folder is not a plain folder"):
        untrusted.write_output(str(out), "sub/deeper/x.png", b"data")
    with pytest.raises(untrusted.UnsafeInput, match="'..'"):
        untrusted.write_output(str(out), "../x.png", b"data")
    untrusted.write_output(str(out), "x.png", b"new")  # a link at the output's own name is replaced, not followed
    assert (out / "x.png").read_bytes() == b"new" and not (out / "x.png").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim.png"]
    assert (elsewhere / "victim.png").read_bytes() == b"keep"
    assert not any(".partial" in p.name for p in out.rglob("*"))


def test_a_symlink_swapped_in_while_writing_cannot_redirect_the_write(tmp_path, monkeypatch):
    """The check and the write are one walk of opened folders: replace a folder by a symlink between the
    moment it is created and the moment it is entered, and the write is refused."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    real_mkdir = os.mkdir

    def mkdir_then_swap(path, mode=0o777, *, dir_fd=None):
        real_mkdir(path, mode, dir_fd=dir_fd)
        if path == "sub":
            os.rmdir(out / "sub")
            os.symlink(elsewhere, out / "sub")
    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    with pytest.raises(untrusted.UnsafeInput, match="not a plain folder"):
        untrusted.write_output(str(out), "sub/x.png", b"data")
    assert list(elsewhere.iterdir()) == []


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = png_bomb()
    assert len(bomb) < 200_000
    t0 = time.perf_counter()
    with pytest.raises(images.ImageSkip, match=r"900,000,000 pixels, over the limit of 100,000,000"):
        images.load(bomb, 16)
    assert time.perf_counter() - t0 < 1.0  # nothing was decoded
    small = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(small, format="PNG")
    with images.pixel_limit(599):
        with pytest.raises(images.ImageSkip, match="600 pixels, over the limit of 599"):
            images.load(small.getvalue(), 16)
    with images.pixel_limit(600):
        assert images.load(small.getvalue(), 16)[1] == (30, 20)
    assert Image.MAX_IMAGE_PIXELS == untrusted.DEFAULT_MAX_IMAGE_PIXELS  # put back


def test_gallery_links_survive_url_special_names_and_text_is_escaped(tmp_path):
    name = "we ird #1 ?q=2 %41 ü"
    assert href(f"d/{name}.png") == "d/we%20ird%20%231%20%3Fq%3D2%20%2541%20%C3%BC.png"
    rec = {"rel": f"<b>{name}</b>.png", "status": "ok", "caption": "<script>x()</script>",
           "outputs": [f"{name}.png", f"{name}.original.png", f"{name}.masked.png"]}
    bad = {"rel": "<i>bad</i>.png", "status": "error", "error": "<img src=x onerror=y()>", "caption": ""}
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (rec, bad)))
    assert write_gallery(str(tmp_path), str(tmp_path / "results.jsonl"), "<summary>") == ["index.html"]
    page = (tmp_path / "index.html").read_text()
    for raw in ("<script>", "<b>", "<i>", "<img src=x", "<summary>"):
        assert raw not in page
    assert "&lt;script&gt;x()&lt;/script&gt;" in page and "&lt;img src=x onerror=y()&gt;" in page


# ---- make_shards ----------------------------------------------------------------------------------------

def _skipped(dest: Path) -> dict[str, str]:
    return {r["source"]: r["reason"] for r in map(json.loads, (dest / "skipped.jsonl").read_text().splitlines())}


def _sources(dest: Path) -> list[str]:
    out = []
    for shard in sorted(dest.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            out += [json.load(tar.extractfile(m))["source"] for m in tar if m.name.endswith(".json")]
    return out


def test_make_shards_on_a_hostile_folder_reads_nothing_outside_it(tmp_path):
    write_hostile_folder(tmp_path / "in", tmp_path / "outside")
    summary = make_shards(tmp_path / "in", tmp_path / "shards", image_size=16, workers=2, progress=False)
    # link_in.png is read through its symlink, which stays inside the folder
    assert sorted(_sources(tmp_path / "shards")) == ["link_in.png", "ok/a.png", "over.png", "we ird #1 ?q=2 %41 ü.png"]
    expected = {"bomb.png": "image too large: 900,000,000 pixels", "big.png": "caption file is 50.0 MB",
                "long.png": "caption is 5000 characters", "link_out.png": "symlink pointing outside",
                "linkdir": "symlinked folder pointing outside", "broken.png": "broken symlink",
                "cap_out.png": "cap_out.txt: caption file resolves outside", "cap_out.txt": "symlink pointing outside",
                "fifo.png": "not a regular file", "caf\\udce9.png": "not valid UTF-8", "dup.jpg": "no caption",
                "dup.png": "no caption"}
    skipped = _skipped(tmp_path / "shards")
    assert set(skipped) == set(expected)
    for rel, why in expected.items():
        assert why in skipped[rel], (rel, skipped[rel])
    everything = b"".join(p.read_bytes() for p in (tmp_path / "shards").iterdir())
    assert SECRET_CAPTION.encode() not in everything
    assert summary.num_samples == 4


def test_make_shards_confines_captions_file_entries_and_coco_file_names(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    img = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(img, format="PNG")
    (root / "a.png").write_bytes(img.getvalue())
    (outside / "secret.png").write_bytes(img.getvalue())
    lines = [{"file": "a.png", "caption": "fine"},
             {"file": "../outside/secret.png", "caption": "climbs out"},
             {"file": str(outside / "secret.png"), "caption": "absolute, outside"},
             {"file": str(root / "a.png"), "caption": "absolute, inside"}]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n" + "[" * 70000 + "\n")
    make_shards(root, tmp_path / "s1", image_size=8, captions=str(tmp_path / "caps.jsonl"), progress=False)
    skipped = _skipped(tmp_path / "s1")
    assert _sources(tmp_path / "s1") == ["a.png"]
    assert "'..'" in skipped["../outside/secret.png"]
    assert "outside the image folder" in skipped[str(outside / "secret.png")]
    assert "longer than 64000 bytes" in skipped["caps.jsonl:5"]

    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "../outside/secret.png"},
                       {"id": 3, "file_name": "/abs/secret.png"}],
            "annotations": [{"id": i, "image_id": i, "caption": f"caption {i}"} for i in (1, 2, 3)]}
    (tmp_path / "captions_x.json").write_text(json.dumps(coco))
    make_shards(tmp_path / "captions_x.json", tmp_path / "s2", image_size=8, images_dir=str(root), progress=False)
    skipped = _skipped(tmp_path / "s2")
    assert _sources(tmp_path / "s2") == ["a.png"]
    assert "'..'" in skipped["../outside/secret.png"] and "absolute" in skipped["/abs/secret.png"]


def test_make_shards_pixel_flag_and_oversized_tar_members(tmp_path):
    from tests.helpers import tar_bytes

    img = io.BytesIO()  # noise: its PNG is over 4 bytes for each of 100 pixels, under 4 for each of 599
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)).save(img, format="PNG")
    assert 400 < len(img.getvalue()) < 4 * 599
    shard = tar_bytes([("a.png", img.getvalue()), ("a.txt", b"fine"),
                       ("b.png", img.getvalue()), ("b.txt", b"c" * (untrusted.MAX_TEXT_MEMBER_BYTES + 1)),
                       ("c.png", img.getvalue()), ("c.txt", b"x" * 3000)])
    (tmp_path / "src").mkdir()
    (tmp_path / "src/in.tar").write_bytes(shard)
    make_shards(str(tmp_path / "src/in.tar"), tmp_path / "s1", image_size=8, progress=False)
    skipped = _skipped(tmp_path / "s1")
    assert _sources(tmp_path / "s1") == ["in.tar#a"]
    assert "member b.txt is 1000001 bytes" in skipped["in.tar#b"] and "3000 characters" in skipped["in.tar#c"]
    # 600 pixels: over a limit of 599 (refused from the header), and its 2400 bytes over 4 bytes/pixel of 100
    with pytest.raises(ValueError, match="no usable samples"):  # 2 workers: the limit reaches worker processes
        make_shards(str(tmp_path / "src/in.tar"), tmp_path / "s2", image_size=8, progress=False, max_pixels=599,
                    workers=2)
    assert "600 pixels, over the limit of 599" in _skipped(tmp_path / "s2")["in.tar#a"]
    with pytest.raises(ValueError, match="no usable samples"):
        make_shards(str(tmp_path / "src/in.tar"), tmp_path / "s3", image_size=8, progress=False, max_pixels=100)
    assert "member a.png is" in _skipped(tmp_path / "s3")["in.tar#a"]


def test_training_refuses_a_run_name_that_climbs_out_before_starting(tmp_path):
    from ray_jobs import train

    with pytest.raises(ValueError, match="--name: run name '../escape' has a '..' segment"):
        train.main(["--data", str(tmp_path), "--output", str(tmp_path / "runs"), "--name", "../escape"])
    with pytest.raises(ValueError, match="--output"):
        train.main(["--data", str(tmp_path), "--output", "s3://b/runs/../x", "--name", "ok"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


def test_large_images_are_converted_in_bands_with_identical_pixels(tmp_path, monkeypatch):
    from tests.awkward_inputs import write_awkward_cases

    cases = [c for c in write_awkward_cases(tmp_path) if c.image_ok]
    modes = set()
    for c in cases:
        with Image.open(tmp_path / c.path) as img:
            img.load()
            whole = np.asarray(images.to_rgb(img))
            monkeypatch.setattr(images, "BAND_PIXELS", 7)  # a band of one row, or less than a row
            banded = np.asarray(images.to_rgb(img))
            monkeypatch.undo()
            modes.add(img.mode)
            assert np.array_equal(whole, banded), c.path
    assert {"P", "RGBA", "LA", "I;16", "F", "CMYK", "L", "1"} <= modes


def test_walks_survive_deep_trees_and_names_that_are_not_utf8(tmp_path):
    deep = tmp_path / "in"
    path = deep
    deep.mkdir()
    for _ in range(1200):  # deeper than Python's recursion limit
        path = path / "d"
        path.mkdir()
    (path / "x.png").write_bytes(b"x")
    (deep / os.fsdecode(b"caf\xe9")).mkdir()
    (deep / os.fsdecode(b"caf\xe9") / "hidden.png").write_bytes(b"x")
    try:
        entries = list(untrusted.walk_local(str(deep)))
        assert [(e.rel, e.problem) for e in entries] == [
            ("caf\\udce9", "name is not valid UTF-8; not read"), ("d/" * 1200 + "x.png", "")]
        json.dumps([e.rel for e in entries], ensure_ascii=False).encode("utf-8")  # rows can be written
    finally:  # bottom up: shutil.rmtree (and pytest's cleanup of old runs) recurses, and would fail here
        (path / "x.png").unlink()
        while path != deep:
            path.rmdir()
            path = path.parent


def test_shards_named_by_a_manifest_or_a_listing_stay_in_their_folder(tmp_path):
    from data import shard_spec
    from tests.helpers import tar_bytes

    img = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img, format="PNG")
    secret = tar_bytes([("s.png", img.getvalue()), ("s.txt", SECRET_CAPTION.encode())])
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/private.tar").write_bytes(secret)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards/ok.tar").write_bytes(tar_bytes([("a.png", img.getvalue()), ("a.txt", b"fine")]))
    os.symlink(tmp_path / "outside/private.tar", tmp_path / "shards/link.tar")
    refused = []
    assert shard_spec.resolve_shards(str(tmp_path / "shards"), refused=refused) == [str(tmp_path / "shards/ok.tar")]
    assert [why for _, why in refused] == ["symlink pointing outside the input folder; not followed"]

    (tmp_path / "m").mkdir()
    (tmp_path / "m/ok.tar").write_bytes((tmp_path / "shards/ok.tar").read_bytes())
    names = [str(tmp_path / "outside/private.tar"), "../outside/private.tar", "ok.tar"]
    (tmp_path / "m/manifest.json").write_text(json.dumps({"shards": [{"name": n} for n in names]}))
    refused = []
    assert shard_spec.resolve_shards(str(tmp_path / "m"), refused=refused) == [str(tmp_path / "m/ok.tar")]
    assert ["absolute" in refused[0][1], "'..'" in refused[1][1]] == [True, True]

    make_shards(str(tmp_path / "shards"), tmp_path / "out", image_size=8, progress=False)
    skipped = _skipped(tmp_path / "out")
    assert _sources(tmp_path / "out") == ["ok.tar#a"]
    assert "symlink pointing outside" in skipped[str(tmp_path / "shards/link.tar")]
    assert SECRET_CAPTION.encode() not in b"".join(p.read_bytes() for p in (tmp_path / "out").iterdir())


def test_a_tar_cannot_make_the_reader_hold_more_than_its_limits(tmp_path):
    import gzip
    import resource

    from data import sources
    from tests.helpers import tar_bytes

    # A GNU long-name header claiming 200 MB, compressed to well under 1 MB: tarfile would read it whole.
    path = tmp_path / "bomb.tar"
    with gzip.open(path, "wb", compresslevel=1) as g:
        info = tarfile.TarInfo("././@LongLink")
        info.type, info.size = tarfile.GNUTYPE_LONGNAME, 200_000_000
        g.write(info.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(200):
            g.write(b"a" * 1_000_000)
        g.write(b"\0" * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    items = list(sources.iter_tar(str(path)))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB: not the 200 MB header
    assert len(items) == 1 and "extended header of 200000000 bytes" in items[0].skip

    # Members no sample uses (a.x0 ... a.x49) are passed over; a sample's members are bounded together.
    img = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img, format="PNG")
    extra = [(f"a.x{i}", b"z" * 1000) for i in range(50)]
    big = b"i" * 1_500_000  # under the 1.6 MB image limit of 400,000 pixels; three add up to more than 1.6 + 2 MB
    (tmp_path / "t.tar").write_bytes(tar_bytes([("a.png", img.getvalue()), ("a.txt", b"cap"), *extra,
                                                ("b.png", big), ("b.jpg", big), ("b.webp", big), ("b.txt", b"cap")]))
    items = list(sources.iter_tar(str(tmp_path / "t.tar"), max_pixels=400_000))
    assert items[0].skip is None and items[0].captions == ["cap"]
    assert "sample's members add up to more" in items[1].skip


def test_a_file_of_bad_caption_lines_is_a_hundred_rows_and_a_count(tmp_path):
    from data.sources import caption_lines

    rows = list(caption_lines(io.BytesIO(b"x\n" * 100_000 + json.dumps({"file": "a.png", "caption": "c"}).encode()),
                              "caps.jsonl"))
    assert len(rows) == untrusted.MAX_BAD_LINE_ROWS + 2
    assert rows[-2] == ("caps.jsonl:100001", "a.png", ["c"], "")
    assert rows[-1][0] == "caps.jsonl:*" and f"{100_000 - untrusted.MAX_BAD_LINE_ROWS} more" in rows[-1][3]


@pytest.mark.parametrize("seg", ["...", ".. ", " .", "caf\udce9"])
def test_segments_windows_would_read_as_dots_and_non_utf8_names_are_refused(seg):
    with pytest.raises(untrusted.UnsafeInput):
        untrusted.safe_rel(f"a/{seg}/b.png")


def test_captions_that_python_chokes_on_are_rows_not_crashes(tmp_path):
    from data.sources import caption_lines

    deep = b"[" * 50_000 + b"\n"  # under the line limit; json.loads recurses: RecursionError, not a JSON error
    surrogate = json.dumps({"file": "a.png", "caption": "x\ud800y"}).encode() + b"\n"
    rows = list(caption_lines(io.BytesIO(deep + surrogate), "caps.jsonl"))
    assert "RecursionError" in rows[0][3]
    with pytest.raises(untrusted.UnsafeInput, match="not valid Unicode"):
        untrusted.check_captions(rows[1][2])


def test_tar_members_with_bad_names_json_or_global_headers_are_skipped_rows(tmp_path):
    from data import sources

    img = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img, format="PNG")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in [(os.fsdecode(b"caf\xe9.png"), img.getvalue()), (os.fsdecode(b"caf\xe9.txt"), b"ok"),
                           ("j.png", img.getvalue()), ("j.json", b'{"caption": "\xff\xfe"}')]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "a.tar").write_bytes(buf.getvalue())
    items = list(sources.iter_tar(str(tmp_path / "a.tar")))
    assert [i.source for i in items] == ["a.tar#caf\\udce9", "a.tar#j"]
    json.dumps([i.source for i in items], ensure_ascii=False).encode("utf-8")  # skipped.jsonl can hold them
    assert items[0].captions == ["ok"] and "no caption" in items[1].skip

    buf = io.BytesIO()
    many = {f"k{i:05d}": "v" for i in range(untrusted.MAX_PAX_GLOBALS + 1)}  # ~150 KB: under the header limit
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=many) as tar:
        info = tarfile.TarInfo("a.png")
        info.size = len(img.getvalue())
        tar.addfile(info, io.BytesIO(img.getvalue()))
    (tmp_path / "g.tar").write_bytes(buf.getvalue())
    items = list(sources.iter_tar(str(tmp_path / "g.tar")))
    assert len(items) == 1 and "global pax headers" in items[0].skip


def test_selecting_inpaint_work_refuses_colliding_outputs_and_never_reads_its_own_output(tmp_path):
    import argparse

    from ray_jobs import inpaint
    from ray_jobs.inpaint_inputs import JobOptions

    real = tmp_path / "real"
    for rel in ("a.jpg", "a.png/x.png", "results.jsonl/y.png", "B.png", "b.png", "x" * 190 + ".png",
                "out/old.png"):
        (real / rel).parent.mkdir(parents=True, exist_ok=True)
        (real / rel).write_bytes(b"not decoded when the work is selected")
    os.symlink(real, tmp_path / "via_link")
    args = argparse.Namespace(input=str(tmp_path / "via_link"), output=str(real / "out"), captions=None,
                              mask="center")
    opts = JobOptions(checkpoint="", output=args.output, image_size=8, input=args.input)
    todo, known = inpaint.select_work(args, opts, {})
    assert sorted(r["rel"] for r in todo) == ["B.png", "a.jpg"]  # sorted order decides who keeps a name
    errors = {r["rel"]: r["error"] for r in known}
    assert "a.png needs a folder" not in errors.get("a.jpg", "")
    assert "needs a folder a.png, already a file of a.jpg" in errors["a.png/x.png"]
    assert "needs a folder results.jsonl, already a file of the job's results" in errors["results.jsonl/y.png"]
    assert "its output b.png is already that of B.png" in errors["b.png"]
    assert "at most 200" in errors["x" * 190 + ".png"]  # its .masked.png would be over the name limit
    assert not any(rel.startswith("out/") for rel in errors) and "out/old.png" not in {r["rel"] for r in todo}


@pytest.mark.parametrize("file,root,rel", [
    ("a/b.png", "s3://bkt/in", "a/b.png"), ("./a.png", "s3://bkt/in", "a.png"),
    ("s3://bkt/in/a.png", "s3://bkt/in/", "a.png"), ("s3://bkt/input/a.png", "s3://bkt/in", None),
    ("s3://bkt/in/../x.png", "s3://bkt/in", None), ("s3://bkt/in/a.png", "/local/in", None),
    ("/local/in/a.png", "/local/in", "a.png"), ("/local/other/a.png", "/local/in", None),
])
def test_captions_file_entries_are_confined_to_a_local_or_s3_input(file, root, rel):
    from data.sources import listed_rel

    if rel is None:
        with pytest.raises(untrusted.UnsafeInput):
            listed_rel(file, root)
    else:
        assert listed_rel(file, root) == rel
