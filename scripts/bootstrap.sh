#!/usr/bin/env bash
# Installs the Debian (bookworm) packages that the build, the tests and the tools need.
# Idempotent: when every package is already installed it only checks and returns.
# Installing needs root; without root it succeeds only if nothing is missing.
set -euo pipefail

packages=(
  g++ cmake ninja-build                      # toolchain (C++20, CMake 3.25, Ninja)
  libgtest-dev googletest libbenchmark-dev   # tests and benchmarks
  libcli11-dev nlohmann-json3-dev            # command line, JSON
  libhwy-dev libopenblas-dev libopenblas-openmp-dev  # SIMD dispatch, GEMMs (OpenMP build: one thread pool)
  pybind11-dev python3-dev python3-numpy     # Python bindings
  python3-pytest python3-torch               # Python tests, PyTorch as a second oracle
  clang libclang-rt-14-dev                   # libFuzzer (fuzz/run.sh)
  libpng-dev chromium                        # demo: heads.png, headless render test of attention.html
)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if ((EUID != 0)); then
  echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
  echo "bootstrap: run as root to install them, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi

echo "bootstrap: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
