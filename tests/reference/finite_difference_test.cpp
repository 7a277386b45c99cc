// The oracle's analytical backward against central finite differences of its double
// forward (gradcheck-style), option by option. Its forward against hand-checkable cases
// of docs/CONTRACT.md, and the float baseline, are in reference_forward_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "reference/attention_reference.hpp"
#include "reference/reference_case.hpp"

namespace {

using namespace multihead;
namespace ref = multihead::reference;

using multihead::reference_test::Case;
using multihead::reference_test::kStep;

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double e : x) m = std::max(m, std::abs(e));
  return m;
}

// Compares grad with central differences of the loss in every entry of param.
void expect_gradient(Case& c, std::vector<float>& param, const std::vector<double>& grad, const char* name) {
  ASSERT_EQ(grad.size(), param.size()) << name;
  for (size_t e = 0; e < param.size(); ++e) {
    const float x = param[e];
    if (!std::isfinite(x)) {  // a -inf bias masks: no gradient, and none to difference
      EXPECT_EQ(grad[e], 0.0) << name << "[" << e << "]";
      continue;
    }
    param[e] = float(x + kStep);
    ASSERT_EQ(double(param[e]) - x, kStep) << name << "[" << e << "] is off the grid";
    const double up = c.loss();
    param[e] = float(x - kStep);
    const double down = c.loss();
    param[e] = x;
    const double numeric = (up - down) / (2 * kStep);
    EXPECT_NEAR(grad[e], numeric, 1e-7 + 1e-5 * std::abs(numeric)) << name << "[" << e << "]";
  }
}

void expect_matches_finite_differences(Case& c, uint32_t seed = 1) {
  c.init(seed);
  const ref::BackwardResult g = c.backward();
  // A check against all-zero gradients would prove nothing.
  EXPECT_GT(max_abs(g.dq), 1e-3);
  EXPECT_GT(max_abs(g.dk), 1e-3);
  EXPECT_GT(max_abs(g.dv), 1e-3);
  expect_gradient(c, c.q, g.dq, "dq");
  expect_gradient(c, c.k, g.dk, "dk");
  expect_gradient(c, c.v, g.dv, "dv");
  if (!c.bias_shape.empty()) expect_gradient(c, c.bias, g.dbias, "dbias");
  else EXPECT_TRUE(g.dbias.empty());
  if (c.with_sinks) expect_gradient(c, c.sinks, g.dsinks, "dsinks");
  else EXPECT_TRUE(g.dsinks.empty());
}

// ---------------------------------------------------------------------------------
// Backward: analytical gradients equal central finite differences of the forward.

TEST(ReferenceBackward, MatchesFiniteDifferencesPlain) {
  Case c;
  expect_matches_finite_differences(c);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithExplicitScale) {
  Case c;
  c.scalars.scale = 0.75f;
  expect_matches_finite_differences(c);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesCausalTopLeft) {
  for (auto [lq, lk] : {std::pair{4, 3}, {3, 5}}) {
    Case c;
    c.Lq = lq;
    c.Lk = lk;
    c.scalars.causal = CausalAlign::kTopLeft;
    expect_matches_finite_differences(c);
  }
}

