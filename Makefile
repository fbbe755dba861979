# The two quick-start commands: `make run` (a node with the bundled example tasks) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup sandbox-tools browser curl load-tool run test lint proto bench screenshots clean

$(BIN)/spearlet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/spearlet sandbox-tools browser curl

# $(call system-package,COMMAND,PACKAGE,WHAT IT IS FOR): install PACKAGE with apt-get when COMMAND
# is missing, if this is root on a system with apt-get; otherwise say what to install.
define system-package
	@command -v $(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(2) ($(3))"; \
	    apt-get install -y -q $(2) >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q $(2) >/dev/null; }; \
	  else \
	    echo "$(1) is missing: install it (e.g. sudo apt-get install $(2)) for $(3)"; \
	  fi; }
endef

# Functions run in a bubblewrap sandbox (README, Security). Without it, a node says so at start and
# runs functions unsandboxed (or refuses to start, with sandbox = "required").
sandbox-tools:
	$(call system-package,bwrap,bubblewrap,the function sandbox)

# The dashboard's browser tests drive a real headless Chromium (Debian's `chromium`, through the
# playwright package, which downloads no browser of its own); without one, they skip and say why.
browser:
	$(call system-package,chromium,chromium,the dashboard's browser tests)

# The README's HTTP examples are run by a test with curl, as a reader would run them.
curl:
	$(call system-package,curl,curl,the README's HTTP examples test)

# The suite measures the HTTP door with Debian's `wrk`; without it, those rows say so and are left out.
load-tool:
	$(call system-package,wrk,wrk,the HTTP rows of make bench)

# A node needs no browser: only the sandbox's bubblewrap.
run: $(BIN)/spearlet sandbox-tools
	$(BIN)/spearlet serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src bench

test: lint
	$(BIN)/pytest

# Benchmarks beside a bare gRPC echo, Celery and RQ (on the venv's redis-server); see README, Performance.
bench: setup load-tool
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.suite

# The README's dashboard pictures (docs/screenshots/), taken by the browser tests from a live node.
screenshots: setup
	SPEARLET_SCREENSHOTS=docs/screenshots $(BIN)/pytest --no-cov -q tests/api/http/test_dashboard_pages.py -k screenshots_are_taken

proto: setup
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) .spearlet .pytest_cache .mypy_cache .ruff_cache
