"""Resuming a run: what must match, what may differ, and how a checkpoint gets into a worker's engine.

Running ray_jobs.train again with the same --output and --name resumes from the latest complete checkpoint
(ray_jobs.train_checkpoints.list_checkpoints): weights, optimizer, LR schedule, EMA, step and data position.
- The model must match: `check_resume` compares the checkpoint's model settings with the run's before Ray
  starts, so a changed shape fails once, naming the keys, instead of in every restarted worker.
- Layout-only settings may differ (onade.config.LAYOUT_KEYS: channels_last, activation checkpointing): they
  change how the same weights compute, so a run started on CPUs resumes on GPUs and back.
- The worker count may differ. ZeRO partitions the optimizer state (and with ZeRO-3 the weights) by rank, so
  a checkpoint written by N workers does not load into M: every worker then converts its local copy to
  DeepSpeed's universal format (`to_universal`: one file per parameter and optimizer state) in a temporary
  folder and builds its engine with `"checkpoint": {"load_universal": true}`; the stored checkpoint is never
  changed. The global batch size is the config's at any count (only the per-worker micro-batch and
  accumulation change), and the data position is kept as samples consumed in the epoch, so it means the
  same to any number of workers.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from data import storage
from onade.config import LAYOUT_KEYS, Config
from onade.export_format import CONFIG_FILE, DS_TAG, EMA_FILE, STATE_FILE
from ray_jobs.train_checkpoints import TrainState, list_checkpoints, read_train_state


def check_resume(cfg: Config, run: str, workers: tuple[int, int]) -> int:
    """The step a run with this name would resume from (0 if new), checked before Ray starts: a different
    model is refused; another worker count (`workers`: the run's (min, max)) is announced."""
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        return 0
    step, url = checkpoints[-1]
    changed = model_changes(json.loads(storage.read_bytes(storage.join(url, CONFIG_FILE)))["model"], cfg)
    if changed:
        raise ValueError(f"run {run} already has a checkpoint at step {step} with a different model ({changed}): "
                         "use a new --name, or the same model settings to resume")
    saved_workers = read_train_state(url).world_size
    if tuple(workers) != (saved_workers, saved_workers):
        print(f"resuming {run} from step {step}, written by {saved_workers} worker(s): at another count, each "
              "worker converts it to DeepSpeed's universal format (the stored checkpoint stays as it is)", flush=True)
    return step


def model_changes(saved: dict, current: Config) -> list[str]:
    """The model settings that differ between a checkpoint's model section (as saved: a key this code no
    longer knows, or one the checkpoint predates, is not compared) and the run's, layout-only ones aside."""
    now = current.to_dict()["model"]
    return sorted(k for k in now if k in saved and k not in LAYOUT_KEYS and _norm(saved[k]) != _norm(now[k]))


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


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


__all__ = ["check_resume", "model_changes", "Restore", "restoring", "to_universal", "repair_loaded_optimizer"]
