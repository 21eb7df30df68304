#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for the fleet's local stack and tests:
# redis-server, PostgreSQL 15 server binaries, a JDK 17+ and Maven (Kafka runs from Maven
# Central jars), php-cli (the WHMCS hook test), promtool (Debian's prometheus package: `make check`
# validates deploy/observability's alert rules with it). Idempotent: does nothing when all are present.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || need+=(postgresql)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v php >/dev/null 2>&1 || need+=(php-cli)
php -m 2>/dev/null | grep -qi "^curl$" || need+=(php-curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: missing system packages: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "bootstrap: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }  # another apt run (a second worktree's) may hold the lock
apt update -qq
others=()
for package in "${need[@]}"; do [ "$package" = prometheus ] || others+=("$package"); done
[ ${#others[@]} -eq 0 ] || apt install -y -qq --no-install-recommends "${others[@]}" >/dev/null
if [ ${#others[@]} -ne ${#need[@]} ]; then
  # Only its promtool is wanted: the package's postinst would start a Prometheus server (invoke-rc.d
  # without systemd, as in a container; systemd with it). A policy-rc.d that refuses every start
  # keeps it from starting during the install (deb-systemd-invoke honours it too), and the service
  # is disabled for later boots.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\n# deploy/bootstrap.sh: no service starts while prometheus (for promtool) installs\nexit 101\n' >"$guard"
    chmod 755 "$guard"
    trap 'rm -f "$guard"' EXIT
  fi
  apt install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  else
    update-rc.d prometheus disable >/dev/null 2>&1 || true
    invoke-rc.d prometheus stop >/dev/null 2>&1 || true  # only if a policy-rc.d of the machine let it start
  fi
fi
# Debian's postgresql package starts a system cluster on 5432; the fleet runs its own throwaway
# cluster on another port, so the system one is left alone.
