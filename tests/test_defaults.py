"""What a job does when the user leaves a setting out, or picks one that does not fit: the default preset said
at the start, shards whose image size differs from the model's window, guidance on a model trained without
caption dropout. No Ray: each is decided before Ray starts."""

import shutil

import pytest

from onade.config import PRESETS, load_config
from ray_jobs.train import check_shard_size, parse_args, preset_line
from ray_jobs.train import main as train_main

SIZE = 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """16 px shards as make_shards writes them, and a copy of their first shard alone (no manifest, no
    tokenizer: shards from another tool)."""
    from data.make_shards import make_shards
    from data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("defaults")
    write_synthetic(root / "images", 8, image_size=24, seed=0)
    make_shards(str(root / "images"), str(root / "shards"), image_size=SIZE, shard_size=4, workers=1, progress=False)
    (root / "foreign").mkdir()
    shutil.copy(root / "shards" / "shard-000000.tar", root / "foreign" / "part-0.tar")
    return {"made": str(root / "shards"), "foreign": str(root / "foreign")}


def test_help_says_the_default_preset_and_the_start_says_which_preset_trains(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "(default debug, a smoke test; images: debug 32 px, small 32 px, base 64 px, large 64 px)" in \
        " ".join(capsys.readouterr().out.split())
    base = ["--data", "d", "--output", "o", "--name", "n"]
    cfg = load_config("debug", sets=["model.vocab_size=512"])
    assert preset_line(parse_args(base), cfg) == ("preset debug (0.20 M parameters, 32 px images): the default; "
                                                  f"choose with --preset {'|'.join(PRESETS)}")
    assert preset_line(parse_args([*base, "--preset", "debug"]), cfg) == "preset debug (0.20 M parameters, 32 px images)"
    small = load_config("small", sets=["model.vocab_size=512", "model.image_size=16"])
    assert preset_line(parse_args([*base, "--preset", "small", "--set", "model.image_size=16"]), small) == \
        "preset small with --config/--set overrides (1.91 M parameters, 16 px images)"


def test_shards_larger_than_the_window_warn_and_smaller_ones_are_an_error():
    assert check_shard_size(32, 32, "--data", "from manifest.json") is None
    warning = check_shard_size(64, 32, "--data", "from manifest.json")
    assert warning == ("warning: --data holds 64 px images (from manifest.json) but model.image_size is 32: training "
                       "takes random 32 px crops of them. For whole images, rebuild the shards with `python -m "
                       "data.make_shards SRC DEST --image-size 32`, or train at their size: --preset base|large (64 px)")
    assert "validation scores the centre 32 px crops" in check_shard_size(64, 32, "--val-data", "x")
    assert check_shard_size(48, 32, "--data", "x").endswith("train at their size: --set model.image_size=48")
    with pytest.raises(ValueError, match=r"--data holds 16 px images \(x\), smaller than model.image_size 32: the "
                                         r"model would learn from upsampled images. Rebuild the shards with "
                                         r"`python -m data.make_shards SRC DEST --image-size 32`, or train at their "
                                         r"size: --set model.image_size=16"):
        check_shard_size(16, 32, "--data", "x")


def test_the_shards_image_size_comes_from_the_manifest_else_the_first_image(shards):
    from ray_jobs.data import shard_image_size

    assert shard_image_size(shards["made"]) == (SIZE, "from manifest.json")
    assert shard_image_size(shards["made"] + "/shard-000001.tar") == (SIZE, "from manifest.json")
    assert shard_image_size(shards["foreign"]) == (SIZE, "the first image of part-0.tar is 16x16")


@pytest.mark.timeout(60)
def test_training_says_its_default_preset_and_refuses_shards_smaller_than_it_before_ray_starts(shards, tmp_path,
                                                                                               capsys):
    argv = ["--data", shards["made"], "--output", str(tmp_path), "--name", "x"]
    with pytest.raises(ValueError, match="--data holds 16 px images .from manifest.json., smaller than "
                                         "model.image_size 32"):
        train_main(argv)
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("preset debug (") and out[1].endswith(": the default; choose with --preset "
                                                                   "debug|small|base|large")
    # Larger than the window: a warning, then the run goes on (here to the next check, before Ray: an --output
    # that cannot be created).
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="cannot create output folder"):
        train_main(["--data", shards["made"], "--output", str(tmp_path / "a_file" / "runs"), "--name", "x",
                    "--val-data", shards["foreign"], "--set", "model.image_size=8"])
    err = capsys.readouterr().err
    assert "warning: --data holds 16 px images (from manifest.json) but model.image_size is 8: training takes " \
           "random 8 px crops" in err
    assert "warning: --val-data holds 16 px images (the first image of part-0.tar is 16x16) but model.image_size " \
           "is 8: validation scores the centre 8 px crops" in err


def test_guidance_on_a_model_trained_without_caption_dropout_warns():
    from ray_jobs.inpaint import guidance_warning

    assert guidance_warning(2.0, 0.0) == (
        "warning: --guidance 2, but this model was trained with train.caption_dropout 0: guidance needs a model "
        "trained with train.caption_dropout > 0 (it never saw the empty caption guidance compares against); "
        "expect worse samples than --guidance 1")
    assert "--guidance 0," in guidance_warning(0.0, 0.0)  # 0 is the empty caption's logits alone
    assert guidance_warning(1.0, 0.0) is None  # unguided
    assert guidance_warning(2.0, 0.1) is None


@pytest.mark.parametrize("dropout, guidance, warned", [(0.0, "2", True), (0.0, None, False), (0.1, "2", False)])
def test_the_inpaint_job_reads_the_dropout_from_the_export_and_warns_before_any_work(dropout, guidance, warned,
                                                                                   tmp_path, capsys):
    import onade
    from onade.config import Config, ModelConfig, TrainConfig
    from onade.tokenizer import Tokenizer
    from ray_jobs.inpaint import job_options
    from ray_jobs.inpaint import parse_args as inpaint_args

    tok = Tokenizer.train(["a red disc", "a green square"] * 4, None, vocab_size=30)
    cfg = Config(model=ModelConfig(image_size=8, width=16, num_blocks=3, dilations=(1, 2, 4), embed_dim=4,
                                   norm_groups=4, vocab_size=tok.vocab_size, text_dim=16),
                 train=TrainConfig(caption_dropout=dropout)).validate()
    export = onade.save_checkpoint(tmp_path / "export", onade.build_model(cfg), cfg, tok)
    (tmp_path / "in").mkdir()
    job_options(inpaint_args(["--checkpoint", str(export), "--input", str(tmp_path / "in"), "--output",
                              str(tmp_path / "out"), *(["--guidance", guidance] if guidance else [])]))
    assert ("needs a model trained with train.caption_dropout > 0" in capsys.readouterr().err) == warned
