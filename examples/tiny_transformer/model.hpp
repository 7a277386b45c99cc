// A tiny decoder-only transformer for the demo: token + position embedding, pre-LN
// residual blocks (causal multihead::MultiHeadAttention, then a ReLU MLP), a final layer
// norm and an unembedding. Every piece has its own forward and backward; activations are
// row-major float vectors of N = B * L rows. Only the attention comes from the library.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "multihead/kv_cache.hpp"
#include "multihead/multi_head_attention.hpp"

namespace tiny_transformer {

// splitmix64: small, portable, deterministic on every platform (unlike std:: distributions).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  int64_t uniform_int(int64_t n);  // [0, n)
  double uniform();                // [0, 1)
  double normal();                 // standard normal (Box-Muller)

 private:
  uint64_t state_;
};
uint64_t derive_seed(uint64_t seed, uint64_t stream);

// One trainable array and its gradient, for the optimizer.
struct ParamSlot {
  std::string name;
  float* value;
  float* grad;
  int64_t size;
  bool decay;  // weight decay applies (matrices, not biases, gains or embeddings)
};

// y = x W + b with W stored (in, out).
class Linear {
 public:
  Linear(std::string name, int64_t in, int64_t out, float init_std, Rng& rng);
  void forward(const std::vector<float>& x, std::vector<float>& y);  // x (N, in) -> y (N, out)
  void backward(const std::vector<float>& dy, std::vector<float>& dx);  // dy (N, out) -> dx (N, in)
  void collect(std::vector<ParamSlot>& slots);
  int64_t in() const { return in_; }
  int64_t out() const { return out_; }

 private:
  std::string name_;
  int64_t in_, out_;
  std::vector<float> w_, b_, dw_, db_;  // w (in, out), b (out)
  std::vector<float> x_;                // saved input (N, in)
};

class LayerNorm {
 public:
  LayerNorm(std::string name, int64_t dim);
  void forward(const std::vector<float>& x, std::vector<float>& y);  // (N, dim)
  void backward(const std::vector<float>& dy, std::vector<float>& dx);
  void collect(std::vector<ParamSlot>& slots);

 private:
  std::string name_;
  int64_t dim_;
  std::vector<float> gain_, bias_, dgain_, dbias_;
  std::vector<float> xhat_, rstd_;  // saved: (N, dim), (N)
};

class Mlp {
 public:
  Mlp(const std::string& name, int64_t dim, int64_t hidden, Rng& rng, float out_std);
  void forward(const std::vector<float>& x, std::vector<float>& y);  // (N, dim)
  void backward(const std::vector<float>& dy, std::vector<float>& dx);
  void collect(std::vector<ParamSlot>& slots);

 private:
  Linear fc1_, fc2_;
  std::vector<float> h_, dh_;  // (N, hidden) after ReLU; its gradient
};

struct ModelConfig {
  int64_t vocab = 0;
  int64_t seq_len = 0;    // L: the longest sequence (position embeddings)
  int64_t d_model = 64;   // E
  int64_t heads = 4;      // H; head_dim = E / H, so width, parameters and FLOPs do not depend on H
  int64_t layers = 2;
  int64_t mlp_hidden = 256;
  uint64_t seed = 0;
};

// x -> x + attn(ln1(x)) -> h + mlp(ln2(h)), attention causal.
class Block {
 public:
  Block(const std::string& name, const ModelConfig& config, Rng& rng);
  // x (B, L, E) in place; keep_weights also stores the per-head attention weights,
  // keep_head_stats the kernel's streaming per-head statistics.
  void forward(std::vector<float>& x, int64_t B, int64_t L, bool keep_weights, bool keep_head_stats);
  void backward(std::vector<float>& dx);  // dy (B, L, E) in, dx out, in place
  // x (B, n, E) in place for n new tokens per sequence, attending over the cache
  // (inference: no backward).
  void forward_cached(std::vector<float>& x, int64_t B, int64_t n, multihead::KvCache& cache,
                      std::span<const int64_t> seqs);
  void collect(std::vector<ParamSlot>& slots);
  const multihead::Tensor& weights() const { return weights_; }  // (B, H, L, L) or empty
  const multihead::Tensor& head_stats() const { return head_stats_; }  // (B, H, L, 3) or empty

