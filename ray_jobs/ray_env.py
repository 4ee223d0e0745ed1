"""Connecting a job's driver to Ray: the cluster in RAY_ADDRESS (as under `ray job submit`), or a new local one;
and the versions line each job prints first."""

from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

# Ray Train's own console lines below this level are dropped (RunConfig's LoggingConfig, train_log_level).
TRAIN_LOG_LEVEL = "WARNING"
REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONED = ("torch", "ray", "deepspeed")
# Ray's default dashboard port; like Ray (start_api_server in ray/_private/services.py) we take the first free one
# from it.
DASHBOARD_PORT = 8265


def versions_line(root: Path | str = REPO_ROOT) -> str:
    """What a job runs on, for the top of its log: the onade commit, python, torch, ray and deepspeed.
    Versions come from the installed distributions' metadata, so deepspeed (seconds to import) is not imported."""
    parts = [f"onade {onade_commit(root)}", f"python {platform.python_version()}"]
    for name in VERSIONED:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return "versions: " + ", ".join(parts)


def onade_commit(root: Path | str = REPO_ROOT) -> str:
    """The commit of the checkout at `root` (`-dirty` with uncommitted changes to tracked files), or "commit
    unknown" where there is none: `ray job submit --working-dir .` uploads the files without .git."""
    top = _git(root, "rev-parse", "--show-toplevel")
    # A folder inside some other repository (a job's working dir unpacked under a user's checkout) is not ours.
    if top is None or Path(top).resolve() != Path(root).resolve():
        return "commit unknown"
    return _git(root, "describe", "--always", "--dirty", "--abbrev=12") or "commit unknown"


def _git(root: Path | str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def print_versions() -> None:
    print(versions_line(), flush=True)


def init_ray(*, state_api: bool = False) -> str | None:
    """Connect to RAY_ADDRESS, or start a local Ray. Returns "local" or "cluster" when this call connected
    (the caller then shuts Ray down), None when Ray was already initialised.

    state_api: give a local Ray the State API, which Ray Train needs. Its PlacementGroupCleaner actor asks
    the State API every second whether the run's controller is alive (Ray 2.60, PlacementGroupCleaner's
    _monitor_loop in ray/train/v2/_internal/execution/controller/placement_group_cleaner.py). Two things
    break it:
    - include_dashboard=False starts the dashboard process with only its UsageStatsHead module
      (start_api_server in ray/_private/services.py), so every query fails and the cleaner logs "Failed to
      query Ray Train Controller actor state" once a second;
    - the State API client finds its cluster from RAY_API_SERVER_ADDRESS or RAY_ADDRESS, else by looking for
      a GCS process on the host (get_address_for_submission_client in ray/dashboard/utils.py,
      canonicalize_bootstrap_address_or_die in ray/_private/services.py); with a second Ray on the host it
      raises "Found multiple active Ray instances", which kills the cleaner's thread with a traceback. So the
      workers get RAY_API_SERVER_ADDRESS = this Ray's dashboard.
    The dashboard costs ~1-2 s of start-up (up to ~5 s on a loaded 2-core machine) and ~11 processes, so
    jobs without Ray Train go without it.
    """
    import ray

    if ray.is_initialized():
        return None
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return "cluster"
    dashboard = state_api_options() if state_api else {"include_dashboard": False}
    # "local" never attaches to another cluster whose address file happens to be on this host.
    ray.init(address="local", num_cpus=os.cpu_count() or 1, **dashboard)
    return "local"


def state_api_options(host: str = "127.0.0.1") -> dict:
    """`ray.init` keyword arguments for a local Ray that serves its own State API to its own jobs (see
    init_ray). Without the pinned address, a training run in a Ray without it can be killed by another Ray
    on the host: the cleaner's State API client finds *that* Ray's dashboard, which does not know this run's
    controller, and so removes this run's placement group as the leftover of a dead run."""
    port = free_port(host, DASHBOARD_PORT)
    return {"include_dashboard": True, "dashboard_host": host, "dashboard_port": port,
            "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://{host}:{port}"}}}


def free_port(host: str = "127.0.0.1", first: int | None = None, tries: int = 50,
              avoid: range = range(0)) -> int:
    """A port `host` can bind: the first free one from `first` on (tested as Ray tests its dashboard port), or
    with no `first`, one the OS picks, outside `avoid` (e.g. Ray's worker port range, where Ray refuses a
    component's port). The port is free when tested; a caller binds it soon after."""
    ports = range(first, first + tries) if first is not None else (0,) * tries
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    where = f"in {first}-{first + tries - 1}" if first is not None else f"outside {avoid} after {tries} tries"
    raise RuntimeError(f"no free port on {host} {where}")


def train_log_level(level: str = TRAIN_LOG_LEVEL) -> None:
    """In a Ray Train worker: hold Ray Train's one logger outside `ray.train` to `level` as well.

    Ray 2.60's ray/train/v2/_internal/execution/context.py names its logger by file path
    (`logging.getLogger(__file__)`), so RunConfig's LoggingConfig, which filters only records named
    `ray.train*` (TrainLogLevelFilter in ray/train/v2/_internal/logging/logging.py), misses it; its INFO line
    "Reporting training result ..." (TrainContext._wait_then_report) then reaches the worker's root console handler once per rank per
    report. Raising that one logger to LoggingConfig's level (its warnings still print) is the narrowest
    fix short of patching Ray; drop it once Ray names the logger `__name__`.
    """
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(level)
