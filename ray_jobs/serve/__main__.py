"""`python -m ray_jobs.serve --checkpoint PATH` (see ray_jobs/serve/__init__.py)."""

from ray_jobs.cli import run
from ray_jobs.serve.cli import main

run(main)
