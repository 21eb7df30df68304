#!/usr/bin/env bash
# Validate deploy/ offline (`make check-deploy`, part of `make check`): no cluster, no Docker daemon.
#   compose      check-jsonschema against the Compose Specification's schema
#   kubernetes   every kustomization rendered, then kubernetes-validate --strict against Kubernetes $K8S_VERSION
#   KEDA         each ScaledObject / TriggerAuthentication against the CRD schema in deploy/k8s/schemas
#                (KEDA v2.20.2; kubernetes-validate only warns about kinds it does not know)
#   systemd      systemd-analyze verify (in a scratch root with a stub ExecStart) and security --offline,
#                exposure <= $SYSTEMD_MAX_EXPOSURE for every worker instance; no "value # comment" lines
#   Dockerfile   deploy/checks.py dockerfile (dockerfile-parse): pinned base, numeric non-root USER,
#                exec-form ENTRYPOINT/CMD, no build tools in the final stage
#   observability promtool (Debian's prometheus package, deploy/bootstrap.sh): the alert rules, every
#                dashboard query (as a recording rule) and the example scrape config parse; then
#                deploy/observability/check.py: dashboard structure, rule labels/annotations, runbook
#                anchors in docs/, every metric named is in the catalog (metrics.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
K8S_VERSION=${K8S_VERSION:-1.33.0}
SYSTEMD_MAX_EXPOSURE=${SYSTEMD_MAX_EXPOSURE:-20}  # tenths: 2.0
WORKERS=(fulfillment sf-writer cache-invalidator sf-cdc whmcs-webhooks)
work=$(mktemp -d /tmp/fleet-validate.XXXXXX)
trap 'rm -rf "$work"' EXIT
failed=0
for tool in kubectl systemd-analyze promtool "$BIN/check-jsonschema" "$BIN/kubernetes-validate"; do
  command -v "$tool" >/dev/null || { echo "check-deploy: $tool is missing (make install; kubectl and systemd come with the machine, promtool with deploy/bootstrap.sh)" >&2; exit 1; }
done
ok() { printf '  ok   %s\n' "$*"; }
bad() { printf '  FAIL %s\n' "$*" >&2; failed=1; }

echo "compose"
if "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml >"$work/compose.log" 2>&1; then
  ok "deploy/compose/compose.yaml (vendor.compose-spec)"
else
  bad "deploy/compose/compose.yaml"; cat "$work/compose.log" >&2
fi

echo "kubernetes $K8S_VERSION (strict) and KEDA CRD schemas"
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
  dir=${dir%/}
  name=$(echo "$dir" | tr / -)
  if ! kubectl kustomize "$dir" >"$work/$name.yaml" 2>"$work/$name.err"; then
    bad "kubectl kustomize $dir"; cat "$work/$name.err" >&2; continue
  fi
  if "$BIN/kubernetes-validate" --strict -k "$K8S_VERSION" - <"$work/$name.yaml" >"$work/$name.kv" 2>&1; then
    ok "$dir: $(grep -c 'passed for resource' "$work/$name.kv") objects"
  else
    bad "$dir"; grep -v 'INFO - passed' "$work/$name.kv" >&2
  fi
  unknown=$(grep "Couldn't find schema" "$work/$name.kv" | grep -v -E "kind (ScaledObject|TriggerAuthentication) with api version keda.sh/v1alpha1" || true)
  [ -z "$unknown" ] || bad "$dir: kinds without any schema: $unknown"
  "$BIN/python" deploy/checks.py split-kinds "$work/$name.yaml" "$work/$name-keda" ScaledObject TriggerAuthentication >/dev/null
  for kind in ScaledObject TriggerAuthentication; do
    schema=deploy/k8s/schemas/keda-$(echo "$kind" | tr '[:upper:]' '[:lower:]').json
    files=("$work/$name-keda/$kind"-*.json)
    [ -e "${files[0]}" ] || continue
    if "$BIN/check-jsonschema" --schemafile "$schema" "${files[@]}" >"$work/$name-$kind.log" 2>&1; then
      ok "$dir: ${#files[@]} $kind against $(basename "$schema")"
    else
      bad "$dir: $kind"; cat "$work/$name-$kind.log" >&2
    fi
  done
done

echo "systemd"
root="$work/systemd-root"
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/opt/fleet/.venv/bin" "$root/etc/fleet"
# The host's own units (sysinit.target, ...) and a stub for ExecStart: verify checks that it is executable.
cp -a /lib/systemd/system "$root/usr/lib/systemd/"
cp -r deploy/systemd/fleet@.service deploy/systemd/fleet@*.service.d "$root/etc/systemd/system/"
printf '#!/bin/sh\nexit 0\n' >"$root/opt/fleet/.venv/bin/fleet"
chmod +x "$root/opt/fleet/.venv/bin/fleet"
cp deploy/systemd/fleet.env.example "$root/etc/fleet/fleet.env"
for worker in "${WORKERS[@]}"; do
  unit="fleet@$worker.service"
  # verify exits 0 on unknown keys and unparsable values: any output is a failure
  if ! systemd-analyze verify --root="$root" "$unit" >"$work/verify.log" 2>&1 || [ -s "$work/verify.log" ]; then
    bad "verify $unit"; cat "$work/verify.log" >&2; continue
  fi
  if systemd-analyze security --offline=true --root="$root" --threshold="$SYSTEMD_MAX_EXPOSURE" "$unit" \
      >"$work/security.log" 2>&1; then
    ok "$unit: verify clean, $(tail -1 "$work/security.log" | sed 's/.*for [^:]*: //')"
  else
    bad "security $unit: $(tail -1 "$work/security.log")"
  fi
done
if "$BIN/python" deploy/checks.py unit-values deploy/systemd/fleet@.service deploy/systemd/fleet@*.service.d/* \
    deploy/systemd/fleet.env.example; then
  ok "no comment after a value (unit, drop-ins, fleet.env.example)"
else
  bad "systemd values"
fi

echo "Dockerfile"
if "$BIN/python" deploy/checks.py dockerfile deploy/docker/Dockerfile; then
  ok "deploy/docker/Dockerfile: pinned base, numeric non-root USER, exec form, no build tools in the final stage"
else
  bad "deploy/docker/Dockerfile"
fi

echo "observability"
obs=deploy/observability
if promtool check rules "$obs/alerts.rules.yml" >"$work/rules.log" 2>&1; then
  ok "$obs/alerts.rules.yml: $(grep -o '[0-9]* rules found' "$work/rules.log")"
else
  bad "$obs/alerts.rules.yml"; cat "$work/rules.log" >&2
fi
if "$BIN/python" "$obs/check.py" panel-rules "$work/panels.rules.yml" &&
    promtool check rules "$work/panels.rules.yml" >"$work/panels.log" 2>&1; then
  ok "$obs/dashboards: $(grep -o '[0-9]* rules found' "$work/panels.log" | cut -d' ' -f1) panel queries parse"
else
  bad "$obs/dashboards: panel queries"; cat "$work/panels.log" >&2
fi
if promtool check config "$obs/prometheus.yml" >"$work/config.log" 2>&1; then
  ok "$obs/prometheus.yml"
else
  bad "$obs/prometheus.yml"; cat "$work/config.log" >&2
fi
if "$BIN/python" "$obs/check.py" all; then
  ok "$obs: dashboards, rule labels and runbook anchors, every metric named is in metrics.txt"
else
  bad "$obs/check.py"
fi

if [ "$failed" -ne 0 ]; then
  echo "check-deploy: FAILED" >&2
  exit 1
fi
echo "check-deploy: all passed"
