#!/usr/bin/env python3
"""Offline policy checks of deploy/ that no off-the-shelf validator makes (run by deploy/validate.sh).

    python deploy/checks.py dockerfile deploy/docker/Dockerfile   # image policy (dockerfile-parse)
    python deploy/checks.py unit-values deploy/systemd/...         # no "value # comment" lines
    python deploy/checks.py split-kinds RENDERED.yaml OUTDIR KIND…  # one JSON file per object of KIND

A script, not product code: tests/unit/test_deploy_manifests.py loads it by path. Each check returns
the list of problems (empty = passes) so a test can feed it a bad input and see it fail.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

#: packages and paths that mean a compiler or a build cache is in the image
BUILD_TOOLS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|make|cmake|libc6-dev|python3-dev|[a-z0-9.+-]+-dev)\b|/root/\.cache/pip|/\.cache/pip"
)
#: a base reference pinned to a full version (``3.11.14-slim-bookworm``) or by digest
PINNED_TAG = re.compile(r"^[^:@\s]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$|^[^@\s]+@sha256:[0-9a-f]{64}$")


def dockerfile_problems(text: str) -> list[str]:
    """The image policy: pinned base, non-root numeric final USER, exec-form ENTRYPOINT/CMD, no
    build tools installed in the final stage, no shell-form STOPSIGNAL trickery."""
    import io

    from dockerfile_parse import DockerfileParser

    # In memory: without a file object, DockerfileParser writes ``content`` to ./Dockerfile
    parser = DockerfileParser(fileobj=io.BytesIO(), env_replace=False)
    parser.content = text
    instructions = parser.structure
    problems: list[str] = []
    args = _arg_defaults(instructions)
    stages = _stages(instructions)
    if not stages:
        return ["no FROM"]
    problems += _base_problems(stages, args)
    problems += _final_stage_problems(_lineage(stages))
    return problems


def _lineage(stages: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The final stage's instructions preceded by those of the stages it is built FROM (they are in it)."""
    by_name = {}
    for stage in stages:
        words = stage[0]["value"].split()
        if len(words) == 3 and words[1].lower() == "as":
            by_name[words[2].lower()] = stage
    chain: list[dict[str, Any]] = []
    stage: list[dict[str, Any]] | None = stages[-1]
    while stage is not None and len(chain) < 1000:
        chain = stage + chain
        stage = by_name.get(stage[0]["value"].split()[0].lower())
    return chain


def _arg_defaults(instructions: list[dict[str, Any]]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for ins in instructions:
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            name, _, default = ins["value"].partition("=")
            defaults[name.strip()] = default.strip()
    return defaults


def _stages(instructions: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for ins in instructions:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _base_problems(stages: list[list[dict[str, Any]]], args: dict[str, str]) -> list[str]:
    names = {stage[0]["value"].split()[-1].lower() for stage in stages if " as " in stage[0]["value"].lower()}
    problems = []
    for stage in stages:
        image = stage[0]["value"].split()[0]
        if image.lower() in names:
            continue  # FROM an earlier stage
        ref = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
        if "$" in ref:
            problems.append(f"FROM {image}: the base has no default (give the ARG a pinned default)")
        elif ref.endswith(":latest") or ":" not in ref.split("/")[-1] and "@" not in ref:
            problems.append(f"FROM {ref}: unpinned base (latest or no tag)")
        elif not PINNED_TAG.match(ref):
            problems.append(f"FROM {ref}: pin the base to a full version tag (x.y.z) or a digest")
    return problems


def _final_stage_problems(final: list[dict[str, Any]]) -> list[str]:
    problems = []
    users = [ins["value"].strip() for ins in final if ins["instruction"] == "USER"]
    if not users:
        problems.append("final stage: no USER (the image would run as root)")
    else:
        user = users[-1].split(":")[0]
        if not user.isdigit():
            problems.append(f"final stage: USER {users[-1]} is not numeric (runAsNonRoot cannot verify a name)")
        elif int(user) == 0:
            problems.append("final stage: USER 0 is root")
    for kind in ("ENTRYPOINT", "CMD"):
        found = [ins for ins in final if ins["instruction"] == kind]
        if kind == "ENTRYPOINT" and not found:
            problems.append("final stage: no ENTRYPOINT")
        for ins in found:
            try:
                parsed = json.loads(ins["value"])
            except ValueError:
                parsed = None
            if not isinstance(parsed, list) or not all(isinstance(part, str) for part in parsed):
                problems.append(f"{kind} {ins['value']}: not exec form (a shell would be PID 1 and eat SIGTERM)")
    for ins in final:
        if ins["instruction"] in ("RUN", "COPY", "ADD") and BUILD_TOOLS.search(ins["value"]):
            problems.append(f"final stage: build tools or caches: {ins['instruction']} {ins['value'][:80]}")
    return problems


def unit_value_problems(path: Path) -> list[str]:
    """systemd takes ``Key=value # note`` as the value ``value # note``: only whole-line comments."""
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";", "[")) or "=" not in stripped:
            continue
        if re.search(r"\s[#;]", stripped.partition("=")[2]):
            problems.append(f"{path}:{number}: a comment after a value becomes part of the value: {stripped}")
    return problems


def split_kinds(rendered: Path, outdir: Path, kinds: list[str]) -> list[Path]:
    """Write each object of ``kinds`` in a multi-document YAML as its own JSON file."""
    import yaml

    written = []
    outdir.mkdir(parents=True, exist_ok=True)
    for doc in yaml.safe_load_all(rendered.read_text()):
        if doc and doc.get("kind") in kinds:
            target = outdir / f"{doc['kind']}-{doc['metadata']['name']}.json"
            target.write_text(json.dumps(doc, indent=1))
            written.append(target)
    return written


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "dockerfile":
        problems = [p for path in rest for p in (f"{path}: {x}" for x in dockerfile_problems(Path(path).read_text()))]
    elif command == "unit-values":
        problems = [p for path in rest for p in unit_value_problems(Path(path))]
    elif command == "split-kinds":
        rendered, outdir, *kinds = rest
        for path in split_kinds(Path(rendered), Path(outdir), kinds):
            print(path)
        return 0
    else:
        print(f"unknown check {command}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
