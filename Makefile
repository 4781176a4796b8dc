# Two commands on a fresh clone:  `make sweep` (the main job, embedded data)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SWEEP ?= batch_size_gffn
ARGS ?=

.PHONY: setup sweep test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

sweep: setup
	$(PY) -m orchestrator.sweep $(SWEEP) $(ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_am.py
	$(PY) benchmarks/bench_attack_pool.py
	$(PY) benchmarks/bench_detector_attack.py
	$(PY) benchmarks/bench_langevin.py
	$(PY) benchmarks/bench_final_stages.py --profile local
	$(PY) benchmarks/bench_wandb.py
	$(PY) benchmarks/bench_scale.py

clean:
	rm -rf runs .pytest_cache
