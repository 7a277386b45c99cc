// The pass rule: max|ours - oracle| <= min(k * max|baseline - oracle| + floor, ceiling).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "multihead/error.hpp"
#include "reference/compare.hpp"

namespace {

using namespace multihead;
using reference::compare;
using reference::Pass;

constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<double> ramp(size_t n) {
  std::vector<double> x(n);
  for (size_t e = 0; e < n; ++e) x[e] = 0.25 * double(e) - 1.0;
  return x;
}

std::vector<double> shifted(std::vector<double> x, double by) {
  for (double& e : x) e += by;
  return x;
}

TEST(ComparePassRule, PassesEqualData) {
  const std::vector<double> oracle = ramp(10);
  const auto c = compare("out", oracle, oracle, oracle, DType::kF32, Pass::kForward);
  EXPECT_TRUE(c.pass()) << c.to_string();
  EXPECT_EQ(c.max_error, 0.0);
  EXPECT_EQ(c.allowed, 1e-6 * 1.25);  // the floor, scaled by max|oracle| = 1.25
}

TEST(ComparePassRule, PassesWithinKTimesTheBaselineError) {
  const std::vector<double> oracle = ramp(10);
  const std::vector<double> baseline = shifted(oracle, 1e-5);
  const auto forward = compare("out", shifted(oracle, 2e-5), oracle, baseline, DType::kF32, Pass::kForward);
  EXPECT_TRUE(forward.pass()) << forward.to_string();
  const auto too_far = compare("out", shifted(oracle, 2.2e-5), oracle, baseline, DType::kF32, Pass::kForward);
  EXPECT_FALSE(too_far.pass()) << too_far.to_string();
  // The backward grants k = 3.
  const auto backward = compare("dq", shifted(oracle, 2.9e-5), oracle, baseline, DType::kF32, Pass::kBackward);
  EXPECT_TRUE(backward.pass()) << backward.to_string();
}

TEST(ComparePassRule, FailsAPerturbedEntry) {
  const std::vector<double> oracle = ramp(10);
  std::vector<double> ours = oracle;
  ours[7] += 1e-4;
  const auto c = compare("out", ours, oracle, shifted(oracle, 1e-7), DType::kF32, Pass::kForward);
  EXPECT_FALSE(c.pass());
  EXPECT_FALSE(c.nan_or_inf_mismatch);
  EXPECT_NEAR(c.max_error, 1e-4, 1e-12);
  EXPECT_NE(c.to_string().find("FAIL"), std::string::npos) << c.to_string();
}

TEST(ComparePassRule, NanInOursFails) {
  const std::vector<double> oracle = ramp(4);
  std::vector<double> ours = oracle;
  ours[2] = std::nan("");
  const auto c = compare("out", ours, oracle, oracle, DType::kBF16, Pass::kForward);
  EXPECT_TRUE(c.nan_or_inf_mismatch);
  EXPECT_FALSE(c.pass());
}

TEST(ComparePassRule, MinusInfMustMatchExactly) {
  const std::vector<double> oracle = {0.5, -kInf, 2.0};
  const auto same = compare("lse", oracle, oracle, oracle, DType::kF32, Pass::kForward);
  EXPECT_TRUE(same.pass()) << same.to_string();
  EXPECT_EQ(same.max_error, 0.0);
  for (double bad : {-1e30, 0.0, kInf, std::nan("")}) {
    std::vector<double> ours = oracle;
    ours[1] = bad;
    const auto c = compare("lse", ours, oracle, oracle, DType::kF32, Pass::kForward);
    EXPECT_TRUE(c.nan_or_inf_mismatch) << bad;
    EXPECT_FALSE(c.pass()) << bad;
  }
  // An infinity where the oracle is finite is just as wrong.
  std::vector<double> ours = oracle;
  ours[0] = -kInf;
  EXPECT_FALSE(compare("lse", ours, oracle, oracle, DType::kF32, Pass::kForward).pass());
}

TEST(ComparePassRule, CeilingCatchesABadBaseline) {
  const std::vector<double> oracle = ramp(10);
  const std::vector<double> bad_baseline = shifted(oracle, 0.5);
  const auto f32 = compare("out", shifted(oracle, 1e-2), oracle, bad_baseline, DType::kF32, Pass::kForward);
  EXPECT_FALSE(f32.pass()) << f32.to_string();
  EXPECT_EQ(f32.allowed, 1e-3 * 1.25);
  const auto bf16 = compare("dk", shifted(oracle, 0.2), oracle, bad_baseline, DType::kBF16, Pass::kBackward);
  EXPECT_FALSE(bf16.pass()) << bf16.to_string();
  EXPECT_EQ(bf16.allowed, 1e-1 * 1.25);
  // A NaN baseline grants the ceiling and no more.
  const auto nan_baseline =
      compare("out", shifted(oracle, 1e-4), oracle, std::vector<double>(10, std::nan("")), DType::kF32, Pass::kForward);
  EXPECT_TRUE(nan_baseline.pass()) << nan_baseline.to_string();
  EXPECT_EQ(nan_baseline.allowed, 1e-3 * 1.25);
}

TEST(ComparePassRule, FloorAndCeilingScaleWithTheOraclesMagnitude) {
  std::vector<double> oracle = ramp(10);
  oracle[3] = -400.0;
  std::vector<double> ours = oracle;
  ours[3] += 3e-4;  // 7.5e-7 relative: within the f32 floor of 1e-6 * 400
  const auto c = compare("out", ours, oracle, oracle, DType::kF32, Pass::kForward);
  EXPECT_TRUE(c.pass()) << c.to_string();
  EXPECT_DOUBLE_EQ(c.allowed, 4e-4);
}

TEST(ComparePassRule, ReadsStridedLowPrecisionViewsInLogicalOrder) {
  // A (2, 3) view of a (3, 2) bf16 buffer seen transposed.
  const std::vector<double> oracle = {0.5, 1.0, -2.0, 0.25, 3.0, -1.5};
  std::vector<bf16> storage(6);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t c = 0; c < 3; ++c) storage[size_t(c * 2 + r)] = float_to_bf16(float(oracle[size_t(r * 3 + c)]));
  TensorView ours;
  ours.data = storage.data();
  ours.dtype = DType::kBF16;
  ours.rank = 2;
  ours.shape = {2, 3};
  ours.strides = {1, 2};
  const auto c = compare("out", ours, oracle, oracle, DType::kBF16, Pass::kForward);
  EXPECT_TRUE(c.pass()) << c.to_string();
  EXPECT_EQ(c.max_error, 0.0);

