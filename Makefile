# The two commands a new user needs:
#   make demo   set up everything and evaluate the built-in demo model on the embedded default
#   make test   set up everything and run the test suite (CI runs this too)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/diffaudit demo

test: install
	scripts/ensure-services
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy diffaudit app workers bench scripts
	$(BIN)/lint-imports

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done
