#include "tiny_transformer/task.hpp"

#include <stdexcept>

#include "tiny_transformer/model.hpp"

namespace tiny_transformer {

Batch make_batch(const TaskConfig& config, int64_t B, uint64_t seed, BatchKind kind) {
  if (config.min_period < 1 || config.max_period < config.min_period || 2 * config.max_period > config.seq_len)
    throw std::invalid_argument("task: need 1 <= min_period <= max_period <= seq_len / 2");
  Rng rng(seed);
  Batch batch{B, config.seq_len, std::vector<int32_t>(B * config.seq_len), std::vector<int64_t>(B, 0)};
  for (int64_t b = 0; b < B; ++b) {
    const bool control =
        kind == BatchKind::kControl || (kind == BatchKind::kTraining && rng.uniform() < config.control_fraction);
    const int64_t period =
        control ? 0 : config.min_period + rng.uniform_int(config.max_period - config.min_period + 1);
    batch.period[b] = period;
    int32_t* t = batch.tokens.data() + b * batch.L;
    for (int64_t i = 0; i < batch.L; ++i)
      t[i] = (control || i < period) ? int32_t(rng.uniform_int(config.vocab)) : t[i - period];
  }
  return batch;
}

void next_token_targets(const Batch& batch, bool second_half_only, std::vector<int32_t>& targets,
                        std::vector<float>& weights) {
  targets.assign(batch.B * batch.L, 0);
  weights.assign(batch.B * batch.L, 0.0f);
  for (int64_t b = 0; b < batch.B; ++b)
    for (int64_t i = 0; i + 1 < batch.L; ++i) {
      if (second_half_only && i < batch.L / 2) continue;
      targets[b * batch.L + i] = batch.tokens[b * batch.L + i + 1];
      weights[b * batch.L + i] = 1.0f;
    }
}

}  // namespace tiny_transformer
