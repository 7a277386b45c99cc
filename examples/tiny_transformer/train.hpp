// Training and the demo's experiment: the multi-head model and a single-head model of the
// same width (so the same parameters and FLOPs) trained on the same batches, evaluated on
// held-out repeated and control sequences.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "tiny_transformer/generate.hpp"
#include "tiny_transformer/heads_view.hpp"
#include "tiny_transformer/model.hpp"
#include "tiny_transformer/task.hpp"

namespace tiny_transformer {

struct DemoConfig {
  int64_t steps = 4000;  // about 90 s for both models on 2 cores
  int64_t heads = 4;
  int64_t layers = 2;
  int64_t d_model = 64;
  int64_t mlp_hidden = 128;
  int64_t batch = 16;
  int64_t eval_batch = 64;
  float lr = 3e-3f;
  uint64_t seed = 1;
  TaskConfig task;
};

ModelConfig model_config(const DemoConfig& config, int64_t heads);

struct Evaluation {
  LossStats repeated;  // second half of held-out repeated sequences
  LossStats control;   // second half of held-out control sequences
};

struct TrainResult {
  std::string label;
  int64_t heads = 0;
  std::vector<float> losses;  // per step, training batch
  Evaluation eval;
  double seconds = 0;
  double tokens_per_second = 0;
  int64_t parameters = 0;
  double flops_per_token = 0;
};

// Trains with AdamW (linear warmup, cosine decay); progress (may be null) gets a bar.
TrainResult train(TinyTransformer& model, const DemoConfig& config, const std::string& label, FILE* progress);
Evaluation evaluate(TinyTransformer& model, const DemoConfig& config);
Batch held_out_batch(const DemoConfig& config, BatchKind kind);

// The comparison table; chance loss is ln(vocab).
std::string format_comparison(const TrainResult& multi, const TrainResult& single, int64_t vocab);

struct DemoResult {
  TrainResult multi, single;
  std::vector<HeadSummary> heads;  // the multi-head model's, on held-out repeated sequences
  GenerationResult generation;     // the multi-head model continuing held-out sequences
  std::string html_path, png_path;
};

// The whole demo: trains both models, prints the head table and the comparison to report,
// writes attention.html and heads.png into out_dir (created if missing).
DemoResult run_demo(const DemoConfig& config, const std::string& out_dir, FILE* progress, FILE* report);

}  // namespace tiny_transformer