  // bf16 results from f32 inputs are judged as bf16: the f32 ceiling (1e-3) would
  // reject the unavoidable rounding of 1 + 2^-8 to 1.
  std::vector<bf16> rounded = {float_to_bf16(1.0f + 0x1p-8f)};
  ASSERT_EQ(bf16_to_float(rounded[0]), 1.0f);
  const TensorView one = TensorView::of(rounded.data(), {1});
  const auto r = compare("out", one, {1.0 + 0x1p-8}, {1.0}, DType::kF32, Pass::kForward);
  EXPECT_TRUE(r.pass()) << r.to_string();
  EXPECT_FALSE(compare("out", {1.0}, {1.0 + 0x1p-8}, {1.0}, DType::kF32, Pass::kForward).pass());
}

TEST(ComparePassRule, ToStringNamesTheQuantityAndTheVerdict) {
  const std::vector<double> oracle = ramp(3);
  const std::string ok = compare("lse", oracle, oracle, oracle, DType::kF32, Pass::kForward).to_string();
  EXPECT_NE(ok.find("lse"), std::string::npos) << ok;
  EXPECT_NE(ok.find("pass"), std::string::npos) << ok;
  std::vector<double> ours = oracle;
  ours[0] = std::nan("");
  const std::string bad = compare("dv", ours, oracle, oracle, DType::kF32, Pass::kBackward).to_string();
  EXPECT_NE(bad.find("FAIL"), std::string::npos) << bad;
}

TEST(ComparePassRule, SizeMismatchThrows) {
  EXPECT_THROW(compare("out", ramp(3), ramp(4), ramp(4), DType::kF32, Pass::kForward), Error);
}

}  // namespace
