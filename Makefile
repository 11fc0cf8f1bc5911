# Every target creates .venv and installs what it needs on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-flaky test test-core-py310 lint docs-check bench clean system-deps

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

# The core needs only the standard library and supports Python 3.10: run its tests there too,
# with no extras installed, when a python3.10 is on this machine.
PY310 ?= $(firstword $(shell python3.10 -c 'import sys; print(sys.executable)' 2>/dev/null) \
	$(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python))
CORE_TESTS := tests/test_outcome.py tests/test_context.py tests/test_events.py tests/test_testing.py \
	tests/policies/test_retry.py tests/policies/test_timeout.py tests/policies/test_pipeline.py \
	tests/policies/test_breaker.py tests/policies/test_breaker_model.py \
	tests/policies/test_bulkhead.py tests/policies/test_ratelimit.py tests/policies/test_hedge.py

test-core-py310:
	@if [ -z "$(PY310)" ]; then echo "no python3.10 here: core-on-3.10 check skipped"; exit 0; fi; \
	test -x .venv310/bin/python || $(PY310) -m venv .venv310; \
	.venv310/bin/python -m pip install -q pytest pytest-asyncio pytest-timeout hypothesis && \
	.venv310/bin/python -m pip install -q -e . && \
	.venv310/bin/python -m pytest -q $(CORE_TESTS)

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
	rm -rf $(VENV) .venv310 build dist .pytest_cache .mypy_cache .ruff_cache demo-report.html demo-scorecard.json
