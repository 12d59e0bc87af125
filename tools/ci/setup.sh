#!/usr/bin/env bash
# Machine setup for CI and local test runs: runs every tools/ci/setup.d/*.sh in order.
# Each script installs what one part of the test suite needs (schedulers, a browser, ...) and
# must be idempotent. A script that fails stops CI: tests that need a missing service skip only
# on machines where nobody ran this setup (a laptop).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for script in "$here"/setup.d/*.sh; do
  [ -e "$script" ] || continue
  echo "[setup] $(basename "$script")"
  bash "$script"
done
