# Persona: one Makefile, the same targets locally and in CI.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := deploy/tools/node_modules/.bin/buf
PYGEN := clients/python/src
export OPENBLAS_NUM_THREADS ?= 1
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help install format lint typecheck proto-check proto-baseline test test-unit faults reliability protos bench demo runbook-links clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock clients/python/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	# torchrec's metadata pulls the CUDA fbgemm-gpu build; fbgemm-gpu-cpu is in the lock instead.
	$(PY) -m pip install -q --no-deps torchrec==1.8.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# The persona.v1 contract and the Python client (torch-free, installable on its own).
	$(PY) -m pip install -q --no-deps --no-build-isolation -e clients/python
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned set

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
	$(PY) -m pytest -q tests

test-unit: install  ## unit tests only
	$(PY) -m pytest -q tests/unit

faults: install  ## the fault suite alone (also part of `make test`)
	$(PY) -m pytest -q tests/faults

reliability: install  ## run the fault suite and regenerate docs/reliability.md
	rm -f out/reliability.jsonl
	PERSONA_RELIABILITY_OUT=out/reliability.jsonl $(PY) -m pytest -q tests/faults
	$(PY) tests/faults/report.py out/reliability.jsonl docs/reliability.md

protos: install  ## regenerate the persona.v1 code: Python (clients/python/src/persona/v1), Go (clients/go/personav1)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PYGEN) --pyi_out=$(PYGEN) proto/persona/v1/*.proto
	$(PY) -m grpc_tools.protoc -Iproto --grpc_python_out=$(PYGEN) proto/persona/v1/service.proto
	clients/go/generate.sh

bench: install  ## run every benchmark at a quick size (README gives the full-size commands)
	$(PY) benchmarks/ingest.py --users 1000 --events 60000
	$(PY) benchmarks/encode.py --users 256
	$(PY) benchmarks/refresh.py --users 500
	$(PY) benchmarks/ann.py --n 100000
	$(PY) benchmarks/serve.py --users 20000 --lookalike-n 200000 --seconds 5

demo: install  ## the whole flow on the embedded stack
	$(PY) -m services.demo

runbook-links:  ## point the alerts' runbook links at RUNBOOK_BASE_URL (where docs/ is served)
	@test -n "$(RUNBOOK_BASE_URL)" || { echo "usage: make runbook-links RUNBOOK_BASE_URL=https://HOST/PATH/docs" >&2; exit 2; }
	$(PY) deploy/prometheus/runbook_base.py "$(RUNBOOK_BASE_URL)"

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
