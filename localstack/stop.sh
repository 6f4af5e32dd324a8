#!/usr/bin/env bash
# Stop a server started by start_*.sh: --pidfile FILE, or --all for every one left in the temp dir.
# Usage: localstack/stop.sh --pidfile /tmp/localstack.json
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT/localstack${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m objbutler_servers stop "$@"
