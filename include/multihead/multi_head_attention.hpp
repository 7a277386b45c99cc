// The MultiHeadAttention module: learned Q/K/V/O projections around the
// functional attention, trainable, weight-compatible with torch.nn.MultiheadAttention.
//
//   query (B, Lq, E)  key (B, Lk, kdim)  value (B, Lk, vdim)        batch-first
//   Q = query Wqᵀ + bq  (B, Lq, H·d)     K = key Wkᵀ + bk  (B, Lk, Hkv·d)
//   V = value Wvᵀ + bv  (B, Lk, Hkv·dv)  O = attention(Q, K, V)  (B, Lq, H·dv)
//   out = O Woᵀ + bo    (B, Lq, out_dim)
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "multihead/attention.hpp"
#include "multihead/kv_cache.hpp"
#include "multihead/safetensors.hpp"
#include "multihead/tensor.hpp"

namespace multihead {

struct MultiHeadAttentionConfig {
  int64_t embed_dim = 0;     // E
  int64_t num_heads = 0;     // H
  int64_t num_kv_heads = 0;  // Hkv; 0 = num_heads (fewer: GQA/MQA)
  int64_t head_dim = 0;      // d; 0 = embed_dim / num_heads
  int64_t v_head_dim = 0;    // dv; 0 = head_dim
  int64_t kdim = 0;          // key input features; 0 = embed_dim
  int64_t vdim = 0;          // value input features; 0 = embed_dim
  int64_t out_dim = 0;       // 0 = embed_dim
  bool bias = true;          // biases of the four projections
  bool add_bias_kv = false;  // PyTorch: a learned key/value appended to every sequence
  bool add_zero_attn = false;  // PyTorch: a zero key/value appended after that
  float dropout = 0.0f;      // attention-weight dropout in training mode
  uint64_t seed = 0;         // initialisation and dropout
  DType dtype = DType::kF32;  // weights: kF32 or kBF16
  // Rotary position embeddings (rotary.hpp) of Q and K after the projections: 0 = off,
  // else even and <= head_dim. Positions are the tokens' indices (0..L-1 in forward; the
  // sequence's cached length + i in the cached forward); keys appended by add_bias_kv /
  // add_zero_attn are not rotated.
  int64_t rotary_dim = 0;
  double rotary_base = 10000.0;
  bool rotary_interleaved = false;  // false: Llama/NeoX halves; true: GPT-J pairs

  // The same config with every 0 replaced by its default; throws InvalidArgument when
  // a value is impossible (e.g. embed_dim % num_heads with head_dim 0).
  MultiHeadAttentionConfig resolved() const;
};

struct MhaForwardOptions {
  // Masks, bias, causal, window, key padding, ALiBi, softcap, sinks: the functional API's
  // meaning (True = may attend), broadcast to (B, H, Lq, Lk) over the *input* keys; the
  // keys appended by add_bias_kv / add_zero_attn are visible to every query (as PyTorch
  // pads attn_mask and key_padding_mask). cu_seqlens are not accepted here, and
  // dropout_p must stay 0: config.dropout applies in training mode, with a seed drawn
  // from config.seed and the number of training calls so far.
  AttentionOptions attention{};
  bool need_weights = false;     // also return attention weights
  bool average_weights = true;   // (B, Lq, Lk) averaged over heads, else (B, H, Lq, Lk)
  bool need_head_stats = false;  // also return the kernel's streaming per-head statistics
  bool training = false;         // dropout on
};

struct MhaOutput {
  Tensor out;      // (B, Lq, out_dim) f32
  Tensor weights;  // empty unless need_weights; covers the appended keys too (Lk + extra);
                   // the probabilities before dropout
  Tensor head_stats;  // empty unless need_head_stats: (B, H, Lq, 3) f32 = [entropy in nats,
                      // max probability, argmax key index as a float] of each head's query
                      // row, before dropout, computed while streaming (no Lq x Lk buffer);
                      // over the same keys as weights (an argmax >= Lk is an appended key)
};

struct MhaInputGrads {
  Tensor dquery;  // (B, Lq, E)
  Tensor dkey;    // (B, Lk, kdim); empty for self-attention (folded into dquery)
  Tensor dvalue;  // (B, Lk, vdim); empty for self-attention
};

// A named parameter with its gradient, for optimizers.
struct Parameter {
  std::string name;  // PyTorch's name, e.g. "in_proj_weight", "out_proj.bias"
  Tensor* value;
  Tensor* grad;      // f32, same shape
};

enum class WeightNames { kPyTorch, kLlama };

class MultiHeadAttention {
 public:
  explicit MultiHeadAttention(const MultiHeadAttentionConfig& config);
  ~MultiHeadAttention();
  MultiHeadAttention(MultiHeadAttention&&) noexcept;
  MultiHeadAttention& operator=(MultiHeadAttention&&) noexcept;
  const MultiHeadAttentionConfig& config() const { return config_; }

