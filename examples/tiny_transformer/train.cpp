#include "tiny_transformer/train.hpp"

#include <chrono>
#include <filesystem>
#include <cmath>
#include <numbers>
#include <sstream>

namespace tiny_transformer {

namespace {
constexpr uint64_t kTrainStream = 100, kHeldOutStream = 200, kModelStream = 300;

float learning_rate(const DemoConfig& config, int64_t step) {
  const int64_t warmup = std::max<int64_t>(1, config.steps / 20);
  if (step < warmup) return config.lr * float(step + 1) / float(warmup);
  const double t = double(step - warmup) / double(std::max<int64_t>(1, config.steps - warmup));
  return config.lr * float(0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * t)));
}

void draw_progress(FILE* out, const std::string& label, int64_t step, int64_t steps, float loss, double tokens_per_s) {
  constexpr int kWidth = 30;
  const int filled = int(kWidth * (step + 1) / steps);
  std::fprintf(out, "\r%-12s [%s%s] step %5lld/%lld  loss %.3f  %7.0f tok/s", label.c_str(),
               std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(),
               static_cast<long long>(step + 1), static_cast<long long>(steps), loss, tokens_per_s);
  if (step + 1 == steps) std::fputc('\n', out);
  std::fflush(out);
}
}  // namespace

ModelConfig model_config(const DemoConfig& config, int64_t heads) {
  ModelConfig m;
  m.vocab = config.task.vocab;
  m.seq_len = config.task.seq_len;
  m.d_model = config.d_model;
  m.heads = heads;
  m.layers = config.layers;
  m.mlp_hidden = config.mlp_hidden;
  // Both models start from the same seed: embeddings, MLPs and projection weights alike.
  m.seed = derive_seed(config.seed, kModelStream);
  return m;
}

Batch held_out_batch(const DemoConfig& config, BatchKind kind) {
  return make_batch(config.task, config.eval_batch, derive_seed(config.seed, kHeldOutStream + uint64_t(kind)), kind);
}

Evaluation evaluate(TinyTransformer& model, const DemoConfig& config) {
  Evaluation e;
  std::vector<int32_t> targets;
  std::vector<float> weights;
  for (BatchKind kind : {BatchKind::kRepeated, BatchKind::kControl}) {
    const Batch batch = held_out_batch(config, kind);
    const std::vector<float>& logits = model.forward(batch.tokens, batch.B, batch.L);
    next_token_targets(batch, true, targets, weights);
    (kind == BatchKind::kRepeated ? e.repeated : e.control) =
        cross_entropy(logits, config.task.vocab, targets, weights, nullptr);
  }
  return e;
}

TrainResult train(TinyTransformer& model, const DemoConfig& config, const std::string& label, FILE* progress) {
  TrainResult r;
  r.label = label;
  r.heads = model.config().heads;
  r.parameters = model.num_parameters();
  r.flops_per_token = model.flops_per_token(config.task.seq_len);
  AdamW optimizer(model.parameters(), AdamWConfig{.lr = config.lr});
  std::vector<int32_t> targets;
  std::vector<float> weights, dlogits;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < config.steps; ++step) {
    // Both models see the same batches: the comparison differs only in the head count.
    const Batch batch =
        make_batch(config.task, config.batch, derive_seed(config.seed, kTrainStream + uint64_t(step)), BatchKind::kTraining);
    next_token_targets(batch, false, targets, weights);
    const LossStats loss = cross_entropy(model.forward(batch.tokens, batch.B, batch.L), config.task.vocab, targets,
                                         weights, &dlogits);
    model.backward(dlogits);
    optimizer.step(learning_rate(config, step));
    r.losses.push_back(float(loss.loss));
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    r.tokens_per_second = double((step + 1) * batch.B * batch.L) / std::max(r.seconds, 1e-9);
    if (progress && (step % 5 == 0 || step + 1 == config.steps))
      draw_progress(progress, label, step, config.steps, r.losses.back(), r.tokens_per_second);
  }
  r.eval = evaluate(model, config);
  return r;
}

std::string format_comparison(const TrainResult& multi, const TrainResult& single, int64_t vocab) {
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof line, "%-22s %7s %12s %12s %12s %12s %10s %12s\n", "model", "heads", "loss(rep)",
                "acc(rep)", "loss(ctrl)", "acc(ctrl)", "params", "FLOPs/token");
  s << line;
  for (const TrainResult* r : {&multi, &single}) {
    std::snprintf(line, sizeof line, "%-22s %7lld %12.3f %11.1f%% %12.3f %11.1f%% %10lld %12.0f\n", r->label.c_str(),
                  static_cast<long long>(r->heads), r->eval.repeated.loss, 100 * r->eval.repeated.accuracy,
                  r->eval.control.loss, 100 * r->eval.control.accuracy, static_cast<long long>(r->parameters),
                  r->flops_per_token);
    s << line;
  }
  std::snprintf(line, sizeof line,
                "rep = second half of held-out repeated sequences (copyable); ctrl = the same positions of random "
                "sequences (chance: loss %.3f)\n",
                std::log(double(vocab)));
  s << line;
  return s.str();
}

DemoResult run_demo(const DemoConfig& config, const std::string& out_dir, FILE* progress, FILE* report) {
  DemoResult d;
  std::fprintf(report, "multihead demo: %lld-layer causal transformer, d_model %lld, vocab %lld, L %lld, %lld steps, seed %llu\n",
               static_cast<long long>(config.layers), static_cast<long long>(config.d_model),
               static_cast<long long>(config.task.vocab), static_cast<long long>(config.task.seq_len),
               static_cast<long long>(config.steps), static_cast<unsigned long long>(config.seed));
  std::fflush(report);
  TinyTransformer multi(model_config(config, config.heads));
  d.multi = train(multi, config, std::to_string(config.heads) + "-head", progress);
  TinyTransformer single(model_config(config, 1));
  d.single = train(single, config, "1-head", progress);

  const Batch held_out = held_out_batch(config, BatchKind::kRepeated);
  d.heads = summarize_heads(head_row_stats(multi, held_out), held_out);
  std::fprintf(report, "\nheads of the %lld-head model (held-out repeated sequences; scores are shares of query rows):\n%s",
               static_cast<long long>(config.heads), format_head_table(d.heads).c_str());
  std::fprintf(report, "\n%s", format_comparison(d.multi, d.single, config.task.vocab).c_str());
  std::fprintf(report, "training time: %.1f s + %.1f s\n", d.multi.seconds, d.single.seconds);
  d.generation = compare_generation(multi, held_out_batch(config, BatchKind::kRepeated), config.task.seq_len * 5 / 8);
  std::fprintf(report, "\n%s", format_generation(d.generation).c_str());

  std::filesystem::create_directories(out_dir);
  const AttentionPatterns example = attention_patterns(multi, held_out, 0);
  d.html_path = (std::filesystem::path(out_dir) / "attention.html").string();
  d.png_path = (std::filesystem::path(out_dir) / "heads.png").string();
  write_attention_html(d.html_path, example, d.heads);
  write_heads_png(d.png_path, example);
  std::fprintf(report, "wrote %s and %s\n", d.html_path.c_str(), d.png_path.c_str());
  return d;
}

}  // namespace tiny_transformer
