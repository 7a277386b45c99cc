// Turns validated views and options into the kernel ABI: broadcasts become
// 0-strides, causal alignment a kv_offset per sequence, causal a window bound,
// and the work is split into items by shape alone (never by thread count), so
// results are bitwise identical for any number of threads.
#pragma once

#include "kernels/params.hpp"
#include "attention/validate.hpp"

namespace multihead::detail {

// Which call the forward's params serve: the backward plans its query blocks alike, but
// with its own row count per block.
enum class PlanFor { kForward, kBackward };

// A window bound as the kernels take it: one at least `reach` (every query's distance to
// every key is below it: Lq + Lk) masks nothing and becomes -1 (unbounded), so the kernels'
// bound arithmetic (diagonal ± window) never meets a caller's huge value.
inline int64_t window_bound(int64_t w, int64_t reach) { return w >= reach ? -1 : w; }

AttentionParams plan_forward(const ProblemSizes& s, const TensorView& q, const TensorView& k,
                             const TensorView& v, const ForwardOutputs& outputs,
                             const AttentionOptions& options, PlanFor plan_for = PlanFor::kForward);

// The forward part of the backward's params (q, k, v, out, lse) plus the gradients; with
// `nonfinite_inputs` (backward_inputs_nonfinite) the call is planned for the portable kernels.
BackwardParams plan_backward(const AttentionParams& p, const TensorView& dout, const BackwardOutputs& grads,
                             const AttentionOptions& options, bool nonfinite_inputs);

}  // namespace multihead::detail
