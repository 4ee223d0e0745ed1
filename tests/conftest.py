"""Shared pytest setup. Fixtures live in tests/fixtures/<topic>.py, one file per service."""

import os

# DeepSpeed must pick its CPU accelerator before it is first imported anywhere in the test process.
os.environ.setdefault("DS_ACCELERATOR", "cpu")

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.flaky_s3", "tests.fixtures.ray_local",
                  "tests.fixtures.ray_cluster", "tests.fixtures.train_data"]
