// The pass rule's per-case allowance (compare.hpp): scale multiplies floor and ceiling (dq and
// dk grow with scale·√Dv / (1 - p)), extra adds a derived bound; the
// defaults leave the rule unchanged. And run_case uses them only where derived.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "reference/cases.hpp"
#include "reference/compare.hpp"

namespace {

using namespace multihead;
using reference::Allowance;
using reference::compare;
using reference::Pass;

std::vector<double> shifted(std::vector<double> x, double by) {
  for (double& e : x) e += by;
  return x;
}

TEST(ComparePassRuleAllowance, DefaultsLeaveTheRuleUnchanged) {
  const std::vector<double> oracle = {0.5, -1.0, 0.25};
  const auto plain = compare("dq", shifted(oracle, 0.05), oracle, shifted(oracle, 0.5), DType::kBF16, Pass::kBackward);
  const auto with = compare("dq", shifted(oracle, 0.05), oracle, shifted(oracle, 0.5), DType::kBF16, Pass::kBackward,
                            Allowance{});
  EXPECT_EQ(plain.allowed, with.allowed);
  EXPECT_EQ(plain.allowed, 1e-1);  // the bf16 backward ceiling, magnitude 1
}

TEST(ComparePassRuleAllowance, ScaleMultipliesFloorAndCeiling) {
  const std::vector<double> oracle = {0.5, -1.0, 0.25};
  // A bad baseline: the ceiling binds, and scales.
  const auto capped = compare("dk", shifted(oracle, 0.3), oracle, shifted(oracle, 0.5), DType::kBF16, Pass::kBackward,
                              Allowance{4.0, 0.0});
  EXPECT_DOUBLE_EQ(capped.allowed, 4e-1);
  EXPECT_TRUE(capped.pass()) << capped.to_string();
  // A good baseline: k · baseline + floor · scale binds.
  const auto tight = compare("dk", shifted(oracle, 0.05), oracle, shifted(oracle, 0.01), DType::kBF16,
                             Pass::kBackward, Allowance{4.0, 0.0});
  EXPECT_DOUBLE_EQ(tight.allowed, 3 * 0.01 + 4 * 1e-3);
  EXPECT_FALSE(tight.pass()) << tight.to_string();
  // Scales below 1 never tighten the measured floor and ceiling.
  EXPECT_DOUBLE_EQ(compare("dk", oracle, oracle, shifted(oracle, 0.5), DType::kBF16, Pass::kBackward,
                           Allowance{0.25, 0.0}).allowed, 1e-1);
}

TEST(ComparePassRuleAllowance, ExtraIsAddedAboveFloorAndCeiling) {
  const std::vector<double> oracle = {2.0};
  const auto c = compare("dsinks", {2.05}, oracle, {2.0}, DType::kBF16, Pass::kBackward, Allowance{1.0, 0.04});
  EXPECT_DOUBLE_EQ(c.allowed, 1e-3 * 2.0 + 0.04);
  EXPECT_FALSE(c.pass()) << c.to_string();
  EXPECT_TRUE(compare("dsinks", {2.04}, oracle, {2.0}, DType::kBF16, Pass::kBackward, Allowance{1.0, 0.04}).pass());
}

// A case with scale·√Dv = 8.8 (D = 1, Dv = 77, default scale) and a window of width 0: P is
// one-hot, the oracle's dS vanishes, and the bf16 dk error (through D_i) nears the unscaled
// 1e-1 ceiling; with the scaled ceiling it does not.
TEST(ComparePassRuleAllowance, Bf16GradientCeilingScalesWithScaleTimesRootDv) {
  const reference::Case c = reference::case_from_seed(reference::CaseKind::kMixed, 8859192053360702186ull);
  ASSERT_EQ(c.D, 1);
  ASSERT_EQ(c.Dv, 77);
  const reference::CaseResult r = reference::run_case(c, true);
  EXPECT_TRUE(r.pass()) << r.report();
  for (const auto& cmp : r.comparisons) {
    if (cmp.what == "dk" || cmp.what == "dq") {
      EXPECT_GT(cmp.allowed, 1e-1) << cmp.to_string();
    }
  }
}

}  // namespace

namespace {
// f32, Lq = Lk = 1, dropout 0.9: P = 1, so the oracle's dS = P (Z dP - D) is 0 and ours and the
// baseline are both the f32 rounding of Z dP - D with Z = 10, independent draws; the floor set
// at Z = 1 was 10x too small for them (failed about 1 in 2000 dropout cases).
TEST(ComparePassRuleAllowance, F32GradientFloorScalesWithTheDropoutFactor) {
  for (const uint64_t seed : {2735198118157566341ull, 6005778615878132654ull, 6388604988164812786ull}) {
    const reference::Case c = reference::case_from_seed(reference::CaseKind::kDropout, seed);
    ASSERT_EQ(c.dtype, DType::kF32);
    const reference::CaseResult r = reference::run_case(c, true);
    EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report();
  }
}
}  // namespace
