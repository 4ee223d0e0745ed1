"""`ray_jobs.evaluate` end to end through `main(argv)`: real Ray Data + actor pool on local shards, an
export written by onade.save_checkpoint; its numbers must match onade.metrics computed directly."""

import json

import pytest
import torch

METRIC_KEYS = {"bits_per_dim", "exact_bits_per_dim", "center_bits_true_caption", "center_bits_shuffled_caption",
               "num_images", "exact_num_images"}


@pytest.fixture(scope="module")
def export(local_shards, tmp_path_factory):
    from onade import build_model, load_config, save_checkpoint
    from ray_jobs.data import tokenizer_for

    tok = tokenizer_for(local_shards["val"])
    cfg = load_config("debug", sets=["model.image_size=16", f"model.vocab_size={tok.vocab_size}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    # A fresh merger adds nothing; randomise it so the caption changes the prediction.
    for merger in model.mergers.values():
        torch.nn.init.normal_(merger.value.weight, std=0.5)
    return str(save_checkpoint(tmp_path_factory.mktemp("export"), model, cfg, tok))


@pytest.mark.timeout(150)
def test_evaluate_writes_the_metrics_json_and_matches_direct_computation(ray_local, export, local_shards, tmp_path):
    import onade
    from onade.metrics import center_bits
    from ray_jobs.data import build_dataset
    from ray_jobs.evaluate import main

    out = tmp_path / "metrics.json"
    result = main(["--checkpoint", export, "--data", local_shards["val"], "--num-images", "24", "--batch-size", "8",
                   "--exact-images", "8", "--precision", "fp32", "--actors", "2", "--output", str(out)])
    assert set(result) >= METRIC_KEYS and result["num_images"] == 24 and result["exact_num_images"] == 8
    assert result["precision"] == "fp32"
    assert json.loads(out.read_text()) == result
    assert all(0 < result[k] < 12 for k in METRIC_KEYS - {"num_images", "exact_num_images"})
    # The deterministic metric, recomputed here on the same first 24 images in batches of 8.
    loaded = onade.load_checkpoint(export)
    ds = build_dataset(local_shards["val"], 16, loaded.config.data.max_tokens, loaded.tokenizer, train=False)
    direct = []
    for batch in ds.limit(24).iter_torch_batches(batch_size=8):
        direct.append(center_bits(loaded.model, batch["image"], batch["tokens"], batch["length"]))
    assert result["center_bits_true_caption"] == pytest.approx(sum(direct) / len(direct), rel=1e-4)
    assert result["center_bits_true_caption"] != pytest.approx(result["center_bits_shuffled_caption"], rel=1e-6)

    # One actor instead of two: masks are seeded by batch content, so the same numbers.
    one = main(["--checkpoint", export, "--data", local_shards["val"], "--num-images", "24", "--batch-size", "8",
                "--exact-images", "8", "--precision", "fp32", "--actors", "1"])
    assert {k: one[k] for k in METRIC_KEYS} == pytest.approx({k: result[k] for k in METRIC_KEYS}, rel=1e-5)

    everything = main(["--checkpoint", export, "--data", local_shards["val"], "--batch-size", "16",
                       "--exact-images", "0"])
    assert everything["num_images"] == 32 and "exact_bits_per_dim" not in everything  # whole set, no exact


@pytest.mark.timeout(60)
def test_evaluate_rejects_a_path_that_is_not_a_checkpoint(tmp_path, local_shards):
    from ray_jobs.evaluate import main

    with pytest.raises(ValueError, match="not_an_export"):
        main(["--checkpoint", str(tmp_path / "not_an_export"), "--data", local_shards["val"]])
