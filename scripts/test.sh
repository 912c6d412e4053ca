#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs the whole test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
