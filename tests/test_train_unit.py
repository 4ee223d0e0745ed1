"""Training pieces without Ray: batch/LR/precision derivation, DeepSpeed config rules, fail-fast CLI errors,
and `train_step`/`evaluate` driving a real DeepSpeed engine on a one-process gloo group."""

import json
import math
import os

import pytest
import torch

from onade.config import ConfigError, load_config
from ray_jobs import engine as eng
from ray_jobs.ray_env import free_port
from ray_jobs.train import main as train_main


def test_split_batch_divides_one_global_batch():
    assert eng.split_batch(32, 2) == eng.BatchSplit(32, 16, 1, 2)
    assert eng.split_batch(32, 2, micro_batch=4) == eng.BatchSplit(32, 4, 4, 2)
    with pytest.raises(ConfigError, match="global_batch_size=30"):
        eng.split_batch(30, 4)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        eng.split_batch(32, 2, micro_batch=3)


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
    cfg = eng.deepspeed_config(eng.load_zero_json(2), eng.split_batch(16, 2, 4), 0.5, "fp32")
    sizes = (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"])
    assert sizes == (16, 4, 2)
    # bf16 is DeepSpeed's torch autocast around the module's forward; its weights stay fp32.
    assert "bf16" not in cfg and cfg["gradient_clipping"] == 0.5
    assert cfg["torch_autocast"]["enabled"] is False
    bf16 = eng.deepspeed_config(eng.load_zero_json(2), eng.split_batch(16, 2, 4), 0.5, "bf16")["torch_autocast"]
    assert bf16 == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    with pytest.raises(ValueError, match="resolved precision"):
        eng.deepspeed_config(eng.load_zero_json(2), eng.split_batch(16, 2, 4), 0.5, "auto")
    for key, value in (("train_batch_size", 8), ("torch_autocast", {"enabled": True})):
        (tmp_path / "zero2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}, key: value}))
        with pytest.raises(ValueError, match=key):
            eng.load_zero_json(2, tmp_path)
    with pytest.raises(ConfigError, match="zero_stage"):
        eng.load_zero_json(0)


@pytest.mark.timeout(60)
def test_malformed_config_key_fails_before_ray_starts(tmp_path, ray_stopped):
    import ray

    with pytest.raises(ConfigError, match="model.widht"):
        train_main(["--data", str(tmp_path), "--output", str(tmp_path / "runs"), "--name", "x",
                    "--set", "model.widht=8"])
    with pytest.raises(ConfigError, match="train.stpes"):
        train_main(["--data", str(tmp_path), "--output", str(tmp_path / "runs"), "--name", "x",
                    "--set", "train.stpes=8"])
    assert not ray.is_initialized()


@pytest.mark.timeout(60)
def test_a_users_zero_config_is_read_and_a_bad_one_fails_before_ray_starts(tmp_path, ray_stopped):
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
def test_missing_data_path_fails_fast_naming_it(tmp_path, ray_stopped):
    import ray

    missing = str(tmp_path / "no_such_shards")
    with pytest.raises(ValueError, match="no_such_shards"):
        train_main(["--data", missing, "--output", str(tmp_path / "runs"), "--name", "x"])
    assert not ray.is_initialized()


def test_training_inputs_drop_a_share_p_of_captions_and_none_at_p0():
    from onade.caption import caption_drops
    from ray_jobs.train_draws import Draws
    from ray_jobs.train_loop import training_inputs

    n, p = 20_000, 0.1
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 256, (n, 2, 2, 3), generator=g, dtype=torch.uint8),
             "tokens": torch.randint(4, 32, (n, 5), generator=g), "length": torch.randint(1, 6, (n,), generator=g)}
    before = {k: v.clone() for k, v in batch.items()}
    drops = caption_drops(n, p, torch.Generator().manual_seed(1))
    x, tokens, lengths = training_inputs(batch, "cpu", Draws(torch.ones(n, 2, 2, 3, dtype=torch.bool),
                                                             torch.zeros(n, dtype=torch.long), drops))
    dropped = lengths == 0
    # Binomial(20000, 0.1): a standard deviation of 0.0021, so 0.01 is ~5 of them.
    assert abs(dropped.double().mean().item() - p) < 0.01
    assert torch.equal(dropped, drops)
    assert torch.equal(lengths[~dropped], before["length"][~dropped])  # the others keep their caption
    assert torch.equal(x, before["image"]) and torch.equal(tokens, before["tokens"])
    assert all(torch.equal(batch[k], before[k]) for k in batch)  # the batch itself is not modified
    # The same generator seed drops the same captions; p = 0 drops none and draws nothing.
    assert torch.equal(caption_drops(n, p, torch.Generator().manual_seed(1)), drops)
    g0 = torch.Generator().manual_seed(1)
    state = g0.get_state()
    assert caption_drops(n, 0.0, g0) is None and torch.equal(g0.get_state(), state)


