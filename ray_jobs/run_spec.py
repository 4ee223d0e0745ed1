"""The settings every training worker is given besides its data: ray_jobs.train builds them on the driver,
ray_jobs.train_loop.train_loop_per_worker reads them (Ray Train passes them as `config["run"]`)."""

from __future__ import annotations

from dataclasses import dataclass


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
