// Greedy generation with the trained model, with and without the KV cache: the cached
// path feeds each new token through MultiHeadAttention's cached forward, the uncached one
// recomputes the whole prefix every step; both must produce the same tokens.
#pragma once

#include <cstdint>
#include <string>

#include "tiny_transformer/model.hpp"
#include "tiny_transformer/task.hpp"

namespace tiny_transformer {

struct GenerationResult {
  int64_t sequences = 0, prompt = 0, new_tokens = 0;  // per sequence
  double cached_seconds = 0, uncached_seconds = 0;
  double cached_tokens_per_second = 0, uncached_tokens_per_second = 0;
  double cache_bytes_per_token = 0;  // K and V of every layer, as stored
  int64_t same = 0, total = 0;       // generated tokens equal in both paths, of all generated
  int64_t correct = 0;               // cached tokens equal to the sequence's true continuation
  // The same cached generation with bf16 and int8 caches (index 0 bf16, 1 int8): tokens
  // equal to the f32 cache's, the largest logit difference on the prompt's last position
  // (relative to that row's largest |logit|), and bytes per token.
  struct Quantized {
    const char* dtype = "";
    int64_t same = 0;
    double max_logit_error = 0;
    double bytes_per_token = 0;
  };
  Quantized quantized[2];
};

// Continues the first `prompt` tokens of each sequence of `held_out` (repeated sequences:
// the continuation is predictable) to the batch's full length.
GenerationResult compare_generation(TinyTransformer& model, const Batch& held_out, int64_t prompt);
std::string format_generation(const GenerationResult& g);

}  // namespace tiny_transformer
