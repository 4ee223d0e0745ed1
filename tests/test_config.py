import pytest

from onade.config import ConfigError, config_from_dict, get_preset, load_config


def test_presets_validate():
    for name in ("debug", "small", "base", "large"):
        assert get_preset(name).model.image_size > 0


def test_set_overrides_are_typed():
    cfg = load_config("debug", sets=["model.width=64", "train.lr=1e-4", "model.bidirectional=false",
                                     "masks.weights={orderless: 1, box: 0.5}", "model.dilations=1,2,4,8,16"])
    assert cfg.model.width == 64 and cfg.train.lr == 1e-4 and cfg.model.bidirectional is False
    assert cfg.masks.weights == {"orderless": 1.0, "box": 0.5}
    assert cfg.model.dilations == (1, 2, 4, 8, 16)


@pytest.mark.parametrize("item, needle", [
    ("model.widht=3", "model.widht"),
    ("nosection.x=1", "nosection"),
    ("train.lr=abc", "train.lr"),
    ("masks.weights={square: 1}", "square"),
    ("model.width", "key=value"),
    ("train.ema_decay=1.5", "train.ema_decay"),
    ("masks.hole_orderless=2", "masks.hole_orderless"),
    ("masks.hole_reveal=whole", "masks.hole_reveal must be 'subpixels' or 'pixels'"),
    ("sample.precision=fp16", "sample.precision"),
])
def test_bad_overrides_name_the_key(item, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("debug", sets=[item])


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  width: 48\ntrain:\n  steps: 7\n")
    cfg = load_config("debug", p)
    assert cfg.model.width == 48 and cfg.train.steps == 7
    p.write_text("train:\n  stepz: 7\n")
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config("debug", p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("debug", tmp_path / "missing.yaml")


def test_receptive_field_is_checked():
    with pytest.raises(ConfigError, match="receptive field"):
        load_config("debug", sets=["model.dilations=1", "model.num_blocks=2"])


def test_every_preset_mixes_the_inpainting_holes_and_keeps_an_ema_where_it_can():
    for name in ("debug", "small", "base", "large"):
        cfg = load_config(name)
        assert {"orderless", "center", "box", "contiguish"} <= {k for k, w in cfg.masks.weights.items() if w > 0}
        assert (cfg.train.ema_decay > 0) == (cfg.train.zero_stage < 3), name
    with pytest.raises(ConfigError, match="ZeRO-3"):
        load_config("debug", sets=["train.zero_stage=3"])


def test_channels_last_takes_auto_on_off_and_reads_booleans_as_on_off():
    assert load_config("debug").model.channels_last == "auto"
    assert load_config("debug", sets=["model.channels_last=true"]).model.channels_last == "on"
    assert load_config("debug", sets=["model.channels_last=off"]).model.channels_last == "off"
    assert config_from_dict({"model": {"channels_last": False}}).model.channels_last == "off"  # older exports
    with pytest.raises(ConfigError, match="model.channels_last must be one of"):
        load_config("debug", sets=["model.channels_last=nhwc"])
