"""End-to-end tests of `python -m ray_jobs.inpaint` through its main(argv), on a real local Ray."""

import contextlib
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
from data.synthetic import write_awkward_cases, write_synthetic
from onade.config import Config, ModelConfig, SampleConfig
from onade.tokenizer import Tokenizer
from ray_jobs import inpaint as job
from ray_jobs.inpaint_actor import JobOptions, output_names

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


def records(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    by_rel = {r["rel"]: r for r in recs}
    assert len(by_rel) == len(recs), "one line per input"
    return by_rel


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
        assert r["outputs"] == output_names(rel, opts)
        sample, second, original, masked = (np.asarray(Image.open(out / o)) for o in r["outputs"][:4])
        assert sample.shape == second.shape == original.shape == (SIZE, SIZE, 3)
        hole = np.zeros((SIZE, SIZE), bool)
        hole[4:12, 4:12] = True
        # Observed pixels come through unchanged; the hole is grey in the masked view and sampled in the output.
        assert (sample[~hole] == original[~hole]).all() and (second[~hole] == original[~hole]).all()
        assert (masked[hole] == 127).all() and (masked[~hole] == original[~hole]).all()
        with Image.open(out / r["outputs"][-1]) as gif:
            assert gif.format == "GIF" and gif.n_frames > 2 and gif.size == (2 * SIZE, SIZE)
    bad = [rel for rel, c in images.items() if not c.image_ok]
    assert len(bad) == 4  # truncated, empty, text named .jpg, notes.md
    assert summary["done"] == len(expected) - 4 and summary["failed"] == 4 and summary["skipped"] == 0
    # The awkward images keep what they show: the EXIF-rotated one is upright, red above blue.
    upright = np.asarray(Image.open(out / "awk/exif_rotated.original.png")).astype(int)
    assert upright[1, SIZE // 2, 0] > 150 and upright[-2, SIZE // 2, 2] > 150

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
    m[0:8, 24:32] = 255  # the top-right corner: 4x4 model pixels after the resize to 16
    Image.fromarray(m).save(masks / "img_00000.png")
    Image.fromarray(m).save(tmp_path / "outside_mask.png")
    os.symlink(tmp_path / "outside_mask.png", masks / "img_00002.png")  # a mask from outside the mask folder
    Image.fromarray(m[:16]).save(masks / "img_00003.png")  # 32x16: not the image's size
    summary = run("--checkpoint", checkpoint, "--input", src, "--output", out, "--mask", masks,
                  "--captions", tmp_path / "caps.jsonl", "--strategy", "ancestral", "--steps", 0, "--chunk", 8)
    recs = records(out)
    assert recs["img_00000.png"]["status"] == "ok" and recs["img_00000.png"]["caption"] == "a green square"
    # --steps 0: `--chunk` subpixels per pass, 4x4x3 hidden subpixels, 8 per pass.
    assert recs["img_00000.png"]["steps"] == 0
    assert recs["img_00000.png"]["forward_passes"] == 6
    assert recs["img_00001.png"]["status"] == "error" and "no mask" in recs["img_00001.png"]["error"]
    assert "mask file not read: symlink pointing outside" in recs["img_00002.png"]["error"]
    assert "mask is 32x16 but the image is 32x32" in recs["img_00003.png"]["error"]
    assert "bad captions line" in recs["caps.jsonl:2"]["error"] and "'..'" in recs["caps.jsonl:3"]["error"]
    sample, original = (np.asarray(Image.open(out / f"img_00000{s}.png")) for s in ("", ".original"))
    hole = np.zeros((SIZE, SIZE), bool)
    hole[0:4, 12:16] = True
    assert (sample[~hole] == original[~hole]).all() and summary["done"] == 1

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"")
    (broken / "b.jpg").write_bytes(b"not a jpeg")
    bad = run("--checkpoint", checkpoint, "--input", broken, "--output", tmp_path / "out2")
    assert bad["done"] == 0 and bad["failed"] == 2 and job.exit_code(bad) == 1
    assert job.exit_code(summary) == 0


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
    assert "strategy maskgit, 4 steps, guidance 2" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_without_sampler_flags_the_job_samples_with_sample_config_defaults(ray_local, checkpoint, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    write_synthetic(src, 1, image_size=32)
    assert run("--checkpoint", checkpoint, "--input", src, "--output", out)["done"] == 1
    r = records(out)["img_00000.png"]
    default = SampleConfig()
    assert (r["strategy"], r["steps"], r["guidance"]) == (default.strategy, default.steps, default.guidance)
    assert r["forward_passes"] > 0 and r["precision"] == onade.resolve_precision(default.precision, "cpu")


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


def test_bad_arguments_fail_before_any_work(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="not an onade checkpoint"):
        run("--checkpoint", tmp_path, "--input", tmp_path, "--output", tmp_path / "o")
    with pytest.raises(ValueError, match="box"):
        run("--checkpoint", checkpoint, "--input", tmp_path, "--output", tmp_path / "o", "--mask", "box:10,10,20,20")
    with pytest.raises(ValueError, match="neither center"):
        run("--checkpoint", checkpoint, "--input", tmp_path, "--output", tmp_path / "o", "--mask", "middle")
    with pytest.raises(ValueError, match="no images"):
        run("--checkpoint", checkpoint, "--input", tmp_path / "o", "--output", tmp_path / "o" / "inside")
    for out in (tmp_path / "o", tmp_path):  # outputs would overwrite inputs
        with pytest.raises(ValueError, match="is --input or contains it"):
            run("--checkpoint", checkpoint, "--input", tmp_path / "o", "--output", out)


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
        for suffix in ("", ".original", ".masked"):
            with Image.open(out / f"img_{i:05d}{suffix}.png") as img:
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
    client = storage.s3_client()
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
    original = storage.read_bytes(f"{out}/link_in.original.png")
    assert original == storage.read_bytes(f"{out}/ok/a.original.png")
    _check_gallery(storage.read_bytes(f"{out}/index.html").decode(), lambda rel: f"{out}/{rel}" in new_keys)
