#!/usr/bin/env bash
# Headless Chromium and its WebDriver for tests/test_reports.py, which opens the HTML reports in a
# real browser (selenium, from the package's [test] extra, drives it). Idempotent.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "[browser] chromium and chromedriver present"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
echo "[browser] installed chromium and chromedriver"
