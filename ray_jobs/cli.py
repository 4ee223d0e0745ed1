"""The `python -m ray_jobs.X` wrapper: bad user input ends a job with one line naming it, not a traceback."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

from onade.config import CHANNEL_ORDERS, PRECISIONS, STRATEGIES, ConfigError, SampleConfig

SAMPLER_FLAGS = ("strategy", "steps", "temperature", "top_p", "channels", "polish", "final_temperature", "chunk",
                 "precision", "guidance")


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


def add_sampler_flags(p: argparse.ArgumentParser, precision: bool = True) -> None:
    """The flags of every onade.config.SampleConfig setting a job exposes (SAMPLER_FLAGS), each defaulting to
    SampleConfig's; `sample_config` reads them back. precision=False: the job has a --precision of its own."""
    sampler = p.add_argument_group("sampler (each defaults to onade.config.SampleConfig's)")
    sampler.add_argument("--strategy", choices=STRATEGIES)
    sampler.add_argument("--steps", type=int,
                         help="the budget of forward passes (0 = one per hole subpixel, or --chunk per pass)")
    sampler.add_argument("--temperature", type=float, help="sampling temperature (0 = most likely value)")
    sampler.add_argument("--top-p", type=float, metavar="P",
                         help="nucleus sampling: draw each subpixel from its most likely values holding P of the "
                              "probability (1 = all)")
    sampler.add_argument("--channels", choices=CHANNEL_ORDERS,
                         help="ancestral: a pixel's channels drawn in one pass (joint) or in sequence, R then G "
                              "then B (three forward passes per planned pass)")
    sampler.add_argument("--polish", type=int, metavar="N",
                         help="ancestral: N Gibbs sweeps after the fill, each redrawing a pmin share (SampleConfig) of "
                              "the hole's pixels given the rest (one forward pass each)")
    sampler.add_argument("--final-temperature", type=float,
                         help="anneal geometrically from --temperature to this over the run (0: no annealing)")
    sampler.add_argument("--chunk", type=int, help="subpixels per forward pass: with --steps 0 for ancestral, "
                                                   "maskgit, greedy, antigreedy; ancestral-gibbs's blocks")
    if precision:
        sampler.add_argument("--precision", choices=PRECISIONS,
                             help="auto: bf16 on GPUs with it and CPUs with AMX/AVX512-BF16, else fp32")
    sampler.add_argument("--guidance", type=float, metavar="S",
                         help="classifier-free guidance scale; 1 = unguided; >1 follows the caption more, "
                              "costs a batch twice the size per pass")


def sample_config(p: argparse.ArgumentParser, args: argparse.Namespace) -> SampleConfig:
    """The SampleConfig of the sampler flags given (the rest keep SampleConfig's defaults: a job keeps none of
    its own); a bad value is a usage error naming the flag."""
    given = {k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k) is not None}
    try:
        return SampleConfig(**given).validate(where="--")
    except ConfigError as e:  # its message names the field; name the flag instead (--final-temperature)
        p.error(re.sub(r"--(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e)))


def describe_sampler(sample: SampleConfig) -> str:
    """The settings a run's summary line names."""
    steps = f"{sample.steps} steps" if sample.steps else "steps from the hole size"
    extra = f", channels {sample.channels}" if sample.strategy == "ancestral" else ""
    extra += "".join(f", {name} {getattr(sample, name):g}" for name in ("temperature", "top_p")
                     if getattr(sample, name) != 1) + (f", polish {sample.polish}" if sample.polish else "")
    return f"strategy {sample.strategy}, {steps}{extra}, guidance {sample.guidance:g}"
