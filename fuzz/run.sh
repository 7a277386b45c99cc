#!/usr/bin/env bash
# Fuzzes parse_safetensors, then the KV cache's operation sequences, for a bounded time
# each: builds the libFuzzer targets with clang in build/fuzz, seeds build/fuzz/corpus with
# valid safetensors files that the fuzzer writes itself, and runs them. Exits non-zero on a crash, leak, hang (-timeout) or memory blow-up
# (-rss_limit_mb); the input that did it is saved under build/fuzz/artifacts/.
#   bash fuzz/run.sh [SECONDS]    (per target, default 60)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-60}"
build=build/fuzz
CC=clang CXX=clang++ cmake -S fuzz -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build "$build" --target safetensors_fuzz kv_cache_fuzz

mkdir -p "$build/corpus" "$build/artifacts"
"$build/safetensors_fuzz" -write_seeds="$build/corpus"
mkdir -p "$build/kv_cache_corpus"
"$build/safetensors_fuzz" "$build/corpus" -dict=fuzz/safetensors.dict \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=5 \
  -artifact_prefix="$build/artifacts/" -print_final_stats=1
exec "$build/kv_cache_fuzz" "$build/kv_cache_corpus" \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=5 \
  -artifact_prefix="$build/artifacts/kv_cache-" -print_final_stats=1
