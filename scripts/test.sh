#!/usr/bin/env bash
# Builds and runs every test (C++ and Python): the release build (under each kernel ISA),
# a bounded fuzzing run of the safetensors reader, then the ASan + UBSan build. Any failure
# fails the run. Each step's log is kept under build/test-logs/, and the run ends with a
# summary of every step plus the failing tests' output, so the cause is in the last lines.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh

logs=build/test-logs
rm -rf "$logs"
mkdir -p "$logs"
summary=()
failed=()

# step NAME COMMAND...: runs COMMAND, tees its output to $logs/NAME.log, records the result.
step() {
  local name="$1"
  shift
  echo "=== $name: $*"
  local start=$SECONDS rc=0
  "$@" 2>&1 | tee "$logs/$name.log" || rc=$?
  summary+=("$(printf '%-8s %-6s %4ds  %s' "$name" "$([[ $rc == 0 ]] && echo ok || echo FAILED)" \
    $((SECONDS - start)) "$*")")
  [[ $rc == 0 ]] || failed+=("$name")
}

step release cmake --workflow --preset release
# The kernels again under every instruction set they dispatch to (the default run above
# used the best one this CPU has). The demo's default-setting run (90 s of training, a claim
# about the model rather than the kernels) runs once, above; the tiny demo tests run everywhere.
slow='^TinyTransformerDefault\.'
step avx2 env MULTIHEAD_ISA=avx2 ctest --preset release -E "$slow"
step scalar env MULTIHEAD_ISA=scalar ctest --preset release -E "$slow"
step fuzz bash fuzz/run.sh 60
step asan cmake --workflow --preset asan

for name in "${failed[@]}"; do
  echo
  echo "=== what failed in step '$name' (full log: $logs/$name.log)"
  # ctest prints each failing test's output (outputOnFailure); gtest marks the failures.
  grep -E -B3 -A25 '\*\*\*Failed|\*\*\*Timeout|\*\*\*Exception|Failure$|^\[  FAILED  \]|ERROR: |error:' \
    "$logs/$name.log" | tail -n 120 || tail -n 40 "$logs/$name.log"
done
echo
echo "=== summary"
printf '%s\n' "${summary[@]}"
[[ ${#failed[@]} == 0 ]]