def test_draws_are_a_function_of_the_seed_whether_drawn_ahead_on_a_thread_or_inline():
    from onade.config import MaskConfig
    from ray_jobs.train_draws import DrawStream

    def stream(prefetch: bool) -> DrawStream:
        return DrawStream(MaskConfig(), 6, 8, torch.Generator().manual_seed(3), 0.3, torch.Generator().manual_seed(4),
                          "cpu", prefetch=prefetch)

    ahead, inline = stream(True), stream(False)
    try:
        for _ in range(5):
            a, b = ahead.next(), inline.next()
            assert torch.equal(a.observed_BHWC, b.observed_BHWC) and torch.equal(a.kind_B, b.kind_B)
            assert torch.equal(a.drop_B, b.drop_B)
        assert ahead._ahead is not None  # it really drew the next micro-batch's on its thread
    finally:
        ahead.close()
    assert all(t.device.type == "cpu" for t in (inline.draw().observed_BHWC, inline.draw().kind_B))


@pytest.fixture(scope="module")
def gloo_group():
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()




TINY = ["model.image_size=8", "model.width=16", "model.num_blocks=3", "model.dilations=[1,2,4]", "model.text_dim=16",
        "model.vocab_size=32"]


def tiny_engine(precision: str = "fp32", *sets: str, zero_stage: int = 2):
    """A real DeepSpeed engine (one gloo rank), built as a training worker builds it."""
    from onade.model import build_model

    cfg = load_config("debug", sets=[*TINY, *sets])
    plan = eng.split_batch(cfg.data.global_batch_size, 1, cfg.train.micro_batch_size)
    ds = eng.deepspeed_config(eng.load_zero_json(zero_stage), plan, cfg.train.grad_clip, precision)
    return eng.build_engine(build_model(cfg), cfg, ds, torch.device("cpu")), cfg, plan


