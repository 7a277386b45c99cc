// sum_lanes16 and sum_lanes8 (kernels/cpu/lane_sum.hpp). sum_lanes16: lane i of the result is the sum of the 16 lanes of
// v[i], by one fixed tree for every lane. Twin, for the lanes x[0..16) of one vector:
//   per 128-bit block k:  b_k = (x[4k] + x[4k+2]) + (x[4k+1] + x[4k+3])
//   then                  (b_0 + b_1) + (b_2 + b_3)
// (unpacklo/unpackhi add lanes 2 apart, shuffle_ps then adds the pairs, and the two
// add_block_halves add blocks 0+1 and 2+3, then those). Bit for bit, with lanes of mixed
// magnitude and sign so that any other tree or lane order gives other bits. AVX-512 only
// (there is no other copy); skipped where the CPU lacks it. sum_lanes8 (AVX2): the tree of
// Highway's 256-bit SumOfLanes, ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7)).
// g++ 12 reports the _mm512_undefined_*() inside its own intrinsics as (maybe) uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>

#include "kernels/cpu/lane_sum.hpp"

namespace multihead::detail {
namespace {

__attribute__((target("avx512f"))) void sum_lanes16_of(const float* in, float* out) {
  __m512 v[16];
  for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_ps(in + 16 * i);
  _mm512_storeu_ps(out, sum_lanes16(v));
}

__attribute__((target("avx2"))) void sum_lanes8_of(const float* in, float* out) {
  __m256 v[8];
  for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(in + 8 * i);
  _mm256_storeu_ps(out, sum_lanes8(v));
}

float tree8_twin(const float* x) { return ((x[0] + x[4]) + (x[2] + x[6])) + ((x[1] + x[5]) + (x[3] + x[7])); }

float tree_twin(const float* x) {
  float b[4];
  for (int k = 0; k < 4; ++k) b[k] = (x[4 * k] + x[4 * k + 2]) + (x[4 * k + 1] + x[4 * k + 3]);
  return (b[0] + b[1]) + (b[2] + b[3]);
}

TEST(SumLanes16, BitwiseEqualToTheStatedTreeForEveryLane) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512 on this CPU";
  std::mt19937_64 rng(16);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-20, 20);
  int64_t differs_from_serial = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    float in[256], out[16];
    for (float& x : in) x = std::ldexp(normal(rng), exponent(rng));
    sum_lanes16_of(in, out);
    for (int i = 0; i < 16; ++i) {
      const float want = tree_twin(in + 16 * i);
      ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(want))
          << "trial " << trial << ", lane " << i << ": got " << out[i] << ", want " << want;
      float serial = 0.0f;
      for (int l = 0; l < 16; ++l) serial += in[16 * i + l];
      differs_from_serial += serial != want;
    }
  }
  // The data tells the trees apart: a test that a serial sum would also pass proves nothing.
  EXPECT_GT(differs_from_serial, 1000);
}

TEST(SumLanes16, InfinitiesAndNaNPropagateLikeTheTree) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512 on this CPU";
  float in[256], out[16];
  for (int e = 0; e < 256; ++e) in[e] = float(e % 5) - 2.0f;
  in[16 * 1 + 3] = std::numeric_limits<float>::infinity();
  in[16 * 2 + 0] = std::numeric_limits<float>::infinity(), in[16 * 2 + 9] = -std::numeric_limits<float>::infinity();
  in[16 * 3 + 15] = std::nanf("");
  sum_lanes16_of(in, out);
  EXPECT_EQ(out[1], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(out[2]));
  EXPECT_TRUE(std::isnan(out[3]));
  for (int i : {0, 4, 15}) EXPECT_EQ(out[i], tree_twin(in + 16 * i));
}

TEST(SumLanes8, BitwiseEqualToTheStatedTreeForEveryLane) {
  if (!__builtin_cpu_supports("avx2")) GTEST_SKIP() << "no AVX2 on this CPU";
  std::mt19937_64 rng(8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-20, 20);
  int64_t differs_from_serial = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    float in[64], out[8];
    for (float& x : in) x = std::ldexp(normal(rng), exponent(rng));
    sum_lanes8_of(in, out);
    for (int i = 0; i < 8; ++i) {
      const float want = tree8_twin(in + 8 * i);
      ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(want))
          << "trial " << trial << ", lane " << i << ": got " << out[i] << ", want " << want;
      float serial = 0.0f;
      for (int l = 0; l < 8; ++l) serial += in[8 * i + l];
      differs_from_serial += serial != want;
    }
  }
  // The data tells the trees apart: a test that a serial sum would also pass proves nothing.
  EXPECT_GT(differs_from_serial, 1000);
}

TEST(SumLanes8, InfinitiesAndNaNPropagateLikeTheTree) {
  if (!__builtin_cpu_supports("avx2")) GTEST_SKIP() << "no AVX2 on this CPU";
  float in[64], out[8];
  for (int e = 0; e < 64; ++e) in[e] = float(e % 5) - 2.0f;
  in[8 * 1 + 3] = std::numeric_limits<float>::infinity();
  in[8 * 2 + 0] = std::numeric_limits<float>::infinity(), in[8 * 2 + 5] = -std::numeric_limits<float>::infinity();
  in[8 * 3 + 7] = std::nanf("");
  sum_lanes8_of(in, out);
  EXPECT_EQ(out[1], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(out[2]));
  EXPECT_TRUE(std::isnan(out[3]));
  for (int i : {0, 4, 7}) EXPECT_EQ(out[i], tree8_twin(in + 8 * i));
}

}  // namespace
}  // namespace multihead::detail
