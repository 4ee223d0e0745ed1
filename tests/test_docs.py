"""The documentation's code runs: every fenced block of README.md and docs/*.md.

A block's info string is its language, then optional tags (```` ```bash slow ````):
- `bash` and `python` blocks are code. Untagged, they run in the fast tier; tagged `slow` (they start Ray,
  train or run a job), in the full suite, with the page's untagged blocks in page order.
- Tagged `cluster`, `gpu`, `cloud` or `long` (needs a cluster, a GPU, a cloud account, or runs for minutes to
  hours), a block is not run: each `python -m MODULE ARGS` in it (also after `ray job submit ... --`) is parsed
  by MODULE's own argparse parser, each `make ...` is dry-run (`make -n`), and a python block must compile.
- `text`, `console`, `yaml`, `json`, `toml`, `html`, `markdown` blocks are not code. Any other language or tag
  fails, so a typo cannot hide a block.
In every code block, a repository path (`cluster/aws.yaml`, `bench/sample.py`) must exist.

A page's blocks run in order in one scratch folder that looks like the repository root (its folders linked in),
with the venv's `python` first on PATH and bash under `set -euo pipefail`. The folder also holds what a reader
has after `make demo`: `demo_out/export` (an exported `debug` model, fresh weights) and
`demo_out/images/heldout/` (synthetic captioned images), plus `photos/` (40 images of assorted sizes, each
with a `.txt` caption), and AWS_ENDPOINT_URL points at a local S3 server with a bucket `my-bucket`. Python blocks are
self-contained scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE = {"bash", "python"}
NOT_CODE = {"text", "console", "yaml", "json", "toml", "html", "markdown"}
RUN_TAGS = {"slow"}
CHECK_TAGS = {"cluster", "gpu", "cloud", "long"}
REPO_DIRS = ("cluster", "bench", "data", "docs", "onade", "ray_jobs", "tests")
FAST_BLOCK_S = 60
SLOW_BLOCK_S = 600
BUCKET = "my-bucket"


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    tags: frozenset[str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in CODE and not self.tags & CHECK_TAGS

    @property
    def fast(self) -> bool:
        return self.runs and "slow" not in self.tags


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The fenced blocks of a Markdown file, in order (indented fences, e.g. inside a list, included)."""
    out, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        start, body = i, []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        assert i < len(lines), f"{path}:{start + 1}: a fence that is never closed"
        words = info.split()
        out.append(Block(str(path.relative_to(root)), start + 1, words[0] if words else "",
                         frozenset(words[1:]), "\n".join(body) + "\n"))
        i += 1
    return out


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def page_ids() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in pages()]


# ---- commands in shell text ----

def shell_commands(text: str) -> list[list[str]]:
    """Simple commands of a shell block: continuations joined, comments and here-documents dropped, split at
    ; && || | and redirections (their targets dropped); a quote may span lines."""
    out, pending, heredoc = [], "", None
    for line in text.replace("\\\n", " ").splitlines():
        if heredoc:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        pending += line + "\n"
        try:
            tokens = _tokens(pending)
        except ValueError:  # a quote that closes on a later line
            continue
        pending = ""
        cmd, redirect = [], False
        for tok in tokens:
            if tok and set(tok) <= set("();<>|&"):
                if tok == "<<":
                    redirect = "heredoc"
                else:
                    redirect = tok in (">", ">>", "<", "&>")
                    if not redirect and cmd:
                        out.append(cmd)
                        cmd = []
                continue
            if redirect:
                if redirect == "heredoc":
                    heredoc = tok
                redirect = False
                continue
            cmd.append(tok)
        if cmd:
            out.append(cmd)
    assert not pending, f"a quote is never closed in:\n{text}"
    return out


def _tokens(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def python_module_calls(cmd: list[str]) -> list[tuple[str, list[str]]]:
    """`python -m MODULE ARGS` inside a command (also after `ray job submit ... --`, `env X=1`, `time`)."""
    for i, tok in enumerate(cmd):
        if re.fullmatch(r"(\S*/)?python(3(\.\d+)?)?", tok) and cmd[i + 1:i + 2] == ["-m"] and i + 2 < len(cmd):
            return [(cmd[i + 2], cmd[i + 3:])]
    return []


def make_calls(cmd: list[str]) -> list[list[str]]:
    """The arguments of a `make ...` command, environment assignments in front of it included."""
    i = 0
    while i < len(cmd) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cmd[i]):
        i += 1
    return [cmd[:i] + cmd[i + 1:]] if cmd[i:i + 1] == ["make"] else []


