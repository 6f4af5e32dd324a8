#!/usr/bin/env bash
# Install the LocalStack and Swift server venvs and memcached (idempotent; ~0.2 s when done).
# Usage: localstack/install.sh [localstack|swift|all] [--force]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT/localstack${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m objbutler_servers install "${1:-all}" "${@:2}"
