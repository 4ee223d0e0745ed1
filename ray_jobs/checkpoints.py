"""Training checkpoints in one place: layout, listing, save, restore at any worker count, and export.

STORAGE/RUN/checkpoint_<step:08d>/ holds
  deepspeed/           DeepSpeed's files of every rank: weights, Adam moments, LR schedule, step
  train_state.json     TrainState: step, data position, the world size that wrote it, EMA updates
  config.json, tokenizer.model    what an export needs, so any kept checkpoint exports on its own
  ema.safetensors      the EMA of the weights (train.ema_decay > 0)
  profile.json         the loss profile of the validated weights (the last checkpoint of a run with
                       validation data; onade.plans)

Ray Train uploads each rank's part and keeps `train.keep_checkpoints` of them. A folder counts as a
checkpoint here once every rank's optimizer file and the state file are in it (`list_checkpoints`), so
an upload cut short is never exported or resumed.

Resume at any worker count: ZeRO partitions the optimizer state (and with ZeRO-3 the weights) by rank, so
a checkpoint written by N workers does not load into M. When the counts differ, every worker converts its
local copy to DeepSpeed's universal format (deepspeed.checkpoint.ds_to_universal: one file per parameter
and optimizer state) in a temporary folder, and builds its engine with `"checkpoint": {"load_universal":
true}`; the stored checkpoint is never changed. The global batch size is the config's at any count (only
the per-worker micro-batch and accumulation change), and the data position is kept as samples consumed in
the epoch, so it means the same to any number of workers.

The export (`export_checkpoint`, `python -m ray_jobs.train --export-only`) is `config.json`,
`tokenizer.model`, fp32 weights in `model.safetensors` and the profile when there is one
(onade.save_checkpoint): loadable with `onade.load_checkpoint` without DeepSpeed or Ray and without
unpickling. It ships the EMA by default (`weights="raw"` for the trained weights, consolidated from the
ZeRO partitions by DeepSpeed's zero_to_fp32); the profile goes only with the weights it was measured on.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from safetensors.torch import load_file, save_file

from data import storage
from onade.checkpoint import PROFILE_FILE, save_checkpoint
from onade.config import config_from_dict
from onade.plans import LossProfile

DS_TAG = "deepspeed"
STATE_FILE = "train_state.json"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
EMA_FILE = "ema.safetensors"
CHECKPOINT_RE = re.compile(r"^checkpoint_(\d{8})$")
EXPORT_DIR = "export"
EXPORT_WEIGHTS = ("ema", "raw")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _optim_file(rank: int) -> str:
    return f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


@dataclass(frozen=True)
class RunSpec:
    """What every training worker is given besides its data (the train loop's config)."""
    skip_counter: str  # the name of the data pipeline's skip counter (ray_jobs.data.make_skip_counter)
    config: dict  # onade Config.to_dict()
    zero: dict  # the ZeRO section (ray_jobs.engine.load_zero_json)
    tokenizer: bytes
    has_val: bool
    storage_fs: object  # pyarrow FileSystem of the run
    run_path: str  # the run folder inside it
    preemption_grace_s: float  # FailureConfig's: Ray Train waits this long past a drain's deadline
    stop_file: str | None = None  # once it exists, the run ends at its next checkpoint


@dataclass
class TrainState:
    """Where a run is: optimizer steps taken, the data position, and who wrote it."""
    step: int = 0
    epoch: int = 0
    epoch_samples: int = 0  # samples every worker together consumed in `epoch`
    world_size: int = 1
    ema_updates: int = 0

    @classmethod
    def from_json(cls, text: str | bytes) -> "TrainState":
        raw = json.loads(text)  # a state from before `epoch_samples` resumes at the start of its epoch
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# ---- listing ----------------------------------------------------------------------------------

def run_url(storage_url: str, name: str) -> str:
    return storage.join(storage_url, name)


def list_checkpoints(run: str) -> list[tuple[int, str]]:
    """(step, url) of every complete checkpoint of a run, oldest first: its state file names the world size
    that wrote it, and every one of those ranks' optimizer files is there."""
    fs, path = storage.pyarrow_fs(run)
    out = []
    for name in storage.fs_list(fs, path, dirs=True):
        m = CHECKPOINT_RE.match(name)
        if not m or not storage.fs_is_file(fs, f"{path}/{name}/{STATE_FILE}"):
            continue
        world_size = read_train_state(storage.join(run, name)).world_size
        have = set(storage.fs_list(fs, f"{path}/{name}/{DS_TAG}"))
        if all(_optim_file(r) in have for r in range(world_size)):
            out.append((int(m.group(1)), storage.join(run, name)))
    return sorted(out)


def read_checkpoint_config(checkpoint_url: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(checkpoint_url, CONFIG_FILE)))