class _Parsed(BaseException):
    """Raised by the patched parser once the arguments parsed: stops the entry point before it does anything."""

    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def parse_with_cli(module: str, args: list[str]) -> str | None:
    """Parse ARGS with MODULE's own argparse parser, run as `python -m MODULE`, then the module's
    `check_args(namespace)` where it has one (the checks that read no data and start nothing); None, or the
    error's last line."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    err, saved_argv = io.StringIO(), sys.argv
    argparse.ArgumentParser.parse_args = parse_then_stop
    sys.argv = [module, *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before, by an earlier check
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except _Parsed as parsed:
        namespace = parsed.namespace
    except SystemExit as e:
        return (err.getvalue().strip() or f"exit {e.code}").splitlines()[-1]
    else:
        return f"python -m {module} ran without parsing its arguments with argparse"
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = saved_argv
    check = getattr(importlib.import_module(module), "check_args", None)
    try:
        check and check(namespace)
    except ValueError as e:
        return f"{type(e).__name__}: {e}"
    return None


def repo_paths(text: str) -> list[str]:
    found = re.findall(r"(?<![\w./-])((?:%s)/[\w./-]*\w)" % "|".join(REPO_DIRS), text)
    return [p for p in found if "*" not in p]


# ---- the tests that need no scratch folder ----

ALL = [b for p in pages() for b in blocks(p)]


def test_the_docs_have_code_blocks_to_check():
    assert any(b.runs and b.fast for b in ALL) and any("slow" in b.tags for b in ALL)
    assert any(b.tags & CHECK_TAGS for b in ALL)


@pytest.mark.parametrize("page", page_ids())
def test_every_block_says_what_it_is(page):
    bad = []
    for b in blocks(ROOT / page):
        if b.lang not in CODE | NOT_CODE:
            bad.append(f"{b.where}: language {b.lang!r} is not one of {sorted(CODE | NOT_CODE)} (text for output)")
        elif b.tags and b.lang not in CODE:
            bad.append(f"{b.where}: tags {sorted(b.tags)} on a {b.lang} block, which is not code")
        elif b.tags - RUN_TAGS - CHECK_TAGS:
            bad.append(f"{b.where}: unknown tags {sorted(b.tags - RUN_TAGS - CHECK_TAGS)}; "
                       f"known: {sorted(RUN_TAGS | CHECK_TAGS)}")
        elif len(b.tags & CHECK_TAGS) and "slow" in b.tags:
            bad.append(f"{b.where}: a block is run (slow) or checked ({sorted(b.tags & CHECK_TAGS)}), not both")
        if b.lang in CODE:
            bad += [f"{b.where}: {p} is not in the repository" for p in repo_paths(b.text) if not (ROOT / p).exists()]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", page_ids())
def test_blocks_that_are_not_run_use_real_flags(page):
    """Commands in cluster/gpu/cloud/long blocks, and every command of the runnable ones too (a wrong flag in a
    slow block then fails in the fast tier)."""
    bad = []
    for b in blocks(ROOT / page):
        if b.lang == "python" and not b.runs:
            try:
                compile(b.text, b.where, "exec")
            except SyntaxError as e:
                bad.append(f"{b.where}: {e}")
        if b.lang != "bash":
            continue
        for cmd in shell_commands(b.text):
            for module, args in python_module_calls(cmd):
                if any("$" in a for a in args):
                    args = [a for a in args if "$" not in a]  # a shell variable: its flag name is still checked
                problem = parse_with_cli(module, args)
                if problem:
                    bad.append(f"{b.where}: python -m {module} {shlex.join(args)}\n    {problem}")
            for args in make_calls(cmd):
                r = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
                if r.returncode:
                    bad.append(f"{b.where}: make {shlex.join(args)}\n    {r.stderr.strip()[-500:]}")
    assert not bad, "\n".join(bad)


# ---- running the blocks ----

@pytest.fixture(scope="module")
def reader_files(tmp_path_factory, local_shards):
    """What a reader has after `make demo`: an exported debug model (fresh weights), the demo's held-back images,
    and a folder of captioned photos of assorted sizes."""
    import numpy as np
    import torch
    from PIL import Image

    from data.synthetic import write_synthetic
    from onade import build_model, load_config, save_checkpoint
    from ray_jobs.data import tokenizer_for

    root = tmp_path_factory.mktemp("reader")
    tok = tokenizer_for(local_shards["val"])
    cfg = load_config("debug", sets=[f"model.vocab_size={tok.vocab_size}"])
    torch.manual_seed(0)
    save_checkpoint(root / "demo_out" / "export", build_model(cfg), cfg, tok)
    write_synthetic(root / "demo_out" / "images" / "heldout", 4, image_size=cfg.model.image_size, start=4256)
    rng = np.random.default_rng(0)
    photos = root / "photos"
    photos.mkdir()
    colours = ["red", "green", "blue", "yellow"]
    for i in range(40):
        w, h, ext = int(rng.integers(32, 97)), int(rng.integers(32, 97)), ("png", "jpg")[i % 2]
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 20 * i)], -1)
        noisy = np.clip(rgb + rng.integers(-12, 13, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(photos / f"photo{i:02d}.{ext}")
        (photos / f"photo{i:02d}.txt").write_text(f"a {colours[i % 4]} gradient\n")
    return root


@pytest.fixture(scope="module")
def docs_env(s3_server):
    from tests.fixtures.s3 import s3_client

    with contextlib.suppress(Exception):
        s3_client().create_bucket(Bucket=BUCKET)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "DS_ACCELERATOR": "cpu", "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"})
    return env


def scratch_folder(reader_files: Path) -> Path:
    """A folder that looks like the repository root, plus the reader's files; outputs land in it, not the repo."""
    scratch = Path(tempfile.mkdtemp(prefix="docs_"))
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "demo_out") and not entry.name.endswith(".egg-info"):
            (scratch / entry.name).symlink_to(entry)
    shutil.copytree(reader_files, scratch, dirs_exist_ok=True, symlinks=True)
    return scratch


