// The synthetic token task. A repeated sequence is a random segment of period P (drawn
// per sequence) written over and over: every token from position P on repeats the one P
// earlier, so it is predictable only by finding the earlier occurrence of the current
// context and copying what followed (a previous-token head feeding an induction head).
// P varies, so no fixed positional offset solves it. A control sequence is uniform noise.
// The vocabulary is small, so one token's earlier occurrences are often ambiguous and
// matching the two previous tokens pays off.
#pragma once

#include <cstdint>
#include <vector>

namespace tiny_transformer {

struct TaskConfig {
  int64_t vocab = 24;
  int64_t seq_len = 64;      // L
  int64_t min_period = 16;   // P in [min_period, max_period]; max_period <= L / 2, so the
  int64_t max_period = 32;   // second half of every repeated sequence is a repeat
  double control_fraction = 0.25;  // share of control sequences in training batches
};

struct Batch {
  int64_t B = 0, L = 0;
  std::vector<int32_t> tokens;  // (B, L)
  std::vector<int64_t> period;  // (B); 0 for a control sequence
};

enum class BatchKind { kTraining, kRepeated, kControl };

// Deterministic in (config, B, seed).
Batch make_batch(const TaskConfig& config, int64_t B, uint64_t seed, BatchKind kind);

// Next-token targets and weights for N = B * L rows: row (b, i) predicts token i + 1;
// the last position has weight 0. second_half_only keeps rows with i >= L / 2 (all
// predictable by copying in a repeated sequence).
void next_token_targets(const Batch& batch, bool second_half_only, std::vector<int32_t>& targets,
                        std::vector<float>& weights);

}  // namespace tiny_transformer
