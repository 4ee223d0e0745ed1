"""The `python -m ray_jobs.X` wrapper: bad user input ends a job with one line naming it, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from onade.config import ConfigError


def run(main: Callable[[], Any], exit_code: Callable[[Any], int] = lambda _: 0) -> None:
    """Call an entry point's `main()` and exit with `exit_code(result)`; ValueError exits 1 with its message."""
    try:
        result = main()
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    except ValueError as e:
        sys.exit(f"error: {e}")
    sys.exit(exit_code(result))
