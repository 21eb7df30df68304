#!/usr/bin/env python3
"""Turn a CustomResourceDefinition's ``openAPIV3Schema`` into a JSON Schema for ``check-jsonschema``.

Usage (how keda-*.json here were made, from KEDA's repository at a release tag):

    git show v2.20.2:config/crd/bases/keda.sh_scaledobjects.yaml > /tmp/so.yaml
    python deploy/k8s/schemas/crd_to_jsonschema.py /tmp/so.yaml --source "kedacore/keda v2.20.2 ..." \
        > deploy/k8s/schemas/keda-scaledobject.json

What changes on the way: descriptions are dropped (size); ``x-kubernetes-int-or-string`` becomes
``anyOf: [integer, string]``; ``apiVersion`` and ``kind`` are pinned to the CRD's own; and every object
that lists ``properties`` (and neither ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields``)
gets ``additionalProperties: false``, so a misspelt field fails here as the API server's strict field
validation (``kubectl apply --validate=strict``) would reject it. CEL rules (``x-kubernetes-validations``)
are not checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml


def convert(node: Any) -> Any:
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description" or key.startswith("x-kubernetes-"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: convert(sub) for name, sub in value.items()}
        else:
            out[key] = convert(value)
    if node.get("x-kubernetes-int-or-string"):
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    open_ended = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and not open_ended:
        out["additionalProperties"] = False
    return out


def schema_of(crd: dict[str, Any], version: str | None, source: str) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    chosen = next(v for v in versions if v["name"] == version) if version else next(v for v in versions if v["storage"])
    schema = convert(chosen["schema"]["openAPIV3Schema"])
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema["properties"]["apiVersion"] = {"const": f"{group}/{chosen['name']}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({"apiVersion", "kind", "metadata", *schema.get("required", [])})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"{kind} {group}/{chosen['name']} from {source}; made by crd_to_jsonschema.py",
        **schema,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", help="the CRD YAML file")
    parser.add_argument("--version", help="the CRD version (default: the storage version)")
    parser.add_argument("--source", required=True, help="where the CRD came from (repository, tag, commit, path)")
    args = parser.parse_args(argv)
    with open(args.crd, encoding="utf-8") as handle:
        crd = yaml.safe_load(handle)
    json.dump(schema_of(crd, args.version, args.source), sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
