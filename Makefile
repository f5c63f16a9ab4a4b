# priorkit: `make demo` sets up .venv and runs the main job; `make test` sets up .venv and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt "torch==2.13.0"
	$(PIP) install -c constraints.txt -e ".[dev,bench]"
	# deepinv (benchmark peer) without torchvision: its physics module never needs it, and a torchvision
	# that does not match the CPU torch would break diffusers' imports
	$(PIP) install -c constraints.txt --no-deps "deepinv==0.5.0" "einops==0.8.2" "natsort==8.4.0" "h5py==3.16.0"
	touch $@

demo: setup
	$(PY) -m apps.demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m benchmarks.solvers --json outputs/bench/solvers.json

clean:
	rm -rf outputs .pytest_cache
