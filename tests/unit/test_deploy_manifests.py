"""deploy/ agrees with the code: every worker is deployed everywhere as a real ``fleet`` command, KEDA
scales real consumer groups on the topics they read and never past their partitions, manifests set
only settings the fleet reads, and the Dockerfile keeps the image policy.

No servers: the kustomizations are rendered with ``kubectl kustomize`` (offline). Each checker is a
function of plain data, and each has a negative case that shows it can fail.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from events.topics import DOMAIN_TOPICS, GROUP_SOURCES, ConsumerGroup, group_topics
from tests.support import load_script
from workers.cli import main as fleet_main
from workers.config import known_env_vars
from workers.routes import INGRESS, ROUTES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = ("base", "overlays/local", "overlays/prod")
WORKERS = set(ROUTES) | set(INGRESS)
FLEET_IMAGE = "fulfillment-fleet"
SECRETS_MOUNT = "/run/secrets"
Doc = dict[str, Any]


def load_checks() -> ModuleType:
    """deploy/checks.py is a script (deploy/ holds no importable product code): load it by path."""
    return load_script(DEPLOY / "checks.py", "deploy_checks")


checks = load_checks()


# --- rendering -------------------------------------------------------------------------------------
def render(kustomization: str) -> list[Doc]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s" / kustomization)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: render(name) for name in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def compose() -> Doc:
    loaded: Doc = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    return loaded


def pod_specs(docs: Iterable[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(object, pod spec) of every Deployment and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def fleet_containers(docs: Iterable[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(object, container) of every container that runs the fleet image's entrypoint."""
    for doc, spec in pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            if FLEET_IMAGE in container["image"] and "command" not in container:
                yield doc, container


def is_fleet_service(service: Doc) -> bool:
    return "build" in service or FLEET_IMAGE in str(service.get("image", ""))


# --- checkers (plain data in, problems out) --------------------------------------------------------
def deployed_workers(docs: Iterable[Doc]) -> dict[str, str]:
    """Deployment name → worker it runs (``args: [run, <worker>]``)."""
    found = {}
    for doc, container in fleet_containers(docs):
        args = container.get("args", [])
        if doc["kind"] == "Deployment" and args[:1] == ["run"] and len(args) == 2:
            found[doc["metadata"]["name"]] = args[1]
    return found


def compose_workers(compose: Doc) -> set[str]:
    return {
        service["command"][1]
        for service in compose["services"].values()
        if is_fleet_service(service) and service.get("command", [None])[0] == "run"
    }


def fleet_commands(docs: Iterable[Doc], compose: Doc, unit: str) -> list[list[str]]:
    """Every ``fleet`` argv the manifests run: k8s args, compose commands (also inside ``sh -c``), ExecStart."""
    commands = [list(container.get("args", [])) for _, container in fleet_containers(docs)]
    for service in compose["services"].values():
        if not is_fleet_service(service) or "command" not in service:
            continue
        entrypoint = service.get("entrypoint")
        if entrypoint is None:
            commands.append(list(service["command"]))
        elif entrypoint[0] == "/bin/sh":
            for part in service["command"][-1].split("&&"):
                words = shlex.split(part)
                assert words[0] == "fleet", part
                commands.append(words[1:])
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            words = shlex.split(line.partition("=")[2].replace("%i", "fulfillment"))
            commands.append(words[1:])
    return commands


def invalid_commands(commands: Iterable[list[str]]) -> list[str]:
    """Commands the ``fleet`` CLI rejects (unknown command or option): ``--help`` parses without running."""
    runner = CliRunner()
    bad = []
    for argv in commands:
        result = runner.invoke(fleet_main, [*argv, "--help"])
        if result.exit_code != 0:
            bad.append(f"fleet {' '.join(argv)}: {result.output.strip().splitlines()[-1:]}")
    return bad


