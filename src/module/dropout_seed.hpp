// The per-call dropout seed of MultiHeadAttention: call n of forward in training mode
// (counting only calls that drop) uses this seed, so a module's dropout pattern is a
// function of config.seed and the call count alone. Tests recompute it.
#pragma once

#include <cstdint>

#include "core/random.hpp"

namespace multihead::detail {

inline uint64_t module_dropout_seed(uint64_t seed, uint64_t call) { return splitmix64(seed ^ splitmix64(call)); }

}  // namespace multihead::detail
