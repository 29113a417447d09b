# One-command set-up: `make setup` builds .venv/ from the locked versions; `make test` and `make demo`
# call it first. A second `make setup` on a set-up checkout is a no-op (the stamp is newer than the locks).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.maskinit-setup
export UV_LINK_MODE ?= copy
# Installed packages come with their bytecode: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise
# compile torch and Detectron2 again in every process it starts (3 s a process here).
export UV_COMPILE_BYTECODE ?= 1

.PHONY: setup test test-fast demo bench lock clean

setup: $(STAMP)

$(STAMP): requirements.lock requirements-bootstrap.lock pyproject.toml scripts/install_detectron2.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-bootstrap.lock
	$(UV) pip install --python $(PY) --require-hashes -r requirements.lock
	$(PY) scripts/install_detectron2.py
	$(UV) pip install --python $(PY) --no-deps -e .
	$(PY) -m compileall -q maskinit
	touch $(STAMP)

# Two test processes (pytest-xdist); the tests that start several training processes (clusters, DDP, tuning
# workers) carry xdist_group("processes") and run one at a time in one of them. The slowest 15 are listed.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15

# The unit tests alone: no training, tuning, signals or benchmark runs (those are marked slow); under a minute,
# in two test processes (pytest-xdist).
test-fast: setup
	$(PY) -m pytest -q -n 2 -m "not slow"

# The main job: train the tiny preset from scratch on the embedded synthetic set (CPU), then evaluate.
demo: setup
	$(VENV)/bin/maskinit train --from-scratch --preset tiny --device cpu --seed 0 --output-dir output/demo --overwrite

# BENCH_ARGS: e.g. --real-data DIR, --no-real, --extended (benchmarks/run_all.py).
BENCH_ARGS ?=
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# Re-resolve requirements.in into the lock (needs uv on PATH or a set-up .venv).
lock:
	$(UV) pip compile requirements.in --universal --python-version 3.10 --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .cache .pytest_cache
