#!/usr/bin/env bash
# The main job: builds the command-line tool (release) and runs it with the given
# arguments, `demo` by default.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh >&2

# Configure once; afterwards Ninja re-runs CMake itself when a CMakeLists changes.
if [[ ! -f build/release/build.ninja ]]; then
  cmake --preset release >&2
fi
cmake --build --preset release --target cli/multihead >&2

(($# > 0)) || set -- demo
exec build/release/cli/multihead "$@"
