#!/usr/bin/env bash
# Start a one-node Slurm and Grid Engine on localhost so that the engine tests run for real in CI.
set -euo pipefail
here="$(cd "$(dirname "$0")/../../cluster" && pwd)"
bash "$here/slurm.sh" start
bash "$here/sge.sh" start
