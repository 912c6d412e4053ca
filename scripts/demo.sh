#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs `renderq demo`: a coordinator and two local workers render a
# small animation. Extra arguments go to `renderq demo` (see `renderq demo --help`); with --cluster, the set-up also
# installs what the cluster demo needs (PostgreSQL, psycopg, boto3 and SeaweedFS), and the demo runs three
# coordinators on a throwaway PostgreSQL and SeaweedFS (docs/cluster.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
for argument in "$@"; do
    if [ "$argument" = "--cluster" ]; then
        renderq_setup_cluster_tools
        break
    fi
done
exec .venv/bin/python -m renderq.cli demo "$@"
