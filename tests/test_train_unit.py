"""Training pieces without Ray: batch/LR/precision derivation, DeepSpeed config rules, fail-fast CLI errors,
and `train_step`/`evaluate` driving a real DeepSpeed engine on a one-process gloo group."""

import json
import math
import os

import pytest
import torch

from onade.config import ConfigError, load_config
from ray_jobs import engine as eng
from ray_jobs.train import main as train_main


def test_batch_plan_splits_one_global_batch():
    assert eng.plan_batches(32, 2) == eng.BatchPlan(32, 16, 1, 2)
    assert eng.plan_batches(32, 2, micro_batch=4) == eng.BatchPlan(32, 4, 4, 2)
    with pytest.raises(ConfigError, match="global_batch_size=30"):
        eng.plan_batches(30, 4)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        eng.plan_batches(32, 2, micro_batch=3)


def test_lr_schedule_warms_up_then_decays_to_min_ratio():
    f = [eng.lr_factor(s, warmup=10, total=100, min_ratio=0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert eng.lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert eng.lr_factor(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_zero_json_ships_no_derived_keys_and_rejects_them(tmp_path):
    for stage in (1, 2, 3):
        ds = eng.load_zero_json(stage)
        assert ds["zero_optimization"]["stage"] == stage
    cfg = eng.deepspeed_config(eng.load_zero_json(2), eng.plan_batches(16, 2, 4), 0.5)
    sizes = (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"])
    assert sizes == (16, 4, 2)
    # bf16 is autocast around the forward (onade.precision); DeepSpeed keeps fp32 weights.
    assert "bf16" not in cfg and cfg["gradient_clipping"] == 0.5
    (tmp_path / "zero2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": 8}))
    with pytest.raises(ValueError, match="train_batch_size"):
        eng.load_zero_json(2, tmp_path)
    with pytest.raises(ConfigError, match="zero_stage"):
        eng.load_zero_json(0)


@pytest.mark.timeout(60)
def test_malformed_config_key_fails_before_ray_starts(tmp_path):
    import ray

    with pytest.raises(ConfigError, match="model.widht"):
        train_main(["--data", str(tmp_path), "--output", str(tmp_path / "runs"), "--name", "x",
                    "--set", "model.widht=8"])
    with pytest.raises(ConfigError, match="train.stpes"):
        train_main(["--data", str(tmp_path), "--output", str(tmp_path / "runs"), "--name", "x",
                    "--set", "train.stpes=8"])
    assert not ray.is_initialized()


@pytest.mark.timeout(60)
def test_a_users_zero_config_is_read_and_a_bad_one_fails_before_ray_starts(tmp_path):
    import ray

    shipped = eng.load_zero_json(3)
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({**shipped, "zero_optimization": {**shipped["zero_optimization"],
                                                                 "stage3_param_persistence_threshold": 0}}))
    assert eng.load_zero_json(3, path=mine)["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    base = ["--data", str(tmp_path), "--output", str(tmp_path / "runs"), "--name", "x", "--zero-config"]
    with pytest.raises(ConfigError, match="zero_optimization.stage 3, but train.zero_stage is 2"):
        train_main([*base, str(mine)])  # the debug preset trains with ZeRO-2
    (tmp_path / "text.json").write_text("stage: 3")
    with pytest.raises(ValueError, match="text.json is not JSON"):
        train_main([*base, str(tmp_path / "text.json"), "--set", "train.zero_stage=3", "--set", "train.ema_decay=0"])
    with pytest.raises(ValueError, match="--zero-config .*missing.json: not a file"):
        train_main([*base, str(tmp_path / "missing.json")])
    assert not ray.is_initialized()


@pytest.mark.timeout(60)
def test_missing_data_path_fails_fast_naming_it(tmp_path):
    import ray

    missing = str(tmp_path / "no_such_shards")
    with pytest.raises(ValueError, match="no_such_shards"):
        train_main(["--data", missing, "--output", str(tmp_path / "runs"), "--name", "x"])
    assert not ray.is_initialized()


def test_training_inputs_drop_a_share_p_of_captions_and_none_at_p0():
    from ray_jobs.train_loop import training_inputs

    n, p = 20_000, 0.1
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 256, (n, 2, 2, 3), generator=g, dtype=torch.uint8),
             "tokens": torch.randint(4, 32, (n, 5), generator=g), "length": torch.randint(1, 6, (n,), generator=g)}
    before = {k: v.clone() for k, v in batch.items()}
    x, tokens, lengths = training_inputs(batch, "cpu", p, torch.Generator().manual_seed(1))
    dropped = lengths == 0
    # Binomial(20000, 0.1): a standard deviation of 0.0021, so 0.01 is ~5 of them.
    assert abs(dropped.double().mean().item() - p) < 0.01
    assert torch.equal(lengths[~dropped], before["length"][~dropped])  # the others keep their caption
    assert torch.equal(x, before["image"]) and torch.equal(tokens, before["tokens"])
    assert all(torch.equal(batch[k], before[k]) for k in batch)  # the batch itself is not modified
    # The same generator seed drops the same captions; p = 0 drops none and draws nothing.
    assert torch.equal(training_inputs(batch, "cpu", p, torch.Generator().manual_seed(1))[2], lengths)
    g0 = torch.Generator().manual_seed(1)
    state = g0.get_state()
    unchanged = training_inputs(batch, "cpu", 0.0, g0)
    assert all(torch.equal(a, b) for a, b in zip(unchanged, (before["image"], before["tokens"], before["length"])))
    assert torch.equal(g0.get_state(), state)


