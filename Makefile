# priorkit: `make demo` sets up .venv and runs the main job; `make test` sets up .venv and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup demo test chromium lint bench mutants clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt "torch==2.13.0"
	# playwright drives the system Chromium in tests/test_browser.py: never let it download a browser
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PIP) install -c constraints.txt -e ".[dev,bench]"
	# deepinv (benchmark peer) without torchvision: its physics module never needs it, and a torchvision
	# that does not match the CPU torch would break diffusers' imports
	$(PIP) install -c constraints.txt --no-deps "deepinv==0.5.0" "einops==0.8.2" "natsort==8.4.0" "h5py==3.16.0"
	touch $@

demo: setup
	$(PY) -m priorkit.apps.demo

test: setup chromium
	$(PY) -m pytest -q

# the browser test needs a system Chromium: install Debian's when missing and we are root; on failure the test
# prints its skip reason instead
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get -y -q install chromium >/dev/null 2>&1 || \
	      { apt-get -q update >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get -y -q install chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed: tests/test_browser.py will be skipped"

lint: setup
	$(VENV)/bin/ruff check .

# mutation testing of the core formula files (not part of `make test`): one mutmut run per group of
# [tool.priorkit.mutants] in pyproject.toml, each group's files with the fast value tests written for them, two
# processes; prints the per-file table (outputs/mutmut-results/); survivors are explained in tests/MUTANTS.md.
# `.venv/bin/python tests/mutants.py --only FILE --tests TESTS` for one file
mutants: setup
	$(PY) tests/mutants.py --groups --max-children 2

bench: setup
	$(PY) -m benchmarks.solvers --json outputs/bench/solvers.json

clean:
	rm -rf outputs .pytest_cache
