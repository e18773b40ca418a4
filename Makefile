# Persona: one Makefile, the same targets locally and in CI.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := deploy/tools/node_modules/.bin/buf
PYGEN := clients/python/src
export OPENBLAS_NUM_THREADS ?= 1
export OMP_WAIT_POLICY ?= PASSIVE
# `make test` runs the suite in TEST_WORKERS pytest-xdist processes, a test file per worker
# at a time (module fixtures stay whole): most tests wait on brokers, stores and child
# processes, so 2 workers on 2 cores take ~0.65x the serial time. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2

.PHONY: help python-check install lock format lint typecheck proto-check proto-baseline test test-unit faults reliability protos bench bench-feast-env demo runbook-links clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# Persona runs on CPython 3.11 (requires-python in pyproject.toml): PYTHON is the one that
# makes .venv; `make install PYTHON=/path/to/python3.11` when it is elsewhere.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# GPU=1: the CUDA builds (requirements-gpu.lock) instead of the CPU ones, never both.
RUNTIME_LOCK := $(if $(GPU),requirements-gpu.lock,requirements.lock)

python-check:
	@if [ -x $(PY) ]; then py=$(PY); else py="$(PYTHON)"; fi; \
	if [ -z "$$py" ] || ! "$$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then \
		echo "Persona needs CPython 3.11 (found: $$($${py:-python3} --version 2>&1 | head -1 || echo none))." >&2; \
		echo "Install python3.11 with its venv module (Debian/Ubuntu: apt-get install python3.11 python3.11-venv)," >&2; \
		echo "then: make install PYTHON=/path/to/python3.11  (an existing .venv of another version: rm -r .venv)" >&2; \
		exit 1; \
	fi

$(STAMP): pyproject.toml $(RUNTIME_LOCK) requirements-dev.lock clients/python/pyproject.toml | python-check
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The locks are whole sets with hashes: no resolution, no dependency of torchrec's pulled in.
	$(PY) -m pip install -q --no-deps --require-hashes -r $(RUNTIME_LOCK) -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# The persona.v1 contract and the Python client (torch-free, installable on its own).
	$(PY) -m pip install -q --no-deps --no-build-isolation -e clients/python
	touch $(STAMP)

install: $(STAMP)  ## create .venv (CPython 3.11) and install the locks (GPU=1: the CUDA builds)

lock:  ## re-resolve requirements{,-gpu,-dev}.lock from pyproject.toml (UPGRADE=1: newest versions)
	$(PY) deploy/lock.py $(if $(UPGRADE),--upgrade)

format: install  ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint: install  ## ruff, and the import rules (lint-imports: [tool.importlinter] in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install  ## mypy
	$(VENV)/bin/mypy contract services encoder benchmarks clients/python/src/persona_client

proto-check: install  ## buf lint (STANDARD) and buf breaking against the v1 baseline
	deploy/ensure-tools.sh $(VENV)
	$(BUF) lint
	$(BUF) breaking --against proto/baseline.json

proto-baseline:  ## accept proto/ as the new compatibility baseline (only for a reviewed, deliberate break)
	$(BUF) build --exclude-source-info -o '-#format=json' | $(PY) -m json.tool --indent 1 > proto/baseline.json

test: install lint typecheck proto-check  ## lint, typecheck, the contract, unit, integration, fault, ops and client tests
	deploy/ensure-tools.sh $(VENV)
	deploy/ensure-client-tools.sh
	$(PY) -m pytest -q tests -n $(TEST_WORKERS) --dist loadfile

test-unit: install  ## unit tests only
	$(PY) -m pytest -q tests/unit

faults: install  ## the fault suite alone (also part of `make test`)
	$(PY) -m pytest -q tests/faults

reliability: install  ## run the fault suite and regenerate docs/reliability.md
	rm -f out/reliability.jsonl
	PERSONA_RELIABILITY_OUT=out/reliability.jsonl $(PY) -m pytest -q tests/faults \
		tests/integration/test_forget.py tests/serving/test_store_health.py
	$(PY) tests/faults/report.py out/reliability.jsonl docs/reliability.md

protos: install  ## regenerate the persona.v1 code: Python (clients/python/src/persona/v1), Go (clients/go/personav1)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PYGEN) --pyi_out=$(PYGEN) proto/persona/v1/*.proto
	$(PY) -m grpc_tools.protoc -Iproto --grpc_python_out=$(PYGEN) proto/persona/v1/service.proto
	clients/go/generate.sh

bench: install  ## run every benchmark at a quick size (README gives the full-size commands)
	$(PY) benchmarks/ingest.py --users 1000 --events 60000
	$(PY) benchmarks/encode.py --users 256
	$(PY) benchmarks/refresh.py --users 500
	$(PY) benchmarks/refresh_workers.py --users 300 --seconds 10
	$(PY) benchmarks/ann.py --n 100000
	$(PY) benchmarks/serve.py --users 20000 --lookalike-n 200000 --seconds 5
	$(PY) benchmarks/serve_processes.py --users 20000 --seconds 5
	$(PY) benchmarks/realtime.py --users 600 --train-users 300 --seconds 10 --cost-seconds 2

# Feast, the serving benchmark's peer, in a virtualenv of its own: no Persona dependency, no
# lock of Persona's touched. benchmarks/serve.py runs its Feast side there when it exists.
FEAST_VENV := .venv-feast
FEAST_SPEC := feast[redis]==0.67.0
bench-feast-env: python-check  ## make .venv-feast with Feast for benchmarks/serve.py's Feast rows
	test -x $(FEAST_VENV)/bin/python || $(PYTHON) -m venv $(FEAST_VENV)
	$(FEAST_VENV)/bin/python -m pip install -q "$(FEAST_SPEC)"

demo: install  ## the whole flow on the embedded stack
	$(PY) -m services.demo

runbook-links:  ## point the alerts' runbook links at RUNBOOK_BASE_URL (where docs/ is served)
	@test -n "$(RUNBOOK_BASE_URL)" || { echo "usage: make runbook-links RUNBOOK_BASE_URL=https://HOST/PATH/docs" >&2; exit 2; }
	$(PY) deploy/prometheus/runbook_base.py "$(RUNBOOK_BASE_URL)"

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
