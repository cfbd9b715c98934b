# Each target installs what it needs into .venv first (torch==2.13.0 before the rest: see DEVELOPERS.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,onnx]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/polymodal demo --output demo_out

lint: $(STAMP)
	$(BIN)/ruff check polymodal tests benchmarks
	$(BIN)/ruff format --check polymodal tests benchmarks

# The browser tests drive Debian's Chromium headless (Playwright/Selenium cannot download a browser here).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: lint browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/av_digits.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
