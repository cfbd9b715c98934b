# Each target installs what it needs into .venv first (torch==2.13.0 before the rest: see DEVELOPERS.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/polymodal demo --output demo_out

lint: $(STAMP)
	$(BIN)/ruff check polymodal tests benchmarks
	$(BIN)/ruff format --check polymodal tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/av_digits.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
