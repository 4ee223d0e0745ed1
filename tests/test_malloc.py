"""ray_jobs.malloc: a process that keeps freed memory stops paying page faults for activations it allocates
anew on every forward pass (counted in a fresh process each, as the serve replica starts)."""

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from ray_jobs.malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
conv = torch.nn.Conv2d(64, 64, 3, padding=1)
x = torch.randn(8, 64, 32, 32)  # 2 MB activations: glibc mmaps blocks this size by default
with torch.inference_mode():
    for _ in range(3):
        conv(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        conv(torch.relu(conv(x)) + x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_kept_memory_spares_the_page_faults_of_every_pass():
    faults = {mode: int(subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                                       check=True, timeout=120).stdout)
              for mode in ("keep", "default")}
    # 20 passes of 4 MB of fresh activations: ~1,000 faults per pass by default, next to none kept.
    assert faults["default"] > 10_000 and faults["keep"] < faults["default"] / 20, faults
