// The kernels' forward and backward of a materialized random case, for the regression tests
// that compare one gradient with its derived error bound.
#pragma once

#include <optional>

#include "multihead/multihead.hpp"
#include "reference/cases.hpp"

namespace multihead {

struct KernelGradients {
  Tensor out, lse;           // f32, as the forward wrote them
  Tensor dq, dk, dv;         // f32
  Tensor dbias, dsinks;      // empty when the case has no bias / sinks
};

inline KernelGradients kernel_gradients(const reference::Case& c, const reference::CaseInputs& in) {
  const AttentionOptions& o = in.options;
  KernelGradients g;
  g.out = Tensor::empty(DType::kF32, {c.B, c.Lq, c.H, c.Dv});
  g.lse = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq});
  attention_forward(in.q.view, in.k.view, in.v.view, ForwardOutputs{g.out.view(), g.lse.view(), std::nullopt}, o);
  g.dq = Tensor::empty(DType::kF32, {c.B, c.Lq, c.H, c.D});
  g.dk = Tensor::empty(DType::kF32, {c.B, c.Lk, c.Hkv, c.D});
  g.dv = Tensor::empty(DType::kF32, {c.B, c.Lk, c.Hkv, c.Dv});
  BackwardOutputs grads{g.dq.view(), g.dk.view(), g.dv.view(), std::nullopt, std::nullopt};
  if (o.bias) g.dbias = Tensor::empty(DType::kF32, o.bias->rank, o.bias->shape), grads.dbias = g.dbias.view();
  if (o.sinks) g.dsinks = Tensor::empty(DType::kF32, {c.H}), grads.dsinks = g.dsinks.view();
  attention_backward(in.dout.view(), in.q.view, in.k.view, in.v.view, g.out.view(), g.lse.view(), grads, o);
  return g;
}

}  // namespace multihead
