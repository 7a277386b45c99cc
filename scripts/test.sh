#!/usr/bin/env bash
# Builds and runs every test (C++ and Python) twice: the release build, then the
# ASan + UBSan build. Each workflow ends with ctest's summary; any failure fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh

status=0
for preset in release asan; do
  echo "=== cmake --workflow --preset $preset"
  cmake --workflow --preset "$preset" || status=1
done
exit "$status"
