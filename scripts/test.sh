#!/usr/bin/env bash
# Builds and runs every test (C++ and Python): the release build (under each kernel ISA),
# a bounded fuzzing run of the safetensors reader, then the ASan + UBSan build. Each step
# ends with ctest's (or the fuzzer's) summary; any failure fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh

status=0
echo "=== cmake --workflow --preset release"
cmake --workflow --preset release || status=1

# The kernels again under every instruction set they dispatch to (the default run above
# used the best one this CPU has).
for isa in avx2 scalar; do
  echo "=== MULTIHEAD_ISA=$isa ctest --preset release"
  MULTIHEAD_ISA=$isa ctest --preset release || status=1
done

echo "=== fuzz: parse_safetensors for 60 s"
bash fuzz/run.sh 60 || status=1

echo "=== cmake --workflow --preset asan"
cmake --workflow --preset asan || status=1
exit "$status"
