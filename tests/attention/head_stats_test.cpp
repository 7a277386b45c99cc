// Streaming per-head statistics (entropy, max probability, argmax per query row), judged
// against the same numbers computed from the oracle's exact probabilities.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "multihead/multihead.hpp"
#include "reference/attention_reference.hpp"
#include "reference/cases.hpp"

namespace multihead {
namespace {

using reference::Case;

Case stats_case(CausalAlign causal, int64_t Lq, int64_t Lk, int64_t H, int64_t Hkv, int64_t D, uint64_t seed) {
  Case c;
  c.B = 2, c.Lq = Lq, c.Lk = Lk, c.H = H, c.Hkv = Hkv, c.D = c.Dv = D;
  c.causal = causal;
  c.seed = seed;
  return c;
}

void expect_stats_match_probs(const Case& c) {
  const reference::CaseInputs in = reference::materialize(c);
  const reference::ForwardResult ref = reference::attention_forward(in.q.view, in.k.view, in.v.view, in.options);
  Tensor out = Tensor::empty(DType::kF32, {c.B, c.Lq, c.H, c.Dv});
  Tensor plain_out = Tensor::empty(DType::kF32, {c.B, c.Lq, c.H, c.Dv});
  Tensor stats = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq, 3});
  attention_forward(in.q.view, in.k.view, in.v.view, ForwardOutputs{out.view(), std::nullopt, std::nullopt, stats.view()},
                    in.options);
  attention_forward(in.q.view, in.k.view, in.v.view, ForwardOutputs{plain_out.view()}, in.options);
  EXPECT_EQ(std::memcmp(out.data(), plain_out.data(), out.nbytes()), 0) << "asking for stats changed out";

  const float* st = stats.data_as<float>();
  for (int64_t row = 0; row < c.B * c.H * c.Lq; ++row) {
    const double* p = &ref.probs[size_t(row * c.Lk)];
    double entropy = 0, best = 0, second = 0;
    int64_t arg = -1;
    for (int64_t j = 0; j < c.Lk; ++j) {
      if (p[j] > 0) entropy -= p[j] * std::log(p[j]);
      if (p[j] > best) second = best, best = p[j], arg = j;
      else if (p[j] > second) second = p[j];
    }
    const float* s = st + row * 3;
    ASSERT_FALSE(std::isnan(s[0]) || std::isnan(s[1]) || std::isnan(s[2])) << c.describe();
    EXPECT_NEAR(s[0], entropy, 2e-5 * std::max(1.0, entropy)) << c.describe() << " row " << row;
    EXPECT_NEAR(s[1], best, 2e-6) << c.describe() << " row " << row;
    if (best - second > 1e-4 * best) {
      EXPECT_EQ(int64_t(s[2]), arg) << c.describe() << " row " << row;
    }
    if (arg < 0) {
      EXPECT_EQ(s[2], -1.0f) << "a fully masked row's argmax";
    }
  }
}

TEST(HeadStats, MatchExactProbabilities) {
  expect_stats_match_probs(stats_case(CausalAlign::kNone, 17, 129, 4, 4, 64, 1));
  expect_stats_match_probs(stats_case(CausalAlign::kTopLeft, 130, 130, 4, 2, 59, 2));
  expect_stats_match_probs(stats_case(CausalAlign::kBottomRight, 3, 900, 8, 2, 128, 3));  // decode path
}

TEST(HeadStats, MatchExactProbabilitiesWithSinksMasksAndEmptyRows) {
  Case c = stats_case(CausalAlign::kNone, 40, 70, 4, 1, 32, 4);
  c.sinks = true;
  expect_stats_match_probs(c);
  c = stats_case(CausalAlign::kTopLeft, 40, 70, 4, 2, 32, 5);
  c.mask = reference::Broadcast::kFull;
  c.empty_rows = true;
  expect_stats_match_probs(c);
  c = stats_case(CausalAlign::kNone, 20, 100, 2, 2, 16, 6);
  c.window = {5, 5};
  c.dtype = DType::kBF16;
  expect_stats_match_probs(c);
}

TEST(HeadStats, RejectsAWrongShape) {
  const Case c = stats_case(CausalAlign::kNone, 4, 4, 2, 2, 8, 7);
  const reference::CaseInputs in = reference::materialize(c);
  Tensor out = Tensor::empty(DType::kF32, {c.B, c.Lq, c.H, c.Dv});
  Tensor stats = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq, 2});
  try {
    attention_forward(in.q.view, in.k.view, in.v.view, ForwardOutputs{out.view(), std::nullopt, std::nullopt, stats.view()});
    FAIL() << "accepted head_stats of width 2";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidShape);
    EXPECT_EQ(e.tensor(), "head_stats");
  }
}

}  // namespace
}  // namespace multihead
