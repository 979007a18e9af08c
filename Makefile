# Both targets bootstrap .venv themselves on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pullwake demo $(DEMO_ARGS)

# The README's test command: static checks first (cheap, fail fast), then the suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pullwake dashboards build --check
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck
	$(BIN)/pullwake dashboards build --check

# Benchmarks print figures (targets live here, not in timed tests); each stops by itself.
bench: $(STAMP)
	$(BIN)/python bench/bench_server.py
	$(BIN)/python bench/bench_detection.py
	$(BIN)/python bench/bench_telemetry.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
