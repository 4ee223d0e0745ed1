"""Connecting a job's driver to Ray: the cluster in RAY_ADDRESS (as under `ray job submit`), or a new local one."""

from __future__ import annotations

import os


def init_ray() -> str | None:
    """Connect to RAY_ADDRESS, or start a local Ray. Returns "local" or "cluster" when this call connected
    (the caller then shuts Ray down), None when Ray was already initialised."""
    import ray

    if ray.is_initialized():
        return None
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return "cluster"
    # "local" never attaches to another cluster whose address file happens to be on this host.
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False)
    return "local"