def read_train_state(checkpoint_url: str) -> TrainState:
    return TrainState.from_json(storage.read_bytes(storage.join(checkpoint_url, STATE_FILE)))


# ---- save and restore (inside a training worker) ------------------------------------------------

def save(engine, spec: RunSpec, state: TrainState, metrics: dict, rank: int, ema=None,
         profile: LossProfile | None = None) -> None:
    """Every rank writes its DeepSpeed part; rank 0 adds the state, config, tokenizer, EMA and profile.
    Ray Train uploads the folder and registers the checkpoint with `metrics`."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="onade_ckpt_") as d:
        engine.save_checkpoint(d, tag=DS_TAG)
        if rank == 0:
            Path(d, STATE_FILE).write_text(state.to_json())
            Path(d, CONFIG_FILE).write_text(json.dumps(spec.config))
            Path(d, TOKENIZER_FILE).write_bytes(spec.tokenizer)
            if ema is not None:  # every rank holds the same average (ZeRO <= 2 keeps whole weights)
                save_file(ema.state_dict(), str(Path(d, EMA_FILE)))
            if profile is not None:
                Path(d, PROFILE_FILE).write_text(profile.to_json())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=checkpoint_name(state.step))


@dataclass
class Restore:
    """A checkpoint opened for this worker. `converted_from` is the world size that wrote it when that differs
    from this run's: it was converted, and the engine must be built to load DeepSpeed's universal format."""
    directory: Path | None
    state: TrainState
    converted_from: int | None = None

    @property
    def deepspeed_section(self) -> dict:
        """The DeepSpeed config entry the worker's engine needs to load this checkpoint."""
        return {} if self.converted_from is None else {"checkpoint": {"load_universal": True}}

    def into(self, engine, ema=None) -> TrainState:
        """Load weights, optimizer, LR schedule (and the EMA) into a built engine; the state to continue from."""
        if self.directory is None:
            return self.state
        # Our own checkpoint in the run's storage (DeepSpeed's format is torch.save): trusted data, unlike the
        # inference export, which never unpickles.
        load_path, _ = engine.load_checkpoint(str(self.directory), tag=DS_TAG)
        assert load_path is not None, f"DeepSpeed found no checkpoint in {self.directory}"
        from ray_jobs.engine import torch_optimizer

        repair_loaded_optimizer(torch_optimizer(engine))
        if ema is not None:
            ema_file = self.directory / EMA_FILE
            if ema_file.is_file():
                ema.load_state_dict(load_file(str(ema_file)), self.state.ema_updates)
            else:  # a checkpoint from a run without EMA: start the average from the restored weights
                ema.load_state_dict({k: v.float() for k, v in engine.module.state_dict().items()}, 0)
        return self.state


def repair_loaded_optimizer(optimizer) -> None:
    """Undo two things DeepSpeed 0.19's checkpoint loaders do to the torch optimizer inside its ZeRO wrapper.
    - The ZeRO-3 universal loader gives every parameter sub-group the same `step` tensor
      (deepspeed/runtime/zero/stage3.py, load_hp_checkpoint_state_from_checkpoint_dir_stage3), which each
      group's Adam then increments in place: Adam counted two steps per step after a resume on another worker
      count, skewing its bias correction. Each state gets its own copy.
    - Every loader copies the saved param-group options over the live ones, `fused` among them: the kernel is
      this engine's choice (ray_jobs.engine.make_optimizer), not the one of the run that saved the checkpoint."""
    import torch

    seen = set()
    for state in optimizer.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.clone()
            seen.add(id(step))
    for group in optimizer.param_groups:
        if "fused" in group:
            group["fused"] = optimizer.defaults.get("fused")


@contextlib.contextmanager
def restoring(checkpoint, world_size: int):
    """Open Ray Train's checkpoint (None for a new run) for a worker of a `world_size` run: yields a Restore,
    converted to the universal format when another world size wrote it."""
    if checkpoint is None:
        yield Restore(None, TrainState(world_size=world_size))
        return
    # Not checkpoint.as_directory(): its pyarrow copy_files fails, unretried, on a 500/503 to a small file
    # (DeepSpeed's `latest`, the state file); storage.download_from_fs retries it.
    with storage.local_dir(checkpoint.filesystem, checkpoint.path) as d:
        state = TrainState.from_json(Path(d, STATE_FILE).read_text())
        if state.world_size == world_size:
            yield Restore(d, state)
            return
        with tempfile.TemporaryDirectory(prefix="onade_universal_") as tmp:
            to_universal(d, Path(tmp))
            for name in (EMA_FILE, STATE_FILE):
                if (d / name).is_file():
                    shutil.copy2(d / name, Path(tmp, name))
            yield Restore(Path(tmp), state, converted_from=state.world_size)


