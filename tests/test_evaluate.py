"""`ray_jobs.evaluate` end to end through `main(argv)`: real Ray Data + actor pool on local shards, an
export written by onade.save_checkpoint; its numbers must match onade.metrics computed directly."""

import json

import pytest
import torch

METRIC_KEYS = {"bits_per_dim", "exact_center_bits", "center_bits_true_caption", "center_bits_shuffled_caption",
               "num_images", "exact_num_images"}


@pytest.fixture(scope="module")
def export(local_shards, tmp_path_factory):
    from tests.fixtures.train_data import caption_sensitive_export

    return caption_sensitive_export(local_shards, tmp_path_factory.mktemp("export"))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_evaluate_writes_the_metrics_json_and_matches_direct_computation(ray_local, export, local_shards, tmp_path):
    import onade
    from onade.metrics import center_bits
    from ray_jobs.data import shard_dataset
    from ray_jobs.evaluate import main

    out = tmp_path / "metrics.json"
    result = main(["--checkpoint", export, "--data", local_shards["val"], "--num-images", "24", "--batch-size", "8",
                   "--exact-images", "8", "--precision", "fp32", "--workers", "2", "--output", str(out)])
    assert set(result) >= METRIC_KEYS and result["num_images"] == 24 and result["exact_num_images"] == 8
    assert result["precision"] == "fp32"
    assert json.loads(out.read_text()) == result
    assert all(0 < result[k] < 12 for k in METRIC_KEYS - {"num_images", "exact_num_images"})
    # The deterministic metric, recomputed here on the same first 24 images in batches of 8.
    loaded = onade.load_checkpoint(export)
    ds = shard_dataset(local_shards["val"], 16, loaded.config.data.max_tokens, loaded.tokenizer, train=False)
    direct = []
    for batch in ds.limit(24).iter_torch_batches(batch_size=8):
        direct.append(center_bits(loaded.model, batch["image"], batch["tokens"], batch["length"]))
    assert result["center_bits_true_caption"] == pytest.approx(sum(direct) / len(direct), rel=1e-4)
    assert result["center_bits_true_caption"] != pytest.approx(result["center_bits_shuffled_caption"], rel=1e-6)

    # One actor instead of two: masks are seeded by batch content, so the same numbers.
    one = main(["--checkpoint", export, "--data", local_shards["val"], "--num-images", "24", "--batch-size", "8",
                "--exact-images", "8", "--precision", "fp32", "--workers", "1"])
    assert {k: one[k] for k in METRIC_KEYS} == pytest.approx({k: result[k] for k in METRIC_KEYS}, rel=1e-5)

    everything = main(["--checkpoint", export, "--data", local_shards["val"], "--batch-size", "16",
                       "--exact-images", "0"])
    assert everything["num_images"] == 32 and "exact_center_bits" not in everything  # whole set, no exact


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_samples_report_how_the_fills_look_as_a_direct_run_does(ray_local, export, local_shards):
    import zlib

    import numpy as np

    import onade
    from onade.masks import observed_except_center
    from onade.texture import Texture, sample_quality, texture
    from ray_jobs.data import shard_dataset
    from ray_jobs.evaluate import main

    result = main(["--checkpoint", export, "--data", local_shards["val"], "--num-images", "16", "--batch-size", "8",
                   "--exact-images", "0", "--precision", "fp32", "--workers", "1", "--samples", "2",
                   "--top-p", "0.9", "--steps", "12"])
    fills = result["samples"]
    assert fills["samples_per_image"] == 2 and fills["forward_passes"] == 12 and fills["settings"]["top_p"] == 0.9
    # The same fills made here: each batch's samples are seeded by its content, as its masks are.
    loaded = onade.load_checkpoint(export)
    cfg = onade.SampleConfig(top_p=0.9, steps=12, precision="fp32")
    ds = shard_dataset(local_shards["val"], 16, loaded.config.data.max_tokens, loaded.tokenizer, train=False)
    samples, originals = Texture(), Texture()
    for batch in ds.limit(16).iter_batches(batch_size=8, batch_format="numpy"):
        seed = zlib.crc32(np.ascontiguousarray(batch["image"]).tobytes(), 0)
        x = torch.from_numpy(batch["image"])
        observed = observed_except_center(len(x), x.shape[1])
        originals += texture(x, ~observed[0].all(-1))
        for s in range(2):
            filled, _ = onade.inpaint(loaded.model, x, observed, torch.from_numpy(batch["tokens"]),
                                      torch.from_numpy(batch["length"]).view(-1), cfg, seed=seed + s,
                                      profile=loaded.profile)
            samples += texture(filled, ~observed[0].all(-1))
    direct = sample_quality(samples, originals)
    assert {k: fills[k] for k in direct} == pytest.approx(direct, rel=1e-9)
    assert 0 < fills["hole_roughness"] and 0 <= fills["speck_rate"] <= 1 and 0 < fills["draw_kl_bits"] < 8


@pytest.mark.timeout(60)
def test_evaluate_rejects_a_path_that_is_not_a_checkpoint(tmp_path, local_shards):
    from ray_jobs.evaluate import main

    with pytest.raises(ValueError, match="not_an_export"):
        main(["--checkpoint", str(tmp_path / "not_an_export"), "--data", local_shards["val"]])


