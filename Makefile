# The two commands a user needs: `make demo` and `make test` (see README).
#
# Variables (make venv VAR=value, or VAR=value make venv):
#   PYTHON       the interpreter .venv is built with; default: the first of PYTHON_CANDIDATES that runs and
#                is >= 3.11. Checked before anything is installed.
#   TORCH_INDEX  the package index torch comes from: a URL (e.g. https://download.pytorch.org/whl/cu128), or
#                `default` for pip's default index. Unset: PyTorch's CPU index on a machine without nvidia-smi
#                on PATH, the default index (whose Linux torch is the CUDA build) on one with it.
#   DEST         where `make demo` writes shards and the run (s3://bucket/prefix or a folder).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The exact versions the suite runs with (tests/pins.py writes it); every install below goes through it.
CONSTRAINTS := constraints.txt

PYTHON ?=
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3
MIN_PYTHON := 3.11
comma := ,

TORCH_INDEX ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# Seconds pip waits on one socket operation of TORCH_INDEX, with no retries: where that index cannot be
# reached, the default index takes over within seconds instead of after pip's 5 retries.
TORCH_INDEX_TIMEOUT := 10

.PHONY: venv which-python constraints chromium test test-fast demo bench clean

# Prints the interpreter for $(VENV) on stdout; on stderr, why none fits (what it tried, and how to choose).
# Run as `$(SHELL) -c "$$FIND_PYTHON"`. A pyenv shim of a version that is not selected exits 127 like a missing
# command, so a candidate counts only when it runs.
define FIND_PYTHON
tried=""
for c in $(or $(PYTHON),$(PYTHON_CANDIDATES)); do
  v=$$("$$c" -c 'import sys; print(".".join(map(str, sys.version_info[:3]))); sys.exit(sys.version_info < ($(subst .,$(comma) ,$(MIN_PYTHON))))' 2>/dev/null)
  rc=$$?
  if [ $$rc = 0 ]; then echo "$$c"; exit 0; fi
  case "$$v" in
    [0-9]*) found="Python $$v" ;;
    *) if [ $$rc = 127 ]; then found="not found"; else found="does not run"; fi ;;
  esac
  tried="$${tried:+$$tried, }$$c ($$found)"
done
if [ -n "$(PYTHON)" ]; then
  echo "error: PYTHON=$$tried: onade needs Python >= $(MIN_PYTHON). Name another interpreter" \
       "(make venv PYTHON=/path/to/python3.11), or leave PYTHON unset to use the first of:" \
       "$(PYTHON_CANDIDATES)." >&2
else
  echo "error: onade needs Python >= $(MIN_PYTHON) and found none: $$tried. Install Python $(MIN_PYTHON)" \
       "or newer, or name one: make venv PYTHON=/path/to/python3.11" >&2
fi
exit 1
endef
export FIND_PYTHON

# torch from TORCH_INDEX (see the top), falling back to the default index where that one cannot be used.
# --no-deps: only torch comes from PyTorch's index; its dependencies come with the next install, pinned.
define INSTALL_TORCH
index="$(TORCH_INDEX)"
if [ -n "$$index" ]; then why="TORCH_INDEX"
elif command -v nvidia-smi >/dev/null 2>&1; then index=default; why="nvidia-smi is on PATH"
else index="$(TORCH_CPU_INDEX)"; why="no nvidia-smi on PATH"; fi
if [ "$$index" = default ]; then
  echo "torch: from the default index ($$why)"
  exec $(PIP) install -q -c $(CONSTRAINTS) torch
fi
echo "torch: looking in $$index first ($$why; TORCH_INDEX=default takes the default index)"
start=$$(date +%s)
$(PIP) install -q -c $(CONSTRAINTS) --no-deps --index-url "$$index" --timeout $(TORCH_INDEX_TIMEOUT) --retries 0 torch \
  && exit 0
echo "torch: $$index could not be used ($$(($$(date +%s) - start)) s, see above): installing from the default index"
exec $(PIP) install -q -c $(CONSTRAINTS) torch
endef
export INSTALL_TORCH

define TORCH_REPORT
import torch
if torch.version.cuda:
    build = f"the CUDA {torch.version.cuda} build, {torch.cuda.device_count()} GPU(s) visible"
elif getattr(torch.version, "hip", None):
    build = f"the ROCm {torch.version.hip} build, {torch.cuda.device_count()} GPU(s) visible"
else:
    build = "the CPU build"
print(f"torch {torch.__version__}: {build}")
endef
export TORCH_REPORT

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	@py=$$($(SHELL) -c "$$FIND_PYTHON") || exit 1; \
	if [ -x $(PY) ]; then echo "python: $(VENV) exists ($$($(PY) -V 2>&1)); make clean to rebuild it with $$py"; \
	else echo "python: creating $(VENV) with $$py ($$("$$py" -V 2>&1))" && "$$py" -m venv $(VENV); fi
	$(PIP) install -q --upgrade pip
	@$(SHELL) -c "$$INSTALL_TORCH"
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev,bench]"
	@$(PY) -c "$$TORCH_REPORT"
	touch $@

venv: $(VENV)/.installed

# The interpreter `make venv` would build .venv with (PYTHON, or the first fit of PYTHON_CANDIDATES).
which-python:
	@py=$$($(SHELL) -c "$$FIND_PYTHON") && echo "$$py: $$("$$py" -V 2>&1)"

# After upgrading a dependency in .venv and passing `make test`: pin what this venv now runs with.
constraints:
	@test -x $(PY) || { echo "error: no $(VENV): run make venv first" >&2; exit 1; }
	$(PY) -m tests.pins > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

# tests/test_gallery_browser.py drives Debian's Chromium (not a browser downloaded by Playwright): install it
# when missing, with apt-get as root or through sudo.
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "/usr/bin/chromium is missing: installing Debian's chromium for tests/test_gallery_browser.py"; \
	  command -v apt-get >/dev/null || { echo "error: no apt-get here: install Chromium at /usr/bin/chromium" \
	    "by hand, then run make test again" >&2; exit 1; }; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	    echo "error: installing chromium needs root and there is no sudo: run" \
	      "'apt-get install -y chromium' as root, then make test again" >&2; exit 1; fi; \
	  { $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	    || { echo "error: apt-get could not install chromium (see above)" >&2; exit 1; }; \
	  test -x /usr/bin/chromium || { echo "error: chromium installed but /usr/bin/chromium is missing" >&2; exit 1; }; }

# Everything (CI runs this): about 20 minutes on 2 cores.
test: venv chromium
	$(PY) -m pytest -q --durations=15 tests

# Under two minutes: every test that starts no Ray, DeepSpeed, Ray job or browser.
test-fast: venv
	$(PY) -m pytest -q -m "not slow" --durations=10 tests

demo: venv
	$(PY) -m ray_jobs.demo $(if $(DEST),--dest $(DEST))

clean:
	rm -rf $(VENV) demo_out
