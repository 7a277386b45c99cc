#include "support/cases.hpp"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>

namespace multihead::reference {
void PrintTo(const Case& c, std::ostream* os) { *os << c.describe(); }
void PrintTo(CaseKind kind, std::ostream* os) { *os << to_string(kind); }
}  // namespace multihead::reference

namespace multihead::test {

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name(); }

uint64_t test_seed() {
  static const uint64_t seed = [] {
    uint64_t s;
    if (const char* env = std::getenv("MULTIHEAD_TEST_SEED"); env && *env) {
      s = std::strtoull(env, nullptr, 10);
    } else {
      s = reference::derive_seed(
          uint64_t(std::chrono::system_clock::now().time_since_epoch().count()), 0);
    }
    std::cout << "[   SEED   ] MULTIHEAD_TEST_SEED=" << s << " (set it to replay this run)" << std::endl;
    return s;
  }();
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

bool same_bytes(const TensorView& a, const TensorView& b) {
  if (a.dtype != b.dtype || a.rank != b.rank) return false;
  for (int d = 0; d < a.rank; ++d)
    if (a.shape[d] != b.shape[d]) return false;
  const size_t element = dtype_size(a.dtype);
  const int64_t n = a.numel();
  Shape index{};
  for (int64_t e = 0; e < n; ++e) {
    const auto* pa = static_cast<const char*>(a.data) + a.offset(index) * int64_t(element);
    const auto* pb = static_cast<const char*>(b.data) + b.offset(index) * int64_t(element);
    if (std::memcmp(pa, pb, element) != 0) return false;
    for (int d = a.rank - 1; d >= 0; --d) {
      if (++index[d] < a.shape[d]) break;
      index[d] = 0;
    }
  }
  return true;
}

Tensor filled(DType dtype, std::initializer_list<int64_t> shape, uint8_t byte) {
  Tensor t = Tensor::empty(dtype, shape);
  std::memset(t.data(), byte, t.nbytes());
  return t;
}

bool all_bytes_equal(const Tensor& t, uint8_t byte) {
  const auto* p = static_cast<const uint8_t*>(t.data());
  for (size_t n = 0; n < t.nbytes(); ++n)
    if (p[n] != byte) return false;
  return true;
}

Forward run_forward(const TensorView& q, const TensorView& k, const TensorView& v, const AttentionOptions& o,
                    bool probs) {
  const int64_t B = q.shape[0], Lq = q.shape[1], H = q.shape[2], Lk = k.shape[1], Dv = v.shape[3];
  Forward f;
  f.out = Tensor::zeros(DType::kF32, {B, Lq, H, Dv});
  f.lse = Tensor::zeros(DType::kF32, {B, H, Lq});
  ForwardOutputs outputs{f.out.view(), f.lse.view(), std::nullopt};
  if (probs) {
    f.probs = Tensor::zeros(DType::kF32, {B, H, Lq, Lk});
    outputs.probs = f.probs.view();
  }
  attention_forward(q, k, v, outputs, o);
  return f;
}

Backward run_backward(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                      const Forward& fwd, const AttentionOptions& o) {
  Backward g;
  g.dq = Tensor::zeros(DType::kF32, {q.shape[0], q.shape[1], q.shape[2], q.shape[3]});
  g.dk = Tensor::zeros(DType::kF32, {k.shape[0], k.shape[1], k.shape[2], k.shape[3]});
  g.dv = Tensor::zeros(DType::kF32, {v.shape[0], v.shape[1], v.shape[2], v.shape[3]});
  BackwardOutputs grads{g.dq.view(), g.dk.view(), g.dv.view(), std::nullopt, std::nullopt};
  if (o.bias) {
    g.dbias = Tensor::empty(DType::kF32, o.bias->rank, o.bias->shape);
    std::memset(g.dbias.data(), 0, g.dbias.nbytes());
    grads.dbias = g.dbias.view();
  }
  if (o.sinks) {
    g.dsinks = Tensor::zeros(DType::kF32, {q.shape[2]});
    grads.dsinks = g.dsinks.view();
  }
  attention_backward(dout, q, k, v, fwd.out.view(), fwd.lse.view(), grads, o);
  return g;
}

}  // namespace multihead::test
