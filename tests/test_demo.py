"""`make demo` keeps the run's export in --out/export, where the library's own call loads it.

The whole demo takes minutes (Ray, DeepSpeed, training, inpainting), so these test its last step: the copy
out of the demo's storage (a local S3 server that ends with the demo, or a folder) into the local folder.
"""

import os

import pytest
import torch

import onade
from data import storage
from onade.config import Config, ModelConfig
from onade.tokenizer import Tokenizer
from ray_jobs.demo import keep_export, shown_path


def write_export(directory):
    tok = Tokenizer.train(["a red disc", "a green square"] * 4, None, vocab_size=30)
    cfg = Config(model=ModelConfig(image_size=16, width=16, num_blocks=4, dilations=(1, 2, 4, 8), embed_dim=4,
                                   norm_groups=4, vocab_size=tok.vocab_size, text_dim=16)).validate()
    torch.manual_seed(0)
    model = onade.build_model(cfg)
    onade.save_checkpoint(directory, model, cfg, tok)
    return model


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_the_export_is_kept_locally_and_loads_with_the_library(tmp_path, request, where):
    if where == "s3":
        url = request.getfixturevalue("s3_prefix") + "/runs/demo/export"
        model = write_export(tmp_path / "staging")
        storage.upload_dir(tmp_path / "staging", url)
    else:
        url = str(tmp_path / "store" / "runs" / "demo" / "export")
        model = write_export(url)
    local = tmp_path / "demo_out" / "export"
    local.mkdir(parents=True)
    (local / "profile.json").write_text("from an earlier demo's model")  # must not outlive that model

    assert keep_export(url, local) == local
    loaded = onade.load_checkpoint(local)
    assert loaded.profile is None
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def test_an_export_already_in_place_is_left_alone(tmp_path):
    write_export(tmp_path / "export")
    keep_export(str(tmp_path / "export"), tmp_path / "export")
    onade.load_checkpoint(tmp_path / "export")


def test_the_printed_path_is_the_one_typed_where_the_demo_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path((tmp_path / "demo_out" / "export").resolve()) == "demo_out/export"
    outside = tmp_path.parent / "elsewhere" / "export"
    assert shown_path(outside) == outside.as_posix() and os.path.isabs(shown_path(outside))