 private:
  int64_t B_ = 0, L_ = 0, E_;
  LayerNorm ln1_, ln2_;
  multihead::MultiHeadAttention attn_;
  Mlp mlp_;
  multihead::Tensor weights_, head_stats_;
  std::vector<float> a_, branch_, dbranch_;  // scratch (N, E)
};

class TinyTransformer {
 public:
  explicit TinyTransformer(const ModelConfig& config);
  TinyTransformer(const TinyTransformer&) = delete;
  TinyTransformer& operator=(const TinyTransformer&) = delete;

  // tokens (B, L) -> logits (B * L, vocab). keep_weights: per-layer attention weights;
  // keep_head_stats: per-layer streaming head statistics (no L x L buffer).
  const std::vector<float>& forward(const std::vector<int32_t>& tokens, int64_t B, int64_t L,
                                    bool keep_weights = false, bool keep_head_stats = false);
  void backward(const std::vector<float>& dlogits);  // (B * L, vocab); gradients accumulate

  // Generation: one KV cache per layer (capacity tokens each), then tokens (B, n) ->
  // logits (B * n, vocab) for n new tokens of sequences seqs (ids of every layer's cache:
  // create them in the same order in each), at positions continuing each sequence.
  std::vector<multihead::KvCache> make_caches(int64_t capacity,
                                              multihead::KvCacheDType dtype = multihead::KvCacheDType::kF32) const;
  const std::vector<float>& forward_cached(const std::vector<int32_t>& tokens, int64_t B, int64_t n,
                                           std::vector<multihead::KvCache>& caches, std::span<const int64_t> seqs);

  std::vector<ParamSlot>& parameters() { return slots_; }
  const multihead::Tensor& attention_weights(int64_t layer) const { return blocks_[layer].weights(); }
  // (B, H, L, 3): entropy (nats), max probability, argmax key position, per query row.
  const multihead::Tensor& head_stats(int64_t layer) const { return blocks_[layer].head_stats(); }
  const ModelConfig& config() const { return config_; }
  int64_t num_parameters() const;
  // Forward multiply-adds x 2 per token at sequence length L (causal: a query sees (L+1)/2 keys on average).
  double flops_per_token(int64_t L) const;

 private:
  ModelConfig config_;
  int64_t B_ = 0, L_ = 0;
  std::vector<float> tok_emb_, pos_emb_, dtok_emb_, dpos_emb_;  // (vocab, E), (seq_len, E)
  std::vector<Block> blocks_;
  LayerNorm ln_f_;
  Linear unembed_;
  std::vector<int32_t> tokens_;
  std::vector<float> x_, y_, logits_, dy_;
  std::vector<ParamSlot> slots_;
};

// Mean cross-entropy over rows with weight > 0 (weights (N), e.g. 0 for positions without
// a target). Writes dlogits (N, V) for that mean when dlogits is non-null.
struct LossStats {
  double loss = 0;
  double accuracy = 0;  // argmax == target
  double count = 0;     // total weight
};
LossStats cross_entropy(const std::vector<float>& logits, int64_t V, const std::vector<int32_t>& targets,
                        const std::vector<float>& weights, std::vector<float>* dlogits);

struct AdamWConfig {
  float lr = 3e-3f;
  float beta1 = 0.9f, beta2 = 0.98f, eps = 1e-8f;
  float weight_decay = 0.01f;
  float clip_norm = 1.0f;  // global gradient-norm clip; 0 = off
};

class AdamW {
 public:
  AdamW(const std::vector<ParamSlot>& slots, const AdamWConfig& config);
  void step(float lr);  // one update with this learning rate, then zeroes the gradients
  void zero_grad();

 private:
  std::vector<ParamSlot> slots_;
  AdamWConfig config_;
  std::vector<std::vector<float>> m_, v_;
  int64_t t_ = 0;
};

}  // namespace tiny_transformer