def partitions(topic: str, config: dict[str, str]) -> int:
    """A topic's partition count: the catalog's, or the class override the manifest sets."""
    for spec in DOMAIN_TOPICS.values():
        if spec.name == topic:
            return int(config.get("FLEET_TOPICS__DOMAIN__PARTITIONS", spec.partitions))
    for group in ConsumerGroup:
        widest = max(partitions(t, config) for t in GROUP_SOURCES[group])
        for spec in group_topics(group, widest):
            if spec.name == topic:
                return int(config.get("FLEET_TOPICS__RETRY__PARTITIONS", spec.partitions))
    raise KeyError(topic)


def scaled_object_problems(docs: list[Doc], config: dict[str, str]) -> list[str]:
    """KEDA: real group of the target's route, one kafka trigger per source topic, quoted metadata,
    excludePersistentLag, maxReplicaCount within the partitions of the group's widest topic."""
    workers = deployed_workers(docs)
    problems = []
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        name, spec = so["metadata"]["name"], so["spec"]
        worker = workers.get(spec["scaleTargetRef"]["name"])
        route = ROUTES.get(worker or "")
        if route is None:
            problems.append(f"{name}: scales {spec['scaleTargetRef']['name']}, which runs no consumer route")
            continue
        readable = {str(t) for t in GROUP_SOURCES[route.group]} | {t.name for t in group_topics(route.group)}
        topics = []
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            if trigger["type"] != "kafka":
                continue
            if any(not isinstance(value, str) for value in meta.values()):
                problems.append(f"{name}: trigger metadata must be strings (quote numbers and booleans)")
            group = meta.get("consumerGroup")
            if group not in {str(g) for g in ConsumerGroup}:
                problems.append(f"{name}: consumerGroup {group!r} is not an events.topics.ConsumerGroup")
            elif group != route.group:
                problems.append(f"{name}: consumerGroup {group} but {worker} consumes as {route.group}")
            if meta.get("topic") not in readable:
                problems.append(f"{name}: topic {meta.get('topic')!r} is not one {route.group} reads")
            if meta.get("excludePersistentLag") != "true":
                problems.append(f"{name}: trigger on {meta.get('topic')} lacks excludePersistentLag: 'true'")
            topics.append(meta.get("topic"))
        if len(topics) != len(set(topics)):
            problems.append(f"{name}: two triggers on one topic")
        missing = {str(t) for t in GROUP_SOURCES[route.group]} - set(topics)
        if missing:
            problems.append(f"{name}: no trigger for {sorted(missing)}")
        widest = max((partitions(t, config) for t in topics if t in readable), default=0)
        if spec.get("maxReplicaCount", 100) > widest:
            problems.append(f"{name}: maxReplicaCount {spec.get('maxReplicaCount')} > {widest} partitions")
    return problems


def k8s_config(docs: Iterable[Doc]) -> dict[str, str]:
    """The shared settings (the fleet-config ConfigMap)."""
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("fleet-config"):
            return dict(doc.get("data", {}))
    return {}


def k8s_env_names(docs: list[Doc]) -> set[str]:
    names = set(k8s_config(docs))
    for _, container in fleet_containers(docs):
        names |= {env["name"] for env in container.get("env", [])}
    return names


def k8s_secret_files(docs: list[Doc]) -> set[str]:
    """File names the fleet finds in /run/secrets, and the keys of the fleet-secrets Secret."""
    names: set[str] = set()
    for _, spec in pod_specs(docs):
        containers = spec.get("initContainers", []) + spec["containers"]
        mounted = {m["name"] for c in containers for m in c.get("volumeMounts", []) if m["mountPath"] == SECRETS_MOUNT}
        for volume in spec.get("volumes", []):
            if volume["name"] not in mounted:
                continue
            sources = volume.get("projected", {}).get("sources", [])
            secrets = [s["secret"] for s in sources if "secret" in s] + [volume[k] for k in ("secret",) if k in volume]
            names |= {item["path"] for secret in secrets for item in secret.get("items", [])}
    for doc in docs:
        if doc["kind"] == "Secret" and doc["metadata"]["name"].startswith("fleet-secrets"):
            names |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
    return names


