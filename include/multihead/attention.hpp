// The functional attention API: forward and backward on tensor views.
// Semantics (one meaning on every path) are spelled out in docs/CONTRACT.md.
//
//   q (B, Lq, H, D)   k (B, Lk, Hkv, D)   v (B, Lk, Hkv, Dv)      H % Hkv == 0
//   out (B, Lq, H, Dv)   lse (B, H, Lq) f32   probs (B, H, Lq, Lk) f32
//
// Packed variable-length batches (cu_seqlens_q/k given): the batch dim of q, k,
// v and out is 1 and sequences are packed along L: q (1, total_q, H, D),
// k (1, total_k, Hkv, D), lse (1, H, total_q).
#pragma once

#include <cstdint>
#include <optional>

#include "multihead/tensor.hpp"
#include "multihead/threads.hpp"  // set_num_threads / get_num_threads

namespace multihead {

// Which diagonal a causal mask (and a window) is aligned to.
//   kTopLeft:     query i sees keys j <= i.
//   kBottomRight: query i sees keys j <= i + (Lk - Lq)  (the last query sees every key;
//                 what incremental decoding needs).
enum class CausalAlign { kNone, kTopLeft, kBottomRight };

// Sliding window around the aligned diagonal j0 = i + kv_offset: query i sees keys
// j in [j0 - left, j0 + right]; -1 means unbounded on that side.
struct Window {
  int64_t left = -1;
  int64_t right = -1;
};

struct AttentionOptions {
  // Multiplies q·k. Default 1/sqrt(D). Must be finite and non-zero.
  std::optional<float> scale;
  CausalAlign causal = CausalAlign::kNone;
  // Windows use the causal alignment when causal is set, else bottom-right.
  Window window;
  // Boolean keep-mask, true = may attend; rank <= 4, broadcasts to (B, H, Lq, Lk).
  std::optional<TensorView> mask;
  // Additive float bias (f32/bf16/f16), broadcasts to (B, H, Lq, Lk); a value <= the
  // dtype's lowest finite value (or -inf) counts as masked.
  std::optional<TensorView> bias;
  // Key padding: i32 (B); batch b attends to keys [0, seqlens_k[b]) only.
  std::optional<TensorView> seqlens_k;
  // Packed variable-length batches: i32 (nseq + 1), starting at 0, non-decreasing,
  // ending at total_q / total_k. Both or neither.
  std::optional<TensorView> cu_seqlens_q;
  std::optional<TensorView> cu_seqlens_k;
  // ALiBi: f32 (H); adds -slope_h * |j - (i + kv_offset)| to each score.
  std::optional<TensorView> alibi_slopes;
  // > 0: scores become softcap * tanh(scores / softcap) (before bias and ALiBi). 0 = off.
  float softcap = 0.0f;
  // Learnable sinks: f32 (H), one extra logit per head in the softmax denominator.
  std::optional<TensorView> sinks;
  // Attention-weight dropout (training): P_ij is zeroed with probability dropout_p and
  // kept ones are scaled by 1 / (1 - dropout_p). Whether (b, h, i, j) is kept is a hash
  // of (dropout_seed, b, h, i, j): deterministic, independent of tiles and threads.
  // lse and probs are those before dropout. 0 = off; must lie in [0, 1).
  float dropout_p = 0.0f;
  uint64_t dropout_seed = 0;
  // The last extra_keys rows of k and v (of every sequence; varlen: of every packed
  // sequence) are keys that every query sees: no causal, window, key padding, mask, bias
  // or ALiBi applies to them (scale, softcap, sinks and dropout do). seqlens_k, the
  // diagonal, mask and bias then describe the Lk - extra_keys input keys (mask and bias
  // broadcast to (B, H, Lq, Lk - extra_keys)); probs cover all Lk keys. 0 = none.
  int64_t extra_keys = 0;
};

// ---- Validation without tensors -------------------------------------------------------
// The sizes of one attention problem, in the letters above (q (B, Lq, H, D),
// k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv)). Packed varlen: B = 1, Lq = total_q, Lk = total_k.
struct AttentionShapes {
  int64_t B = 0, Lq = 0, Lk = 0, H = 0, Hkv = 0, D = 0, Dv = 0;
};

// Checks a problem's shapes and options against docs/CONTRACT.md by the very rules that
// attention_forward and attention_backward apply (they run this check on the shapes of
// q, k and v; every rule lives in one place), so that a caller that builds q, k and v
// itself (a module with projections, say) can reject bad options before any work.
// Throws the same multihead::Error those calls would (kind, tensor, dim, expected, got):
// sizes (>= 0, D and Dv >= 1, Hkv divides H, element counts of q, k and v that fit in
// int64), scalar options, cu_seqlens, mask, bias, seqlens_k, alibi_slopes and sinks
// (layout, dtype, broadcast to (B, H, Lq, Lk - extra_keys)), extra_keys (in [0, Lk], and
// at most every packed sequence's key length). return_probs: probs will be asked for
// (Unsupported with cu_seqlens). It reads no element of q, k, v (there are none), mask
// or bias; it does read the small option vectors whose values the contract constrains:
// seqlens_k (in [0, Lk - extra_keys]), cu_seqlens_q/k (0 first, non-decreasing, ending at Lq / Lk),
// alibi_slopes and sinks (finite). It writes nothing.
void validate_attention(const AttentionShapes& shapes, const AttentionOptions& options, bool return_probs = false);
// ---- end of validation without tensors ------------------------------------------------

struct ForwardOutputs {
  TensorView out;                   // (B, Lq, H, Dv), any float dtype
  std::optional<TensorView> lse{};    // (B, H, Lq) f32; -inf for fully masked rows
  std::optional<TensorView> probs{};  // (B, H, Lq, Lk) f32, exact probabilities
  // Streaming per-head statistics of each query row, without an Lq x Lk buffer:
  // (B, H, Lq, 3) f32 = [entropy of P_i in nats, max_j P_ij, argmax_j P_ij (as a float,
  // the first on ties)]; a fully masked row gives [0, 0, -1]. Over keys (a sink's share
  // is not a key). Varlen: (1, H, total_q, 3).
  std::optional<TensorView> head_stats{};
};

// Writes out (and lse/probs when given). Throws multihead::Error before writing
// anything when an input breaks the contract.
void attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                       const ForwardOutputs& outputs, const AttentionOptions& options = {});

struct BackwardOutputs {
  TensorView dq;                    // shape of q, any float dtype
  TensorView dk;                    // shape of k
  TensorView dv;                    // shape of v
  std::optional<TensorView> dbias{};   // f32, shape of options.bias (reduced over its broadcast dims)
  std::optional<TensorView> dsinks{};  // f32 (H)
};

// dout (B, Lq, H, Dv); out and lse as written by attention_forward with the same options.
void attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& out, const TensorView& lse,
                        const BackwardOutputs& grads, const AttentionOptions& options = {});

// Convenience forms that allocate their results (out has q's dtype).
struct AttentionResult {
  Tensor out;
  Tensor lse;
  Tensor probs;  // empty unless requested
};
AttentionResult attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const AttentionOptions& options = {}, bool return_probs = false);

struct AttentionGrads {
  Tensor dq, dk, dv;  // f32
  Tensor dbias;       // f32, empty unless options.bias
  Tensor dsinks;      // f32, empty unless options.sinks
};
AttentionGrads attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                                  const TensorView& v, const TensorView& out, const TensorView& lse,
                                  const AttentionOptions& options = {});

}  // namespace multihead
