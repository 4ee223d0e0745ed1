"""Shared pytest setup. Fixtures live in tests/fixtures/<topic>.py, one file per service.

Two tiers: a test that starts Ray, DeepSpeed (a torch.distributed group), a Ray job or a browser,
or trains a model for minutes, carries `@pytest.mark.slow`. `make test-fast` runs the rest in under two
minutes, `make test` runs everything. An unmarked test caught starting Ray, a process group or a browser
fails, so the fast tier stays fast.
"""

import os
import sys

import pytest

# DeepSpeed must pick its CPU accelerator before it is first imported anywhere in the test process.
os.environ.setdefault("DS_ACCELERATOR", "cpu")

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.flaky_s3", "tests.fixtures.ray_local",
                  "tests.fixtures.ray_cluster", "tests.fixtures.train_data", "tests.fixtures.serve"]


def _heavy_services() -> set[str]:
    """What is running in this process that only a slow test may start."""
    running = set()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        running.add("Ray")
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        running.add("a torch.distributed group (DeepSpeed)")
    if "playwright.sync_api" in sys.modules:
        running.add("a browser (playwright)")
    return running


@pytest.fixture(autouse=True)
def _fast_tier_stays_fast(request):
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = _heavy_services()  # a module fixture of an earlier slow test may have started them
    yield
    started = _heavy_services() - before
    if started:
        pytest.fail(f"{request.node.nodeid} started {', '.join(sorted(started))}: mark it @pytest.mark.slow "
                    f"(make test-fast leaves slow tests out)", pytrace=False)
