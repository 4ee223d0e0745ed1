"""A run's checkpoints in its storage (local or S3): listing, saving, the export, and loading an export.

The layout and every file name are in onade.export_format; how a checkpoint is restored into a worker (at
any worker count) is ray_jobs.resume.

Ray Train uploads each rank's part and keeps `train.keep_checkpoints` of them. A folder counts as a
checkpoint here once every rank's optimizer file and the state file are in it (`list_checkpoints`), so
an upload cut short is never exported or resumed.

The export (`export_checkpoint`, `python -m ray_jobs.train --export-only`) is onade's inference format
(onade.save_checkpoint): loadable with `onade.load_checkpoint` without DeepSpeed or Ray and without
unpickling. It ships the EMA by default (`weights="raw"` for the trained weights, consolidated from the
ZeRO partitions by DeepSpeed's zero_to_fp32); the profile goes only with the weights it was measured on.
Every job (evaluate, inpaint) loads an export, local or on S3, with `load_export`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from safetensors.torch import load_file, save_file

from data import storage
from onade.config import Config
from onade.export_format import (CHECKPOINT_RE, CONFIG_FILE, DS_TAG, EMA_FILE, EXPORT_DIR, PROFILE_FILE, STATE_FILE,
                                 TOKENIZER_FILE, Loaded, checkpoint_name, deepspeed_optim_file, load_checkpoint,
                                 parse_config, require_files, save_checkpoint)
from onade.plans import LossProfile

EXPORT_WEIGHTS = ("ema", "raw")


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
        if all(deepspeed_optim_file(r) in have for r in range(world_size)):
            out.append((int(m.group(1)), storage.join(run, name)))
    return sorted(out)


def read_config(checkpoint_url: str) -> Config:
    """The config of a checkpoint (an export or a training checkpoint, local or s3://), without its weights."""
    url = storage.join(checkpoint_url, CONFIG_FILE)
    if not storage.exists(url):
        raise ValueError(f"{checkpoint_url!r} is not an onade checkpoint (no {CONFIG_FILE}): pass the export folder "
                         f"that ray_jobs.train writes (RUN/{EXPORT_DIR})")
    return parse_config(storage.read_bytes(url), checkpoint_url)


def read_train_state(checkpoint_url: str) -> TrainState:
    return TrainState.from_json(storage.read_bytes(storage.join(checkpoint_url, STATE_FILE)))


# ---- save (inside a training worker) ------------------------------------------------------------

def save(engine, state: TrainState, metrics: dict, rank: int, config: dict, tokenizer: bytes, ema=None,
         profile: LossProfile | None = None) -> None:
    """Every rank writes its DeepSpeed part; rank 0 adds the state, `config` (Config.to_dict), the tokenizer,
    EMA and profile. Ray Train uploads the folder and registers the checkpoint with `metrics`."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="onade_ckpt_") as d:
        engine.save_checkpoint(d, tag=DS_TAG)
        if rank == 0:
            Path(d, STATE_FILE).write_text(state.to_json())
            Path(d, CONFIG_FILE).write_text(json.dumps(config))
            Path(d, TOKENIZER_FILE).write_bytes(tokenizer)
            if ema is not None:  # every rank holds the same average (ZeRO <= 2 keeps whole weights)
                save_file(ema.state_dict(), str(Path(d, EMA_FILE)))
            if profile is not None:
                Path(d, PROFILE_FILE).write_text(profile.to_json())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=checkpoint_name(state.step))


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
        cfg = parse_config((src / CONFIG_FILE).read_bytes(), checkpoint_url)
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
        out = Path(tmp, EXPORT_DIR)
        step = TrainState.from_json((src / STATE_FILE).read_bytes()).step
        save_checkpoint(out, model, cfg, tokenizer, profile=profile, train_step=step)
        storage.upload_dir(out, out_url)  # local or s3://, each file written whole
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


def load_export(url: str, device="cpu") -> Loaded:
    """An export from a local folder or `s3://bucket/prefix` (endpoint, credentials and retries from the
    standard AWS configuration), loaded by onade.load_checkpoint; the model is in eval mode."""
    if not storage.is_s3(url):
        return load_checkpoint(url, device)
    # Checked first: a wrong prefix (a whole run folder, say) must fail before anything is downloaded.
    require_files(url, {storage.basename(u) for u in storage.list_files(url)})
    with tempfile.TemporaryDirectory(prefix="onade_ckpt_") as tmp:
        storage.download_dir(url, tmp)
        return load_checkpoint(tmp, device, source=url)


__all__ = ["TrainState", "save", "list_checkpoints", "read_config", "read_train_state", "export_checkpoint",
           "export_run", "load_export", "run_url", "EXPORT_WEIGHTS"]