def run_block(b: Block, scratch: Path, env: dict, timeout: float) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")  # short: Ray's socket paths stay under 107 characters
    env = {**env, "RAY_TMPDIR": ray_tmp}
    if b.lang == "python":
        argv = [sys.executable, "-c", b.text]
    else:
        argv = ["bash", "-c", "set -euo pipefail\n" + b.text]
    proc = subprocess.Popen(argv, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        if proc.poll() is None:  # timed out or interrupted: stop the block's process group (and any Ray it started)
            os.killpg(proc.pid, 9)
            out = (out or "") + (proc.communicate()[0] or "") + f"\n[killed after {timeout} s]"
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode:
        pytest.fail(f"{b.where}: the {b.lang} block failed (exit {proc.returncode}):\n{b.text}\n--- output "
                    f"(last 4000 characters) ---\n{out[-4000:]}", pytrace=False)


def run_page(page: str, reader_files: Path, env: dict, slow: bool) -> int:
    todo = [b for b in blocks(ROOT / page) if b.runs and (slow or b.fast)]
    scratch = scratch_folder(reader_files)
    try:
        for b in todo:
            run_block(b, scratch, env, SLOW_BLOCK_S if "slow" in b.tags else FAST_BLOCK_S)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return len(todo)


FAST_PAGES = [p for p in page_ids() if any(b.fast for b in blocks(ROOT / p))]
SLOW_PAGES = [p for p in page_ids() if any(b.runs and "slow" in b.tags for b in blocks(ROOT / p))]


@pytest.mark.parametrize("page", FAST_PAGES)
def test_the_untagged_blocks_of_a_page_run(page, reader_files, docs_env):
    assert run_page(page, reader_files, docs_env, slow=False)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("page", SLOW_PAGES)
def test_every_runnable_block_of_a_page_runs_in_order(page, reader_files, docs_env):
    assert run_page(page, reader_files, docs_env, slow=True)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The extraction and the parser check on known-bad text, so a green run means something."""
    cmds = shell_commands("ray job submit --working-dir . -- \\\n  python -m ray_jobs.train --nope 1 # hi\n"
                          "make demo DEST=x && echo ok > out.txt\n")
    assert cmds == [["ray", "job", "submit", "--working-dir", ".", "--", "python", "-m", "ray_jobs.train",
                     "--nope", "1"], ["make", "demo", "DEST=x"], ["echo", "ok"]]
    assert python_module_calls(cmds[0]) == [("ray_jobs.train", ["--nope", "1"])]
    assert "unrecognized arguments: --nope" in parse_with_cli("ray_jobs.train", ["--output", "o", "--name", "n",
                                                                                "--nope", "1"])
    assert parse_with_cli("ray_jobs.train", ["--output", "o", "--name", "n", "--preset", "small"]) is None
    assert "train.ema_decay needs whole weights" in parse_with_cli(  # the README's example before this test
        "ray_jobs.train", ["--output", "o", "--name", "n", "--set", "train.zero_stage=3"])
    assert make_calls(["PYTHON=python3.12", "make", "venv"]) == [["PYTHON=python3.12", "venv"]]
    md = tmp_path / "x.md"
    md.write_text("a\n```bash slow\necho 1\n```\n\n  ```python\n  print(2)\n  ```\n```\nno language\n```\n")
    got = [(b.line, b.lang, set(b.tags), b.text) for b in blocks(md, root=tmp_path)]
    assert got == [(2, "bash", {"slow"}, "echo 1\n"), (6, "python", set(), "print(2)\n"), (9, "", set(), "no language\n")]
    assert json.dumps(repo_paths("see cluster/aws.yaml and bench/sample.py, not mycluster/x")) == \
        '["cluster/aws.yaml", "bench/sample.py"]'

