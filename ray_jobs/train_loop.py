"""What every Ray Train worker runs: `train_loop_per_worker(config)`, a plain loop read top to bottom.

`train_step(engine, micro_batches, ...)` is one optimizer step and `evaluate(model, batches)` the held-out
metrics; both are plain functions a test can call. The body runs under bf16 autocast where
`train.precision` resolves to bf16 on the worker's device: DeepSpeed's engine opens it (its torch_autocast
section, ray_jobs.engine), and the start event records the dtype the first convolution really computed in
(`forward_dtype`). Weights, EMA, losses and metrics stay fp32.

Each worker computes on the device Ray granted it (ray_jobs.devices.train_device). The step never waits on
the device: masks and dropped captions come from ray_jobs.train_draws (drawn on the CPU from the worker's
seed, ahead of the step on a GPU), Ray Data moves each batch to the device in its prefetch thread, and the
loss and per-kind statistics stay on the device until a log line all-reduces them.

Training batches (never validation ones) lose their caption with probability `train.caption_dropout`
(onade.caption.caption_drops), drawn on a CPU generator of the worker's own, apart from the masks' one, so
the masks a seed draws do not depend on the dropout rate.

Validation costs little: every `val_every` steps the cheap metrics (orderless bits, one-shot centre bits
with true and shuffled captions) on the same fixed batches and masks; at the end, once, on
`val_exact_images` fixed images the exact chain-rule NLL, and on `profile_images` the loss profile over
the centre hole (onade.metrics.loss_profile, PROFILE_POINTS forward passes per image), which the last
checkpoint keeps for the export. With `train.ema_decay` > 0 validation scores the EMA weights, which
checkpoints keep beside the raw ones and the export ships by default.

Side effects (metrics files, TensorBoard, PNG grids, console) go through `ray_jobs.run_dir`, which is a
no-op off rank 0. Launch with `python -m ray_jobs.train`.

Resume and data position: checkpoints (ray_jobs.checkpoints) hold the DeepSpeed state of every rank
(weights, optimizer, LR schedule) and a TrainState (step, epoch, samples consumed in that epoch), and load
at any worker count. A resumed worker restarts its shard iterator at a fresh epoch and skips its share of
the consumed samples, so the workers see as many new samples as an uninterrupted run. Whether they are the
*same* samples depends on Ray Data: the streaming split hands blocks to workers as they become ready, so the
exact order is not reproducible across restarts.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from onade.config import MASK_KINDS, config_from_dict
from onade.ema import EMA
from onade.loss import nade_loss, per_example_bits
from onade.masks import center_mask
from onade.metrics import evaluate_batch, exact_center_bits, loss_profile
from onade.model import build_model, num_parameters
from onade.plans import LossProfile
from onade.precision import ComputeDtype, autocast, resolve_precision
from ray_jobs.train_draws import Draws, DrawStream

GRID_IMAGES = 8
PROFILE_POINTS = 64  # values of t the end-of-run loss profile measures (one forward pass per point per image)
# Offsets the caption-dropout generator's seed from the masks' one (both seeded from the worker's seed and
# the step a run starts at): two streams that never share a seed.
CAPTION_SEED_OFFSET = 1 << 40


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
        logits = engine(x_BHWC, d.mask_BHWC, tokens_BT, lengths_B)
        # The orderless loss is the mean of the per-example bits the per-kind statistics need: computed once.
        if loss_kind == "orderless":
            bits_B = per_example_bits(logits, x_BHWC, d.mask_BHWC)
            loss = bits_B.mean()
        else:
            bits_B = per_example_bits(logits.detach(), x_BHWC, d.mask_BHWC)
            loss = nade_loss(logits, x_BHWC, d.mask_BHWC, kind=loss_kind)
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().float()
        kind_bits_K.index_add_(0, d.kind_B, bits_B.detach().double())
        kind_count_K.index_add_(0, d.kind_B, torch.ones_like(bits_B, dtype=torch.float64))
    if ema is not None:
        ema.update(engine.module)
    return StepStats(loss_sum, len(micro_batches), kind_bits_K, kind_count_K)


@torch.no_grad()
def evaluate(model, batches: list[dict], num_masks: int = 2, seed: int = 0, exact_images: int = 0,
             precision: str = "fp32") -> dict[str, float]:
    """Bits-per-subpixel metrics (onade.metrics.evaluate_batch) averaged over images, the exact chain-rule
    NLL over the first `exact_images` of them. With a fixed seed the masks and orderings are the same at
    every call and on any device (drawn on the CPU), so successive validations are comparable."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    exact_generator = torch.Generator().manual_seed(seed + 1)
    sums: dict[str, float] = {}
    num_images = num_exact = 0
    was_training = model.training
    model.eval()
    with autocast(precision, device):
        for batch in batches:
            x_BHWC, tokens_BT, lengths_B = _to_device(batch, device)
            n = x_BHWC.shape[0]
            metrics = evaluate_batch(model, x_BHWC, tokens_BT, lengths_B, num_masks=num_masks,
                                     generator=generator, exact=False)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * n
            num_images += n
            e = min(n, exact_images - num_exact)
            if e > 0:
                exact = exact_center_bits(model, x_BHWC[:e], tokens_BT[:e], lengths_B[:e], exact_generator)
                sums["exact_bits_per_dim"] = sums.get("exact_bits_per_dim", 0.0) + exact * e
                num_exact += e
    model.train(was_training)
    out = {k: v / max(num_images, 1) for k, v in sums.items() if k != "exact_bits_per_dim"}
    if num_exact:
        out["exact_bits_per_dim"] = sums["exact_bits_per_dim"] / num_exact
    return {**out, "num_images": num_images, "exact_num_images": num_exact}


