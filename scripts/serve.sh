#!/usr/bin/env bash
# Set up (first run only) and run OpenPods with its embedded defaults: API on http://localhost:8000, Traefik on
# :8080/:8443, pods at https://<pod_id>.pods.localhost:8443, data in ./openpods-data.
# Extra arguments go to `openpods serve` (see `openpods serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/dev-env.sh)"
exec .venv/bin/openpods serve "$@"
