#!/usr/bin/env bash
# Fuzzes parse_safetensors, the KV cache's operation sequences, attention_forward/backward's
# validation (against the oracle) and the CLI's argument parsing, for a bounded time each:
# builds the libFuzzer targets with clang in build/fuzz, seeds build/fuzz/corpus with valid
# safetensors files (and the other corpora with inputs) that the fuzzers write themselves,
# and runs them. Exits non-zero on a crash, leak, hang (-timeout) or memory blow-up
# (-rss_limit_mb); the input that did it is saved under build/fuzz/artifacts/.
#   bash fuzz/run.sh [SECONDS]    (per target, default 60)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-60}"
build=build/fuzz
CC=clang CXX=clang++ cmake -S fuzz -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build "$build" --target safetensors_fuzz kv_cache_fuzz validator_fuzz cli_args_fuzz

mkdir -p "$build/corpus" "$build/artifacts"
"$build/safetensors_fuzz" -write_seeds="$build/corpus"
mkdir -p "$build/kv_cache_corpus" "$build/validator_corpus" "$build/cli_args_corpus"
"$build/validator_fuzz" -write_seeds="$build/validator_corpus"
cp fuzz/findings/*.bin "$build/validator_corpus/"  # inputs that once found bugs (fuzz/findings/README.md)
"$build/cli_args_fuzz" -write_seeds="$build/cli_args_corpus"
"$build/safetensors_fuzz" "$build/corpus" -dict=fuzz/safetensors.dict \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=5 \
  -artifact_prefix="$build/artifacts/" -print_final_stats=1
"$build/kv_cache_fuzz" "$build/kv_cache_corpus" \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=5 \
  -artifact_prefix="$build/artifacts/kv_cache-" -print_final_stats=1
"$build/validator_fuzz" "$build/validator_corpus" \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=5 \
  -artifact_prefix="$build/artifacts/validator-" -print_final_stats=1
exec "$build/cli_args_fuzz" "$build/cli_args_corpus" \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=5 \
  -artifact_prefix="$build/artifacts/cli_args-" -print_final_stats=1
