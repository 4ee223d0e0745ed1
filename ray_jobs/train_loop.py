"""What every Ray Train worker runs: `train_loop_per_worker(config)`, a plain loop read top to bottom.

`train_step(engine, micro_batches, ...)` is one optimizer step, a plain function a test can call; the
held-out metrics are onade.metrics.evaluate's (the same as ray_jobs.evaluate's), averaged here over the
ranks. The body runs under bf16 autocast where `train.precision` resolves to bf16 on the worker's device:
DeepSpeed's engine opens it (its torch_autocast section, ray_jobs.engine), and the start event records the
dtype the first convolution really computed in (`forward_dtype`). Weights, EMA, losses and metrics stay fp32.

Each worker computes on the device Ray granted it (ray_jobs.devices.train_device). The step never waits on
the device: masks and dropped captions come from ray_jobs.train_draws (drawn on the CPU from the worker's
seed, ahead of the step on a GPU), Ray Data moves each batch to the device in its prefetch thread, and the
loss and per-kind statistics stay on the device until a log line all-reduces them.

Training batches (never validation ones) lose their caption with probability `train.caption_dropout`
(onade.caption.caption_drops), drawn on a CPU generator of the worker's own, apart from the masks' one, so
the masks a seed draws do not depend on the dropout rate.

Validation costs little: every `val_every` steps the cheap metrics (orderless bits, one-shot centre bits
with true and shuffled captions) on the same fixed batches and masks; at the end, once, on
`val_exact_images` fixed images the centre hole's exact chain-rule NLL (`exact_center_bits`), and on
`profile_images` the loss profile over the centre hole (onade.metrics.loss_profile, PROFILE_POINTS forward
passes per image), which the last checkpoint keeps for the export. With `train.ema_decay` > 0 validation
scores the EMA weights, which checkpoints keep beside the raw ones and the export ships by default.

Side effects (metrics files, TensorBoard, PNG grids, console) go through `ray_jobs.run_dir`, which is a
no-op off rank 0. Launch with `python -m ray_jobs.train`.

Resume and data position: checkpoints (ray_jobs.train_checkpoints, restored by ray_jobs.resume) hold the
DeepSpeed state of every rank (weights, optimizer, LR schedule) and a TrainState (step, epoch, samples
consumed in that epoch), and load at any worker count. A resumed worker restarts its shard iterator at a
fresh epoch and skips its share of the consumed samples, so the workers see as many new samples as an
uninterrupted run. Whether they are the *same* samples depends on Ray Data: the streaming split hands
blocks to workers as they become ready, so the exact order is not reproducible across restarts.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from onade.config import MASK_KINDS, Config, config_from_dict
from onade.ema import EMA
from onade.loss import example_bits, loss_from_nats
from onade.metrics import EXACT_CENTER, PROFILE_POINTS, PROFILE_SEED_OFFSET, evaluate, loss_profile, one_shot_fill
from onade.model import build_model, num_parameters
from onade.plans import LossProfile
from onade.precision import ComputeDtype, autocast, resolve_precision
from ray_jobs.engine import BatchSplit
from ray_jobs.run_spec import RunSpec
from ray_jobs.train_draws import Draws, DrawStream

GRID_IMAGES = 8
# Offsets the caption-dropout generator's seed from the masks' one (both seeded from the worker's seed and
# the step a run starts at): two streams that never share a seed.
CAPTION_SEED_OFFSET = 1 << 40


@dataclass(frozen=True)
class Worker:
    """This worker's place in the run, and what follows from it."""
    rank: int
    world_size: int
    seed: int  # train.seed * world_size + rank
    device: torch.device  # the one Ray granted (ray_jobs.devices.train_device)
    plan: BatchSplit  # the global batch split over this many workers
    precision: str  # train.precision resolved on `device`

    @property
    def samples_per_micro_batch(self) -> int:
        """Samples every worker together consumes in one micro-batch: the unit of the data position."""
        return self.plan.micro_batch * self.world_size


