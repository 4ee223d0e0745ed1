"""Turn a training checkpoint (DeepSpeed ZeRO shards of every rank) into an inference checkpoint.

The export is `config.json`, `tokenizer.model` and consolidated fp32 weights in `model.safetensors`
(onade.save_checkpoint), loadable with `onade.load_checkpoint(path)` without DeepSpeed or Ray and without
unpickling. Consolidation uses DeepSpeed's zero_to_fp32, which rebuilds full fp32 tensors from the
optimizer's master partitions, so it works for ZeRO-1/2/3. When the run kept an EMA of its weights
(train.ema_decay > 0) the export ships the EMA by default; `weights="raw"` (`--export-weights raw`)
ships the trained weights instead. The training checkpoint keeps both. The last checkpoint of a run with
validation data also holds the loss profile of the validated weights (the EMA's when there is one), which
the export ships as `profile.json` (onade.plans) with those weights; a raw export of an EMA run, or an
older checkpoint, ships none (`python -m ray_jobs.evaluate --profile` measures one).

Checkpoints live in STORAGE/RUN/checkpoint_<step>/ (written by ray_jobs.train_loop); the export goes to
STORAGE/RUN/export/ by default. `python -m ray_jobs.train ... --export-only [--checkpoint-step N]` runs this
for any kept checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from data import storage
from safetensors.torch import load_file

from onade.checkpoint import PROFILE_FILE, save_checkpoint
from onade.config import config_from_dict
from onade.model import build_model
from onade.plans import LossProfile
from onade.tokenizer import Tokenizer
from ray_jobs.train_loop import CONFIG_FILE, DS_TAG, EMA_FILE, STATE_FILE, TOKENIZER_FILE

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d{8})$")
EXPORT_DIR = "export"
EXPORT_WEIGHTS = ("ema", "raw")
# Written by Ray Train (v2) into the run folder whenever its set of kept checkpoints changes.
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def run_url(storage_url: str, name: str) -> str:
    return storage.join(storage_url, name)


def list_checkpoints(run: str) -> list[tuple[int, str]]:
    """(step, url) of every checkpoint Ray Train registered for a run, oldest first.

    Ray registers a checkpoint only after every rank uploaded its part, and lists the kept ones in
    checkpoint_manager_snapshot.json in the run folder. A checkpoint folder missing from it is an upload cut
    short or one not yet registered, and is not what a restart would resume from, so it is not listed."""
    fs, path = storage.pyarrow_fs(run)
    snapshot = f"{path}/{SNAPSHOT_FILE}"
    if fs.get_file_info(snapshot).type != pafs.FileType.File:
        return []
    with fs.open_input_stream(snapshot) as f:
        names = [r["checkpoint_dir_name"] for r in json.loads(f.read()).get("checkpoint_results", [])]
    return sorted((int(m.group(1)), storage.join(run, n)) for n in names if (m := CHECKPOINT_RE.match(n)))


def read_checkpoint_config(checkpoint_url: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(checkpoint_url, CONFIG_FILE)))


def export_checkpoint(checkpoint_url: str, out_url: str, weights: str = "ema") -> str:
    """Consolidate one training checkpoint into an inference checkpoint at `out_url` (local or s3://): its EMA
    weights when it has them and `weights` is "ema", else the trained ones."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if weights not in EXPORT_WEIGHTS:
        raise ValueError(f"export weights must be one of {EXPORT_WEIGHTS}, got {weights!r}")
    with tempfile.TemporaryDirectory(prefix="onade_export_") as tmp:
        src = Path(tmp, "checkpoint")
        if storage.is_s3(checkpoint_url):
            # pyarrow, like Ray Train which wrote it: it understands the directory markers it leaves in S3.
            fs, path = storage.pyarrow_fs(checkpoint_url)
            pafs.copy_files(path, str(src), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        else:
            src = Path(checkpoint_url)
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


__all__ = ["list_checkpoints", "export_checkpoint", "export_run", "run_url", "read_checkpoint_config",
           "EXPORT_DIR", "EXPORT_WEIGHTS"]
