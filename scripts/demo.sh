#!/usr/bin/env bash
# The main job: a real tunnel between two network namespaces, our code on both ends.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/tunnel demo "$@"
