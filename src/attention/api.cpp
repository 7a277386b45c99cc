// Entry points: validate, plan, allocate scratch, dispatch. Nothing here computes.
#include "attention/plan.hpp"
#include "attention/validate.hpp"
#include "kernels/kernels.hpp"
#include "multihead/attention.hpp"

namespace multihead {

using detail::AttentionParams;

namespace {

// Per-thread kernel scratch, 64-byte aligned, kept across calls: first touch of fresh
// memory costs more than many small attention calls (page faults at ~0.6 GiB/s).
float* workspace(int64_t floats) {
  static thread_local Tensor buffer;
  if (buffer.numel() < floats) buffer = Tensor::empty(DType::kF32, {floats});
  return buffer.data_as<float>();
}

// Per-thread blocks start on 64-byte boundaries.
int64_t aligned_floats(int64_t floats) { return (floats + 15) / 16 * 16; }

}  // namespace

void attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                       const ForwardOutputs& outputs, const AttentionOptions& options) {
  const detail::ProblemSizes sizes = detail::validate_forward(q, k, v, outputs, options);
  // Probabilities and statistics come from exp(s - lse): without a caller's lse, keep one.
  Tensor own_lse;
  ForwardOutputs planned = outputs;
  if ((outputs.probs || outputs.head_stats) && !outputs.lse) {
    own_lse = Tensor::empty(DType::kF32, {sizes.B, sizes.H, sizes.Lq});
    planned.lse = own_lse.view();
  }
  const AttentionParams p = detail::plan_forward(sizes, q, k, v, planned, options);
  if (p.q_items.empty()) return;  // B = 0, Lq = 0 or H = 0: nothing to write
  int64_t per_thread = 0, shared = 0;
  detail::forward_scratch_floats(p, &per_thread, &shared);
  per_thread = aligned_floats(per_thread);
  detail::flash_forward(p, workspace(per_thread * p.num_threads + shared), per_thread);
}

void attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& out, const TensorView& lse,
                        const BackwardOutputs& grads, const AttentionOptions& options) {
  const detail::ProblemSizes sizes = detail::validate_backward(dout, q, k, v, out, lse, grads, options);
  // The forward's params read out and lse (never written in the backward).
  const AttentionParams p = detail::plan_forward(sizes, q, k, v, ForwardOutputs{out, lse, std::nullopt}, options,
                                                 detail::PlanFor::kBackward);
  const detail::BackwardParams g = detail::plan_backward(p, dout, grads, options);
  int64_t per_thread = 0, shared = 0;
  detail::backward_scratch_floats(p, g, &per_thread, &shared);
  per_thread = aligned_floats(per_thread);
  detail::flash_backward(p, g, workspace(per_thread * p.num_threads + shared), per_thread);
}

AttentionResult attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const AttentionOptions& options, bool return_probs) {
  // Shapes come from validated inputs: validate before allocating.
  detail::validate_inputs(q, k, v, options, return_probs);
  AttentionResult r;
  const int64_t B = q.shape[0], Lq = q.shape[1], H = q.shape[2], Lk = k.shape[1], Dv = v.shape[3];
  r.out = Tensor::empty(q.dtype, {B, Lq, H, Dv});
  r.lse = Tensor::empty(DType::kF32, {B, H, Lq});
  ForwardOutputs outputs{r.out.view(), r.lse.view(), std::nullopt};
  if (return_probs) {
    r.probs = Tensor::empty(DType::kF32, {B, H, Lq, Lk});
    outputs.probs = r.probs.view();
  }
  attention_forward(q, k, v, outputs, options);
  return r;
}

AttentionGrads attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                                  const TensorView& v, const TensorView& out, const TensorView& lse,
                                  const AttentionOptions& options) {
  detail::validate_inputs(q, k, v, options, false);  // before shapes are read
  AttentionGrads g;
  g.dq = Tensor::empty(DType::kF32, 4, q.shape);
  g.dk = Tensor::empty(DType::kF32, 4, k.shape);
  g.dv = Tensor::empty(DType::kF32, 4, v.shape);
  BackwardOutputs grads{g.dq.view(), g.dk.view(), g.dv.view(), std::nullopt, std::nullopt};
  if (options.bias) {
    g.dbias = Tensor::empty(DType::kF32, options.bias->rank, options.bias->shape);
    grads.dbias = g.dbias.view();
  }
  if (options.sinks) {
    g.dsinks = Tensor::empty(DType::kF32, options.sinks->rank, options.sinks->shape);
    grads.dsinks = g.dsinks.view();
  }
  attention_backward(dout, q, k, v, out, lse, grads, options);
  return g;
}

}  // namespace multihead