@torch.no_grad()
def one_shot_fill(model, x_BHWC, tokens_BT, lengths_B) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked, predicted) images for the centre hole: every hole subpixel set to its most likely value
    given the border and caption, in a single forward pass. Hidden subpixels show as grey."""
    was_training = model.training
    model.eval()
    try:
        mask_BHWC = center_mask(x_BHWC.shape[0], x_BHWC.shape[1], device=x_BHWC.device)
        where_BHW = ~mask_BHWC.all(-1)
        logits_PCK = model.logits_at(x_BHWC, mask_BHWC, tokens_BT, lengths_B, where_BHW)
        predicted = x_BHWC.clone()
        predicted[where_BHW] = logits_PCK.argmax(-1).to(x_BHWC.dtype)
        masked = torch.where(mask_BHWC, x_BHWC, torch.full_like(x_BHWC, 128))
        return masked, predicted
    finally:
        model.train(was_training)


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


def _val_batches(val_shard, batch_size: int, num_batches: int, device) -> list[dict]:
    """The first `num_batches` batches of this worker's validation split, kept in memory and reused at every
    validation so successive numbers are comparable. The split is read to its end once: a streaming split
    left half-read would hold its blocks and stall the other workers. The count is cut to the smallest on
    any rank, since ZeRO-3 needs every rank in each forward pass."""
    batches: list[dict] = []
    for batch in val_shard.iter_torch_batches(batch_size=batch_size, drop_last=False):
        if len(batches) < num_batches:
            batches.append(batch)
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

    from ray_jobs import checkpoints
    from ray_jobs.devices import train_device
    from ray_jobs.engine import build_engine, deepspeed_config, split_batch
    from ray_jobs.run_dir import open_run_dir

    # DeepSpeed's ZeRO calls torch's deprecated all_gather_into_tensor alias on every step.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated")
    spec: checkpoints.RunSpec = config["run"]
    cfg = config_from_dict(spec.config)
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    worker_seed = t.seed * world_size + rank
    torch.manual_seed(worker_seed)
    device = train_device()
    plan = split_batch(cfg.data.global_batch_size, world_size, t.micro_batch_size)
    precision = resolve_precision(t.precision, device)

    # model.channels_last makes the activations NHWC; the weights stay NCHW: DeepSpeed broadcasts parameters
    # at start-up through views that need the default layout (deepspeed/runtime/engine.py _broadcast_model).
    model = build_model(cfg)
    num_params = num_parameters(model)  # before ZeRO-3 partitions the tensors away
    with checkpoints.restoring(ray.train.get_checkpoint(), world_size) as restore:
        ds_config = {**deepspeed_config(spec.zero, plan, t.grad_clip, precision), **restore.deepspeed_section}
        engine = build_engine(model, cfg, ds_config, device)
        ema = EMA(engine.module, t.ema_decay) if t.ema_decay > 0 else None
        state = restore.into(engine, ema)
    start_step = state.step
    # A resumed run must not replay the masks (or dropped captions) of the steps it already took.
    generator = torch.Generator().manual_seed(worker_seed + 1_000_003 * start_step)
    caption_generator = torch.Generator().manual_seed(worker_seed + 1_000_003 * start_step + CAPTION_SEED_OFFSET)
    draws = DrawStream(cfg.masks, plan.micro_batch, cfg.model.image_size, generator, t.caption_dropout,
                       caption_generator, engine.device)

    run = open_run_dir(spec.storage_fs, spec.run_path, rank == 0)
    nodes = [None] * world_size
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    resumed = {} if restore.converted_from is None else {"resumed_from_world_size": restore.converted_from}
    if start_step and run.last_step is not None:  # logged before the restart, at log_every resolution
        resumed["steps_lost"] = max(0, run.last_step - start_step)
    # Logged after the first step, with the dtype that step's forward computed in (`forward_dtype`: what the
    # engine really ran, beside the `precision` asked for).
    start_event = dict(step=start_step, world_size=world_size, **resumed, num_nodes=len(set(nodes)), node_ids=nodes,
                       device=str(engine.device), micro_batch=plan.micro_batch, grad_accum=plan.grad_accum,
                       precision=precision, zero_stage=t.zero_stage, parameters=num_params, ema_decay=t.ema_decay,
                       torch_threads=torch.get_num_threads(), adam_step=optimizer_step_count(engine),
                       zero_optimization=spec.zero.get("zero_optimization"), **zero3_partitioned(engine.module))
    probe = ComputeDtype(engine.module)

    samples_per_batch = plan.micro_batch * world_size  # one micro-batch on every worker
    train = ShardCursor(ray.train.get_dataset_shard("train"), plan.micro_batch, state.epoch,
                        state.epoch_samples // samples_per_batch)
    val = None
    if spec.has_val:
        val = _val_batches(ray.train.get_dataset_shard("val"), plan.micro_batch, t.val_batches, engine.device)

    step, window, profile, preempted = start_step, _Window(engine.device), None, False
    reported_shards: set[str] = set()
    timing = {"train_s": 0.0, "val_s": 0.0, "checkpoint_s": 0.0}
    while step < t.steps:
        tic = time.perf_counter()
        micro_batches = [train.next() for _ in range(plan.grad_accum)]
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
            metrics.update(window.metrics(engine, world_size, plan.global_batch))
            window = _Window(engine.device)
            if rank == 0:
                metrics.update(_skipped(spec.skip_counter, run, step, reported_shards))
        if do_val:
            tic = time.perf_counter()
            validated = ema.model if ema else engine.module
            exact_images = _common_images(val, math.ceil(t.val_exact_images / world_size), engine.device) if last else 0
            metrics.update(_validate(validated, val, cfg, step, run, precision, exact_images))
            profile_images = (_common_images(val, math.ceil(t.profile_images / world_size), engine.device)
                              if last else 0)
            if profile_images:
                profile = _profile(validated, val, profile_images, t.seed, precision)
                metrics.update(val_profile_bits_first=profile.bits[0], val_profile_bits_last=profile.bits[-1])
            timing["val_s"] += time.perf_counter() - tic
        if last:
            metrics.update({k: round(v, 2) for k, v in timing.items()})
        run.log(step, {k: v for k, v in metrics.items() if k != "step"})
        if do_ckpt:
            tic = time.perf_counter()
            state = checkpoints.TrainState(step=step, epoch=train.epoch, epoch_samples=train.index * samples_per_batch,
                                           world_size=world_size, ema_updates=ema.num_updates if ema else 0)
            checkpoints.save(engine, spec, state, metrics, rank, ema, profile)
            timing["checkpoint_s"] += time.perf_counter() - tic
            run.event("checkpoint", step=step)
            if not last and _stop_requested(spec.stop_file, rank, engine.device):
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
    run.close()


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


def _common_images(val: list[dict], wanted: int, device) -> int:
    """`wanted`, cut to the fewest validation images any rank holds: every rank then scores the same
    number of images in the same batch shapes (only a split's last batch is short), so each runs the same
    forward passes, which ZeRO-3 needs."""
    if not wanted:
        return 0
    (available,) = _all_reduce([sum(len(b["image"]) for b in val)], device, dist.ReduceOp.MIN)
    return min(wanted, int(available))


def _validate(model, val: list[dict], cfg, step: int, run, precision: str, exact_images: int) -> dict[str, float]:
    """Held-out metrics averaged over every rank's images (the exact NLL over the first `exact_images` of
    each rank's, a count _common_images agreed on), and a PNG grid from rank 0's first batch."""
    device = next(model.parameters()).device
    local = evaluate(model, val, seed=cfg.train.seed, exact_images=exact_images, precision=precision)
    n, ne = local.pop("num_images"), local.pop("exact_num_images")
    keys = sorted(local)
    weights = [ne if k == "exact_bits_per_dim" else n for k in keys]
    sums = _all_reduce([local[k] * w for k, w in zip(keys, weights)] + [n, ne], device)
    total, total_exact = sums[-2], sums[-1]
    out = {f"val_{k}": s / max(total_exact if k == "exact_bits_per_dim" else total, 1) for k, s in zip(keys, sums)}
    out["val_num_images"] = int(total)
    if total_exact:
        out["val_exact_num_images"] = int(total_exact)
    if val:
        x_BHWC, tokens_BT, lengths_B = _to_device(val[0], device)
        x_BHWC, tokens_BT, lengths_B = x_BHWC[:GRID_IMAGES], tokens_BT[:GRID_IMAGES], lengths_B[:GRID_IMAGES]
        with autocast(precision, device):
            masked, predicted = one_shot_fill(model, x_BHWC, tokens_BT, lengths_B)
        run.save_grid(step, [x_BHWC, masked, predicted])
    return out


@torch.no_grad()
def _profile(model, val: list[dict], num_images: int, seed: int, precision: str) -> LossProfile:
    """The loss profile over the centre hole on the first `num_images` validation images of each rank (a
    count _common_images agreed on), averaged over ranks weighted by images. Each rank's profile is already
    non-increasing (loss_profile smooths it), and so is their average. Every rank runs it: ZeRO-3 gathers
    weights in each forward pass, so a rank-0-only pass would wait forever for the others."""
    device = next(model.parameters()).device
    batches, left = [], num_images
    for batch in val:
        if left <= 0:
            break
        x_BHWC, tokens_BT, lengths_B = _to_device(batch, device)
        batches.append((x_BHWC[:left], tokens_BT[:left], lengths_B[:left]))
        left -= len(batches[-1][0])
    with autocast(precision, device):
        local = loss_profile(model, batches, num_points=PROFILE_POINTS,
                             generator=torch.Generator().manual_seed(seed + 2))
    sums = _all_reduce([b * local.num_images for b in local.bits] + [local.num_images], device)
    total = sums[-1]
    return LossProfile(bits=[round(s / total, 5) for s in sums[:-1]], mask=local.mask, image_size=local.image_size,
                       num_images=int(total))


__all__ = ["train_loop_per_worker", "train_step", "training_inputs", "evaluate", "one_shot_fill", "ShardCursor",
           "StepStats", "PROFILE_POINTS", "optimizer_step_count"]
