#!/usr/bin/env bash
# Every test: unit, protocol, and the namespace/interop tests (these need root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
exec .venv/bin/python -m pytest -n 2 -p no:cacheprovider -q "$@"
