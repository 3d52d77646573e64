# The single entry point: CI runs `make test` (through .ci/run), people run `make run`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SOURCES := gateway tests

.PHONY: run demo test lint fmt soak bench docker-build clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wa-gateway needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/wa-gateway demo

demo: run

test: lint
	@rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

fmt: $(STAMP)
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

# Not part of `make test` (which runs 30 seconds of it): SOAK_SECONDS of traffic, at most 3600.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/python -m tests.soak --seconds $(SOAK_SECONDS)

# Not part of `make test` (which runs a few seconds of it): the gateway, the Webapp reached
# directly, a bare aiohttp proxy and nginx (when installed), BENCH_SECONDS of load each per
# request shape, by wrk when installed. `apt-get install wrk nginx` for the full comparison.
BENCH_SECONDS ?= 10
bench: $(STAMP)
	$(BIN)/python -m tests.bench --seconds $(BENCH_SECONDS)

docker-build:
	docker build -t wa-gateway .

clean:
	rm -rf $(VENV) build dist *.egg-info .coverage .mypy_cache .ruff_cache .pytest_cache
