// Entry points: validate, plan, allocate scratch, dispatch. Nothing here computes but the
// trivial results of problems without query heads.
#include <cstring>

#include "attention/cached.hpp"
#include "attention/nonfinite.hpp"
#include "attention/plan.hpp"
#include "attention/validate.hpp"
#include "core/view_checks.hpp"
#include "kernels/kernels.hpp"
#include "multihead/attention.hpp"
#include "multihead/attention_cached.hpp"
#include "multihead/error.hpp"
#include "multihead/rotary.hpp"

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

// Writes +0 to every element of a float view of any strides (+0 is all zero bits in f32,
// bf16 and f16).
void write_zeros(const TensorView& t) {
  if (t.numel() == 0) return;
  const int64_t size = int64_t(dtype_size(t.dtype));
  Shape index{};
  while (true) {
    std::memset(static_cast<char*>(t.data) + t.offset(index) * size, 0, size_t(size));
    int d = t.rank - 1;
    for (; d >= 0; --d) {  // odometer increment, last dim fastest
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
    if (d < 0) return;
  }
}

}  // namespace

void attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                       const ForwardOutputs& outputs, const AttentionOptions& options) {
  const detail::ProblemSizes sizes = detail::validate_forward(q, k, v, outputs, options);
  // No query heads (H = 0, any Hkv): out, lse, probs and head_stats have no elements. The
  // plan's heads per group (H / Hkv = 0) must not be reached: items are sized by it.
  if (sizes.H == 0) return;
  // Probabilities and statistics come from exp(s - lse): without a caller's lse, keep one.
  Tensor own_lse;
  ForwardOutputs planned = outputs;
  if ((outputs.probs || outputs.head_stats) && !outputs.lse) {
    own_lse = Tensor::empty(DType::kF32, {sizes.B, sizes.H, sizes.Lq});
    planned.lse = own_lse.view();
  }
  const AttentionParams p = detail::plan_forward(sizes, q, k, v, planned, options);
  if (p.q_items.empty()) return;  // B = 0 or Lq = 0: nothing to write
  int64_t per_thread = 0, shared = 0;
  detail::forward_scratch_floats(p, &per_thread, &shared);
  per_thread = aligned_floats(per_thread);
  detail::flash_forward(p, workspace(per_thread * p.num_threads + shared), per_thread);
}

void attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& out, const TensorView& lse,
                        const BackwardOutputs& grads, const AttentionOptions& options) {
  const detail::ProblemSizes sizes = detail::validate_backward(dout, q, k, v, out, lse, grads, options);
  if (sizes.H == 0) {  // no query head reads any key: dk, dv (and dbias) are sums of nothing
    write_zeros(grads.dk);
    write_zeros(grads.dv);
    if (grads.dbias) write_zeros(*grads.dbias);
    return;
  }
  // The forward's params read out and lse (never written in the backward).
  const AttentionParams p = detail::plan_forward(sizes, q, k, v, ForwardOutputs{out, lse, std::nullopt}, options,
                                                 detail::PlanFor::kBackward);
  const detail::BackwardParams g = detail::plan_backward(
      p, dout, grads, options, detail::backward_inputs_nonfinite(dout, q, out, lse, options));
  int64_t per_thread = 0, shared = 0;
  detail::backward_scratch_floats(p, g, &per_thread, &shared);
  per_thread = aligned_floats(per_thread);
  detail::flash_backward(p, g, workspace(per_thread * p.num_threads + shared), per_thread);
}

void attention_forward_cached(const TensorView& q, KvCache& cache, std::span<const int64_t> seqs,
                              const ForwardOutputs& outputs, const AttentionOptions& options,
                              const CachedAttentionInputs& inputs) {
  const detail::CachedSizes sizes = detail::validate_cached(q, cache, seqs, outputs, options, inputs);
  // Rotary: q and k_new rotated into fresh tensors at their absolute positions.
  TensorView q_used = q;
  std::optional<TensorView> k_used = inputs.k_new;
  Tensor q_rot, k_rot;
  if (inputs.rotary_dim > 0 && sizes.B * sizes.Lq > 0) {
    Tensor positions = Tensor::empty(DType::kI64, {sizes.B, sizes.Lq});
    for (int64_t b = 0; b < sizes.B; ++b)
      for (int64_t i = 0; i < sizes.Lq; ++i)
        positions.data_as<int64_t>()[b * sizes.Lq + i] =
            sizes.lengths[size_t(b)] + i - (sizes.append ? 0 : sizes.Lq);
    const RotaryOptions rotary{inputs.rotary_dim, inputs.rotary_base, inputs.rotary_interleaved};
    q_rot = Tensor::empty(q.dtype, 4, q.shape);
    apply_rotary(q, positions.view(), q_rot.view(), rotary);
    q_used = q_rot.view();
    if (inputs.k_new) {
      k_rot = Tensor::empty(inputs.k_new->dtype, 4, inputs.k_new->shape);
      apply_rotary(*inputs.k_new, positions.view(), k_rot.view(), rotary);
      k_used = k_rot.view();
    }
  }
  // Checks every sequence's tokens and the blocks of all of them before the first write.
  // Errors name the call's arguments (the cache calls them k and v).
  if (sizes.append) try {
      cache.append(seqs, *k_used, *inputs.v_new);
    } catch (const Error& e) {
      const std::string& t = e.tensor();
      throw Error(e.kind(), t == "k" ? "k_new" : t == "v" ? "v_new" : t, e.dim(), e.expected(), e.got());
    }
  if (sizes.H == 0) return;  // the new tokens are appended; no query head attends
  const detail::PagedParams p = detail::plan_cached(sizes, q_used, cache, seqs, outputs, options);
  if (p.group_items.empty()) return;  // B = 0 or Lq = 0
  int64_t per_thread = 0, shared = 0;
  detail::paged_scratch_floats(p, &per_thread, &shared);
  per_thread = aligned_floats(per_thread);
  detail::paged_forward(p, workspace(per_thread * p.num_threads + shared), per_thread);
}

AttentionResult attention_forward_cached(const TensorView& q, KvCache& cache, std::span<const int64_t> seqs,
                                         const AttentionOptions& options, const CachedAttentionInputs& inputs) {
  // Shapes come from a validated q: validate before allocating.
  static constexpr const char* kLetters[] = {"B", "Lq", "H", "D"};
  const detail::NamedView nq{q, "q", kLetters};
  detail::check_view_layout(nq);
  detail::check_view_rank(nq, 4);
  detail::check_view_dtype(nq, {DType::kF32, DType::kBF16}, "float32 or bfloat16");
  AttentionResult r;
  r.out = Tensor::empty(q.dtype, {q.shape[0], q.shape[1], q.shape[2], cache.options().v_head_dim.value()});
  r.lse = Tensor::empty(DType::kF32, {q.shape[0], q.shape[2], q.shape[1]});
  attention_forward_cached(q, cache, seqs, ForwardOutputs{r.out.view(), r.lse.view()}, options, inputs);
  return r;
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
