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

.PHONY: setup run run-onnx-teacher test test-fast bench plots clean

setup:
	bash scripts/bootstrap.sh

run: setup
	dvc repro
	@facekd summary

# The pipeline with an ONNX-only teacher (configs/embedded_onnx_teacher.yaml): the embedded teacher is
# trained and exported once, then imported from that .onnx as a model-zoo teacher would be. It leaves
# the preset in params.yaml (`git checkout params.yaml` returns to the default).
ONNX_TEACHER := data/raw/teacher/embedded_teacher.onnx
run-onnx-teacher: setup
	@git diff --quiet -- params.yaml || { echo "params.yaml has local changes (a previous run-onnx-teacher leaves its preset there): run 'git checkout params.yaml' or commit them first" >&2; exit 2; }
	test -f $(ONNX_TEACHER) || { dvc repro export@teacher && install -m 644 exports/teacher.onnx $(ONNX_TEACHER); }
	cp configs/embedded_onnx_teacher.yaml params.yaml
	dvc repro
	@facekd summary

test: setup
	bash scripts/run_tests.sh

test-fast: setup
	python -m pytest tests/unit -q -m "not slow"

bench: setup
	python -m bench

# `dvc plots show` of the last run as a page that works offline (dvc_plots/index.html)
plots: setup
	facekd plots

clean:
	rm -rf data/prepared data/eval models checkpoints features metrics reports exports plots dvc_plots mlflow.db mlruns
