#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh, with the test-only tools), then runs the whole test suite; extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
renderq_setup_test_tools
exec .venv/bin/python -m pytest "$@"