  // Self-attention when key and value are null, or both are the query's own view (one
  // fused QKV GEMM). Inputs are f32 (B, L, features) views of any strides; they are
  // copied, so they need not outlive the call.
  MhaOutput forward(const TensorView& query, const TensorView* key = nullptr, const TensorView* value = nullptr,
                    const MhaForwardOptions& options = {});
  // Self-attention over a KV cache (kv_cache.hpp), for generation: projects query
  // (B, Lq, E) f32, rotates Q and the new K at their absolute positions (the sequence's
  // length before the call + i), appends the new K, V to sequence seqs[b] and attends over
  // everything cached, causally (query i sees the sequence's tokens up to its own, so
  // feeding a sequence in chunks gives what one forward over it with causal=kTopLeft does).
  // options.attention may carry the score options (scale, softcap, window, alibi_slopes,
  // sinks); its causal must be kNone or kBottomRight (the call is causal either way).
  // The cache must have the module's num_kv_heads, head_dim and v_head_dim; add_bias_kv,
  // add_zero_attn, training, need_weights and need_head_stats are errors. Inference only:
  // afterwards backward() has no forward to differentiate. A failing call changes neither
  // the module nor the cache.
  MhaOutput forward(const TensorView& query, KvCache& cache, std::span<const int64_t> seqs,
                    const MhaForwardOptions& options = {});
  // Gradients of the last forward; parameter gradients accumulate into grads.
  MhaInputGrads backward(const TensorView& dout);

  std::vector<Parameter> parameters();
  void zero_grad();
  int64_t num_parameters() const;

  // Weights by name: PyTorch's names (in_proj_weight or q/k/v_proj_weight, in_proj_bias,
  // bias_k, bias_v, out_proj.weight, out_proj.bias) or Llama's (q_proj.weight, ...,
  // o_proj.bias). Loading takes either naming, under an optional prefix ("layers.0.attn.");
  // tensors outside the prefix are ignored. A mismatch throws one ModelMismatch Error
  // listing every missing, unexpected, mis-shaped or mis-typed tensor; nothing changes.
  std::map<std::string, TensorView> state_dict(WeightNames names = WeightNames::kPyTorch) const;
  void load_state_dict(const std::map<std::string, TensorView>& tensors, const std::string& prefix = "");
  void load(const std::string& path, const std::string& prefix = "");
  void save(const std::string& path, WeightNames names = WeightNames::kPyTorch) const;

  // The configuration that a set of tensors describes (for `multihead inspect`); throws
  // ModelMismatch when they do not form a module. num_heads cannot be read from weights
  // alone: pass it, or 0 for the fewest heads the widths allow (num_kv_heads = 1 and
  // num_heads = q width / k width: one head for MHA-shaped weights). dtype is kBF16 when
  // every tensor is bf16, else kF32.
  static MultiHeadAttentionConfig infer_config(const std::map<std::string, TensorInfo>& tensors,
                                               const std::string& prefix = "", int64_t num_heads = 0);

 private:
  struct State;
  MultiHeadAttentionConfig config_;
  std::unique_ptr<State> state_;  // weights, grads, saved activations, workspace
};

}  // namespace multihead
