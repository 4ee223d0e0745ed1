"""The `python -m ray_jobs.X` wrapper: bad user input ends a job with one line naming it, not a traceback."""

from __future__ import annotations

import argparse
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


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: parses into the new flag's `dest` and says, on stderr, which flag to use.

        p.add_argument("--actors", dest="workers", type=int, action=DeprecatedAlias, new="--workers")
    """

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        kwargs.setdefault("default", argparse.SUPPRESS)  # the new flag's default stands
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{option_string} is deprecated: use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)
