# trainguard: every developer and CI command. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The same cache folder e2e/cluster/build.sh builds into (kept outside the repository).
CACHE := $(or $(TRAINGUARD_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/trainguard)
BIN := $(CACHE)/bin
export PATH := $(BIN):$(abspath $(VENV))/bin:$(PATH)

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev,integrity]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Python virtual environment with the operator and dev tools

.PHONY: build
build: ## Build etcd, Kubernetes, kwok, helm, cosign, crane, registry, Kueue and Prometheus (with promtool) from Go modules (cached)
	e2e/cluster/build.sh

.PHONY: cluster
cluster: build venv ## Start the local control plane with simulated GPU nodes (idempotent)
	$(PY) -m e2e.cluster.localcluster up

.PHONY: cluster-down
cluster-down: ## Stop every process of the local control plane
	@if [ -x $(PY) ]; then $(PY) -m e2e.cluster.localcluster down; fi

.PHONY: lint
lint: venv ## ruff, mypy (strict) and import-linter: the Python checks, no Go build needed
	$(VENV)/bin/ruff check operator tests e2e bench conftest.py
	$(VENV)/bin/ruff format --check operator tests e2e bench conftest.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: lint-chart
lint-chart: chart-deps ## helm lint of the chart (needs the helm that `make build` makes)
	helm lint --strict charts/trainguard

# The chart's `kueue` dependency. Kueue publishes it at oci://registry.k8s.io/kueue/charts/kueue;
# offline, package the same chart from the Go module that `make build` downloads, with the release
# images that Kueue's own packaging (hack/helm-chart-package.sh) writes into its values.
KUEUE_VERSION = $(shell sed -n 's/^KUEUE_VERSION=//p' e2e/cluster/versions.env)
CHART_DEPS := charts/trainguard/charts

.PHONY: chart-deps
chart-deps: build ## Package the Kueue subchart from the Go module cache into charts/trainguard/charts/ (gitignored)
	@src="$$(go env GOMODCACHE)/sigs.k8s.io/kueue@$(KUEUE_VERSION)/charts/kueue"; \
	[[ -f "$$src/Chart.yaml" ]] || { echo "no Kueue chart at $$src: run 'e2e/cluster/build.sh kueue'"; exit 1; }; \
	stage=$$(mktemp -d); trap 'rm -rf "$$stage"' EXIT; \
	cp -R "$$src" "$$stage/kueue"; chmod -R u+w "$$stage"; \
	sed -i -e 's|us-central1-docker.pkg.dev/k8s-staging-images/kueue/|registry.k8s.io/kueue/|' \
	  -e 's|^\( *tag: \)release-[0-9.]*$$|\1$(KUEUE_VERSION)|' \
	  -e 's|^\( *pullPolicy: \)Always$$|\1IfNotPresent|' "$$stage/kueue/values.yaml"; \
	if grep -nE 'k8s-staging-images|tag: release-|pullPolicy: Always' "$$stage/kueue/values.yaml"; then \
	  echo "Kueue's values.yaml changed shape: update the chart-deps target"; exit 1; fi; \
	mkdir -p $(CHART_DEPS); rm -f $(CHART_DEPS)/kueue-*.tgz; \
	v=$(KUEUE_VERSION); helm package --version "$${v#v}" --app-version "$$v" "$$stage/kueue" -d $(CHART_DEPS)

.PHONY: chart-crds
chart-crds: ## Copy the canonical CRDs from crds/ into the Helm chart
	rm -f charts/trainguard/crds/*.yaml
	cp crds/*.yaml charts/trainguard/crds/

.PHONY: verify
verify: ## Fail when generated files (the chart's CRDs) drifted from their source
	@diff -r crds charts/trainguard/crds || { echo "charts/trainguard/crds differs from crds/: run 'make chart-crds'"; exit 1; }

.PHONY: fmt
fmt: venv ## Format and autofix the Python code
	$(VENV)/bin/ruff format operator tests e2e bench conftest.py
	$(VENV)/bin/ruff check --fix operator tests e2e bench conftest.py

.PHONY: unit
unit: venv ## Unit tests only (no cluster)
	$(PY) -m pytest -m "not cluster and not tools and not gpu" -q

.PHONY: test
test: build venv lint lint-chart verify ## Everything CI runs: lint, unit and cluster tests against the real local control plane
	$(PY) -m pytest -q

.PHONY: bench
bench: build venv ## Benchmarks; JSON results in bench/results/
	$(PY) -m bench.fingerprint_bench
	$(PY) -m bench.guard_bench
	$(PY) -m bench.step_bench
	$(PY) -m bench.verify_bench
	$(PY) -m bench.admission_bench
	$(PY) -m bench.scheduling_bench

.PHONY: demo
demo: cluster ## The two-minute story on the local cluster: tenants, signing, refusals, quota, a tampered weight caught
	$(PY) -m e2e.demo