@dataclass
class StepStats:
    """One step's statistics, on the engine's device (reading them would make the host wait for it)."""
    loss: torch.Tensor  # the optimised loss, bits per subpixel, summed over the step's micro-batches
    num_micro_batches: int
    kind_bits_K: torch.Tensor  # per MASK_KINDS entry: sum over examples of their mean bits per hidden subpixel
    kind_count_K: torch.Tensor  # per MASK_KINDS entry: number of examples


def training_inputs(batch: dict, device, draws: Draws) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_BHWC, tokens_BT, lengths_B) of a training micro-batch on `device`, the captions `draws.drop_B` marks
    replaced by the empty one (the batch is not modified)."""
    x_BHWC, tokens_BT, lengths_B = _to_device(batch, device)
    if draws.drop_B is not None:
        lengths_B = lengths_B.masked_fill(draws.drop_B, 0)
    return x_BHWC, tokens_BT, lengths_B


def zero3_partitioned(module: torch.nn.Module) -> dict:
    """Under ZeRO-3: the share of parameter elements DeepSpeed partitions across the ranks. The rest persist
    whole on every rank (parameters up to stage3_param_persistence_threshold elements)."""
    params = [p for p in module.parameters() if hasattr(p, "ds_persist")]
    if not params:
        return {}
    total = sum(p.ds_numel for p in params)
    return {"zero3_partitioned_share": round(sum(p.ds_numel for p in params if not p.ds_persist) / total, 4)}


def train_step(engine, micro_batches: list[dict], draws: DrawStream, loss_kind: str,
               ema: EMA | None = None) -> StepStats:
    """One optimizer step over `micro_batches` (gradient accumulation), then one EMA update. DeepSpeed
    scales each backward by 1/accumulation and steps at the boundary; its engine runs the forward in the
    precision its config sets (ray_jobs.engine.deepspeed_config). `draws` gives each micro-batch its masks
    and dropped captions."""
    K = len(MASK_KINDS)
    loss_sum = torch.zeros((), device=engine.device)
    kind_bits_K = torch.zeros(K, dtype=torch.float64, device=engine.device)
    kind_count_K = torch.zeros(K, dtype=torch.float64, device=engine.device)
    for batch in micro_batches:
        d = draws.next()
        x_BHWC, tokens_BT, lengths_B = training_inputs(batch, engine.device, d)
        nats = engine(x_BHWC, d.observed_BHWC, tokens_BT, lengths_B, score=True)
        # The orderless loss is the mean of the per-example bits the per-kind statistics need: computed once.
        if loss_kind == "orderless":
            bits_B = example_bits(nats, d.observed_BHWC)
            loss = bits_B.mean()
        else:
            bits_B = example_bits(nats.detach(), d.observed_BHWC)
            loss = loss_from_nats(nats, d.observed_BHWC, kind=loss_kind)
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().float()
        kind_bits_K.index_add_(0, d.kind_B, bits_B.detach().double())
        kind_count_K.index_add_(0, d.kind_B, torch.ones_like(bits_B, dtype=torch.float64))
    if ema is not None:
        ema.update(engine.module)
    return StepStats(loss_sum, len(micro_batches), kind_bits_K, kind_count_K)


class ShardCursor:
    """Endless micro-batches from a Ray DataIterator, remembering (epoch, index within epoch)."""

    def __init__(self, shard, batch_size: int, epoch: int = 0, skip: int = 0):
        self.shard, self.batch_size = shard, batch_size
        self.epoch, self.index, self._skip = epoch, 0, skip
        self._it = None

    def next(self) -> dict:
        while True:
            if self._it is None:
                self._it = iter(self.shard.iter_torch_batches(batch_size=self.batch_size, drop_last=True))
                self.index = 0
            try:
                batch = next(self._it)
            except StopIteration:
                if self.index == 0 and self._skip == 0:
                    raise ValueError(f"the training shard of this worker has fewer than {self.batch_size} images "
                                     "(one micro-batch): use more images, fewer workers or a smaller "
                                     "data.global_batch_size") from None
                self._it, self.epoch, self._skip = None, self.epoch + 1, 0
                continue
            self.index += 1
            if self._skip:
                self._skip -= 1
                continue
            return batch


def _to_device(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (batch["image"].to(device, torch.uint8), batch["tokens"].to(device, torch.long),
            batch["length"].to(device, torch.long).view(-1))


def _all_reduce(values: list[float], device, op=dist.ReduceOp.SUM) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t.tolist()


def _val_batches(val_shard, batch_size: int, num_batches: int, device) -> list[tuple]:
    """The first `num_batches` batches (x_BHWC, tokens_BT, lengths_B) of this worker's validation split, kept
    on the device and reused at every validation so successive numbers are comparable. The split is read to
    its end once: a streaming split left half-read would hold its blocks and stall the other workers. The
    count is cut to the smallest on any rank, since ZeRO-3 needs every rank in each forward pass."""
    batches: list[tuple] = []
    for batch in val_shard.iter_torch_batches(batch_size=batch_size, drop_last=False):
        if len(batches) < num_batches:
            batches.append(_to_device(batch, device))
    (count,) = _all_reduce([len(batches)], device, dist.ReduceOp.MIN)
    return batches[: int(count)]


def optimizer_step_count(engine) -> int | None:
    """Adam's step counter as stored in the optimizer state (restored on resume, so a test can tell)."""
    from ray_jobs.engine import torch_optimizer

    for state in torch_optimizer(engine).state.values():
        if "step" in state:
            return int(state["step"])
    return None


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    from ray_jobs.run_dir import open_run_dir

    # DeepSpeed's ZeRO calls torch's deprecated all_gather_into_tensor alias on every step.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated")
    spec: RunSpec = config["run"]
    cfg = config_from_dict(spec.config)
    worker = join_run(cfg)
    # model.channels_last makes the activations NHWC; the weights stay NCHW: DeepSpeed broadcasts parameters
    # at start-up through views that need the default layout (deepspeed/runtime/engine.py _broadcast_model).
    model = build_model(cfg)
    num_params = num_parameters(model)  # before ZeRO-3 partitions the tensors away
    engine, ema, state, converted_from = restored_engine(model, cfg, spec.zero, worker)

    run = open_run_dir(spec.storage_fs, spec.run_path, worker.rank == 0)
    resumed = {} if converted_from is None else {"resumed_from_world_size": converted_from}
    if state.step and run.last_step is not None:  # logged before the restart, at log_every resolution
        resumed["steps_lost"] = max(0, run.last_step - state.step)
    nodes = _node_ids(worker.world_size)
    start_event = dict(step=state.step, world_size=worker.world_size, **resumed, num_nodes=len(set(nodes)),
                       node_ids=nodes, device=str(engine.device),
                       micro_batch=worker.plan.micro_batch, grad_accum=worker.plan.grad_accum,
                       precision=worker.precision, zero_stage=cfg.train.zero_stage, parameters=num_params,
                       ema_decay=cfg.train.ema_decay, torch_threads=torch.get_num_threads(),
                       adam_step=optimizer_step_count(engine), zero_optimization=spec.zero.get("zero_optimization"),
                       **zero3_partitioned(engine.module))

    train = ShardCursor(ray.train.get_dataset_shard("train"), worker.plan.micro_batch, state.epoch,
                        state.epoch_samples // worker.samples_per_micro_batch)
    val = None
    if spec.has_val:
        val = _val_batches(ray.train.get_dataset_shard("val"), worker.plan.micro_batch, cfg.train.val_batches,
                           engine.device)
    step_loop(spec, cfg, worker, engine, ema, run, train, val, state.step, start_event)
    run.close()


def join_run(cfg: Config) -> Worker:
    """This worker's rank, seed (seeding torch), device, batch split and precision."""
    import ray.train

    from ray_jobs.devices import train_device
    from ray_jobs.engine import split_batch

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    seed = cfg.train.seed * world_size + rank
    torch.manual_seed(seed)
    device = train_device()
    return Worker(rank, world_size, seed, device,
                  split_batch(cfg.data.global_batch_size, world_size, cfg.train.micro_batch_size),
                  resolve_precision(cfg.train.precision, device))


def restored_engine(model, cfg: Config, zero: dict, worker: Worker):
    """(engine, EMA or None, TrainState, converted_from): `model`'s DeepSpeed engine with the run's latest
    checkpoint restored into it, from any worker count (ray_jobs.resume; a new run starts at step 0)."""
    import ray.train

    from ray_jobs.engine import build_engine, deepspeed_config
    from ray_jobs.resume import restoring

    t = cfg.train
    with restoring(ray.train.get_checkpoint(), worker.world_size) as restore:
        ds_config = {**deepspeed_config(zero, worker.plan, t.grad_clip, worker.precision), **restore.deepspeed_section}
        engine = build_engine(model, cfg, ds_config, worker.device)
        ema = EMA(engine.module, t.ema_decay) if t.ema_decay > 0 else None
        state = restore.into(engine, ema)
    return engine, ema, state, restore.converted_from


def _node_ids(world_size: int) -> list[str]:
    """The Ray node of every rank (a collective: every rank calls it)."""
    import ray

    nodes = [None] * world_size
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    return nodes


def _draw_stream(cfg: Config, worker: Worker, start_step: int, device) -> DrawStream:
    """The masks and dropped captions of the steps from `start_step` on: a resumed run must not replay those
    of the steps it already took."""
    generator = torch.Generator().manual_seed(worker.seed + 1_000_003 * start_step)
    caption_generator = torch.Generator().manual_seed(worker.seed + 1_000_003 * start_step + CAPTION_SEED_OFFSET)
    return DrawStream(cfg.masks, worker.plan.micro_batch, cfg.model.image_size, generator, cfg.train.caption_dropout,
                      caption_generator, device)


def step_loop(spec: RunSpec, cfg: Config, worker: Worker, engine, ema, run, train: "ShardCursor",
              val: list[tuple] | None, start_step: int, start_event: dict) -> None:
    """Optimizer steps from `start_step` to train.steps. Every log_every steps a log line, every val_every a
    validation, every checkpoint_every a checkpoint, all three at the last step; a preemption notice
    checkpoints at once and waits for the restart, and the stop file ends the run at a checkpoint."""
    import ray.train

    t = cfg.train
    draws = _draw_stream(cfg, worker, start_step, engine.device)
    # Logged after the first step, with the dtype that step's forward computed in (`forward_dtype`: what the
    # engine really ran, beside the `precision` asked for).
    probe = ComputeDtype(engine.module)
    step, window, profile, preempted = start_step, _Window(engine.device), None, False
    reported_shards: set[str] = set()
    timing = {"train_s": 0.0, "val_s": 0.0, "checkpoint_s": 0.0}
    while step < t.steps:
        tic = time.perf_counter()
        micro_batches = [train.next() for _ in range(worker.plan.grad_accum)]
        window.add(train_step(engine, micro_batches, draws, t.loss, ema), time.perf_counter() - tic)
        timing["train_s"] += time.perf_counter() - tic
        step += 1
        if probe is not None:
            run.event("resume" if start_step else "start", **start_event, forward_dtype=probe.close())
            probe = None

        # A collective (rank 0 broadcasts what Ray's preemption watcher marked): every rank asks at every step
        # until the first notice.
        notice = None if preempted else ray.train.get_preemption_info()
        last = step == t.steps
        do_log = step % t.log_every == 0 or last or notice is not None
        do_val = val is not None and (step % t.val_every == 0 or last)
        do_ckpt = step % t.checkpoint_every == 0 or last or notice is not None
        if not (do_log or do_val or do_ckpt):
            continue
        metrics: dict = {"step": step, "epoch": train.epoch}
        if do_log:
            metrics.update(window.metrics(engine, worker.world_size, worker.plan.global_batch))
            window = _Window(engine.device)
            if worker.rank == 0:
                metrics.update(_skipped(spec.skip_counter, run, step, reported_shards))
        if do_val:
            tic = time.perf_counter()
            val_metrics, profile = _validate(ema.model if ema else engine.module, val, cfg, worker, step, run, last)
            metrics.update(val_metrics)
            timing["val_s"] += time.perf_counter() - tic
        if last:
            metrics.update({k: round(v, 2) for k, v in timing.items()})
        run.log(step, {k: v for k, v in metrics.items() if k != "step"})
        if do_ckpt:
            tic = time.perf_counter()
            _checkpoint(engine, ema, spec, worker, train, step, metrics, profile)
            timing["checkpoint_s"] += time.perf_counter() - tic
            run.event("checkpoint", step=step)
            if not last and _stop_requested(spec.stop_file, worker.rank, engine.device):
                run.event("stopped", step=step, stop_file=spec.stop_file)
                break
        elif do_val:
            ray.train.report(metrics)
        # Log-only steps stop at metrics.jsonl and the console: with a report to Ray Train and a sync of the
        # run files at every log line, each log cost ~0.26 s beyond its steps (15 s of a 600-step debug run).
        if do_val or do_ckpt:
            run.sync()
        if notice is not None and not last:
            preempted = True
            run.event("preemption_notice", step=step, deadline_ms=notice.deadline_ms,
                      preempted_ranks=sorted(notice.preempted_ranks), checkpointed=True)
            run.sync()
            _await_teardown(notice.deadline_ms, spec.preemption_grace_s)
    draws.close()


def _checkpoint(engine, ema, spec: RunSpec, worker: Worker, train: "ShardCursor", step: int, metrics: dict,
                profile: LossProfile | None) -> None:
    """Save this step's checkpoint (every rank its part), registered with Ray Train with `metrics`."""
    from ray_jobs import train_checkpoints

    state = train_checkpoints.TrainState(step=step, epoch=train.epoch,
                                         epoch_samples=train.index * worker.samples_per_micro_batch,
                                         world_size=worker.world_size, ema_updates=ema.num_updates if ema else 0)
    train_checkpoints.save(engine, state, metrics, worker.rank, spec.config, spec.tokenizer, ema, profile)


def _skipped(counter_name: str, run, step: int, reported: set[str]) -> dict:
    """What the data pipeline dropped so far (this run since it last started): `skipped_samples` and
    `bad_shards` for the metrics row, and a `bad_shard` event naming each unreadable shard once."""
    from ray_jobs.data import skip_summary_named

    summary = skip_summary_named(counter_name)
    if summary is None:
        return {}
    for bad in summary["bad_shards"]:
        if bad["shard"] not in reported:
            reported.add(bad["shard"])
            run.event("bad_shard", step=step, **bad)
    return {"skipped_samples": summary["total"], "bad_shards": summary["num_bad_shards"]}


def _stop_requested(stop_file: str | None, rank: int, device) -> bool:
    """Rank 0 looks for the stop file; every rank learns the answer (all must leave the loop together)."""
    if not stop_file:
        return False
    from data import storage

    (found,) = _all_reduce([float(rank == 0 and storage.exists(stop_file))], device, dist.ReduceOp.MAX)
    return found > 0


def _await_teardown(deadline_ms: int | None, grace_s: float) -> None:
    """After the checkpoint a preemption notice asked for, wait for Ray Train to stop this worker group (at
    the deadline, plus its grace) and restart on the nodes left: steps taken meanwhile would be lost. Returning
    would end the run as finished, and raising would count against --max-failures. If the group outlives the
    deadline by a minute (a drain that was cancelled), training goes on."""
    now = time.time()
    until = (deadline_ms / 1000 if deadline_ms else now + 120) + grace_s + 60
    while time.time() < until:
        time.sleep(0.5)


class _Window:
    """Training statistics since the last log line, kept on the device until `metrics` reads them."""

    def __init__(self, device):
        K = len(MASK_KINDS)
        self.steps, self.seconds = 0, 0.0
        self.sums = torch.zeros(1 + 2 * K, dtype=torch.float64, device=device)  # loss, kind bits, kind counts

    def add(self, stats: StepStats, seconds: float) -> None:
        self.sums += torch.cat([(stats.loss / stats.num_micro_batches).double().view(1), stats.kind_bits_K,
                                stats.kind_count_K])
        self.steps += 1
        self.seconds += seconds

    def metrics(self, engine, world_size: int, global_batch: int) -> dict:
        """Averaged over every rank: the loss, and `loss_<kind>` (mean bits per hidden subpixel of the examples
        that drew that mask kind; loss_orderless is the unbiased NLL estimate, loss_center the one-shot
        centre NLL)."""
        sums = self.sums.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        sums = sums.tolist()
        K = len(MASK_KINDS)
        out = {"loss": sums[0] / self.steps / world_size}
        for i, kind in enumerate(MASK_KINDS):
            if sums[1 + K + i] > 0:
                out[f"loss_{kind}"] = sums[1 + i] / sums[1 + K + i]
        out.update(lr=float(engine.get_lr()[0]), samples_per_s=self.steps * global_batch / max(self.seconds, 1e-9))
        return out


def _common_images(val: list[tuple], wanted: int, device) -> int:
    """`wanted`, cut to the fewest validation images any rank holds: every rank then scores the same
    number of images in the same batch shapes (only a split's last batch is short), so each runs the same
    forward passes, which ZeRO-3 needs."""
    if not wanted:
        return 0
    (available,) = _all_reduce([sum(len(x_BHWC) for x_BHWC, _, _ in val)], device, dist.ReduceOp.MIN)
    return min(wanted, int(available))


def _validate(model, val: list[tuple], cfg: Config, worker: Worker, step: int, run,
              last: bool) -> tuple[dict[str, float], LossProfile | None]:
    """onade.metrics.evaluate's held-out metrics averaged over every rank's images, a PNG grid from rank 0's
    first batch, and at the `last` step the exact NLL and the loss profile (None before), each over the first
    images of every rank in a count _common_images agreed on."""
    t, device = cfg.train, next(model.parameters()).device
    exact_images = _common_images(val, math.ceil(t.val_exact_images / worker.world_size), device) if last else 0
    local = evaluate(model, val, seed=t.seed, exact_images=exact_images, precision=worker.precision)
    n, ne = local.pop("num_images"), local.pop("exact_num_images")
    keys = sorted(local)
    weights = [ne if k == EXACT_CENTER else n for k in keys]
    sums = _all_reduce([local[k] * w for k, w in zip(keys, weights)] + [n, ne], device)
    total, total_exact = sums[-2], sums[-1]
    out = {f"val_{k}": s / max(total_exact if k == EXACT_CENTER else total, 1) for k, s in zip(keys, sums)}
    out["val_num_images"] = int(total)
    if total_exact:
        out["val_exact_num_images"] = int(total_exact)
    if val:
        x_BHWC, tokens_BT, lengths_B = (v[:GRID_IMAGES] for v in val[0])
        with autocast(worker.precision, device):
            masked, predicted = one_shot_fill(model, x_BHWC, tokens_BT, lengths_B)
        run.save_grid(step, [x_BHWC, masked, predicted])
    profile_images = _common_images(val, math.ceil(t.profile_images / worker.world_size), device) if last else 0
    profile = None
    if profile_images:
        profile = _profile(model, val, profile_images, t.seed, worker.precision)
        out.update(val_profile_bits_first=profile.bits[0], val_profile_bits_last=profile.bits[-1])
    return out, profile


@torch.no_grad()
def _profile(model, val: list[tuple], num_images: int, seed: int, precision: str) -> LossProfile:
    """The loss profile over the centre hole on the first `num_images` validation images of each rank (a
    count _common_images agreed on), averaged over ranks weighted by images. Each rank's profile is already
    non-increasing (loss_profile smooths it), and so is their average. Every rank runs it: ZeRO-3 gathers
    weights in each forward pass, so a rank-0-only pass would wait forever for the others."""
    device = next(model.parameters()).device
    batches, left = [], num_images
    for x_BHWC, tokens_BT, lengths_B in val:
        if left <= 0:
            break
        batches.append((x_BHWC[:left], tokens_BT[:left], lengths_B[:left]))
        left -= len(batches[-1][0])
    with autocast(precision, device):
        local = loss_profile(model, batches, num_points=PROFILE_POINTS,
                             generator=torch.Generator().manual_seed(seed + PROFILE_SEED_OFFSET))
    sums = _all_reduce([b * local.num_images for b in local.bits] + [local.num_images], device)
    total = sums[-1]
    return LossProfile(bits=[round(s / total, 5) for s in sums[:-1]], mask=local.mask, image_size=local.image_size,
                       num_images=int(total))


__all__ = ["train_loop_per_worker", "train_step", "training_inputs", "ShardCursor", "StepStats", "Worker",
           "optimizer_step_count"]
