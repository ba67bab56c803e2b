# Two commands for a fresh machine: `make serve` (main job) and `make test` (tests).
# Each installs what it needs into .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
MODEL ?=
# Offline by default where the hub cannot answer; export decides per run (see export/source.py).
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install install-dev serve prepare train export configs tensorrt-command bench-model bench-triton bench-gateway bench-peers bench-audit bench-ratelimit bench-gpu gpu-host-pack bench loadtest soak test lint typecheck \
        unit integration e2e clean

help:
	@echo "make serve   install, prepare the model (MODEL=<hub id|dir> optional), run Triton + gateway"
	@echo "make test    install dev tools, lint, type-check, run all tests"
	@echo "make train | prepare | configs | bench | loadtest | soak | tensorrt-command | clean"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -e '.[dev,loadtest]'
	@touch $@

# prometheus and promtool (its rule checker and rule unit tester) for the monitoring tests, from Debian's
# prometheus package (neither is on PyPI); where apt cannot fetch them, those tests are skipped, saying why.
$(BIN)/prometheus $(BIN)/promtool &: | $(BIN)/python
	@tmp=$$(mktemp -d) && (cd $$tmp && apt-get download -qq prometheus >/dev/null 2>&1 \
	  && dpkg-deb -x prometheus_*.deb x && cp x/usr/bin/prometheus x/usr/bin/promtool $(CURDIR)/$(BIN)/) \
	  || echo "warning: could not fetch prometheus (Debian package); the monitoring tests will be skipped"; \
	rm -rf $$tmp

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev $(BIN)/prometheus $(BIN)/promtool

# Prepare the model if missing, then run embedded Triton (CPU, no Docker) and the gateway until Ctrl-C.
# On a fresh offline machine a first student snapshot (FIRST_SNAPSHOT_MINUTES of training) is served at
# once; the full training finishes in the background and the launcher swaps that model in live.
FIRST_SNAPSHOT_MINUTES ?= 3
serve: PREPARE_ARGS = --first-snapshot-minutes $(FIRST_SNAPSHOT_MINUTES)
serve: prepare
	$(BIN)/python -m server

prepare: install
	$(BIN)/python -m export prepare $(if $(MODEL),--model $(MODEL)) $(PREPARE_ARGS)

train: install
	$(BIN)/python -m export train

# Its learner-gap goes to build/reports: results/learner_gap.md is the multi-seed report, written by the
# command in docs/performance.md, which a one-model run would overwrite with less.
bench-model: install
	$(BIN)/python -m export bench
	$(BIN)/python -m export learner-gap $(if $(wildcard build/exports/student-go),--baseline build/exports/student-go) --out build/reports

# Triton-served vs raw ONNX Runtime at 1 and 16 clients (starts its own server, cache off).
bench-triton: install-dev prepare
	$(BIN)/python -m loadtest.bench_triton

# Gateway overhead vs direct Triton, cache-hit time, and gateway vs a naive transformers service.
bench-gateway: install-dev prepare
	$(BIN)/python -m loadtest.bench_gateway

# naive / ort-inproc / ort-raw / triton-grpc / gateway at the same texts and concurrency.
bench-peers: install-dev prepare
	$(BIN)/python -m loadtest.bench_peers

# Audit trail off vs SQLite: two gateways on one Triton, same load.
bench-audit: install-dev prepare
	$(BIN)/python -m loadtest.bench_audit

# Rate limits across replicas: two gateways on one Redis admit the limit once (about a minute per run).
bench-ratelimit: install-dev prepare
	$(BIN)/python -m loadtest.bench_ratelimit

# The embedded server on a GPU: in-process torch FP16 limit, the ensemble over gRPC at 1..256 clients, the
# CPU path's instances x threads (docs/gpu.md). On the GPU host itself: deploy/gpu-host/run.sh.
bench-gpu: install-dev prepare
	$(BIN)/python -m loadtest.bench_gpu

# Pack the server parts and packages the GPU host lacks into build/gpu-host/ (docs/gpu.md).
gpu-host-pack: install
	bash deploy/gpu-host/pack.sh

bench: bench-model bench-triton bench-gateway bench-peers bench-audit

# 10-minute soak through the gateway; fails when Triton's or the gateway's memory grows past 50 MB.
soak: install-dev prepare
	$(BIN)/python -m loadtest.soak

# Locust step load per path (gateway, cache hit, direct gRPC, WebSocket stream) -> results/capacity.md
# + charts. Starts embedded Triton + gateway if they are not running; loopback only; about 7 minutes.
loadtest: install-dev prepare
	$(BIN)/python -m loadtest.run

tensorrt-command: install
	$(BIN)/python -m export tensorrt --dry-run

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/ruff format --check contract torch_classifier export server gateway loadtest clients tests model_repository

typecheck: install-dev
	$(BIN)/mypy contract torch_classifier export server gateway loadtest clients

test: lint typecheck
	$(BIN)/pytest

unit: install-dev
	$(BIN)/pytest tests/unit
integration: install-dev
	$(BIN)/pytest tests/integration
e2e: install-dev
	$(BIN)/pytest tests/e2e

configs: install
	$(BIN)/python -m export configs

clean:
	rm -rf build/exports .pytest_cache .mypy_cache .ruff_cache
