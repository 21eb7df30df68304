#!/usr/bin/env bash
# Build the fleet image offline and prove its contract: `make image-smoke` (root, Debian's docker.io).
#
# No registry is reachable here, so BASE_IMAGE is a Debian bookworm made by debootstrap and imported
# (the Dockerfile installs Debian's python3 on it). The host's CA bundle goes in as the optional
# build secret `extra_ca` (pip and apt reach the registries through a TLS proxy only the host trusts).
# Containers run with --network host only. Not part of `make check`/`make test`: CI has no Docker.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-fulfillment-fleet:smoke}
BASE=${BASE:-local/debian:bookworm}
CA=${EXTRA_CA:-/etc/ssl/certs/ca-certificates.crt}
# Debian's docker.io client (20.10) has BuildKit built in; a newer client without buildx does not.
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
PORT=${SMOKE_PORT:-18991}

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'image-smoke: FAILED: %s\n' "$*" >&2; exit 1; }

"$DOCKER" info >/dev/null 2>&1 || fail "no Docker daemon answers ($DOCKER info); start dockerd as root first"

if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
  step "base image $BASE: debootstrap --variant=minbase bookworm + docker import"
  root=$(mktemp -d /tmp/fleet-base.XXXXXX)
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  tar -C "$root" -c . | "$DOCKER" import - "$BASE"
  rm -rf "$root"
fi

step "build $IMAGE (BASE_IMAGE=$BASE, extra CA from $CA)"
secret=()
[ -s "$CA" ] && secret=(--secret "id=extra_ca,src=$CA")
DOCKER_BUILDKIT=1 "$DOCKER" build --network host "${secret[@]}" --build-arg "BASE_IMAGE=$BASE" \
  -f deploy/docker/Dockerfile -t "$IMAGE" .

step "default command: run --list"
"$DOCKER" run --rm --network host "$IMAGE" | tee /tmp/fleet-smoke-list.txt
for worker in fulfillment sf-writer cache-invalidator sf-cdc whmcs-webhooks; do
  grep -q "^$worker " /tmp/fleet-smoke-list.txt || fail "run --list does not name $worker"
done

step "user, entrypoint, no build tools, CA bundle not baked in"
"$DOCKER" image inspect "$IMAGE" --format 'User={{.Config.User}} Entrypoint={{json .Config.Entrypoint}} Cmd={{json .Config.Cmd}}'
"$DOCKER" run --rm --network host --entrypoint /bin/sh "$IMAGE" -c '
  id
  for tool in gcc cc make pip pip3; do if command -v "$tool"; then echo "build tool present: $tool"; exit 1; fi; done
  if ls /opt/fleet/.venv/bin | grep -qx pip; then echo "pip left in the venv"; exit 1; fi
  if ls /run/secrets/extra_ca 2>/dev/null; then echo "the build CA leaked into the image"; exit 1; fi
  /opt/fleet/.venv/bin/python -m sandbox --help | head -1
' || fail "image contents"

step "production profile refuses sandbox defaults (config check --env production must fail)"
set +e
"$DOCKER" run --rm --network host -e FLEET_ENV=production "$IMAGE" config check --env production
refused=$?
set -e
[ "$refused" -ne 0 ] || fail "config check --env production accepted the sandbox defaults"
echo "config check --env production exited $refused (refused, as it must)"

step "SIGTERM reaches PID 1: whmcs-webhooks on 127.0.0.1:$PORT, then docker stop"
cid=$("$DOCKER" run -d --network host -e FLEET_WHMCS__WEBHOOK_LISTEN_PORT="$PORT" \
  -e FLEET_KAFKA__BOOTSTRAP=127.0.0.1:1 -e FLEET_REDIS__URL=redis://127.0.0.1:1/0 "$IMAGE" run whmcs-webhooks)
trap '"$DOCKER" rm -f "$cid" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 50); do
  if "$DOCKER" exec "$cid" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/livez', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
"$DOCKER" exec "$cid" python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$PORT/livez', timeout=1).read().decode())" \
  || fail "/livez did not answer"
pid1=$("$DOCKER" exec "$cid" python -c "print(open('/proc/1/cmdline').read().replace(chr(0), ' '))")
echo "PID 1 in the container: $pid1"
case "$pid1" in *"fleet run whmcs-webhooks"*) ;; *) fail "PID 1 is not the worker: $pid1" ;; esac
start=$(date +%s%N)
"$DOCKER" stop -t 30 "$cid" >/dev/null
took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
code=$("$DOCKER" inspect "$cid" --format '{{.State.ExitCode}}')
echo "stopped in ${took_ms} ms with exit code $code"
[ "$code" -ne 137 ] || fail "killed after the timeout: SIGTERM did not reach the worker"
"$DOCKER" logs "$cid" 2>&1 | tail -3

printf '\nimage-smoke: OK (%s)\n' "$("$DOCKER" image inspect "$IMAGE" --format '{{.Id}} {{.Size}} bytes')"
