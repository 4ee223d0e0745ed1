"""End-to-end tests of `python -m ray_jobs.inpaint` through its main(argv), on a real local Ray."""

import contextlib
import dataclasses
import html
import json
import os
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import onade
from data.synthetic import write_synthetic
from onade.config import Config, ModelConfig, SampleConfig
from onade.texture import texture
from onade.tokenizer import Tokenizer
from ray_jobs import inpaint as job
from data.images import ImageSkip, has_alpha, pixel_limit, to_rgb
from ray_jobs.inpaint_inputs import JobOptions, prepare
from ray_jobs.outputs import OutputNames
from tests.awkward_inputs import write_awkward_cases

SIZE = 16
CAPTIONS = ["a red disc on a blue background", "a green square", "a yellow triangle", "grey stripes"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    tok = Tokenizer.train(CAPTIONS * 4, None, vocab_size=40)
    model_cfg = ModelConfig(image_size=SIZE, width=16, num_blocks=4, dilations=(1, 2, 4, 8), embed_dim=4,
                            norm_groups=4, vocab_size=tok.vocab_size, text_dim=16, merge_every=2)
    cfg = Config(model=model_cfg).validate()
    torch.manual_seed(0)
    return str(onade.save_checkpoint(root / "export", onade.build_model(cfg), cfg, tok))


def run(*argv) -> dict:
    return job.main([*map(str, argv), "--no-progress"])


def decoded(path: Path, rgb: bool = False) -> np.ndarray:
    """An input as the job must keep it outside the hole: upright, 8-bit, RGBA when it has transparency
    (with `rgb`, as the model and the masked view see it: transparency composited on white)."""
    from PIL import ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        return np.asarray(img.convert("RGBA") if has_alpha(img) and not rgb else to_rgb(img))


def is_checkerboard(pixels: np.ndarray) -> bool:
    """Hole pixels [N,3] drawn as black and white squares (both show once the hole spans a few squares)."""
    both = len(pixels) < 64 or ((pixels == 0).any() and (pixels == 255).any())
    return bool(np.isin(pixels, (0, 255)).all() and both)


def records(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    by_rel = {r["rel"]: r for r in recs}
    assert len(by_rel) == len(recs), "one line per input"
    return by_rel


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_s3_checkpoint_input_and_output_with_resume(s3_server, ray_local, checkpoint, tmp_path):
    """Everything in S3 (a real S3 API over HTTP); s3_server comes before ray_local so workers inherit it."""
    from data import storage

    src = tmp_path / "in"
    write_synthetic(src / "a", 3, image_size=32)
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    prefix = s3_server.url(f"job-{tmp_path.name}")
    storage.upload_dir(src, f"{prefix}/in")
    storage.upload_dir(checkpoint, f"{prefix}/ckpt")
    out = f"{prefix}/out"
    args = ("--checkpoint", f"{prefix}/ckpt", "--input", f"{prefix}/in", "--output", out, "--steps", 4, "--animate")
    summary = run(*args)
    assert summary["done"] == 3 and summary["failed"] == 1
    recs = {json.loads(line)["rel"]: json.loads(line)
            for line in storage.read_bytes(f"{out}/results.jsonl").decode().splitlines()}
    assert set(recs) == {"a/img_00000.png", "a/img_00001.png", "a/img_00002.png", "broken.png"}
    assert recs["a/img_00001.png"]["caption"] == (src / "a/img_00001.txt").read_text().splitlines()[0]
    listed = set(storage.list_files(out, recursive=True))
    for rel, r in recs.items():
        assert all(f"{out}/{o}" in listed for o in r["outputs"])
    assert f"{out}/index.html" in listed
    assert not any(".partial" in u for u in listed)
    again = run(*args)
    assert again["done"] == 0 and again["skipped"] == 3 and again["failed"] == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_folder_with_awkward_and_broken_files_then_resume(s3_server, ray_local, checkpoint, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    cases = {f"awk/{c.path}": c for c in write_awkward_cases(src / "awk")}
    synth = write_synthetic(src / "synth", 5, image_size=32)
    summary = run("--checkpoint", checkpoint, "--input", src, "--output", out, "--steps", 8, "--samples", 2,
                  "--animate", "--batch-size", 8)

    recs = records(out)
    images = {rel: c for rel, c in cases.items() if not rel.endswith(".txt")}
    expected = set(images) | {f"synth/{s.name}.png" for s in synth}
    assert set(recs) == expected  # every input, and sidecar captions are not inputs
    opts = JobOptions(checkpoint=checkpoint, output=str(out), image_size=SIZE, samples=2, animate=True)
    for rel, r in recs.items():
        case = images.get(rel)
        good = case is None or case.image_ok
        assert r["status"] == ("ok" if good else "error"), (rel, r)
        if not good:
            assert r["error"] and r["outputs"] == []
            assert case.skip in r["error"], (rel, r["error"])  # corrupt / empty / not an image
            continue
        assert r["strategy"] == SampleConfig().strategy and r["steps"] == 8 and r["seconds"] > 0
        assert r["forward_passes"] > 0 and r["guidance"] == SampleConfig().guidance
        assert r["precision"] == onade.resolve_precision("auto", "cpu")  # --precision auto, resolved per actor
        assert r["caption"] == (case.captions[0] if case and case.captions else
                                "" if case else Path(src / rel).with_suffix(".txt").read_text().splitlines()[0])
        assert r["outputs"] == OutputNames.of(rel, opts).all()
        sample, second, masked = (np.asarray(Image.open(out / o)) for o in r["outputs"][:3])
        original = decoded(src / rel)
        h, w = original.shape[:2]
        assert sample.shape == second.shape == original.shape and r["image_size"] == [w, h]
        hole = np.zeros((h, w), bool)
        side = max(1, min(w, h) // 2)
        hole[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side] = True
        assert r["hole_pixels"] == side * side
        # Outside the hole every pixel is the input's; the hole is a checkerboard in the masked view.
        assert (sample[~hole] == original[~hole]).all() and (second[~hole] == original[~hole]).all()
        assert is_checkerboard(masked[hole]) and (masked[~hole] == decoded(src / rel, rgb=True)[~hole]).all()
        with Image.open(out / r["outputs"][-1]) as gif:
            assert gif.format == "GIF" and gif.n_frames > 2 and gif.size == (2 * SIZE, SIZE)
    bad = [rel for rel, c in images.items() if not c.image_ok]
    assert len(bad) == 4  # truncated, empty, text named .jpg, notes.md
    assert summary["done"] == len(expected) - 4 and summary["failed"] == 4 and summary["skipped"] == 0
    # The awkward images keep what they show: the EXIF-rotated one is upright, red above blue.
    upright = np.asarray(Image.open(out / "awk/exif_rotated.png")).astype(int)
    assert upright[1, upright.shape[1] // 2, 0] > 150 and upright[-2, upright.shape[1] // 2, 2] > 150

    index = (out / "index.html").read_text()
    for src_attr in re.findall(r'src="([^"]+)"', index):
        assert (out / urllib.parse.unquote(html.unescape(src_attr))).is_file(), src_attr
    assert index.count("<tr>") == len(expected) + 1 and "un café très coloré" in index

    # Resume: one input lost an output (and a killed writer left a temp file): only it is redone.
    (out / "synth/img_00002.gif").unlink()
    (out / "synth/img_00003.png.partial-dead").write_bytes(b"half")
    before = os.stat(out / "synth/img_00001.png").st_mtime_ns
    again = run("--checkpoint", checkpoint, "--input", src, "--output", out, "--steps", 8, "--samples", 2,
                "--animate", "--batch-size", 8)
    assert again["done"] == 1 and again["skipped"] == len(expected) - 4 - 1 and again["failed"] == 4
    assert (out / "synth/img_00002.gif").is_file()
    assert os.stat(out / "synth/img_00001.png").st_mtime_ns == before
    recs2 = records(out)
    assert set(recs2) == expected
    assert recs2["synth/img_00001.png"]["caption"] == recs["synth/img_00001.png"]["caption"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mask_folder_captions_jsonl_and_all_failed(s3_server, ray_local, checkpoint, tmp_path):
    src, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    write_synthetic(src, 4, image_size=32)
    for p in src.glob("*.txt"):
        p.unlink()
    (tmp_path / "caps.jsonl").write_text(json.dumps({"file": "img_00000.png", "caption": "a green square"}) + "\n"
                                         + "not json\n" + json.dumps({"file": "../x.png", "caption": "c"}) + "\n")
    masks.mkdir()
    m = np.zeros((32, 32), np.uint8)
    m[0:8, 24:32] = 255  # the top-right 8x8 corner of the 32x32 image
    Image.fromarray(m).save(masks / "img_00000.png")
    Image.fromarray(m).save(tmp_path / "outside_mask.png")
    os.symlink(tmp_path / "outside_mask.png", masks / "img_00002.png")  # a mask from outside the mask folder
    Image.fromarray(m[:16]).save(masks / "img_00003.png")  # 32x16: not the image's size
    summary = run("--checkpoint", checkpoint, "--input", src, "--output", out, "--mask", masks,
                  "--captions", tmp_path / "caps.jsonl", "--strategy", "ancestral", "--steps", 0, "--chunk", 8)
    recs = records(out)
    assert recs["img_00000.png"]["status"] == "ok" and recs["img_00000.png"]["caption"] == "a green square"
    # --steps 0: `--chunk` subpixels per pass. The 8x8 hole's window is the 16x16 corner (the model's own
    # size: no resampling), so 8x8x3 hidden subpixels at 8 per pass.
    r = recs["img_00000.png"]
    assert r["steps"] == 0 and r["window"] == {"left": 16, "top": 0, "side": 16, "model_size": 16, "scale": 1.0}
    assert r["forward_passes"] == 24
    assert recs["img_00001.png"]["status"] == "error" and "no mask" in recs["img_00001.png"]["error"]
    assert "mask file not read: symlink pointing outside" in recs["img_00002.png"]["error"]
    assert "mask is 32x16 but the image is 32x32" in recs["img_00003.png"]["error"]
    assert "bad captions line" in recs["caps.jsonl:2"]["error"] and "'..'" in recs["caps.jsonl:3"]["error"]
    sample, original = np.asarray(Image.open(out / "img_00000.png")), decoded(src / "img_00000.png")
    hole = m > 127
    assert (sample[~hole] == original[~hole]).all() and (sample[hole] != original[hole]).any()
    assert summary["done"] == 1

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"")
    (broken / "b.jpg").write_bytes(b"not a jpeg")
    bad = run("--checkpoint", checkpoint, "--input", broken, "--output", tmp_path / "out2")
    assert bad["done"] == 0 and bad["failed"] == 2 and job.exit_code(bad) == 1
    assert job.exit_code(summary) == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sampler_flags_reach_the_actor_and_every_row_records_them(ray_local, checkpoint, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    write_synthetic(src, 2, image_size=32)
    (src / "broken.png").write_bytes(b"")
    summary = run("--checkpoint", checkpoint, "--input", src, "--output", out,
                  "--strategy", "maskgit", "--steps", 4, "--guidance", 2)
    assert summary["done"] == 2 and summary["failed"] == 1
    recs = records(out)
    for rel in ("img_00000.png", "img_00001.png", "broken.png"):
        r = recs[rel]
        assert (r["strategy"], r["steps"], r["guidance"]) == ("maskgit", 4, 2.0), r
        # maskgit makes exactly its budget of passes; none are made for an input that could not be read.
        assert r["forward_passes"] == (0 if rel == "broken.png" else 4), r
    assert "strategy maskgit, 4 steps, top_p 0.3, guidance 2" in capsys.readouterr().out  # the default nucleus


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_without_sampler_flags_the_job_samples_with_sample_config_defaults(ray_local, checkpoint, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    write_synthetic(src, 1, image_size=32)
    assert run("--checkpoint", checkpoint, "--input", src, "--output", out)["done"] == 1
    r = records(out)["img_00000.png"]
    default = SampleConfig()
    assert [r[k] for k in ("strategy", "steps", "guidance", "temperature", "top_p", "channels")] == [
        default.strategy, default.steps, default.guidance, default.temperature, default.top_p, default.channels]
    # 32 planned passes, a pixel's channels in sequence: 10 pixel passes of three forward passes each.
    assert (default.channels, default.steps, r["forward_passes"]) == ("sequence", 32, 30)
    assert r["precision"] == onade.resolve_precision(default.precision, "cpu")


@pytest.mark.parametrize("flags,named", [
    (["--guidance", "-1"], "--guidance"), (["--chunk", "0"], "--chunk"), (["--steps", "-2"], "--steps"),
    (["--final-temperature", "-0.5"], "--final-temperature"), (["--chunk", "4"], "--steps 0"),
])
def test_bad_sampler_flags_are_usage_errors_naming_the_flag(flags, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        job.parse_args(["--checkpoint", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                        *flags])
    assert exit_info.value.code == 2  # argparse's usage error, before anything is read
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --" in line and f"{named} " in line and "must be" in line, line
    assert "final_temperature" not in line  # flags are named as typed, not as SampleConfig fields


def test_feather_needs_the_context_fit(tmp_path, capsys):
    with pytest.raises(SystemExit):
        job.parse_args(["--checkpoint", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                        "--fit", "crop", "--feather", "2"])
    assert "--feather blends a sample pasted back into its image: it needs --fit context" in capsys.readouterr().err


def test_bad_arguments_fail_before_any_work(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="not an onade checkpoint"):
        run("--checkpoint", tmp_path, "--input", tmp_path, "--output", tmp_path / "o")
    with pytest.raises(ValueError, match=r"--mask 'box:1,2,3': expected center, box:X,Y,W,H in image pixels"):
        run("--checkpoint", checkpoint, "--input", tmp_path, "--output", tmp_path / "o", "--mask", "box:1,2,3")
    with pytest.raises(ValueError, match="expected center.*or an existing folder of mask PNGs"):
        run("--checkpoint", checkpoint, "--input", tmp_path, "--output", tmp_path / "o", "--mask", "middle")
    with pytest.raises(ValueError, match="no images"):
        run("--checkpoint", checkpoint, "--input", tmp_path / "o", "--output", tmp_path / "o" / "inside")
    for out in (tmp_path / "o", tmp_path):  # outputs would overwrite inputs
        with pytest.raises(ValueError, match="is --input or contains it"):
            run("--checkpoint", checkpoint, "--input", tmp_path / "o", "--output", out)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_actor_is_restarted_and_its_batch_retried(s3_server, ray_local, checkpoint, tmp_path):
    import threading
    import time

    import psutil

    src, out = tmp_path / "in", tmp_path / "out"
    write_synthetic(src, 12, image_size=32)
    result = {}
    runner = threading.Thread(target=lambda: result.update(
        run("--checkpoint", checkpoint, "--input", src, "--output", out, "--steps", 300, "--batch-size", 4)))
    runner.start()
    killed = None
    # Kill the pool's actor (a real process of the Ray this test started) once its first batch is written.
    while runner.is_alive() and killed is None:
        if any(out.glob("*.masked.png")):
            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "InpaintActor" in " ".join(proc.cmdline()):
                        proc.kill()
                        killed = proc.pid
                        break
        time.sleep(0.05)
    runner.join()
    assert killed is not None, "the job finished before the actor could be killed; give it more steps"
    assert result["done"] == 12 and result["failed"] == 0
    assert set(records(out)) == {f"img_{i:05d}.png" for i in range(12)}
    for i in range(12):
        for suffix in (".png", ".masked.png", ".thumb.jpg"):
            with Image.open(out / f"img_{i:05d}{suffix}") as img:
                img.load()  # whole files only: a truncated PNG would raise here


def test_an_output_folder_inside_the_input_is_never_read_as_input(tmp_path):
    assert job._nested(str(tmp_path / "in" / "out"), str(tmp_path / "in")) == "out"
    assert job._nested("s3://b/photos/inpainted/", "s3://b/photos") == "inpainted"
    assert job._nested(str(tmp_path / "in2"), str(tmp_path / "in")) is None
    assert job._nested("s3://b/photos", "s3://b/photos") is None


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_symlink() and p.is_file()}


def _check_hostile_rows(recs: dict[str, dict], cases) -> None:
    from tests.hostile_inputs import SECRET_CAPTION

    for case in cases:
        r = recs[case.rel]
        assert r["status"] == ("ok" if case.ok else "error"), (case.rel, r)
        if case.ok:
            assert r["caption"] == case.caption, (case.rel, r)
        else:
            assert case.reason in r["error"] and r["outputs"] == [], (case.rel, r)
    assert not any(SECRET_CAPTION in json.dumps(r) for r in recs.values())


def _check_gallery(index: str, exists) -> None:
    from tests.hostile_inputs import SCRIPT_CAPTION

    assert SCRIPT_CAPTION not in index and html.escape(SCRIPT_CAPTION) in index  # text from inputs is escaped
    links = re.findall(r'(?:src|href)="([^"]*)"', index)
    assert links and all("#" not in u and "?" not in u and " " not in u for u in links)
    for u in links:  # the browser's view: every link, percent-decoded, names an output
        assert exists(urllib.parse.unquote(html.unescape(u))), u


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hostile_bucket_writes_only_under_output(s3_server, ray_local, checkpoint, tmp_path):
    """S3 keys with '..', absolute-looking keys, '.', '//' and backslashes, a decompression bomb, a 50 MB
    caption file, colliding outputs and URL-special names: exit 0, a row for every input, and nothing written
    outside --output, whether that is a local folder (the '..' key would land in tmp_path/escape/dotdot/ if
    joined naively to it) or an S3 prefix. A sibling prefix (in vs input) is not read."""
    from data import storage
    from tests.hostile_inputs import common_files, hostile_keys

    src = tmp_path / "src"
    cases = common_files(src)
    prefix = s3_server.url(f"hostile-{tmp_path.name}")
    storage.upload_dir(src, f"{prefix}/in")
    from tests.fixtures.s3 import s3_client

    client = s3_client()  # pyarrow refuses to write keys that are not paths
    bucket, key = storage.split_s3(f"{prefix}/in")
    for rel, data, case in hostile_keys(tmp_path / "escape"):
        client.put_object(Bucket=bucket, Key=f"{key}/{rel}", Body=data)
        cases.append(case)
    client.put_object(Bucket=bucket, Key=f"{key}put/sibling.png", Body=(src / "ok/a.png").read_bytes())
    out = tmp_path / "out"
    before = _files_under(tmp_path)
    summary = run("--checkpoint", checkpoint, "--input", f"{prefix}/in", "--output", out, "--steps", 2)
    assert job.exit_code(summary) == 0
    assert not (tmp_path / "escape").exists()
    written = _files_under(tmp_path) - before
    assert written and all(out in p.parents for p in written), sorted(p for p in written if out not in p.parents)
    recs = records(out)
    assert set(recs) == {c.rel for c in cases}
    _check_hostile_rows(recs, cases)
    assert summary["done"] == sum(c.ok for c in cases) and summary["failed"] == sum(not c.ok for c in cases)
    _check_gallery((out / "index.html").read_text(), lambda rel: (out / rel).is_file())

    s3_out = f"{prefix}/out"
    keys_before = set(storage.list_files(s3_server.url(), recursive=True))
    assert job.exit_code(run("--checkpoint", checkpoint, "--input", f"{prefix}/in", "--output", s3_out,
                             "--steps", 2)) == 0
    new_keys = set(storage.list_files(s3_server.url(), recursive=True)) - keys_before
    assert new_keys and all(k.startswith(s3_out + "/") and ".." not in k and "//" not in k[5:] for k in new_keys)
    assert {json.loads(line)["rel"] for line in storage.read_bytes(f"{s3_out}/results.jsonl").decode().splitlines()} \
        == {c.rel for c in cases}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hostile_folder_writes_only_under_output(s3_server, ray_local, checkpoint, tmp_path):
    """A local folder with symlinks out of it (file, folder, sidecar caption), a broken symlink, a FIFO, a
    bomb, a 50 MB caption file and URL-special names, inpainted into S3: exit 0, a row for every input, every
    key written under the output prefix, and the secret beside the folder never read."""
    from data import storage
    from tests.hostile_inputs import write_hostile_folder

    src = tmp_path / "in"
    cases = write_hostile_folder(src, tmp_path / "outside")
    prefix = s3_server.url(f"hostile-{tmp_path.name}")
    out = f"{prefix}/out"
    keys_before = set(storage.list_files(s3_server.url(), recursive=True))
    files_before = _files_under(tmp_path)
    # A small pixel limit: over.png (200x200) is refused only if the flag reaches the Ray workers that decode.
    summary = run("--checkpoint", checkpoint, "--input", src, "--output", out, "--steps", 2,
                  "--max-image-pixels", 30000)
    assert job.exit_code(summary) == 0
    assert _files_under(tmp_path) == files_before
    new_keys = set(storage.list_files(s3_server.url(), recursive=True)) - keys_before
    assert new_keys and all(k.startswith(out + "/") for k in new_keys)
    recs = {json.loads(line)["rel"]: json.loads(line)
            for line in storage.read_bytes(f"{out}/results.jsonl").decode().splitlines()}
    assert set(recs) == {c.rel for c in cases}
    _check_hostile_rows(recs, cases)
    # The symlink inside the folder is followed: its outputs show the image it points to.
    assert storage.read_bytes(f"{out}/link_in.masked.png") == storage.read_bytes(f"{out}/ok/a.masked.png")
    _check_gallery(storage.read_bytes(f"{out}/index.html").decode(), lambda rel: f"{out}/{rel}" in new_keys)


MAGENTA = (255, 0, 255)


def _photo(w: int, h: int, hole: tuple[int, int, int, int] | None, mode: str = "RGB") -> Image.Image:
    """A smooth picture; the hole (left, top, right, bottom) painted magenta, which no fill keeps."""
    ys, xs = np.mgrid[0:h, 0:w]
    a = np.stack([xs * 255 // max(1, w - 1), ys * 255 // max(1, h - 1), (xs + ys) % 256], -1).astype(np.uint8)
    if hole:
        a[hole[1]:hole[3], hole[0]:hole[2]] = MAGENTA
    if mode == "RGBA":
        alpha = np.full((h, w, 1), 255, np.uint8)
        alpha[: h // 4] = 0  # a transparent band at the top, away from the hole
        a = np.concatenate([a, alpha], -1)
    return Image.fromarray(a, mode)


def _mixed_folder(src: Path) -> dict[str, dict]:
    """Inputs of mixed sizes and kinds, each with its hole in image coordinates: {rel: expectations}."""
    src.mkdir(parents=True)
    cases = {}
    # box:0.25,0.25,0.5,0.5 in fractions, so every size gets a hole; each image paints that box magenta.
    for rel, (w, h) in {"tiny.png": (9, 7), "landscape.jpg": (1024, 768), "portrait.png": (300, 500),
                        "huge.jpg": (4000, 3000)}.items():
        hole = (round(0.25 * w), round(0.25 * h), round(0.75 * w), round(0.75 * h))
        _photo(w, h, hole).save(src / rel, **({"quality": 95} if rel.endswith(".jpg") else {}))
        cases[rel] = {"size": (w, h), "hole": hole}
    # A JPEG stored sideways with EXIF orientation 6: upright it is 400 wide and 240 high.
    upright = _photo(400, 240, (100, 60, 300, 180))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(src / "rotated.jpg", exif=exif, quality=95)
    cases["rotated.jpg"] = {"size": (400, 240), "hole": (100, 60, 300, 180)}
    _photo(200, 160, (50, 40, 150, 120), "RGBA").save(src / "alpha.png")
    cases["alpha.png"] = {"size": (200, 160), "hole": (50, 40, 150, 120)}
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    cases["broken.jpg"] = {"error": "corrupt image"}
    return cases


def _check_outputs(out: Path, src: Path, cases: dict, recs: dict) -> None:
    for rel, case in cases.items():
        r = recs[rel]
        if "error" in case:
            assert r["status"] == "error" and case["error"] in r["error"], r
            continue
        assert r["status"] == "ok", r
        w, h = case["size"]
        result = np.asarray(Image.open(out / r["files"]["samples"][0]))
        original = decoded(src / rel)
        assert result.shape == original.shape and original.shape[:2] == (h, w), rel
        assert r["image_size"] == [w, h] and r["fit"] == "context"
        left, top, right, bottom = case["hole"]
        hole = np.zeros((h, w), bool)
        hole[top:bottom, left:right] = True
        # Outside the hole every byte is the decoded input's (alpha too); inside, the magenta is gone.
        assert (result[~hole] == original[~hole]).all(), rel
        filled = result[hole][:, :3].astype(int)
        assert (np.abs(filled - MAGENTA).sum(-1) > 60).mean() > 0.9, rel
        win = r["window"]
        assert win["left"] <= left and win["top"] <= top and win["left"] + win["side"] >= right
        assert win["top"] + win["side"] >= bottom and win["model_size"] == SIZE
        masked = np.asarray(Image.open(out / r["files"]["masked"]))
        assert masked.shape[:2] == (h, w) and is_checkerboard(masked[hole])
        with Image.open(out / r["files"]["thumb"]) as thumb:
            assert thumb.format == "JPEG" and thumb.height == 128


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_images_of_mixed_sizes_come_back_at_their_own_size_with_only_the_hole_changed(ray_local, checkpoint,
                                                                                     tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    cases = _mixed_folder(src)
    masks = tmp_path / "masks"
    masks.mkdir()
    # A mask PNG in image coordinates for one input, and one of the wrong size for another.
    m = np.zeros((500, 300), np.uint8)
    m[75:375, 75:225] = 255
    Image.fromarray(m).save(masks / "portrait.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(masks / "landscape.png")
    args = ("--checkpoint", checkpoint, "--input", src, "--output", out, "--steps", 4, "--batch-size", 3)
    summary = run(*args, "--mask", "box:0.25,0.25,0.5,0.5")
    assert summary["done"] == 6 and summary["failed"] == 1
    _check_outputs(out, src, cases, records(out))

    # The same folder with mask PNGs: the one of the wrong size is an error row, not a crash.
    out2 = tmp_path / "out2"
    run("--checkpoint", checkpoint, "--input", src, "--output", out2, "--steps", 4, "--mask", masks)
    recs = records(out2)
    assert recs["portrait.png"]["status"] == "ok" and recs["portrait.png"]["image_size"] == [300, 500]
    assert "mask is 10x10 but the image is 1024x768" in recs["landscape.jpg"]["error"]
    assert "no mask file" in recs["tiny.png"]["error"]

    # A box in pixels that one image is too small for, and a hole too large for one window: the reasons the
    # decode stage writes into those rows (the two runs above show that such rows do not stop a batch).
    def hole_or_reason(rel: str, mask: str):
        o = JobOptions(checkpoint=checkpoint, output=str(out), image_size=SIZE, mask=mask)
        with pixel_limit(o.max_pixels):
            try:
                return int(prepare((src / rel).read_bytes(), None, rel, o).hidden_HW.sum())
            except (ImageSkip, ValueError) as e:
                return str(e)

    assert "does not lie inside the 9x7 image" in hole_or_reason("tiny.png", "box:20,20,100,100")
    assert hole_or_reason("landscape.jpg", "box:20,20,100,100") == 100 * 100
    assert "longer than the image's shorter side (768 px)" in hole_or_reason("landscape.jpg", "box:0.05,0.05,0.9,0.5")
    assert hole_or_reason("portrait.png", "box:0.05,0.05,0.9,0.5") == 270 * 250  # fits the 300 px window


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".html" and p.name != "results.jsonl" and not p.name.startswith(".")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_outputs_are_the_same_whatever_the_batch_size_workers_or_resume(ray_local, checkpoint, tmp_path):
    """Each image's samples come from seeds of (--seed, its path, the sample index): byte-identical outputs
    with one image per batch, two actors running one sample per forward pass, or a run resumed with all it has
    left in one batch."""
    src = tmp_path / "in"
    write_synthetic(src, 10, image_size=32)
    _photo(60, 40, None).save(src / "wide.png")
    base = ("--checkpoint", checkpoint, "--input", src, "--steps", 6, "--samples", 2, "--animate",
            "--mask", "random-box:1")
    out = tmp_path / "w2"
    run(*base, "--output", tmp_path / "b1", "--batch-size", 1)
    run(*base, "--output", out, "--batch-size", 3, "--workers", 2, "--max-forward-batch", 1)  # pieces of one sample
    reference = _tree_bytes(tmp_path / "b1")
    assert len(reference) == 11 * 5  # 2 samples, masked, thumbnail and animation per image
    assert _tree_bytes(out) == reference
    recs = records(tmp_path / "b1")
    assert len({tuple(r["window"].values()) for r in recs.values()}) > 5, "random-box: a box per image"
    assert recs["img_00000.png"]["seeds"] == records(out)["img_00000.png"]["seeds"]
    # Resume after losing half the outputs (the non-square one among them), the rest in one batch.
    for i, path in enumerate(sorted(out.glob("img_?????.png"))):  # the first samples, not the masked views
        if i % 2:
            path.unlink()
    (out / "wide.png").unlink()
    again = run(*base, "--output", out, "--batch-size", 64)
    assert (again["done"], again["skipped"]) == (6, 5)
    assert _tree_bytes(out) == reference
    # A killed run leaves no results.jsonl: outputs made with the same settings still count as done.
    (out / "results.jsonl").unlink()
    assert run(*base, "--output", out, "--batch-size", 4)["skipped"] == 11
    # Other settings into the same output redo every input: another --seed gives other samples.
    again = run(*base[:-2], "--mask", "random-box:1", "--seed", 1, "--output", out, "--batch-size", 64)
    assert again["done"] == 11 and again["skipped"] == 0
    other = _tree_bytes(out)
    assert other.keys() == reference.keys() and other["img_00000.png"] != reference["img_00000.png"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_crop_fit_and_other_formats(ray_local, checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _photo(200, 160, (50, 40, 150, 120), "RGBA").save(src / "alpha.png")
    _photo(120, 90, None).save(src / "plain.png")
    run("--checkpoint", checkpoint, "--input", src, "--output", tmp_path / "webp", "--format", "webp",
        "--steps", 2, "--mask", "box:50,40,100,80", "--reference")
    r = records(tmp_path / "webp")["alpha.png"]
    assert r["files"]["samples"] == ["alpha.webp"] and r["files"]["masked"] == "alpha.masked.webp"
    result, original = np.asarray(Image.open(tmp_path / "webp/alpha.webp")), decoded(src / "alpha.png")
    hole = np.zeros((160, 200), bool)
    hole[40:120, 50:150] = True
    assert result.shape == (160, 200, 4) and (result[~hole] == original[~hole]).all()  # lossless, alpha kept
    # How the fill looks, at the output's size, as a viewer sees it (on white); --reference adds the input's hole.
    assert r["texture"] == dataclasses.asdict(texture(result, hole))
    with Image.open(src / "alpha.png") as img:
        assert r["reference_texture"] == dataclasses.asdict(texture(np.asarray(to_rgb(img)), hole))
    page = (tmp_path / "webp/index.html").read_text()
    # The totals and alpha.png's row (the 100x80 box does not fit in plain.png: an error row).
    assert "Fills: hole roughness" in page and page.count("(reference ") == 2
    run("--checkpoint", checkpoint, "--input", src, "--output", tmp_path / "jpg", "--format", "jpg", "--steps", 2,
        "--mask", "box:0.25,0.25,0.5,0.5", "--feather", 2)
    with Image.open(tmp_path / "jpg/alpha.jpg") as img:
        assert img.format == "JPEG" and img.size == (200, 160) and img.mode == "RGB"
    run("--checkpoint", checkpoint, "--input", src, "--output", tmp_path / "crop", "--fit", "crop", "--steps", 2)
    recs = records(tmp_path / "crop")
    for rel in ("alpha.png", "plain.png"):
        assert recs[rel]["fit"] == "crop" and "texture" in recs[rel] and "reference_texture" not in recs[rel]
        with Image.open(tmp_path / "crop" / rel) as img:
            assert img.size == (SIZE, SIZE)  # the model-size centre crop, as before


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_actor_splits_a_batch_that_runs_out_of_memory_and_fails_only_what_cannot_fit(ray_local, checkpoint,
                                                                                         tmp_path):
    """torch.OutOfMemoryError, as CUDA raises it, injected into the network's first layer above 2 rows per
    forward pass: the batch runs in pieces with the same samples, the actor keeps the size that fitted; when
    not even one sample fits, its rows become error rows and the actor goes on."""
    from ray_jobs.inpaint_actor import InpaintActor
    from ray_jobs.inpaint_inputs import decode_batch

    src = tmp_path / "in"
    write_synthetic(src, 3, image_size=SIZE)
    opts = JobOptions(checkpoint=checkpoint, output=str(tmp_path / "out"), input=str(src), image_size=SIZE,
                      sample={"steps": 3}, samples=2)
    rows = sorted(src.glob("*.png"))
    batch = decode_batch({"input": np.array([str(r) for r in rows], dtype=object),
                          "rel": np.array([r.name for r in rows], dtype=object),
                          "caption": np.array(["a red disc"] * 3, dtype=object),
                          "caption_url": np.array([""] * 3, dtype=object),
                          "mask_url": np.array([""] * 3, dtype=object)}, opts.to_dict())
    reference = InpaintActor(opts.to_dict())(batch)
    actor = InpaintActor(opts.to_dict())
    assert actor.device.type == "cpu" and actor.max_rows >= 6  # from /proc/meminfo: the batch fits whole

    def oom_above(rows):
        def hook(module, args):
            if args[0].shape[0] > rows:
                raise torch.OutOfMemoryError(f"CUDA out of memory ({args[0].shape[0]} rows)")
        return actor.model.stem.register_forward_pre_hook(hook)

    handle = oom_above(2)
    split = actor(batch)
    assert np.array_equal(split["samples"], reference["samples"]) and not any(split["error"])
    assert actor.max_rows == 2  # 6 rows -> 3 -> 2: kept for the next batches
    handle.remove()
    handle = oom_above(0)
    failed = actor(batch)
    handle.remove()
    assert all("out of memory with one example" in e for e in failed["error"])
    assert np.array_equal(actor(batch)["samples"], reference["samples"])  # and the actor goes on
