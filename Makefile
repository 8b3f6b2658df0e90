# All set-up happens here; a fresh machine needs only `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean browser

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

# Headless Chromium for the HTML report's render test; skipped (never fatal) without apt.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	  >/dev/null 2>&1 || echo "note: chromium not installed; the report render test skips"; }

# One intra-op thread per test process: two processes on two cores, no thread stalls.
test: install browser
	$(BIN)/lint-imports --no-cache
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q

demo: install
	$(BIN)/eigenarch demo

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
