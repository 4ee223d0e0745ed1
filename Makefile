# The two commands a user needs: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU torch is pinned first so pip never pulls a multi-GB CUDA build on a machine without a GPU.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv chromium test test-fast demo bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[dev,bench]"
	touch $@

venv: $(VENV)/.installed

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

# Everything (CI runs this): about 17 minutes on 2 cores.
test: venv chromium
	$(PY) -m pytest -q --durations=15 tests

# Under two minutes: every test that starts no Ray, DeepSpeed, subprocess job or browser.
test-fast: venv
	$(PY) -m pytest -q -m "not slow" --durations=10 tests

demo: venv
	$(PY) -m ray_jobs.demo $(if $(DEST),--dest $(DEST))

clean:
	rm -rf $(VENV) demo_out
