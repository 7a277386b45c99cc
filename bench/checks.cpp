// The checks that keep a fast wrong kernel from looking good: each timed result is
// compared with the double oracle on a slice small enough for it.
#include <algorithm>

#include "bench/harness.hpp"
#include "reference/attention_reference.hpp"

namespace multihead::bench {

namespace ref = multihead::reference;

namespace {

// The sub-problem a check runs the oracle on: batches {0, B-1}, query rows
// [row0, row0 + rows·row_step) by row_step, heads [h0, h0 + heads).
TensorView slice(const TensorView& t, int64_t batches, int64_t row0, int64_t rows, int64_t row_step, int64_t h0,
                 int64_t heads) {
  TensorView s = t;
  s.data = static_cast<char*>(t.data) + (row0 * t.strides[1] + h0 * t.strides[2]) * int64_t(dtype_size(t.dtype));
  s.shape = {batches, rows, heads, t.shape[3]};
  s.strides = {batches > 1 ? t.strides[0] * (t.shape[0] - 1) : t.strides[0], t.strides[1] * row_step, t.strides[2],
               1};
  return s;
}

}  // namespace

std::string Check::text() const {
  double worst = 0;
  for (const ref::Comparison& c : comparisons) {
    if (!c.pass()) return "FAIL " + c.what + format(" %.3g/%.3g", c.max_error, c.allowed);
    worst = std::max(worst, c.max_error / std::max(c.allowed, 1e-300));
  }
  return format("ok %.2f", worst);
}

bool Check::pass() const {
  return std::all_of(comparisons.begin(), comparisons.end(), [](const ref::Comparison& c) { return c.pass(); });
}


// The forward output on up to 32 query rows spread over the sequence (the last row
// included) of batches {0, B-1}, all heads, against the oracle on that slice. Causal
// masking of the sliced rows becomes an explicit keep-mask with the rows' original
// indices, so the slice means exactly what the full problem meant.
Check check_forward_rows(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                         CausalAlign causal) {
  const int64_t B = q.shape[0], Lq = q.shape[1], H = q.shape[2], Lk = k.shape[1], Hkv = k.shape[2];
  const int64_t batches = B > 1 ? 2 : 1, rows = std::min<int64_t>(Lq, 32);
  const int64_t step = rows > 1 ? (Lq - 1) / (rows - 1) : 1, row0 = Lq - 1 - (rows - 1) * step;
  const TensorView qs = slice(q, batches, row0, rows, step, 0, H), outs = slice(out, batches, row0, rows, step, 0, H);
  const TensorView ks = slice(k, batches, 0, Lk, 1, 0, Hkv), vs = slice(v, batches, 0, Lk, 1, 0, Hkv);
  AttentionOptions options;
  Tensor mask;
  if (causal != CausalAlign::kNone) {
    const int64_t offset = causal == CausalAlign::kBottomRight ? Lk - Lq : 0;
    mask = Tensor::empty(DType::kBool, {rows, Lk});
    bool* m = mask.data_as<bool>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < Lk; ++j) m[r * Lk + j] = j <= row0 + r * step + offset;
    options.mask = mask.view();
  }
  const ref::ForwardResult oracle = ref::attention_forward(qs, ks, vs, options);
  const ref::ForwardResult baseline = ref::baseline_forward(qs, ks, vs, options, out.dtype);
  return {{ref::compare("out", outs, oracle.out, baseline.out, q.dtype, ref::Pass::kForward)}};
}

// Gradients of the last K/V group (its H / Hkv query heads, all rows) of batches
// {0, B-1}: heads of different groups are independent, so the slice is exact.
Check check_backward_group(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                           const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                           const AttentionOptions& options) {
  const int64_t B = q.shape[0], Lq = q.shape[1], H = q.shape[2], Lk = k.shape[1], Hkv = k.shape[2], G = H / Hkv;
  const int64_t batches = B > 1 ? 2 : 1;
  const auto qside = [&](const TensorView& t) { return slice(t, batches, 0, Lq, 1, H - G, G); };
  const auto kside = [&](const TensorView& t) { return slice(t, batches, 0, Lk, 1, Hkv - 1, 1); };
  const ref::ForwardResult fo = ref::attention_forward(qside(q), kside(k), kside(v), options);
  const ref::ForwardResult fb = ref::baseline_forward(qside(q), kside(k), kside(v), options, q.dtype);
  const ref::BackwardResult bo = ref::attention_backward(qside(dout), qside(q), kside(k), kside(v), options);
  const ref::BackwardResult bb =
      ref::baseline_backward(qside(dout), qside(q), kside(k), kside(v), options, q.dtype);
  return {{ref::compare("out", qside(out), fo.out, fb.out, q.dtype, ref::Pass::kForward),
           ref::compare("dq", qside(dq), bo.dq, bb.dq, q.dtype, ref::Pass::kBackward),
           ref::compare("dk", kside(dk), bo.dk, bb.dk, q.dtype, ref::Pass::kBackward),
           ref::compare("dv", kside(dv), bo.dv, bb.dv, q.dtype, ref::Pass::kBackward)}};
}

}  // namespace multihead::bench