@pytest.fixture(scope="module")
def gloo_group():
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _free_port() -> int:
    from data.local_s3 import free_port

    return free_port()


@pytest.mark.timeout(120)
def test_train_step_lowers_loss_with_a_real_deepspeed_engine(gloo_group):
    from onade.model import build_model
    from ray_jobs.train_loop import evaluate, optimizer_step_count, train_step

    cfg = load_config("debug", sets=["model.image_size=8", "model.width=16", "model.num_blocks=3",
                                     "model.dilations=[1,2,4]", "model.text_dim=16", "model.vocab_size=32",
                                     "train.lr=0.01", "train.warmup_steps=2", "train.steps=20",
                                     "data.global_batch_size=8", "train.micro_batch_size=4",
                                     "train.caption_dropout=0.1"])
    torch.manual_seed(0)
    plan = eng.plan_batches(cfg.data.global_batch_size, 1, cfg.train.micro_batch_size)
    engine = eng.build_engine(build_model(cfg), cfg,
                              eng.deepspeed_config(eng.load_zero_json(2), plan, cfg.train.grad_clip))
    g = torch.Generator().manual_seed(0)
    # A fixed batch of flat-colour images: learnable in a few steps, so the loss must fall.
    colours = torch.randint(0, 256, (4, 1, 1, 3), generator=g, dtype=torch.uint8)
    batch = {"image": colours.expand(4, 8, 8, 3).contiguous(), "tokens": torch.randint(4, 32, (4, 6), generator=g),
             "length": torch.full((4,), 6)}
    before = evaluate(engine.module, [batch], num_masks=2, seed=1)
    captions = torch.Generator().manual_seed(1)
    state = captions.get_state()
    losses = [train_step(engine, [batch] * plan.grad_accum, cfg.masks, cfg.train.loss, g,
                         caption_dropout=cfg.train.caption_dropout, caption_generator=captions).loss
              for _ in range(20)]
    assert not torch.equal(captions.get_state(), state)  # the step drew its dropped captions from it
    after = evaluate(engine.module, [batch], num_masks=2, seed=1, exact_images=2)
    assert optimizer_step_count(engine) == 20  # one optimizer step per train_step, accumulation inside
    assert engine.optimizer.optimizer.defaults["fused"] is True  # under ZeRO's wrapper, the fused CPU kernel
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    assert after["bits_per_dim"] < before["bits_per_dim"] - 1.0
    assert after["num_images"] == 4 and after["exact_num_images"] == 2
    assert set(after) >= {"exact_bits_per_dim", "center_bits_true_caption", "center_bits_shuffled_caption"}
    assert "exact_bits_per_dim" not in before  # the costly metric only when asked for



