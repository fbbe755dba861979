# The two quick-start commands: `make run` (a node with the bundled example tasks) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint proto bench clean

$(BIN)/spearlet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/spearlet

run: setup
	$(BIN)/spearlet serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src bench

test: lint
	$(BIN)/pytest

# Benchmarks beside a bare gRPC echo, Celery and RQ (on the venv's redis-server); see README, Performance.
bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.suite

proto: setup
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) .spearlet .pytest_cache .mypy_cache .ruff_cache
