# Tamiyo — every target sets up .venv itself (idempotent; uv's download cache keeps rebuilds fast).
# Packages are compiled to bytecode at install: with PYTHONDONTWRITEBYTECODE=1 (set on some machines)
# every process would otherwise compile torch, Faust and MLflow again (measured: a worker's imports 15 s -> 7 s).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tamiyo-installed
DEMO_ARGS ?=

.PHONY: venv demo test bench chaos broker up down clean help

help:
	@echo "make demo   - run the whole system on embedded defaults"
	@echo "make test   - run the test suite with coverage"
	@echo "make bench  - run the benchmarks, write bench/results.json and bench/results.md"
	@echo "make chaos  - run the reliability scenarios, write chaos/report.json"
	@echo "make broker - run the embedded broker until Ctrl-C"
	@echo "make up/down - docker compose stack (needs a Docker engine)"
	@echo "make venv   - set up .venv only;  make clean - remove .venv and local data"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Tamiyo needs Python 3.11)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check "uv>=0.4"
	$(VENV)/bin/uv pip install -p $(PY) --compile-bytecode -e ".[dev]"
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/tamiyo demo $(DEMO_ARGS)

test: venv
	$(PY) -m pytest --cov --cov-report=term --cov-report=xml:coverage.xml $(PYTEST_ARGS)

bench: venv
	$(VENV)/bin/tamiyo bench --out bench/results.json

chaos: venv
	$(VENV)/bin/tamiyo chaos --out chaos/report.json

broker: venv
	$(VENV)/bin/tamiyo broker

up:
	docker compose up -d

down:
	docker compose down

clean:
	rm -rf $(VENV) .tamiyo .pytest_cache .coverage coverage.xml
