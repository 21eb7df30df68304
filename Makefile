# fulfillment-fleet — `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLEET := $(BIN)/fleet
PYTEST := $(BIN)/pytest
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@./deploy/bootstrap.sh
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# the Salesforce Pub/Sub API stubs, generated from the vendored .proto (never committed)
PROTO_STUBS := schemas/salesforce_pubsub/pubsub_api_pb2_grpc.py
$(PROTO_STUBS): schemas/salesforce_pubsub/pubsub_api.proto deploy/proto.sh $(STAMP)
	@./deploy/proto.sh $(BIN)/python

install: $(STAMP) $(PROTO_STUBS) ## Create the venv and install the fleet with its dev tools, generate the gRPC stubs (idempotent)

fmt: install ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install ## ruff (lint + format check)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy, strict for events/ schemas/ adapters/ workers/ devtools/
	$(BIN)/mypy

schemas: install ## Export the JSON Schema of every event type to docs/events/
	$(FLEET) events schemas

check: lint typecheck check-deploy ## Lint, type-check, verify docs/events is current, validate deploy/
	$(FLEET) events schemas --check

check-deploy: install ## Validate deploy/ offline: compose, kustomize overlays, KEDA objects, systemd unit, Dockerfile
	./deploy/validate.sh

constraints: install ## Rewrite constraints.txt from the venv (after a deliberate upgrade)
	$(BIN)/python deploy/constraints.py > constraints.txt.new && mv constraints.txt.new constraints.txt

IMAGE ?= fulfillment-fleet:smoke
image-smoke: ## Build the image on a local Debian base and run it (needs root and docker.io; not part of test/check)
	IMAGE=$(IMAGE) flock /tmp/fleet-heavy.lock ./deploy/docker/smoke.sh

up: install ## Start the local stack (Kafka, Redis, PostgreSQL) and create topics and tables
	$(FLEET) stack up

down: install ## Stop the local stack
	$(FLEET) stack down

status: install ## Show the local stack
	$(FLEET) stack status

test-unit: install ## Unit tests (no servers)
	$(PYTEST) tests/unit -q

test-integration: up ## Integration tests (real Kafka/Redis/Postgres, sandboxes over HTTP)
	$(PYTEST) tests/integration -q

test-e2e: up ## End-to-end tests (worker processes and the CLI)
	$(PYTEST) tests/e2e -q

test: check up ## Everything: check, then unit, integration and e2e tests (the 25 slowest listed: CI's budget is ~15 min)
	$(PYTEST) tests -q --durations=25

run: up ## Run the fleet on the embedded local stack with the sandboxes, then the demo scenario (Ctrl-C stops)
	$(FLEET) demo up

bench-runtime: up ## Benchmark the consume runtime against raw aiokafka and faust (bench/results/runtime.json)
	$(BIN)/python -m bench.runtime_bench --repeat 7

bench-ingress: up ## Benchmark webhook ingress and CDC ingress (bench/results/ingress.json)
	$(BIN)/python -m bench.ingress_bench

bench-e2e: up ## Benchmark orders and cache busting end to end through the sandboxes (bench/results/e2e.json)
	$(BIN)/python -m bench.e2e_bench

bench: bench-runtime bench-ingress bench-e2e ## Every benchmark

SEED ?=
chaos: install ## Chaos run (~10 min): 3 brokers, several instances per worker, seeded faults; bench/results/chaos.json
	$(BIN)/python -m bench.chaos $(if $(SEED),--seed $(SEED))

chaos-smoke: install ## The short chaos run of make test (~2 min, fixed seed); prints the zeros
	$(BIN)/python -m bench.chaos --smoke --seed 7

.PHONY: help install fmt lint typecheck schemas check check-deploy constraints image-smoke up down status test-unit test-integration test-e2e test run \
	bench bench-runtime bench-ingress bench-e2e chaos chaos-smoke
