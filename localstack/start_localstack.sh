#!/usr/bin/env bash
# Start LocalStack S3 on 127.0.0.1 (free port); print `export AWS_...` lines.
# Usage: eval "$(localstack/start_localstack.sh --pidfile /tmp/localstack.json)"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT/localstack${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m objbutler_servers start localstack "$@"
