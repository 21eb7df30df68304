#!/usr/bin/env bash
# Generate the Salesforce Pub/Sub API stubs (package eventbus.v1) from the vendored, unmodified
# schemas/salesforce_pubsub/pubsub_api.proto (forcedotcom/pub-sub-api, CC0). Run by `make install`
# and by the image build; the generated modules are not committed and never edited by hand.
# The `-I<package path>=<dir>` mapping makes pubsub_api_pb2_grpc import
# `schemas.salesforce_pubsub.pubsub_api_pb2` rather than a bare top-level module.
# Usage: deploy/proto.sh [python]   (default: .venv/bin/python; it needs grpcio-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
"$python" -m grpc_tools.protoc \
  -Ischemas/salesforce_pubsub=schemas/salesforce_pubsub \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  schemas/salesforce_pubsub/pubsub_api.proto
