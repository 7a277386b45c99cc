// Every rule of the contract, checked before any output byte is written. A
// failure throws multihead::Error naming the tensor, the dimension, what was
// expected and what was found.
#pragma once

#include "multihead/attention.hpp"

namespace multihead::detail {

// Sizes established by validation, in docs/CONTRACT.md letters.
struct ProblemSizes {
  int64_t B = 0, Lq = 0, Lk = 0, H = 0, Hkv = 0, D = 0, Dv = 0;
  bool varlen = false;
  int64_t num_seqs = 0;  // B, or the number of packed sequences
  int64_t extra_keys = 0;  // AttentionOptions::extra_keys (validated: in [0, every key length])
};

// The shapes and every option, without tensors: the one place for those rules.
// validate_inputs calls it once q, k and v have given their shapes;
// multihead::validate_attention is its public face (plus the element counts of q, k and
// v fitting int64, which check_layout's extent check stands for with tensors).
ProblemSizes validate_problem(const AttentionShapes& shapes, const AttentionOptions& options, bool wants_probs);

// q, k, v and every option (wants_probs: probs will be written).
ProblemSizes validate_inputs(const TensorView& q, const TensorView& k, const TensorView& v,
                             const AttentionOptions& options, bool wants_probs);

ProblemSizes validate_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                              const ForwardOutputs& outputs, const AttentionOptions& options);

ProblemSizes validate_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                               const TensorView& v, const TensorView& out, const TensorView& lse,
                               const BackwardOutputs& grads, const AttentionOptions& options);

}  // namespace multihead::detail
