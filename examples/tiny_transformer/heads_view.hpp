// What each head does: per-head statistics, the head table, and the pictures
// (attention.html, heads.png).
//
// Every number in the table derives from per-row statistics, entropy, max probability and
// argmax position for each (layer, sequence, head, query row), which is exactly what a
// streaming kernel gives without an Lq x Lk buffer. head_row_stats() is their one source:
// the module's need_head_stats output. Only the pictures read full probabilities.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tiny_transformer/model.hpp"
#include "tiny_transformer/task.hpp"

namespace tiny_transformer {

struct RowStat {
  float entropy = 0;   // nats
  float max_prob = 0;
  int64_t argmax = 0;  // key position j
};

struct HeadRowStats {
  int64_t layers = 0, B = 0, H = 0, L = 0;
  std::vector<RowStat> rows;  // (layers, B, H, L)
  const RowStat& at(int64_t layer, int64_t b, int64_t h, int64_t i) const {
    return rows[((layer * B + b) * H + h) * L + i];
  }
};

// Runs the model on batch and returns every head's per-row statistics.
HeadRowStats head_row_stats(TinyTransformer& model, const Batch& batch);

struct HeadSummary {
  int64_t layer = 0, head = 0;
  double entropy_bits = 0;    // mean over rows i >= 1 (row 0 sees one key)
  double mean_distance = 0;   // mean i - argmax over rows i >= 1
  double previous_token = 0;  // share of rows i >= 1 whose argmax is i - 1
  double induction = 0;       // share of second-half rows of repeated sequences whose argmax is
                              // a key right after an earlier copy of the current token (i + 1 - k·P)
  double current_token = 0;   // share of rows i >= 1 whose argmax is i
  std::string role;           // "induction", "previous-token", "current-token" or "-" when no score is clear
};

inline constexpr double kClearScore = 0.5;

// batch: the one head_row_stats ran on (periods tell where the copies are).
std::vector<HeadSummary> summarize_heads(const HeadRowStats& stats, const Batch& batch);
std::string format_head_table(const std::vector<HeadSummary>& heads);
int64_t count_role(const std::vector<HeadSummary>& heads, const std::string& role);

// Full attention patterns of one example sequence, for the pictures.
struct AttentionPatterns {
  int64_t layers = 0, H = 0, L = 0, period = 0;
  std::vector<int32_t> tokens;  // (L)
  std::vector<float> probs;     // (layers, H, L, L)
};
AttentionPatterns attention_patterns(TinyTransformer& model, const Batch& batch, int64_t b);

// A self-contained page (no network): head view with a layer picker and token hover, and a
// model view grid of layers x heads. #status reads "ok" once it has rendered.
void write_attention_html(const std::string& path, const AttentionPatterns& patterns,
                          const std::vector<HeadSummary>& heads);
// Grid of heatmaps: a row per layer, a column per head.
void write_heads_png(const std::string& path, const AttentionPatterns& patterns);

}  // namespace tiny_transformer
