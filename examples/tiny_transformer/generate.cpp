#include "tiny_transformer/generate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

namespace tiny_transformer {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The most likely next token of row r of logits (N, V): the first of equal maxima.
int32_t argmax_row(const std::vector<float>& logits, int64_t V, int64_t r) {
  int32_t best = 0;
  for (int64_t v = 1; v < V; ++v)
    if (logits[size_t(r * V + v)] > logits[size_t(r * V + best)]) best = int32_t(v);
  return best;
}

}  // namespace

GenerationResult compare_generation(TinyTransformer& model, const Batch& held_out, int64_t prompt) {
  const int64_t B = held_out.B, L = held_out.L, V = model.config().vocab, steps = L - prompt;
  GenerationResult g;
  g.sequences = B, g.prompt = prompt, g.new_tokens = steps;

  // Without a cache: the whole prefix again at every step.
  std::vector<int32_t> uncached(size_t(B * L));
  for (int64_t b = 0; b < B; ++b)
    std::copy_n(held_out.tokens.begin() + b * L, prompt, uncached.begin() + b * L);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t len = prompt; len < L; ++len) {
    std::vector<int32_t> prefix(size_t(B * len));
    for (int64_t b = 0; b < B; ++b) std::copy_n(uncached.begin() + b * L, len, prefix.begin() + b * len);
    const std::vector<float>& logits = model.forward(prefix, B, len);
    for (int64_t b = 0; b < B; ++b) uncached[size_t(b * L + len)] = argmax_row(logits, V, b * len + len - 1);
  }
  g.uncached_seconds = seconds_since(t0);

  // With the cache: the prompt once, then one token per step. Returns the tokens and the
  // logits of the prompt's last position.
  const auto generate = [&](multihead::KvCacheDType dtype, std::vector<int32_t>& cached, std::vector<float>& first,
                            double* bytes_per_token) {
    std::vector<multihead::KvCache> caches = model.make_caches(B * L, dtype);
    std::vector<int64_t> seqs;
    for (int64_t b = 0; b < B; ++b) {
      seqs.push_back(caches[0].new_sequence());
      for (size_t l = 1; l < caches.size(); ++l) caches[l].new_sequence();  // the same ids in every layer
    }
    cached.assign(size_t(B * L), 0);
    std::vector<int32_t> feed(size_t(B * prompt));
    for (int64_t b = 0; b < B; ++b) {
      std::copy_n(held_out.tokens.begin() + b * L, prompt, cached.begin() + b * L);
      std::copy_n(held_out.tokens.begin() + b * L, prompt, feed.begin() + b * prompt);
    }
    int64_t n = prompt;
    for (int64_t len = prompt; len < L; ++len) {
      const std::vector<float>& logits = model.forward_cached(feed, B, n, caches, seqs);
      if (len == prompt) {
        first.resize(size_t(B * V));
        for (int64_t b = 0; b < B; ++b) std::copy_n(logits.begin() + (b * n + n - 1) * V, V, first.begin() + b * V);
      }
      feed.resize(size_t(B));
      for (int64_t b = 0; b < B; ++b) feed[size_t(b)] = cached[size_t(b * L + len)] = argmax_row(logits, V, b * n + n - 1);
      n = 1;
    }
    *bytes_per_token = double(caches[0].nbytes()) / double(caches[0].capacity()) * double(caches.size());
  };
  std::vector<int32_t> cached;
  std::vector<float> first;
  t0 = std::chrono::steady_clock::now();
  generate(multihead::KvCacheDType::kF32, cached, first, &g.cache_bytes_per_token);
  g.cached_seconds = seconds_since(t0);

  // Quantized caches against the f32 one.
  const multihead::KvCacheDType low[2] = {multihead::KvCacheDType::kBF16, multihead::KvCacheDType::kI8};
  for (int q = 0; q < 2; ++q) {
    GenerationResult::Quantized& r = g.quantized[q];
    r.dtype = multihead::to_string(low[q]);
    std::vector<int32_t> tokens;
    std::vector<float> logits;
    generate(low[q], tokens, logits, &r.bytes_per_token);
    for (int64_t b = 0; b < B; ++b) {
      double scale = 0, diff = 0;
      for (int64_t v = 0; v < V; ++v) {
        scale = std::max(scale, double(std::abs(first[size_t(b * V + v)])));
        diff = std::max(diff, double(std::abs(logits[size_t(b * V + v)] - first[size_t(b * V + v)])));
      }
      r.max_logit_error = std::max(r.max_logit_error, diff / std::max(scale, 1e-30));
      for (int64_t i = prompt; i < L; ++i) r.same += tokens[size_t(b * L + i)] == cached[size_t(b * L + i)];
    }
  }

  const double generated = double(B * steps);
  g.cached_tokens_per_second = generated / g.cached_seconds;
  g.uncached_tokens_per_second = generated / g.uncached_seconds;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = prompt; i < L; ++i) {
      const size_t at = size_t(b * L + i);
      g.same += cached[at] == uncached[at];
      g.correct += cached[at] == held_out.tokens[at];
      ++g.total;
    }
  return g;
}

std::string format_generation(const GenerationResult& g) {
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "greedy generation, %lld held-out repeated sequences, %lld-token prompts, %lld new tokens each:\n"
                "  with the KV cache     %9.0f tokens/s  (%.3f s)\n"
                "  recomputing the prefix %8.0f tokens/s  (%.3f s)  -> the cache is %.1fx faster\n"
                "  KV cache: %.0f bytes per token (K and V of every layer, f32)\n"
                "  same tokens both ways: %lld of %lld %s; continuation correct: %lld of %lld (%.1f%%)\n",
                static_cast<long long>(g.sequences), static_cast<long long>(g.prompt),
                static_cast<long long>(g.new_tokens), g.cached_tokens_per_second, g.cached_seconds,
                g.uncached_tokens_per_second, g.uncached_seconds, g.uncached_seconds / g.cached_seconds,
                g.cache_bytes_per_token, static_cast<long long>(g.same), static_cast<long long>(g.total),
                g.same == g.total ? "(identical)" : "(DIFFERENT)", static_cast<long long>(g.correct),
                static_cast<long long>(g.total), 100.0 * double(g.correct) / double(g.total));
  std::string text = buf;
  for (const GenerationResult::Quantized& q : g.quantized) {
    std::snprintf(buf, sizeof buf,
                  "  %-8s cache: %4.0f bytes per token; same tokens as the f32 cache: %lld of %lld; largest logit "
                  "error after the prompt %.2g (relative to the row's largest logit)\n",
                  q.dtype, q.bytes_per_token, static_cast<long long>(q.same), static_cast<long long>(g.total),
                  q.max_logit_error);
    text += buf;
  }
  return text;
}

}  // namespace tiny_transformer