def flat_colour_batch(n: int = 4, size: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (n, 1, 1, 3), generator=g, dtype=torch.uint8)
    return {"image": colours.expand(n, size, size, 3).contiguous(), "tokens": torch.randint(4, 32, (n, 6), generator=g),
            "length": torch.full((n,), 6)}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_train_step_lowers_loss_with_a_real_deepspeed_engine(gloo_group):
    from onade.metrics import evaluate
    from ray_jobs.train_draws import DrawStream
    from ray_jobs.train_loop import optimizer_step_count, train_step

    torch.manual_seed(0)
    engine, cfg, plan = tiny_engine("fp32", "train.lr=0.01", "train.warmup_steps=2", "train.steps=20",
                                    "data.global_batch_size=8", "train.micro_batch_size=4", "train.caption_dropout=0.1")
    # A fixed batch of flat-colour images: learnable in a few steps, so the loss must fall.
    batch = flat_colour_batch()
    held_out = (batch["image"], batch["tokens"], batch["length"])
    before = evaluate(engine.module, [held_out], num_masks=2, seed=1)
    captions = torch.Generator().manual_seed(1)
    state = captions.get_state()
    draws = DrawStream(cfg.masks, 4, 8, torch.Generator().manual_seed(0), cfg.train.caption_dropout, captions)
    stats = [train_step(engine, [batch] * plan.grad_accum, draws, cfg.train.loss) for _ in range(20)]
    losses = [float(s.loss) / s.num_micro_batches for s in stats]
    assert not torch.equal(captions.get_state(), state)  # the step drew its dropped captions from it
    assert all(int(s.kind_count_K.sum()) == 8 for s in stats)  # every example counted under its mask kind
    after = evaluate(engine.module, [held_out], num_masks=2, seed=1, exact_images=2)
    assert optimizer_step_count(engine) == 20  # one optimizer step per train_step, accumulation inside
    assert engine.optimizer.optimizer.defaults["fused"] is True  # under ZeRO's wrapper, the fused CPU kernel
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    assert after["bits_per_dim"] < before["bits_per_dim"] - 1.0
    assert after["num_images"] == 4 and after["exact_num_images"] == 2
    assert set(after) >= {"exact_center_bits", "center_bits_true_caption", "center_bits_shuffled_caption"}
    assert "exact_center_bits" not in before  # the costly metric only when asked for


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_bf16_stays_on_in_the_engines_forward_even_under_an_outer_cuda_autocast(gloo_group, zero_stage):
    """On CUDA an autocast opened around `engine(...)` was switched off by DeepSpeed (its forward runs the
    module under autocast(enabled=False) when autocast is on outside and its own torch_autocast section is
    absent: deepspeed/runtime/torch_autocast.py autocast_if_enabled). The CUDA autocast flag is set here as a
    CUDA run's outer context would set it; the convolution must still compute in bf16, and in fp32 when the
    run's precision is fp32."""
    from onade.precision import ComputeDtype
    from ray_jobs.train_draws import DrawStream
    from ray_jobs.train_loop import train_step

    for precision, expected in (("bf16", "bfloat16"), ("fp32", "float32")):
        engine, cfg, plan = tiny_engine(precision, "data.global_batch_size=4", "train.ema_decay=0",
                                        zero_stage=zero_stage)
        assert engine.torch_autocast_enabled() == (precision == "bf16")
        draws = DrawStream(cfg.masks, 4, 8, torch.Generator().manual_seed(0))
        probe = ComputeDtype(engine.module)
        torch.set_autocast_enabled("cuda", True)
        try:
            stats = train_step(engine, [flat_colour_batch()], draws, cfg.train.loss)
        finally:
            torch.set_autocast_enabled("cuda", False)
        assert probe.close() == expected
        assert torch.isfinite(stats.loss)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_training_step_never_reads_a_device_value_on_the_host(gloo_group):
    """Every host read (aten::item, is_nonzero) in a step is on CPU tensors of the mask draw, or inside
    DeepSpeed's step (its gradient-norm check for clipping) and torch's optimizer, never of the step's own
    loss or statistics, which stay on the device until a log line reads them."""
    from torch.profiler import ProfilerActivity, profile

    from ray_jobs.train_draws import DrawStream
    from ray_jobs.train_loop import train_step

    engine, cfg, plan = tiny_engine("bf16", "data.global_batch_size=8", "train.micro_batch_size=4",
                                    "train.caption_dropout=0.1")
    draws = DrawStream(cfg.masks, 4, 8, torch.Generator().manual_seed(0), 0.1, torch.Generator().manual_seed(1))
    train_step(engine, [flat_colour_batch()] * 2, draws, cfg.train.loss)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:  # stacks: Python callers as parents
        stats = train_step(engine, [flat_colour_batch()] * 2, draws, cfg.train.loss)
    reads = []
    for event in prof.events():
        if event.name in ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero"):
            chain, parent = [], event.cpu_parent
            while parent is not None:
                chain.append(parent.name)
                parent = parent.cpu_parent
            reads.append(" <- ".join(chain))
    allowed = ("ray_jobs/train_draws.py", "deepspeed/", "torch/optim/")
    assert reads, "the profiler saw no host read at all: the mask draw makes some"
    assert [r for r in reads if not any(a in r for a in allowed)] == []
    assert stats.loss.device == engine.device and stats.kind_bits_K.device == engine.device


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


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_channels_last_model_builds_a_deepspeed_engine(gloo_group):
    """NHWC activations only: channels_last weights broke DeepSpeed's start-up parameter broadcast."""
    engine, _, _ = tiny_engine("fp32", "model.channels_last=true", "data.global_batch_size=4")
    x = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    logits = engine(x, torch.rand(4, 8, 8, 3) < 0.5, torch.randint(4, 32, (4, 5)), torch.full((4,), 5))
    assert logits.shape == (4, 8, 8, 3, 256)


