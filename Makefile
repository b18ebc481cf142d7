# Entry points. Every target sets up .venv first (idempotent, see scripts/setup.sh).
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/$(VENV):$(PATH)
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
PORT ?= 3000

.PHONY: setup llama-cpp dagster-home pipeline test dagster sync why bench screenshot report lint

setup:
	@bash scripts/setup.sh

# llama-cpp-python compiled once into a wheel cache (~/.cache/slm-pipeline) + the GGUF converter.
llama-cpp: setup
	@bash scripts/setup_llama_cpp.sh

dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp orchestration/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# The main job: the whole pipeline on the built-in offline corpus (demo profile in params.yaml),
# then record the result in Dagster so the UI shows everything materialized.
pipeline: setup llama-cpp dagster-home
	dvc repro
	python -m orchestration sync
	python -m orchestration why

test: setup llama-cpp
	python -m pytest -q

# Dagster UI on 127.0.0.1 only (it has no authentication of its own; see README).
dagster: setup dagster-home
	dagster dev -h 127.0.0.1 -p $(PORT)

sync: setup dagster-home
	python -m orchestration sync

why: setup
	python -m orchestration why

bench: setup
	python bench/orchestration_overhead.py

screenshot: setup dagster-home
	python scripts/screenshot_asset_graph.py docs/asset_graph.png

# The demo's lineage report (after `make pipeline`) into docs/results/, linked from the README.
report:
	@test -f reports/evaluate/report.md || { echo "no report: run make pipeline first"; exit 1; }
	mkdir -p docs/results
	cp reports/evaluate/report.md reports/evaluate/*.png reports/distill/kd_vs_baseline.png docs/results/

lint: setup
	ruff check stages orchestration assets tests bench
