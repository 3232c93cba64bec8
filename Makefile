# The two commands of the README: `make run` (set up + run the pipeline) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180

.PHONY: setup run test test-fast bench clean

setup:
	bash scripts/bootstrap.sh

run: setup
	dvc repro
	@facekd summary

test: setup
	bash scripts/run_tests.sh

test-fast: setup
	python -m pytest tests/unit -q -m "not slow"

bench: setup
	python -m bench

clean:
	rm -rf data/prepared data/eval models checkpoints features metrics reports exports mlflow.db mlruns
