// Turns validated views and options into the kernel ABI: broadcasts become
// 0-strides, causal alignment a kv_offset per sequence, causal a window bound,
// and the work is split into items by shape alone (never by thread count), so
// results are bitwise identical for any number of threads.
#pragma once

#include "attention/params.hpp"
#include "attention/validate.hpp"

namespace multihead::detail {

AttentionParams plan_forward(const ProblemSizes& s, const TensorView& q, const TensorView& k,
                             const TensorView& v, const ForwardOutputs& outputs,
                             const AttentionOptions& options);

// The forward part of the backward's params (q, k, v, out, lse) plus the gradients.
BackwardParams plan_backward(const AttentionParams& p, const TensorView& dout, const BackwardOutputs& grads,
                             const AttentionOptions& options);

}  // namespace multihead::detail
