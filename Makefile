# All set-up happens here; a fresh machine needs only `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean browser mutation

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

# Mutation testing of the rule functions (SPEC sections 3-6, the claims, the schedule) against
# their tests ([tool.mutmut] in pyproject.toml). Slow (about 1 h on 2 cores): not in CI.
# Results: docs/testing.md.
MUTANTS := \
  'eigenarch.spectrum.spectra.xǁSpectraǁeigenvalues__mutmut_*' \
  'eigenarch.spectrum.spectra.xǁSpectraǁdecompose__mutmut_*' \
  'eigenarch.spectrum.spectra.xǁSpectraǁintrinsic_dim__mutmut_*' \
  'eigenarch.spectrum.spectra.xǁSpectraǁdegrees_of_freedom__mutmut_*' \
  'eigenarch.spectrum.spectra.xǁSpectraǁeffective_rank__mutmut_*' \
  'eigenarch.spectrum.collector.x__multiply__mutmut_*' \
  'eigenarch.widths.ias.x_adjusted_widths__mutmut_*' \
  'eigenarch.widths.ias.x_expand_widths__mutmut_*' \
  'eigenarch.widths.ias.x__unit_maps__mutmut_*' \
  'eigenarch.widths.ias.x_intrinsic_per_layer__mutmut_*' \
  'eigenarch.widths.ties.*' \
  'eigenarch.widths.cost.x_round_width__mutmut_*' \
  'eigenarch.widths.cost.x_uniform_widths__mutmut_*' \
  'eigenarch.widths.cost.x__layer_cost__mutmut_*' \
  'eigenarch.widths.cost.x_graph_cost__mutmut_*' \
  'eigenarch.report.claims.*' \
  'eigenarch.train.schedule.*'

mutation: install
	rm -rf mutants
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/mutmut results

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