TEST(ReferenceBackward, MatchesFiniteDifferencesCausalBottomRight) {
  // Lq > Lk leaves the first rows fully masked.
  for (auto [lq, lk] : {std::pair{3, 5}, {5, 3}}) {
    Case c;
    c.Lq = lq;
    c.Lk = lk;
    c.scalars.causal = CausalAlign::kBottomRight;
    expect_matches_finite_differences(c);
  }
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithWindow) {
  Case c;
  c.Lq = 4;
  c.Lk = 6;
  c.scalars.window = {1, 1};
  expect_matches_finite_differences(c);
  Case causal;
  causal.Lq = 5;
  causal.Lk = 5;
  causal.scalars.causal = CausalAlign::kTopLeft;
  causal.scalars.window = {2, -1};
  expect_matches_finite_differences(causal);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithGqaAndMqa) {
  Case gqa;
  gqa.H = 4;
  gqa.Hkv = 2;
  expect_matches_finite_differences(gqa);
  Case mqa;
  mqa.H = 3;
  mqa.Hkv = 1;
  expect_matches_finite_differences(mqa);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithMask) {
  Case c;
  c.mask_shape = {c.B, 1, c.Lq, c.Lk};  // broadcast over heads
  expect_matches_finite_differences(c);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithFullBias) {
  Case c;
  c.bias_shape = {c.B, c.H, c.Lq, c.Lk};
  expect_matches_finite_differences(c);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithBroadcastBias) {
  // dbias is reduced over the broadcast dims, to the bias's own shape.
  for (std::vector<int64_t> shape : {std::vector<int64_t>{2, 1, 4}, {3, 1}, {1, 1, 1, 4}, {4}}) {
    Case c;
    c.bias_shape = shape;
    expect_matches_finite_differences(c);
  }
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithSoftcap) {
  Case c;
  c.scalars.softcap = 1.5f;
  c.bias_shape = {c.H, c.Lq, c.Lk};  // the bias is added after the cap
  expect_matches_finite_differences(c);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithSinks) {
  Case c;
  c.with_sinks = true;
  expect_matches_finite_differences(c);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithAlibi) {
  Case c;
  c.Lq = 3;
  c.Lk = 5;
  c.with_alibi = true;
  expect_matches_finite_differences(c);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithKeyPadding) {
  Case c;
  c.Lk = 5;
  c.seqlens_k = {2, 5};
  c.scalars.causal = CausalAlign::kBottomRight;  // aligned to each batch's Lk_b
  expect_matches_finite_differences(c);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesVarlen) {
  Case c;
  c.B = 1;
  c.cu_q = {0, 2, 3, 6, 6};  // the last sequence has no queries
  c.cu_k = {0, 3, 3, 5, 6};  // the second has no keys: its row is fully masked
  c.Lq = 6;
  c.Lk = 6;
  c.scalars.causal = CausalAlign::kBottomRight;
  c.with_sinks = true;
  expect_matches_finite_differences(c);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithFullyMaskedRow) {
  Case c;
  c.mask_shape = {c.B, c.H, c.Lq, c.Lk};
  c.bias_shape = {c.B, c.H, c.Lq, c.Lk};
  c.with_sinks = true;
  c.init(1);
  for (int64_t j = 0; j < c.Lk; ++j) {
    c.mask[size_t(((0 * c.H + 1) * c.Lq + 2) * c.Lk + j)] = 0;                       // b0 h1 i2 by the mask
    c.bias[size_t(((1 * c.H + 0) * c.Lq + 0) * c.Lk + j)] = -std::numeric_limits<float>::infinity();  // b1 h0 i0
  }
  const ref::BackwardResult g = c.backward();
  for (int64_t d = 0; d < c.D; ++d) {
    EXPECT_EQ(g.dq[size_t(((0 * c.Lq + 2) * c.H + 1) * c.D + d)], 0.0);
    EXPECT_EQ(g.dq[size_t(((1 * c.Lq + 0) * c.H + 0) * c.D + d)], 0.0);
  }
  expect_gradient(c, c.q, g.dq, "dq");
  expect_gradient(c, c.k, g.dk, "dk");
  expect_gradient(c, c.v, g.dv, "dv");
  expect_gradient(c, c.bias, g.dbias, "dbias");
  expect_gradient(c, c.sinks, g.dsinks, "dsinks");
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithDvDifferentFromD) {
  Case c;
  c.D = 4;
  c.Dv = 2;
  expect_matches_finite_differences(c);
  Case wide;
  wide.D = 2;
  wide.Dv = 5;
  expect_matches_finite_differences(wide);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesWithEveryOptionComposed) {
  Case c;
  c.Lq = 4;
  c.Lk = 6;
  c.H = 4;
  c.Hkv = 2;
  c.D = 3;
  c.Dv = 2;
  c.scalars.scale = 0.5f;
  c.scalars.causal = CausalAlign::kBottomRight;
  c.scalars.window = {3, -1};
  c.scalars.softcap = 2.0f;
  c.mask_shape = {c.Lq, c.Lk};
  c.bias_shape = {c.B, 1, 1, c.Lk};
  c.with_sinks = true;
  c.with_alibi = true;
  c.seqlens_k = {6, 4};
  expect_matches_finite_differences(c, 7);
}

}  // namespace