EVAL_8 = ["--num-images", "8", "--batch-size", "4", "--exact-images", "8", "--precision", "fp32", "--workers", "1"]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_profile_and_budgets_from_it_and_from_the_checkpoint(ray_local, export, local_shards, tmp_path):
    import shutil

    from onade.export_format import PROFILE_FILE
    from onade.plans import LossProfile
    from ray_jobs.evaluate import main

    # The centre hole of a 16-pixel image spelt as a box: the full plan is then scored by budget_bits, not
    # copied from the exact NLL, and must give it (same images, same ordering).
    path = tmp_path / "profile.json"
    result = main(["--checkpoint", export, "--data", local_shards["val"], *EVAL_8, "--hole", "box:4,4,8,8",
                   "--profile", str(path), "--budgets", "1,4,full,500"])
    profile = LossProfile.from_json(path.read_text())
    assert (profile.hole_size, profile.image_size, profile.num_images, profile.mask) == (192, 16, 8, "box:4,4,8,8")
    assert all(a >= b for a, b in zip(profile.bits, profile.bits[1:]))  # a mean of non-increasing profiles
    assert (result["profile_bits_first"], result["profile_bits_last"]) == (profile.bits[0], profile.bits[-1])
    one, four, full = result["budgets"]  # 500 passes is one per subpixel of a 192-subpixel hole: the full row
    assert [r["passes"] for r in result["budgets"]] == [1, 4, 192]
    # One pass is the same plan either way: the one-shot NLL of the hole, whatever the ordering.
    assert one["dp_bits"] == one["uniform_bits"] == pytest.approx(result["center_bits_true_caption"], rel=1e-4)
    assert full["dp_bits"] == full["uniform_bits"] == pytest.approx(result["exact_center_bits"], abs=1e-3)
    assert all(0 < r[k] < 12 for r in result["budgets"] for k in ("dp_bits", "uniform_bits"))

    # The same profile shipped with the checkpoint plans the same passes over the (same) centre hole; the
    # full row is then the exact NLL itself.
    shipped = tmp_path / "with_profile"
    shutil.copytree(export, shipped)
    shutil.copy(path, shipped / PROFILE_FILE)
    again = main(["--checkpoint", str(shipped), "--data", local_shards["val"], *EVAL_8, "--budgets", "4,full"])
    assert [r["passes"] for r in again["budgets"]] == [4, 192] and "profile_bits_first" not in again
    assert again["budgets"][0] == pytest.approx(four, rel=1e-5)
    assert again["budgets"][1]["dp_bits"] == again["budgets"][1]["uniform_bits"] == again["exact_center_bits"]


@pytest.mark.timeout(60)
def test_bad_hole_budgets_without_a_profile_and_bad_budgets_fail_before_scoring(export, local_shards, tmp_path):
    from ray_jobs.evaluate import main

    base = ["--checkpoint", export, "--data", local_shards["val"], "--profile", str(tmp_path / "p.json")]
    with pytest.raises(ValueError, match=r"--hole .box:4,4,8.: expected center, box:X,Y,W,H .* 16x16"):
        main([*base, "--hole", "box:4,4,8"])
    with pytest.raises(ValueError, match=r"--hole .*box:10,10,8,8 does not lie inside the 16x16 image"):
        main([*base, "--hole", "box:10,10,8,8"])
    with pytest.raises(ValueError, match=r"ships none \(profile.json\): pass --profile PATH"):
        main(["--checkpoint", export, "--data", local_shards["val"], "--budgets", "4"])
    with pytest.raises(SystemExit):
        main([*base, "--budgets", "4,0"])
    with pytest.raises(SystemExit):
        main([*base, "--budgets", "4", "--exact-images", "0"])
    data = ["--checkpoint", export, "--data", local_shards["val"]]
    with pytest.raises(SystemExit):  # --hole alone would change nothing
        main([*data, "--hole", "box:4,4,8,8"])
    with pytest.raises(SystemExit):  # refused before any scoring, not after it
        main([*data, "--profile", str(tmp_path / "missing" / "p.json")])
    assert not (tmp_path / "p.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_evaluate_finishes_on_damaged_shards_and_names_them(ray_local, export, local_shards, tmp_path, capsys):
    import io
    import os
    import tarfile

    from data import storage
    from ray_jobs.evaluate import main
    from tests.helpers import tar_bytes

    (val,) = storage.list_files(local_shards["val"], suffix=".tar")  # 32 samples
    with open(val, "rb") as f:
        data = f.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    pngs = [name for name, _ in members if name.endswith(".png")]
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "shard-000000.tar").write_bytes(data)
    (folder / "shard-000001.tar").write_bytes(tar_bytes(members, cut_inside=pngs[5]))  # 5 whole samples, then cut
    (folder / "shard-000002.tar").write_bytes(os.urandom(4096))
    # One usable sample and one whose image does not decode.
    (folder / "shard-000003.tar").write_bytes(tar_bytes(members[:3] + [("bad.png", b"not a png"),
                                                                      ("bad.txt", b"a caption")]))
    out = tmp_path / "metrics.json"
    result = main(["--checkpoint", export, "--data", str(folder), "--batch-size", "8", "--exact-images", "4",
                   "--precision", "fp32", "--workers", "1", "--output", str(out)])
    assert result["num_images"] == 32 + 5 + 1 and result["exact_num_images"] == 4
    assert result["skipped_samples"] == 1 and result["skipped_by_reason"] == {
        "undecodable image (UnidentifiedImageError)": 1}
    bad = {os.path.basename(b["shard"]): b for b in result["bad_shards"]}
    assert result["num_bad_shards"] == 2 and set(bad) == {"shard-000001.tar", "shard-000002.tar"}
    cut, garbage = bad["shard-000001.tar"], bad["shard-000002.tar"]
    assert cut["samples_read"] == 5 and "unexpected end of data" in cut["reason"]
    assert garbage["samples_read"] == 0 and garbage["shard"] == str(folder / "shard-000002.tar")
    assert json.loads(out.read_text()) == result
    printed = capsys.readouterr().out
    assert "2 unreadable shard(s)" in printed and f"{folder}/shard-000001.tar: ReadError" in printed
