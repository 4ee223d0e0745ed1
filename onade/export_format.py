"""Every file name of an onade checkpoint, the exported model's format, and reading a checkpoint's config.

An export (what `load_checkpoint` reads; ray_jobs.train writes one to STORAGE/RUN/EXPORT_DIR) is a directory:
  config.json          the onade Config (Config.to_dict)
  model.safetensors    fp32 weights
  tokenizer.model      the caption tokenizer: the very file data.make_shards writes beside the shards
  profile.json         optional: the model's loss profile (onade.plans.LossProfile) that budgeted ancestral
                       sampling plans its passes with

A training checkpoint (ray_jobs.train_checkpoints writes it, ray_jobs.resume restores it) is
STORAGE/RUN/checkpoint_<step:08d>/:
  deepspeed/           DeepSpeed's files of every rank (DS_TAG): weights, Adam moments, LR schedule, step
  train_state.json     ray_jobs.train_checkpoints.TrainState: step, data position, the world size that wrote it
  config.json, tokenizer.model    what an export needs, so any kept checkpoint exports on its own
  ema.safetensors      the EMA of the weights (train.ema_decay > 0)
  profile.json         the loss profile of the validated weights (the last checkpoint of a run with validation)

Loading never unpickles anything and needs neither DeepSpeed nor Ray. The library reads a local directory
only: a job loads an `s3://` export with ray_jobs.train_checkpoints.load_export, and a user without the
repository downloads the folder first (`aws s3 cp --recursive`).

torch is imported inside the functions that need it: data.shard_spec takes TOKENIZER_FILE from here, and
Ray Data's read tasks that import it must not pay for torch (~2 s per fresh worker).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onade.config import Config, ConfigError, config_from_dict
from onade.plans import LossProfile

if TYPE_CHECKING:
    import torch

    from onade.model import ONADE
    from onade.tokenizer import Tokenizer

# The export (and the files a training checkpoint shares with it).
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"
PROFILE_FILE = "profile.json"
STEP_KEY = "onade.train_step"  # in the weights file's safetensors metadata
FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)  # what every export holds

# A run's folder and its training checkpoints.
EXPORT_DIR = "export"
DS_TAG = "deepspeed"
STATE_FILE = "train_state.json"
EMA_FILE = "ema.safetensors"
CHECKPOINT_RE = re.compile(r"^checkpoint_(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def deepspeed_optim_file(rank: int) -> str:
    """DeepSpeed's optimizer file of `rank` inside DS_TAG: a checkpoint is complete once every rank's is there."""
    return f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


@dataclass
class Loaded:
    model: ONADE
    tokenizer: Tokenizer
    config: Config
    profile: LossProfile | None = None  # None when the checkpoint ships none (exports before profiles)
    train_step: int | None = None  # the optimizer steps its weights had taken (None: not recorded)


def save_checkpoint(directory: str | Path, model: torch.nn.Module, config: Config, tokenizer,
                    profile: LossProfile | None = None, train_step: int | None = None) -> Path:
    """Write an export into a local directory (created if needed). `train_step`, the optimizer steps the
    weights had taken, goes in the weights file's metadata."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = None if train_step is None else {STEP_KEY: str(int(train_step))}
    save_file(state, str(directory / WEIGHTS_FILE), metadata=meta)
    (directory / TOKENIZER_FILE).write_bytes(tokenizer.to_bytes())
    (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    if profile is not None:
        (directory / PROFILE_FILE).write_text(profile.to_json())
    return directory


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, source: str | None = None) -> Loaded:
    """Load an export from a local directory; the model is in eval mode. Errors name the checkpoint `source`
    (default `path`: a job that downloaded it passes its URL)."""
    from safetensors.torch import load_file

    from onade.model import build_model
    from onade.tokenizer import Tokenizer

    name = source or str(path)
    if str(path).startswith("s3://"):
        raise ValueError(f"{path} is on S3, which the onade library does not read: a job running from the "
                         f"repository root loads it with ray_jobs.train_checkpoints.load_export, or download the "
                         f"folder first (aws s3 cp --recursive {path} ckpt/) and load ckpt/")
    directory = Path(path)
    require_files(name, [f.name for f in directory.iterdir() if f.is_file()] if directory.is_dir() else [])
    config = parse_config((directory / CONFIG_FILE).read_bytes(), name)
    model = build_model(config)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    train_step = _train_step(directory / WEIGHTS_FILE)
    tokenizer = Tokenizer.from_bytes((directory / TOKENIZER_FILE).read_bytes())
    profile = None
    if (directory / PROFILE_FILE).is_file():
        try:
            profile = LossProfile.from_json((directory / PROFILE_FILE).read_bytes())
        except ValueError as e:
            raise ValueError(f"{name}/{PROFILE_FILE}: {e}") from None
    return Loaded(model.to(device).eval(), tokenizer, config, profile, train_step)


def _train_step(weights: Path) -> int | None:
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        value = (f.metadata() or {}).get(STEP_KEY, "")
    return int(value) if value.isdigit() else None


def require_files(name: str, present: Collection[str]) -> None:
    """A ValueError unless `present`, the file names in checkpoint `name`, holds every file of an export."""
    missing = [f for f in FILES if f not in present]
    if missing:
        raise ValueError(f"{name!r} is not an onade checkpoint: missing {', '.join(missing)} "
                         f"(export one with ray_jobs.train, which writes STORAGE/RUN/{EXPORT_DIR}/)")


def parse_config(text: str | bytes, name: str) -> Config:
    """The Config in the CONFIG_FILE of checkpoint `name` (an export or a training checkpoint)."""
    try:
        return config_from_dict(json.loads(text))
    except (json.JSONDecodeError, ConfigError) as e:
        raise ValueError(f"{name}/{CONFIG_FILE} is not a valid onade config: {e}") from e
