"""Every side effect of a training run besides checkpoints, in one place: rank 0 gets a `RunDir`, the other
ranks a `NullRunDir` whose methods do nothing (DiT's no-op logger).

STORAGE/RUN/ receives `metrics.jsonl` (one JSON object per line: metrics with "step", or events with
"event"), TensorBoard event files under `tb/`, and PNG grids under `samples/`. Files are written to a local
folder and copied to the storage filesystem (local or S3: the pyarrow filesystem Ray Train stores checkpoints
with, through data.storage) at every `sync()`, so an S3 run directory needs no credentials beyond Ray's own.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data import storage

METRICS_FILE = "metrics.jsonl"


class NullRunDir:
    last_step: int | None = None  # the furthest step recorded since the last (re)start, before this one

    def log(self, step: int, metrics: dict, echo: bool = True) -> None: ...
    def event(self, name: str, **fields) -> None: ...
    def save_grid(self, step: int, rows: list[torch.Tensor]) -> None: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...


class RunDir(NullRunDir):
    def __init__(self, filesystem, path: str):
        """`filesystem` is a pyarrow FileSystem and `path` the run directory inside it."""
        self.fs, self.path = filesystem, path.rstrip("/")
        self._local_fs = storage.is_local_fs(filesystem)
        self.local = Path(self.path) if self._local_fs else Path(tempfile.mkdtemp(prefix="onade_run_"))
        self.local.mkdir(parents=True, exist_ok=True)
        if not self._local_fs:
            self._fetch(METRICS_FILE)  # a resumed run appends to the same file
        if (self.local / METRICS_FILE).is_file():
            self.last_step = _last_step(self.local / METRICS_FILE)
        self._metrics = open(self.local / METRICS_FILE, "a")
        self._dirty: set[str] = {METRICS_FILE}
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(log_dir=str(self.local / "tb"))

    def log(self, step: int, metrics: dict, echo: bool = True) -> None:
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._tb.add_scalar(k, v, step)
        if echo:
            shown = " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))
            _say(f"step {step} {shown}")

    def event(self, name: str, **fields) -> None:
        self._metrics.write(json.dumps({"event": name, "time": round(time.time(), 3), **fields}) + "\n")
        self._metrics.flush()
        _say(f"[{name}] " + " ".join(f"{k}={v}" for k, v in fields.items()))

    def save_grid(self, step: int, rows: list[torch.Tensor]) -> None:
        """One row per tensor [B,H,W,3] uint8 (e.g. original, masked, prediction), B images side by side."""
        from PIL import Image

        pad = 2
        rows_np = [r.detach().to("cpu", torch.uint8).numpy() for r in rows]
        B, H, W, _ = rows_np[0].shape
        grid = np.full((len(rows_np) * (H + pad) + pad, B * (W + pad) + pad, 3), 255, np.uint8)
        for i, r in enumerate(rows_np):
            for b in range(B):
                y, x = pad + i * (H + pad), pad + b * (W + pad)
                grid[y:y + H, x:x + W] = r[b]
        rel = f"samples/step_{step:08d}.png"
        (self.local / "samples").mkdir(exist_ok=True)
        scale = max(1, 64 // H)  # tiny training images are unreadable at 1:1
        image = Image.fromarray(grid)
        image.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(self.local / rel)
        self._dirty.add(rel)

    def sync(self) -> None:
        """Copy new and changed files to the storage filesystem (a no-op for a local run directory)."""
        self._tb.flush()
        if self._local_fs:
            return
        for p in (self.local / "tb").rglob("*"):
            if p.is_file():
                self._dirty.add(str(p.relative_to(self.local)))
        for rel in sorted(self._dirty):
            with open(self.local / rel, "rb") as src:
                storage.fs_write_from(self.fs, f"{self.path}/{rel}", src)
        self._dirty = {METRICS_FILE}

    def close(self) -> None:
        self.sync()
        self._tb.close()
        self._metrics.close()
        if not self._local_fs:
            shutil.rmtree(self.local, ignore_errors=True)

    def _fetch(self, rel: str) -> None:
        with open(self.local / rel, "wb") as out:
            storage.fs_read_into(self.fs, f"{self.path}/{rel}", out)


def _last_step(path: Path) -> int | None:
    """The furthest step the latest (re)start of the run reached (steps an earlier restart lost are not its)."""
    last = None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a killed worker, or an event without a step
        last = step if row.get("event") in ("start", "resume") or last is None else max(last, step)
    return last


def _say(line: str) -> None:
    # Not print(): Ray Train patches it to go through a logger *and* a redirected stdout, so each line
    # would reach the driver twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def open_run_dir(filesystem, path: str, is_main: bool) -> NullRunDir:
    return RunDir(filesystem, path) if is_main else NullRunDir()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All rows of a local metrics.jsonl (for tests and the benchmark)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["RunDir", "NullRunDir", "open_run_dir", "read_metrics", "METRICS_FILE"]
