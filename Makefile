# The two commands the README promises: `make demo` (the main job) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_COMPILE_BYTECODE := 1

# The local cloud the demo talks to. Tests start their own on free ports.
ARRIVAL_AWS_PORT ?= 4566
ARRIVAL_MLFLOW_PORT ?= 5000
export ARRIVAL_AWS_PORT ARRIVAL_MLFLOW_PORT
DEMO_ENV := AWS_ENDPOINT_URL=http://127.0.0.1:$(ARRIVAL_AWS_PORT) AWS_ACCESS_KEY_ID=test \
	AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 MLFLOW_TRACKING_URI=http://127.0.0.1:$(ARRIVAL_MLFLOW_PORT)

.PHONY: help install demo test test-unit lint up down

help:
	@echo "make demo   bootstrap, bring the local cloud up, run the chain on a sample file"
	@echo "make test   install everything and run the whole test suite (unit, integration, e2e)"
	@echo "make lint   ruff + mypy"

install:
	@command -v uv >/dev/null || python3 -m pip install --quiet uv
	uv sync --frozen

up: install
	uv run arrival up

down:
	uv run arrival down

demo: up
	$(DEMO_ENV) uv run arrival deploy
	$(DEMO_ENV) uv run arrival demo
	$(DEMO_ENV) uv run arrival status

lint: install
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy

test-unit: install
	uv run pytest tests/unit

test: install lint
	uv run pytest

# `sam build`'s makefile build method for the Lambda functions (also used by `arrival deploy`).
# The functions' requirements come from the `lambda` dependency group of uv.lock, so they are pinned
# and a function never borrows a package only the project's environment has.
build-IngestFunction:
	@mkdir -p "$(ARTIFACTS_DIR)"
	@cp -r common handlers "$(ARTIFACTS_DIR)/"
	@uv export --frozen --only-group lambda --no-hashes --no-emit-project --no-header \
		--format requirements-txt > "$(ARTIFACTS_DIR)/requirements.txt"
	@if [ "$${ARRIVAL_VENDOR_LAMBDA_DEPS:-1}" != 0 ]; then \
		python3 -m pip install --quiet -r "$(ARTIFACTS_DIR)/requirements.txt" -t "$(ARTIFACTS_DIR)"; fi

build-ReconcileFunction: build-IngestFunction
