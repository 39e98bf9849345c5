# wsss - run `make help` for the commands.
SHELL := /bin/bash
.DEFAULT_GOAL := default

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wsss-installed
# No NVIDIA GPU -> pin the CPU wheel of torch (an unpinned torch resolves to a multi-GB CUDA build).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
PIP_PIN := $(if $(HAS_GPU),,-c constraints-cpu.txt)
# Exact versions proven together (pyproject.toml keeps the ranges); `make lock` refreshes both files.
LOCK := requirements/$(if $(HAS_GPU),gpu,cpu).lock
# The CPU build of torch comes from PyTorch's CPU wheel index (requirements/torch-cpu.txt names it): installed
# alone first, so the other ~110 pins never ask that index (each ask of an unreachable index costs seconds).
TORCH_CPU := requirements/torch-cpu.txt
ENV := WANDB_MODE=$${WANDB_MODE:-offline} NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
TEST_ENV := WANDB_MODE=disabled NO_ALBUMENTATIONS_UPDATE=1

stage ?=
sweep ?=
exp ?=
args ?=

.PHONY: default help install lock test test-all demo bench bench-gpu estimate lint report clean

default:
ifneq ($(stage),)
	@$(MAKE) --no-print-directory install
	$(ENV) $(PY) train.py stage=$(stage) $(if $(exp),exp=$(exp)) $(args)
else ifneq ($(sweep),)
	@$(MAKE) --no-print-directory install
	$(ENV) $(PY) train.py -m sweep=$(sweep) $(args)
else
	@$(MAKE) --no-print-directory help
endif

help: ## Show this help
	@echo "wsss - DRS weakly-supervised segmentation (Lightning + Hydra)"
	@echo
	@echo "  make stage=<cls|maps|refine|pseudo|seg|eval|predict|pipeline|probe> [exp=<name>] [args=\"<hydra overrides>\"]"
	@echo "  make sweep=<$(subst $(eval) ,|,$(sort $(notdir $(basename $(wildcard src/wsss/conf/sweep/*.yaml)))))> [args=\"...\"]"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv: the locked versions (requirements/cpu.lock, torch from PyTorch's CPU index; gpu.lock with a GPU) + wsss [dev,crf,sweep]

$(STAMP): pyproject.toml constraints-cpu.txt $(LOCK) $(TORCH_CPU)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(HAS_GPU),,$(PY) -m pip install -q --no-deps $(PIP_PIN) -r $(TORCH_CPU))
	$(PY) -m pip install -q $(PIP_PIN) -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

lock: ## Re-resolve pyproject.toml's ranges into requirements/{cpu,gpu}.lock and torch-cpu.txt (a scratch venv; ~2 min)
	bash requirements/lock.sh

# Two pytest processes (pytest-xdist): most tests wait on train.py subprocesses, so two keep 2 cores busy.
TEST_PROCS ?= 2

test: install ## Run the test suite (every stage end to end at tiny scale; not the slow-marked tests; ~8 min on 2 cores)
	$(TEST_ENV) $(PY) -m pytest -n $(TEST_PROCS) -m "not slow" -q

test-all: install ## Run every test, slow ones included
	$(TEST_ENV) $(PY) -m pytest -n $(TEST_PROCS) -q

demo: install ## The method on built-in toy data: CAM vs DRS vs DRS-dagger, one table + Figure 1
	$(ENV) $(PY) -m wsss.experiments.demo $(args)

bench: install ## Every benchmark, one table and bench/results.json (< 15 min on 2 cores; args="--only release --rounds 5")
	$(TEST_ENV) $(PY) bench/run.py $(args)

bench-gpu: install ## GPU benchmarks (bf16, channels_last, compile, loaders, maps) -> bench/results_gpu.json; skips without a GPU
	$(TEST_ENV) $(PY) bench/gpu.py $(args)

estimate: install ## Projected wall time of a run on this machine: make estimate args="experiment=paper_vgg16" (-m for a sweep)
	$(TEST_ENV) $(PY) -m wsss.bench.estimate $(args)

lint: install ## ruff check + format check
	$(PY) -m ruff check src tests bench train.py
	$(PY) -m ruff format --check src tests bench train.py

report: install ## Paper-shaped table from a sweep folder: make report dir=runs/sweeps/<name>
	$(PY) -m wsss.experiments.report $(dir)

clean: ## Remove caches and run outputs (keeps .venv, data/ and bench/results/)
	rm -rf runs outputs multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
