# maa-gateway — two commands: `make demo` and `make test`. Both set up everything first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test test-unit lint docs bench services venv certs clean help

help:
	@echo "make demo   two administrations exchange a signed request and reply end to end"
	@echo "make test   unit and integration tests (real RabbitMQ, PostgreSQL, TLS, openssl, xmlsec1)"
	@echo "make lint   ruff, mypy --strict and import-linter (the architecture's import rules)"
	@echo "make docs   regenerate docs/errors.md from the ErrorCode table in gateway/errors.py"
	@echo "make bench  benchmarks (see bench/README.md)"
	@echo "make certs  development certificates for the example configuration in config/"

venv: $(STAMP)

# Reinstall only when the project's metadata changed: a second run is quick.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

services:
	@bash deploy/scripts/ensure-services.sh

demo: venv services
	$(BIN)/maagw demo $(DEMO_ARGS)

test: venv services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest --ignore=tests/integration $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check gateway adapters maagw_testing tests bench
	$(BIN)/ruff format --check gateway adapters maagw_testing tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

docs: venv
	$(BIN)/python -m gateway.errors > docs/errors.md

certs: venv
	@bash deploy/scripts/dev-certs.sh

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# the full run takes about ten minutes; BENCH_ARGS=--smoke for a quick check
bench: $(BENCH_STAMP) services
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
