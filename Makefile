# Every target creates .venv and installs what it needs on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-flaky test lint docs-check bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages some tests need (promtool, amtool, headless chromium); installed when missing.
system-deps:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "note: missing Debian packages:$$missing (their tests will skip)"; fi; \
	fi

# the main job: the shop under chaos, naive vs stoic, with an HTML report and a JSON scorecard
demo: $(STAMP)
	$(BIN)/stoic demo --report demo-report.html --json demo-scorecard.json

# the small first example: one flaky service, naive loop vs stoic
demo-flaky: $(STAMP)
	$(BIN)/python examples/flaky_service.py

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy

docs-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_docs.py

# every benchmark script, each measuring stoic against its peers in one run
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache demo-report.html demo-scorecard.json
