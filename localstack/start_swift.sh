#!/usr/bin/env bash
# Start a single-node Swift (+ memcached) on 127.0.0.1 (needs root); print `export ST_...` lines.
# Usage: eval "$(localstack/start_swift.sh --pidfile /tmp/swift.json)"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT/localstack${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m objbutler_servers start swift "$@"