def test_the_engine_goes_on_the_device_ray_granted_not_cuda_local_rank():
    """DeepSpeed's engine takes args.device_rank, else cuda:LOCAL_RANK (deepspeed/runtime/engine.py
    _set_distributed_vars), and ZeRO-3's Init takes LOCAL_RANK alone (runtime/zero/partition_parameters.py):
    the device Ray Train granted goes to both."""
    args, env = eng.deepspeed_device(torch.device("cuda", 3))
    assert args.device_rank == 3 and env == {"LOCAL_RANK": "3"}
    args, env = eng.deepspeed_device(torch.device("cpu"))
    assert args.device_rank == 0 and env == {}
    with pytest.raises(ValueError, match="needs its index"):
        eng.deepspeed_device(torch.device("cuda"))


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
    from ray_jobs.train import WorkerRange, check_batch_splits

    cfg = load_config("debug", None, ["data.global_batch_size=8"])
    check_batch_splits(cfg, WorkerRange(1, 2))
    check_batch_splits(cfg, WorkerRange(4, 4))
    with pytest.raises(ConfigError, match=r"\[3\] worker.*multiple of 6.*global_batch_size=6"):
        check_batch_splits(cfg, WorkerRange(1, 3))


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


def test_a_resume_compares_the_model_but_not_its_layout(tmp_path):
    """A run started on CPUs resumes on GPUs and back: channels_last and activation checkpointing only change
    how the same weights compute. Any other model setting still refuses the resume, naming it."""
    from onade.config import LAYOUT_KEYS
    from onade.export_format import CONFIG_FILE, DS_TAG, STATE_FILE, checkpoint_name, deepspeed_optim_file
    from ray_jobs.resume import check_resume
    from ray_jobs.train import WorkerRange
    from ray_jobs.train_checkpoints import TrainState

    def saved_run(name: str, **model) -> str:
        cfg = load_config("debug", sets=[f"model.{k}={v}" for k, v in model.items()])
        ckpt = tmp_path / name / checkpoint_name(10)
        (ckpt / DS_TAG).mkdir(parents=True)
        (ckpt / DS_TAG / deepspeed_optim_file(0)).write_bytes(b"")
        (ckpt / STATE_FILE).write_text(TrainState(step=10, world_size=1).to_json())
        (ckpt / CONFIG_FILE).write_text(json.dumps(cfg.to_dict()))
        return str(tmp_path / name)

    cpu_layout = {"channels_last": "auto", "activation_checkpointing": False}
    gpu_layout = {"channels_last": "on", "activation_checkpointing": True}
    assert set(gpu_layout) == set(LAYOUT_KEYS)
    for saved, now in ((cpu_layout, gpu_layout), (gpu_layout, cpu_layout)):
        run = saved_run(f"from_{saved['channels_last']}", **saved)
        cfg = load_config("debug", sets=[f"model.{k}={v}" for k, v in now.items()])
        assert check_resume(cfg, run, WorkerRange(1, 1)) == 10
    with pytest.raises(ValueError, match=r"different model \(\['width'\]\)"):
        check_resume(load_config("debug", sets=["model.width=48"]), saved_run("w", **cpu_layout), WorkerRange(1, 1))
