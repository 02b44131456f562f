#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite: ruff, then pytest against real Podman containers, a real
# Traefik, PostgreSQL at 127.0.0.1:5432 (the machine's) and SQLite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/dev-env.sh)"
scripts/build-test-images.sh >&2
scripts/build-postgres-image.sh >&2
.venv/bin/ruff check src tests bench
exec .venv/bin/pytest -n "${OPENPODS_TEST_WORKERS:-2}" "$@"
