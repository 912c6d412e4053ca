#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs `renderq demo`: a coordinator and two local workers render a
# small animation. Extra arguments go to `renderq demo` (see `renderq demo --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec .venv/bin/python -m renderq.cli demo "$@"
