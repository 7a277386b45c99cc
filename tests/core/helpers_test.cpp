// The shared helpers of src/core (random.hpp, dtype_limits.hpp, dropout.hpp) give the
// bits of the copies they replaced: seeds and dropout patterns replay as before.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "core/dropout.hpp"
#include "core/dtype_limits.hpp"
#include "core/random.hpp"

namespace multihead {
namespace {

using detail::splitmix64;

TEST(Splitmix64, IsTheReferenceStream) {
  // Vigna's splitmix64 seeded with 0: its first two outputs.
  detail::SplitMix64 stream(0);
  EXPECT_EQ(stream.next(), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(stream.next(), 0x6E789E6AA1B965F4ull);
  EXPECT_EQ(splitmix64(0), 0xE220A8397B1DCDAFull);
}

TEST(Splitmix64, DropoutHashIsTheFormerInlineCopy) {
  const auto former = [](uint64_t seed, uint64_t index) {
    uint64_t x = seed + 0x9E3779B97F4A7C15ull * (index + 1);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
  };
  for (uint64_t seed : {0ull, 1ull, 12345ull, ~0ull}) {
    for (uint64_t index : {0ull, 1ull, 77ull, 1ull << 40}) {
      EXPECT_EQ(splitmix64(seed + detail::kGoldenGamma * index), former(seed, index));
    }
    // dropout_factor on a (1, 1, 1, 64) grid: keep decisions from the same 24 bits.
    for (int64_t j = 0; j < 64; ++j) {
      const float u = float(former(seed, uint64_t(j)) >> 40) * (1.0f / 16777216.0f);
      EXPECT_EQ(detail::dropout_factor(seed, 0.3f, 0, 0, 0, j, 1, 1, 64), u < 0.3f ? 0.0f : 1.0f / 0.7f);
    }
  }
}

TEST(BoxMuller, IsTheTextbookPair) {
  for (double u1 : {1.0, 0.5, 1e-12}) {
    for (double u2 : {0.0, 0.25, 0.7}) {
      const detail::NormalPair p = detail::box_muller(u1, u2);
      EXPECT_EQ(p.first, std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
      EXPECT_EQ(p.second, std::sqrt(-2.0 * std::log(u1)) * std::sin(2.0 * std::numbers::pi * u2));
    }
  }
}

TEST(DtypeLimits, LowestFiniteOfEachFloatDtype) {
  EXPECT_EQ(detail::lowest_finite(DType::kF32), -FLT_MAX);
  EXPECT_EQ(detail::lowest_finite(DType::kBF16), -0x1.fep127f);
  EXPECT_EQ(detail::lowest_finite(DType::kF16), -65504.0f);
}

TEST(DtypeLimits, I32AtFollowsTheStride) {
  int32_t values[] = {3, -1, 4, -1, 5, -1};
  TensorView v = TensorView::of(values, {3});
  v.strides[0] = 2;
  EXPECT_EQ(detail::i32_at(v, 0), 3);
  EXPECT_EQ(detail::i32_at(v, 1), 4);
  EXPECT_EQ(detail::i32_at(v, 2), 5);
}

}  // namespace
}  // namespace multihead
