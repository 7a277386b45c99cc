// The per-call dropout seed of MultiHeadAttention: call n of forward in training mode
// (counting only calls that drop) uses this seed, so a module's dropout pattern is a
// function of config.seed and the call count alone. Tests recompute it.
#pragma once

#include <cstdint>

namespace multihead::detail {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint64_t module_dropout_seed(uint64_t seed, uint64_t call) { return splitmix64(seed ^ splitmix64(call)); }

}  // namespace multihead::detail
