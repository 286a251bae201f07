# Two set-up commands: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# The tests' and benchmarks' shared drivers (harness/) are not installed: they import from the checkout.
RUN_FROM_CHECKOUT := PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}

export SF_ASSETS_HOME ?= $(CURDIR)/.data
export SF_ASSETS_DAGSTER_DIR ?= $(SF_ASSETS_HOME)/dagster
export DAGSTER_HOME := $(CURDIR)
WORKERS ?= 4

.PHONY: demo test ui view install system-deps bench bench-demo bench-scale bench-slurm clean

# The product (with the viewer's extra); `make test` adds the test extra on top.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[viewer]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[viewer,test]"
	touch $(TEST_STAMP)

install: $(STAMP)

# Debian packages the tests use: a real Slurm cluster, PostgreSQL client libs, headless Chromium.
system-deps:
	@bash scripts/install-system-deps.sh

demo: install
	mkdir -p $(SF_ASSETS_DAGSTER_DIR)
	$(VENV)/bin/sf-assets demo --workercount $(WORKERS)

ui: install
	mkdir -p $(SF_ASSETS_DAGSTER_DIR)
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# One workspace label in the browser, e.g. make view LABEL=MountainSort5/synth_a1_K6_C4/001_synth (PORT optional).
view: install
	@test -n "$(LABEL)" || { echo "usage: make view LABEL=SORTER/STUDY/RECORDING [PORT=8080]"; exit 2; }
	$(VENV)/bin/sf-assets view "$(LABEL)" --port $(or $(PORT),0)

test: $(TEST_STAMP) system-deps
	$(PY) -m pytest -q

# Orchestration overhead, command line and UI backfill, against a plain spikeinterface script (minutes; BENCH_ARGS e.g. --recordings 8).
bench: install
	$(RUN_FROM_CHECKOUT) $(PY) benchmarks/overhead.py $(BENCH_ARGS)

# The demo campaign through `sf-assets demo` and through the studyset sensor under `dagster dev`, alternated (minutes).
bench-demo: install
	$(RUN_FROM_CHECKOUT) $(PY) benchmarks/demo_paths.py $(BENCH_ARGS)

# SpikeForest's size (888 recordings x 10 sorters): load, sensor tick, check-config, workspace diff.
bench-scale: install
	$(RUN_FROM_CHECKOUT) $(PY) benchmarks/scale.py

# Slurm: 64 short sorts on the test cluster, 4 allocations x 8 slots (minutes; as root; BENCH_ARGS e.g. --sorts 8).
bench-slurm: install system-deps
	$(RUN_FROM_CHECKOUT) $(PY) benchmarks/slurm.py $(BENCH_ARGS)

clean:
	rm -rf .data