def compose_env_names(compose: Doc) -> set[str]:
    names: set[str] = set()
    for service in compose["services"].values():
        env = service.get("environment", {})
        names |= set(env) if isinstance(env, dict) else {item.partition("=")[0] for item in env}
    return {name for name in names if name.startswith("FLEET_")}


def compose_secret_files(compose: Doc) -> set[str]:
    names = set()
    for service in compose["services"].values():
        if not is_fleet_service(service):
            continue
        for secret in service.get("secrets", []):
            names.add(secret if isinstance(secret, str) else secret.get("target", secret["source"]))
    return names


def systemd_files() -> list[Path]:
    folder = DEPLOY / "systemd"
    return [folder / "fleet@.service", *sorted(folder.glob("fleet@*.service.d/*")), folder / "fleet.env.example"]


def systemd_env_names(texts: Iterable[str]) -> set[str]:
    names = set()
    for text in texts:
        for line in text.splitlines():
            line = line.removeprefix("Environment=")
            match = re.match(r"^(FLEET_[A-Z0-9_]+)=", line)
            if match:
                names.add(match.group(1))
    return names


def systemd_secret_files(texts: Iterable[str]) -> set[str]:
    return {m.group(1) for text in texts for m in re.finditer(r"^LoadCredential=([^:\s]+):", text, re.M)}


def unknown_settings(names: Iterable[str], known: set[str]) -> list[str]:
    return sorted(name for name in names if name.startswith("FLEET_") and name not in known)


def unknown_secret_files(files: Iterable[str], known: set[str], path_values: Iterable[str]) -> list[str]:
    """A secret file is a setting by name, or a key file that a ``*_PATH``/``*FILE`` setting points at."""
    referenced = {Path(value).name for value in path_values}
    return sorted(name for name in files if name not in known and name not in referenced)


def path_values(pairs: Iterable[tuple[str, str]]) -> set[str]:
    return {value for name, value in pairs if name.endswith(("_PATH", "FILE"))}


# --- the tests -------------------------------------------------------------------------------------
def test_every_worker_has_a_deployment_in_each_kustomization(rendered: dict[str, list[Doc]]) -> None:
    for name, docs in rendered.items():
        workers = deployed_workers(docs)
        assert sorted(workers.values()) == sorted(WORKERS), name
        assert all(deployment == worker for deployment, worker in workers.items()), name


def test_every_worker_is_a_compose_service(compose: Doc) -> None:
    assert compose_workers(compose) == WORKERS


def test_the_worker_checks_catch_a_missing_worker(compose: Doc) -> None:
    docs = [{"kind": "Deployment", "metadata": {"name": "fulfillment"}, "spec": _pod(["run", "fulfillment"])}]
    assert set(deployed_workers(docs).values()) != WORKERS
    trimmed = {"services": {k: v for k, v in compose["services"].items() if k != "sf-cdc"}}
    assert WORKERS - compose_workers(trimmed) == {"sf-cdc"}


def test_every_command_the_manifests_run_is_a_real_fleet_command(rendered: dict[str, list[Doc]], compose: Doc) -> None:
    unit = (DEPLOY / "systemd" / "fleet@.service").read_text()
    commands = [c for docs in rendered.values() for c in fleet_commands(docs, compose, unit)]
    assert ["run", "sf-cdc"] in commands and ["topics", "ensure", "--apply"] in commands
    assert invalid_commands(commands) == []


def test_the_command_check_catches_an_unknown_worker_or_option() -> None:
    bad = invalid_commands([["run", "fulfilment"], ["topics", "ensure", "--aply"], ["run", "sf-writer"]])
    assert len(bad) == 2 and "fulfilment" in bad[0] and "--aply" in bad[1]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_scaled_objects_scale_real_groups_within_their_partitions(
    rendered: dict[str, list[Doc]], kustomization: str
) -> None:
    docs = rendered[kustomization]
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"}
    assert scaled == set(ROUTES)  # one per consumer group; never the ingress workers
    assert scaled_object_problems(docs, k8s_config(docs)) == []


