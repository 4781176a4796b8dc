# Two commands on a fresh clone:  `make sweep` (the main job, embedded data)  and  `make test`.
# Setup installs with uv under pip's settings (tools/install.py): ~30 s where pip took ~2 min.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SWEEP ?= batch_size_gffn
ARGS ?=

.PHONY: setup sweep test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv>=0.5'
	$(PY) tools/install.py --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

sweep: setup
	$(PY) -m orchestrator.sweep $(SWEEP) $(ARGS)

# Two pytest workers (one per core: Ray's start-up and the trials' waits leave a serial run's
# CPU idle half the time), whole modules per worker, then the tests marked `alone` by
# themselves. Both parts always run; the target fails if either part fails. Three workers
# were slower on 2 cores (28 min against 23) and two DDP sweeps timed out: Ray runs its
# workers at nice 15, so trials starve while more un-niced test processes than cores run.
test: setup
	$(VENV)/bin/ruff check .
	status=0; \
	$(PY) -m pytest -n 2 --dist loadscope -m "not alone" || status=$$?; \
	$(PY) -m pytest -m alone || status=$$?; \
	exit $$status

test-fast: setup
	$(PY) -m pytest -n 2 --dist loadscope -m "not slow and not alone"

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
	$(PY) benchmarks/bench_mc_dropout.py

clean:
	rm -rf runs .pytest_cache
