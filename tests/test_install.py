"""Installing onade: the Makefile's choice of Python and of torch's build, the pins, the licence.

The Makefile tests run the real `make` on a copy of the Makefile, with stand-ins on PATH: interpreters
(shell scripts that answer the version check the way a real one, a too-old one or a pyenv shim does), an
`nvidia-smi`, and a venv Python that logs the pip commands it is given. Each takes well under a second and
installs nothing; `make venv` itself (a fresh venv in about a minute and a half here) is the end-to-end proof.
"""

import importlib.metadata
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tools import constraints as pinning

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="no make on PATH")


# ---------------------------------------------------------------- the pins


def constraint_pins() -> dict[str, str]:
    return pinning.read_pins(CONSTRAINTS)


def pyproject_requirements() -> list[Requirement]:
    """Every requirement of pyproject.toml (dependencies and every extra), less onade's own extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(t) for t in texts if canonicalize_name(Requirement(t).name) != "onade"]


def test_every_pin_is_the_installed_version():
    wrong = {}
    for name, pin in constraint_pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        # PEP 440: ==2.13.0 admits 2.13.0+cpu (a pin without a local label ignores it).
        if installed == "not installed" or not SpecifierSet(f"=={pin}").contains(Version(installed)):
            wrong[name] = f"pinned {pin}, installed {installed}"
    assert not wrong, f"constraints.txt disagrees with this venv (make constraints rewrites it): {wrong}"


def test_the_pins_cover_what_onade_pulls_in():
    """tools/constraints.py reads this venv: a new dependency (or a new one of a dependency) needs a pin."""
    written = pinning.pins()
    assert set(written) - set(constraint_pins()) == set(), "unpinned: run make constraints"
    assert written == constraint_pins()


def test_constraints_leave_out_build_tools_and_hand_installed_tools():
    assert not {"onade", "pip", "setuptools", "wheel", "coverage", "pyflakes"} & set(constraint_pins())
    assert constraint_pins()["torch"] == Version(importlib.metadata.version("torch")).public, (
        "torch is pinned without its local label, so the pin admits the CUDA build too")


@pytest.mark.parametrize("name", ["ray", "deepspeed", "torch"])
def test_the_installed_version_lies_in_pyprojects_range(name):
    (req,) = [r for r in pyproject_requirements() if canonicalize_name(r.name) == name]
    installed = Version(importlib.metadata.version(name))
    assert req.specifier.contains(installed, prereleases=True), f"{name} {installed} is outside pyproject's {req}"
    assert not any(s.operator in ("==", "===") for s in req.specifier), f"{req}: a range, so GPU users keep their build"


def test_pyprojects_ranges_admit_the_pinned_versions():
    pins = constraint_pins()
    for req in pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"pyproject requires {req} but constraints.txt does not pin {name}"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"pyproject's {req} excludes the tested {name}=={pins[name]}")