def to_universal(checkpoint_dir: Path, out_dir: Path) -> None:
    """DeepSpeed's universal checkpoint of `checkpoint_dir`'s DS_TAG in `out_dir`/DS_TAG, loadable by any world
    size (ds_to_universal, run in-process and serially; its progress output is kept for the error)."""
    import argparse

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    args = argparse.Namespace(input_folder=str(checkpoint_dir / DS_TAG), output_folder=str(out_dir / DS_TAG),
                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            ds_to_universal(args)
    except Exception as e:
        raise RuntimeError(f"converting {checkpoint_dir} to a universal checkpoint failed: {e}\n"
                           f"{log.getvalue()}") from e
    (out_dir / "latest_universal").write_text(DS_TAG)


# ---- export -------------------------------------------------------------------------------------

def export_checkpoint(checkpoint_url: str, out_url: str, weights: str = "ema") -> str:
    """Consolidate one training checkpoint into an inference checkpoint at `out_url` (local or s3://): its EMA
    weights when it has them and `weights` is "ema", else the trained ones."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from onade.model import build_model
    from onade.tokenizer import Tokenizer

    if weights not in EXPORT_WEIGHTS:
        raise ValueError(f"export weights must be one of {EXPORT_WEIGHTS}, got {weights!r}")
    with tempfile.TemporaryDirectory(prefix="onade_export_") as tmp:
        src = Path(checkpoint_url)
        if storage.is_s3(checkpoint_url):
            src = Path(tmp, "checkpoint")
            storage.download_dir(checkpoint_url, src)
        missing = [f for f in (CONFIG_FILE, TOKENIZER_FILE, STATE_FILE, DS_TAG) if not (src / f).exists()]
        if missing:
            raise ValueError(f"{checkpoint_url} is not a complete onade training checkpoint: missing {missing}")
        cfg = config_from_dict(json.loads((src / CONFIG_FILE).read_text()))
        tokenizer = Tokenizer.from_bytes((src / TOKENIZER_FILE).read_bytes())
        model = build_model(cfg)
        has_ema = (src / EMA_FILE).is_file()
        if weights == "ema" and has_ema:
            state = load_file(str(src / EMA_FILE))
        else:
            # Our own training checkpoint (DeepSpeed writes torch.save files), not user-supplied data.
            state = get_fp32_state_dict_from_zero_checkpoint(str(src), tag=DS_TAG)
        model.load_state_dict(state)
        # The profile was measured on the validated weights, the EMA when the run kept one: it plans the
        # passes of those weights only.
        profile = None
        if (src / PROFILE_FILE).is_file() and (weights == "ema" or not has_ema):
            profile = LossProfile.from_json((src / PROFILE_FILE).read_bytes())
        cfg.model.activation_checkpointing = False  # a training-only memory trade, useless at inference
        out = Path(tmp, "export")
        save_checkpoint(out, model, cfg, tokenizer, profile=profile)
        if storage.is_s3(out_url):
            storage.upload_dir(out, out_url)
        else:
            Path(out_url).mkdir(parents=True, exist_ok=True)
            for f in out.iterdir():
                shutil.copy2(f, Path(out_url, f.name))
    return out_url


def export_run(storage_url: str, name: str, step: int | None = None, out_url: str | None = None,
               weights: str = "ema") -> str:
    """Export the latest (or the given step's) checkpoint of a run to STORAGE/RUN/export/."""
    run = run_url(storage_url, name)
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        raise ValueError(f"run {run} has no checkpoint to export: train it first (python -m ray_jobs.train)")
    chosen = dict(checkpoints).get(step) if step is not None else checkpoints[-1][1]
    if chosen is None:
        raise ValueError(f"run {run} has no checkpoint at step {step}; kept steps: {[s for s, _ in checkpoints]}")
    return export_checkpoint(chosen, out_url or storage.join(run, EXPORT_DIR), weights)


__all__ = ["RunSpec", "TrainState", "Restore", "restoring", "to_universal", "save",
           "list_checkpoints", "read_checkpoint_config", "read_train_state", "export_checkpoint", "export_run",
           "run_url", "checkpoint_name", "DS_TAG", "STATE_FILE", "CONFIG_FILE", "TOKENIZER_FILE", "EMA_FILE",
           "EXPORT_DIR", "EXPORT_WEIGHTS"]
