# Two commands on a fresh machine:
#   make demo   create .venv, generate the synthetic demo cohort (if absent), run the workflow on it
#   make test   create .venv, run the test suite (what CI runs, via .ci/run)
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
# the interpreter that creates the venv, found before .venv/bin is put first on PATH
BASE_PYTHON := $(shell command -v $(PYTHON))
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cmb-installed
# Jobs call `python -m cmb.<stage>`: the venv's python must come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

DEMO_BIDS ?= demo/bids
DEMO_OUT ?= demo/derivatives/cmb
DEMO_SUBJECTS ?= 3
DEMO_SEED ?= 42
# CMBs per demo subject (the population profile leaves 40% of subjects without any)
DEMO_CMB ?= 6
PYTEST_ARGS ?=

.PHONY: env demo demo-data test lint clean-demo

env: $(STAMP)

$(STAMP): requirements-cpu.txt pyproject.toml
	$(BASE_PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements-cpu.txt -e .
	touch $@

# Written to a temporary folder, then renamed: an interrupted run leaves no half cohort.
$(DEMO_BIDS)/dataset_description.json: | $(STAMP)
	rm -rf $(DEMO_BIDS).partial
	$(BIN)/cmb synth --out $(DEMO_BIDS).partial --preset tiny --n-subjects $(DEMO_SUBJECTS) \
		--seed $(DEMO_SEED) --t1w --n-cmb $(DEMO_CMB)
	rm -rf $(DEMO_BIDS)
	mv $(DEMO_BIDS).partial $(DEMO_BIDS)

demo-data: $(DEMO_BIDS)/dataset_description.json

demo: $(STAMP) demo-data
	$(BIN)/snakemake --profile profiles/local --config bids_dir=$(DEMO_BIDS) output_dir=$(DEMO_OUT)
	@echo "Outputs: $(DEMO_OUT) (cohort tables and QC page: $(DEMO_OUT)/cohort/cmb_counts.csv, cmb_detections.csv, cmb_report.html; failures: $(DEMO_OUT)/failures.csv)"

# Formatter and linters (pinned in requirements-dev.txt; configured in pyproject.toml): CI runs them first.
lint: $(STAMP)
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check rules Snakefile

# pytest's exit code 5 (no tests collected) fails this target like any other failure.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-demo:
	rm -rf demo
