#!/usr/bin/env bash
# Set up everything OpenPods needs on a fresh Debian/Ubuntu machine (idempotent), in this order:
#   1. a Python virtualenv at .venv with OpenPods and its test extras;
#   2. Podman + runc and a Docker-compatible API socket (scripts/setup-podman.sh);
# then print `export …` lines for DOCKER_HOST and CONTAINERS_CONF on stdout.
# Usage: eval "$(scripts/dev-env.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "dev-env: $*" >&2; }

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "installing python3-venv"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
fi
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv >&2
fi
stamp=.venv/.openpods-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing OpenPods and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q -e ".[test]" >&2
    touch "$stamp"
fi
scripts/setup-podman.sh