@pytest.mark.timeout(60)
def test_the_engines_fused_adamw_takes_torchs_default_steps():
    from onade.model import build_model

    cfg = load_config("debug", sets=["model.image_size=8", "model.width=16", "model.num_blocks=3",
                                     "model.dilations=[1,2,4]", "model.text_dim=16", "model.vocab_size=32"])
    models = [build_model(cfg) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = eng.make_optimizer(models[0], cfg.train, "cpu")
    default = torch.optim.AdamW(eng.param_groups(models[1], cfg.train.weight_decay), lr=cfg.train.lr,
                                betas=tuple(cfg.train.betas))
    assert fused.defaults["fused"] and not default.defaults["fused"]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in models[0].parameters()]
        for model, opt in zip(models, (fused, default)):
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad.clone()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not eng.make_optimizer(models[0], cfg.train, "cuda").defaults["fused"]  # tested on CPU only


@pytest.mark.timeout(60)
def test_channels_last_model_builds_a_deepspeed_engine(gloo_group):
    """NHWC activations only: channels_last weights broke DeepSpeed's start-up parameter broadcast."""
    from onade.model import build_model

    cfg = load_config("debug", sets=["model.image_size=8", "model.width=16", "model.num_blocks=3",
                                     "model.dilations=[1,2,4]", "model.text_dim=16", "model.vocab_size=32",
                                     "model.channels_last=true", "data.global_batch_size=4"])
    engine = eng.build_engine(build_model(cfg), cfg,
                              eng.deepspeed_config(eng.load_zero_json(2), eng.plan_batches(4, 1), 1.0))
    x = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    logits = engine(x, torch.rand(4, 8, 8, 3) < 0.5, torch.randint(4, 32, (4, 5)), torch.full((4,), 5))
    assert logits.shape == (4, 8, 8, 3, 256)


def test_workers_take_a_count_or_an_elastic_range():
    import argparse

    from ray_jobs.train import WorkerRange, worker_range

    assert worker_range("3") == WorkerRange(3, 3) and str(worker_range("3")) == "3"
    assert worker_range("1-4") == WorkerRange(1, 4) and str(worker_range("1-4")) == "1-4"
    for bad in ("0", "4-2", "x", "1-", "-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            worker_range(bad)


def test_an_elastic_range_needs_a_global_batch_that_splits_at_every_count():
    from onade.config import ConfigError, load_config
    from ray_jobs.train import WorkerRange, check_batch_plans

    cfg = load_config("debug", None, ["data.global_batch_size=8"])
    check_batch_plans(cfg, WorkerRange(1, 2))
    check_batch_plans(cfg, WorkerRange(4, 4))
    with pytest.raises(ConfigError, match=r"\[3\] worker.*multiple of 6.*global_batch_size=6"):
        check_batch_plans(cfg, WorkerRange(1, 3))


def test_worker_flags_reach_ray_trains_scaling_config():
    from ray_jobs.train import parse_args, scaling_config

    run = ["--data", "d", "--output", "o", "--name", "n"]
    args = parse_args([*run, "--workers", "1-4", "--elastic-check-s", "5", "--cpus-per-worker", "2"])
    sc = scaling_config(args)
    assert (sc.min_workers, sc.max_workers, sc.elastic_resize_monitor_interval_s) == (1, 4, 5)
    assert sc.resources_per_worker == {"CPU": 2} and not sc.use_gpu
    args = parse_args([*run, "--workers", "3", "--cpus-per-worker", "1", "--gpus-per-worker", "1"])
    sc = scaling_config(args)
    assert (sc.min_workers, sc.max_workers) == (3, 3) and sc.use_gpu
    assert sc.resources_per_worker == {"CPU": 1, "GPU": 1}