def test_the_scaled_object_check_catches_wrong_groups_topics_and_counts(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy([d for d in rendered["base"] if d["kind"] in ("Deployment", "ScaledObject")])
    so = next(d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "sf-writer")
    so["spec"]["maxReplicaCount"] = 5
    so["spec"]["triggers"][0]["metadata"].update(consumerGroup="fleet.sf-writter", lagThreshold=200)
    problems = scaled_object_problems([d for d in docs if d["metadata"]["name"] == "sf-writer"], {})
    assert any("maxReplicaCount 5 > 4" in p for p in problems)
    assert any("fleet.sf-writter" in p for p in problems)
    assert any("quote numbers" in p for p in problems)
    so["spec"]["triggers"][0]["metadata"].update(consumerGroup="fleet.sf-writer", topic="sf.order.v1")
    problems = scaled_object_problems([d for d in docs if d["metadata"]["name"] == "sf-writer"], {})
    assert any("not one fleet.sf-writer reads" in p for p in problems)
    assert any("no trigger for ['sf.writeback.v1']" in p for p in problems)
    # a manifest that raises the domain partitions may raise maxReplicaCount with them
    so["spec"]["triggers"][0]["metadata"].update(topic="sf.writeback.v1", lagThreshold="200")
    assert scaled_object_problems(docs, {"FLEET_TOPICS__DOMAIN__PARTITIONS": "8"}) == []


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kubernetes_manifests_set_only_real_settings_and_secret_files(
    rendered: dict[str, list[Doc]], kustomization: str
) -> None:
    docs, known = rendered[kustomization], known_env_vars()
    assert unknown_settings(k8s_env_names(docs), known) == []
    env = [(e["name"], e.get("value", "")) for _, c in fleet_containers(docs) for e in c.get("env", [])]
    values = path_values([*k8s_config(docs).items(), *env])
    assert unknown_secret_files(k8s_secret_files(docs), known, values) == []
    assert "FLEET_POSTGRES__DSN" in k8s_secret_files(docs)


def test_compose_sets_only_real_settings_and_secret_files(compose: Doc) -> None:
    known = known_env_vars()
    assert unknown_settings(compose_env_names(compose), known) == []
    assert unknown_secret_files(compose_secret_files(compose), known, []) == []
    assert "FLEET_WHMCS__WEBHOOK_SECRETS" in compose_secret_files(compose)


def test_systemd_sets_only_real_settings_and_credentials() -> None:
    texts = [path.read_text() for path in systemd_files()]
    known = known_env_vars()
    names = systemd_env_names(texts)
    assert "FLEET_KAFKA__SASL_MECHANISM" in names and unknown_settings(names, known) == []
    pairs = [tuple(m.groups()) for t in texts for m in re.finditer(r"^(?:Environment=)?(FLEET_\w+)=(.*)$", t, re.M)]
    assert unknown_secret_files(systemd_secret_files(texts), known, path_values(pairs)) == []  # type: ignore[arg-type]


def test_the_setting_checks_catch_a_misspelt_variable_or_secret(compose: Doc) -> None:
    known = known_env_vars()
    assert unknown_settings({"FLEET_KAFKA__BOOTSTRAPS", "FLEET_ENV", "PATH"}, known) == ["FLEET_KAFKA__BOOTSTRAPS"]
    bad_compose = {"services": {"w": {"build": {}, "environment": {"FLEET_RUNTIME__HEALTHPORT": "8080"}}}}
    assert unknown_settings(compose_env_names(bad_compose), known) == ["FLEET_RUNTIME__HEALTHPORT"]
    bad_unit = "[Service]\nEnvironment=FLEET_LOG__FORMATT=json\nLoadCredential=FLEET_WHMCS_SECRET:/etc/x\n"
    assert unknown_settings(systemd_env_names([bad_unit]), known) == ["FLEET_LOG__FORMATT"]
    assert unknown_secret_files(systemd_secret_files([bad_unit]), known, []) == ["FLEET_WHMCS_SECRET"]
    docs = [{"kind": "Deployment", "metadata": {"name": "x"}, "spec": _pod(["run", "x"], secret="FLEET_REDIS_URL")}]
    assert unknown_secret_files(k8s_secret_files(docs), known, []) == ["FLEET_REDIS_URL"]
    assert unknown_secret_files({"salesforce-jwt.pem"}, known, {"/run/credentials/x/salesforce-jwt.pem"}) == []


def test_sf_cdc_runs_a_standby_beside_its_leader_and_the_receiver_scales_on_cpu(rendered: dict[str, list[Doc]]) -> None:
    """Two sf-cdc pods (the lease makes one active); never scaled on load; a rollout replaces one at a
    time and does not wait for a standby to become ready (it never does: only the leader is)."""
    docs = rendered["overlays/prod"]
    cdc = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "sf-cdc")
    assert cdc["spec"]["replicas"] == 2 and cdc["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": 0,
        "maxUnavailable": 1,
    }
    (container,) = cdc["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/livez"
    scaled = {
        d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
    }
    assert "sf-cdc" not in scaled and "whmcs-webhooks" in scaled


def test_pods_are_locked_down_and_probe_health_endpoints(rendered: dict[str, list[Doc]]) -> None:
    for doc, spec in pod_specs(rendered["overlays/prod"]):
        name = doc["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert "memory" in container["resources"]["limits"], name
            if doc["kind"] == "Deployment":
                assert container["livenessProbe"]["httpGet"]["path"] == "/livez", name
                ready = "/livez" if name == "sf-cdc" else "/readyz"  # a standby sf-cdc is live, never ready
                assert container["readinessProbe"]["httpGet"]["path"] == ready, name
    pdbs = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for d in rendered["overlays/prod"]
        if d["kind"] == "PodDisruptionBudget"
    }
    assert pdbs == WORKERS


#: plausible production values for the secret files the prod overlay mounts (the check reads them)
SECRET_VALUES = {
    "FLEET_POSTGRES__DSN": "postgresql://fleet:pw@pg.internal.example:5432/fleet",
    "FLEET_REDIS__URL": "rediss://:pw@redis.internal.example:6380/0",
    "FLEET_WHMCS__WEBHOOK_SECRETS": '["whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]',
}


def production_check(deployment: Doc, config: dict[str, str], tmp: Path) -> Any:
    """``fleet config check --env production --worker <w>`` with exactly what the Deployment gets:
    the shared ConfigMap, its own env, and files where its volumes mount them (moved under ``tmp``)."""
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"] if m["mountPath"] != "/tmp"}
    moved = {path: tmp / path.strip("/").replace("/", "_") for path in mounts.values()}
    for volume in spec["volumes"]:
        if volume["name"] not in mounts:
            continue
        folder = moved[mounts[volume["name"]]]
        folder.mkdir(parents=True, exist_ok=True)
        sources = [s["secret"] for s in volume.get("projected", {}).get("sources", [])] + (
            [volume["secret"]] if "secret" in volume else []
        )
        for item in (item for secret in sources for item in secret.get("items", [])):
            (folder / item["path"]).write_text(SECRET_VALUES.get(item["path"], "x" * 32))
    env = {**config, **{e["name"]: e["value"] for e in container.get("env", [])}}
    for name, value in env.items():
        for path, target in moved.items():
            if value.startswith(path + "/"):
                env[name] = str(target) + value[len(path) :]
    env["FLEET_SECRETS_DIR"] = str(moved[SECRETS_MOUNT])
    worker = container["args"][1]
    return CliRunner().invoke(fleet_main, ["config", "check", "--env", "production", "--worker", worker], env=env)


def test_each_prod_worker_passes_the_production_check_with_only_its_own_mounts(
    rendered: dict[str, list[Doc]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the developer's .fleet/stack.env
    docs = rendered["overlays/prod"]
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        result = production_check(deployment, k8s_config(docs), tmp_path / deployment["metadata"]["name"])
        assert result.exit_code == 0, (deployment["metadata"]["name"], result.output)


def test_the_production_check_fails_without_a_secret_the_worker_needs(
    rendered: dict[str, list[Doc]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    docs = copy.deepcopy(rendered["overlays/prod"])
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "fulfillment")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets")
    app = volume["projected"]["sources"][0]["secret"]
    app["items"] = [item for item in app["items"] if item["key"] != "FLEET_WHMCS__SECRET"]
    result = production_check(deployment, k8s_config(docs), tmp_path)
    assert result.exit_code != 0 and "FLEET_WHMCS__SECRET" in result.output


def test_prod_overlay_holds_no_secret_values() -> None:
    for path in (DEPLOY / "k8s" / "overlays" / "prod").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc.get("kind") != "Secret" and "secretGenerator" not in doc, path


def test_the_dockerfile_keeps_the_image_policy() -> None:
    assert checks.dockerfile_problems((DEPLOY / "docker" / "Dockerfile").read_text()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("ARG BASE_IMAGE=python:3.11.14-slim-bookworm", "ARG BASE_IMAGE=python:latest"), "unpinned base"),
        (("ARG BASE_IMAGE=python:3.11.14-slim-bookworm", "ARG BASE_IMAGE=python:3.11-slim"), "full version tag"),
        (("USER 10001:10001", "USER fleet"), "not numeric"),
        (("USER 10001:10001", "USER 0"), "root"),
        (("USER 10001:10001\n", ""), "no USER"),
        (('CMD ["run", "--list"]', "CMD run --list"), "not exec form"),
        (('ENTRYPOINT ["/opt/fleet/.venv/bin/fleet"]', "ENTRYPOINT /opt/fleet/.venv/bin/fleet"), "not exec form"),
        (("python3 ca-certificates", "python3 ca-certificates build-essential"), "build tools"),
        (("FROM base AS runtime", "FROM base AS runtime\nRUN apt-get install -y gcc"), "build tools"),
    ],
)
def test_the_dockerfile_policy_catches(change: tuple[str, str], expected: str) -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert change[0] in text
    problems = checks.dockerfile_problems(text.replace(change[0], change[1]))
    assert any(expected in problem for problem in problems), problems


def test_a_pinned_digest_is_accepted_and_build_stage_tools_are_allowed() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    digest = "python:3.11.14-slim-bookworm@sha256:" + "a" * 64
    pinned = text.replace("ARG BASE_IMAGE=python:3.11.14-slim-bookworm", f"ARG BASE_IMAGE={digest}")
    in_build = text.replace("FROM base AS build", "FROM base AS build\nRUN apt-get install -y gcc")
    assert checks.dockerfile_problems(pinned) == [] and checks.dockerfile_problems(in_build) == []


def test_systemd_values_carry_no_trailing_comment(tmp_path: Path) -> None:
    assert [p for path in systemd_files() for p in checks.unit_value_problems(path)] == []
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\n# fine\nTimeoutStopSec=45 # above the drain grace\n")
    assert len(checks.unit_value_problems(bad)) == 1


def _pod(args: list[str], secret: str = "FLEET_POSTGRES__DSN") -> Doc:
    return {
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "fleet",
                        "image": FLEET_IMAGE,
                        "args": args,
                        "volumeMounts": [{"name": "secrets", "mountPath": SECRETS_MOUNT}],
                    }
                ],
                "volumes": [{"name": "secrets", "secret": {"items": [{"key": secret, "path": secret}]}}],
            }
        }
    }
