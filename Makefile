# The README's two commands are `make pipeline` and `make test`; both set up .venv first (idempotent).
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
MLFLOW_PORT ?= 5000

.PHONY: setup pipeline test test-slow test-all lint format ui server bench validate

setup:
	@bash scripts/setup.sh

pipeline: setup
	dvc repro
	dvc metrics show

test: setup
	python -m pytest

test-slow: setup
	python -m pytest -m slow

test-all: setup
	python -m pytest -m "slow or not slow"

# ruff (lint and format check) and mypy, as CI runs them; `make format` rewrites the files.
lint: setup
	ruff check pipeline models tests bench
	ruff format --check pipeline models tests bench
	mypy

format: setup
	ruff check --fix pipeline models tests bench
	ruff format pipeline models tests bench

validate: setup
	python -m pipeline.stages.validate

# MLflow UI on the repository's store, bound to loopback only. One worker and no job consumers (they run GenAI
# evaluation jobs, unused here): 2 processes instead of ~15 (see BENCHMARKS.md, "A light MLflow UI").
ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

# A tracking server over the same store, for parallel queue workers or a team: MLFLOW_TRACKING_URI=http://127.0.0.1:5000
server: setup
	mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --artifacts-destination $(CURDIR)/mlartifacts \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

bench: setup
	python bench/train_throughput.py
