# The two commands of README's quick start, and a few helpers.
#   make run    install into .venv, create the demo instance, run the service
#   make test   install into .venv (with test tools and the Debian peers), run the suite

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/causerie: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/causerie
	$(BIN)/causerie init --demo
	$(BIN)/causerie serve

test: $(BIN)/causerie
	./scripts/install-system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(BIN)/causerie
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache
