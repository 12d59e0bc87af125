#!/usr/bin/env bash
# Install Debian's Slurm (slurm-wlm, munge) and Grid Engine (gridengine-*) when missing and start a
# one-node cluster of each on localhost (tools/cluster/*.sh; idempotent), so that
# tests/test_engines.py runs its SLURM and SGE tests for real.
# Slurm must come up: a failure stops CI. Grid Engine is older and fussier about host names; when it
# cannot start, the reason is printed and kept in $SGE_NOTE, CI goes on and the SGE tests skip quoting it.
set -euo pipefail
cluster="$(cd "$(dirname "$0")/../../cluster" && pwd)"
SGE_NOTE=/var/tmp/glmx-sge-setup.txt
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sge_qmaster >/dev/null; then
  apt-get update -qq
  export GLMX_APT_UPDATED=1
fi
bash "$cluster/slurm.sh" start
if out=$(bash "$cluster/sge.sh" start 2>&1); then
  echo "$out"
  rm -f "$SGE_NOTE"
else
  printf '%s\n' "$out" > "$SGE_NOTE"
  echo "[setup] WARNING: Grid Engine did not start; the SGE tests will skip. tools/cluster/sge.sh said:" >&2
  sed 's/^/[setup]   /' "$SGE_NOTE" >&2
fi
