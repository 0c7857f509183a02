# pnp-integrated: `make run` brings up a single node, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fleet lint system-packages clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## Single node in the foreground: embedded broker, SQLite and self-signed certificates under ./var
run: $(STAMP)
	PNP_DATA_DIR=$${PNP_DATA_DIR:-var} $(BIN)/pnpp run

## The whole suite: lint and the import layers, then unit, protocol and integration tests (real PostgreSQL, real TLS sockets)
test: $(STAMP) system-packages
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest

## The 300-device failover scenario alone (network namespaces, root, about a minute and a half; part of `make test`)
test-fleet: $(STAMP) system-packages
	$(BIN)/pytest -m fleet tests/ha

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

## Debian packages the integration tests start (PostgreSQL, ActiveMQ, Chromium); installed only when missing
system-packages:
	@sh deploy/system-packages.sh

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
