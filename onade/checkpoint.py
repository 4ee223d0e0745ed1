"""Inference checkpoints: `config.json`, `model.safetensors` and `tokenizer.model` in one directory, and
optionally `profile.json`, the model's loss profile (onade.plans.LossProfile) that budgeted ancestral
sampling plans its passes with.

Loading never unpickles anything and needs neither DeepSpeed nor Ray. A local directory is read here; an
`s3://` one is fetched by the repository's one S3 module, `data.storage` (endpoint, credentials and retries
from the standard AWS configuration), which a job running from the repository root has on its path. The
`onade` library alone never imports an S3 client: download the folder first (`aws s3 cp --recursive`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from onade.config import Config, ConfigError, config_from_dict
from onade.model import ONADE, build_model
from onade.plans import LossProfile

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"
PROFILE_FILE = "profile.json"
FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
OPTIONAL_FILES = (PROFILE_FILE,)


@dataclass
class Loaded:
    model: ONADE
    tokenizer: "object"  # onade.tokenizer.Tokenizer
    config: Config
    profile: LossProfile | None = None  # None when the checkpoint ships none (exports before profiles)


def save_checkpoint(directory: str | Path, model: torch.nn.Module, config: Config, tokenizer,
                    profile: LossProfile | None = None) -> Path:
    """Write an inference checkpoint into a local directory (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / TOKENIZER_FILE).write_bytes(tokenizer.to_bytes())
    (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    if profile is not None:
        (directory / PROFILE_FILE).write_text(profile.to_json())
    return directory


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Load an exported checkpoint from a local directory or `s3://bucket/prefix`; the model is in eval mode."""
    path = str(path)
    if path.startswith("s3://"):
        storage = _s3_storage(path)
        # Checked first: a wrong prefix (a whole run folder, say) must fail before anything is downloaded.
        present = {storage.basename(u) for u in storage.list_files(path)}
        _check_files(path, [f for f in FILES if f not in present])
        with tempfile.TemporaryDirectory(prefix="onade_ckpt_") as tmp:
            storage.download_dir(path, tmp)
            return _load_dir(Path(tmp), path, device)
    return _load_dir(Path(path), path, device)


def _s3_storage(url: str):
    """`data.storage`, the one module that talks to S3; it ships with the repository, not with the library."""
    try:
        from data import storage
    except ImportError:
        raise ValueError(f"loading {url} needs the repository's data.storage (pyarrow): run from the "
                         f"repository root with onade[jobs] installed, or download the folder first (aws s3 cp "
                         f"--recursive {url} ckpt/) and load ckpt/") from None
    return storage


def _check_files(name: str, missing: list[str]) -> None:
    if missing:
        raise ValueError(f"{name!r} is not an onade checkpoint: missing {', '.join(missing)} "
                         f"(export one with ray_jobs.train, which writes STORAGE/RUN/export/)")


def _load_dir(directory: Path, name: str, device: str | torch.device) -> Loaded:
    """The checkpoint in a local `directory`; errors call it `name` (its URL when it was downloaded)."""
    from onade.tokenizer import Tokenizer

    _check_files(name, [f for f in FILES if not (directory / f).is_file()])
    try:
        config = config_from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, ConfigError) as e:
        raise ValueError(f"{name}/{CONFIG_FILE} is not a valid onade config: {e}") from e
    model = build_model(config)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    tokenizer = Tokenizer.from_bytes((directory / TOKENIZER_FILE).read_bytes())
    profile = None
    if (directory / PROFILE_FILE).is_file():
        try:
            profile = LossProfile.from_json((directory / PROFILE_FILE).read_bytes())
        except ValueError as e:
            raise ValueError(f"{name}/{PROFILE_FILE}: {e}") from None
    return Loaded(model.to(device).eval(), tokenizer, config, profile)
