"""Inference checkpoints: `config.json`, `model.safetensors` and `tokenizer.model` in one directory, and
optionally `profile.json`, the model's loss profile (onade.plans.LossProfile) that budgeted ancestral
sampling plans its passes with.

Loading never unpickles anything and needs neither DeepSpeed nor Ray. An `s3://` path is fetched with
boto3 when it is installed (it is an optional dependency of the library, so it is imported on demand).
"""

from __future__ import annotations

import importlib
import json
import os
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
    from onade.tokenizer import Tokenizer

    path = str(path)
    if path.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="onade_ckpt_") as tmp:
            _download_s3(path, Path(tmp))
            return load_checkpoint(tmp, device)
    directory = Path(path)
    missing = [f for f in FILES if not (directory / f).is_file()]
    if missing:
        raise ValueError(f"{path!r} is not an onade checkpoint: missing {', '.join(missing)} "
                         f"(export one with ray_jobs.train, which writes STORAGE/RUN/export/)")
    try:
        config = config_from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, ConfigError) as e:
        raise ValueError(f"{path}/{CONFIG_FILE} is not a valid onade config: {e}") from e
    model = build_model(config)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    tokenizer = Tokenizer.from_bytes((directory / TOKENIZER_FILE).read_bytes())
    profile = None
    if (directory / PROFILE_FILE).is_file():
        try:
            profile = LossProfile.from_json((directory / PROFILE_FILE).read_bytes())
        except ValueError as e:
            raise ValueError(f"{path}/{PROFILE_FILE}: {e}") from None
    return Loaded(model.to(device).eval(), tokenizer, config, profile)


def _download_s3(url: str, dest: Path) -> None:
    try:
        boto3 = importlib.import_module("boto3")
    except ImportError as e:
        raise ValueError("loading a checkpoint from s3:// needs boto3: pip install 'onade[jobs]'") from e
    bucket, _, prefix = url[len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    for name in FILES + OPTIONAL_FILES:
        key = f"{prefix.rstrip('/')}/{name}" if prefix else name
        try:
            client.download_file(bucket, key, str(dest / name))
        except Exception as e:  # noqa: BLE001 - botocore raises many types; all mean "cannot fetch"
            if name in OPTIONAL_FILES and _not_found(e):
                continue
            raise ValueError(f"cannot fetch s3://{bucket}/{key}: {type(e).__name__}: {e}") from e


def _not_found(e: Exception) -> bool:
    code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
