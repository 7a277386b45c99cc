// The bf16 pair packing of kernels/cpu/bf16_dot.cpp, exact against scalar twins:
//   bf16_pair_rows:        out[x2, r] = bf16(in[2·x2, r]) | bf16(in[2·x2+1, r]) << 16, each rounded
//                          to nearest even (vcvtneps2bf16) as float_to_bf16 does, ties and NaNs
//                          included; f32 subnormals become signed zero (the instruction treats
//                          subnormal inputs as zero), where float_to_bf16 keeps them.
//   bf16_pair_source_rows: the same from bf16 rows where they lie, bit for bit; rows at or past
//                          n read as zero; only width columns written (tails past the last 16).
//   bf16_clear_pair_half:  zeroes exactly row c's half of its pair row.
// Skipped where the CPU lacks AVX512-BF16.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/bf16_dot.hpp"
#include "multihead/tensor.hpp"

namespace multihead::detail {
namespace {

// float_to_bf16, except that subnormal inputs are zero first (vcvtneps2bf16's DAZ).
uint32_t to_bf16_bits(float f) {
  if (std::fpclassify(f) == FP_SUBNORMAL) f = std::signbit(f) ? -0.0f : 0.0f;
  return float_to_bf16(f).bits;
}

// Floats that exercise the rounding: ties to even both ways, just above/below ties, the
// largest values that round to inf, NaNs, infinities, zeros, subnormals, normal randoms.
std::vector<float> rounding_cases(std::mt19937_64& rng, size_t n) {
  const uint32_t specials[] = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f807fffu, 0xbf808000u, 0xbf818000u,
                               0x7f7f8000u, 0x7f7f7fffu, 0xff7f8000u, 0x7fc00001u, 0xffc12345u, 0x7f800001u,
                               0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu,
                               0x00800000u, 0x00808000u};
  std::vector<float> x;
  for (uint32_t s : specials) x.push_back(std::bit_cast<float>(s));
  std::uniform_int_distribution<uint32_t> bits;
  while (x.size() < n) {
    uint32_t b = bits(rng);
    if (x.size() % 3 == 0) b = (b & 0xffff0000u) | 0x8000u;  // an exact tie
    x.push_back(std::bit_cast<float>(b));
  }
  return x;
}

TEST(Bf16PairRows, RoundsEachRowToNearestEvenAndPairsEvenLowOddHigh) {
  if (!has_avx512_bf16()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  std::mt19937_64 rng(2);
  for (const int64_t width : {16, 48})
    for (const int64_t n2 : {1, 3, 8}) {
      const int64_t in_stride = width + 7, out_stride = width + 3;
      const std::vector<float> in = rounding_cases(rng, size_t(2 * n2 * in_stride));
      std::vector<uint32_t> out(size_t(n2 * out_stride), 0xabababab);
      bf16_pair_rows(in.data(), in_stride, n2, width, out.data(), out_stride);
      for (int64_t x = 0; x < n2; ++x)
        for (int64_t r = 0; r < out_stride; ++r) {
          const float even = in[size_t(2 * x * in_stride + r)], odd = in[size_t((2 * x + 1) * in_stride + r)];
          const uint32_t want = r < width ? to_bf16_bits(even) | to_bf16_bits(odd) << 16 : 0xabababab;
          ASSERT_EQ(out[size_t(x * out_stride + r)], want)
              << "width " << width << " pair row " << x << " column " << r << ": even " << std::hex
              << std::bit_cast<uint32_t>(even) << ", odd " << std::bit_cast<uint32_t>(odd);
        }
    }
}

TEST(Bf16PairSourceRows, PairsBf16RowsExactlyWithZeroRowsPastNAndWidthTails) {
  if (!has_avx512_bf16()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  std::mt19937_64 rng(3);
  for (const int64_t width : {1, 15, 16, 17, 40})
    for (const int64_t n : {0, 1, 2, 5, 6})
      for (const int64_t n2 : {(n + 1) / 2, (n + 1) / 2 + 2}) {
        const int64_t src_stride = width + 9, out_stride = width + 4;
        std::vector<uint16_t> src(size_t(std::max<int64_t>(n, 1) * src_stride));
        for (uint16_t& b : src) b = uint16_t(rng());
        std::vector<uint32_t> out(size_t(std::max<int64_t>(n2, 1) * out_stride), 0xcdcdcdcd);
        bf16_pair_source_rows(src.data(), src_stride, n, width, n2, out.data(), out_stride);
        for (int64_t x = 0; x < n2; ++x)
          for (int64_t r = 0; r < out_stride; ++r) {
            const auto row = [&](int64_t i) { return i < n ? uint32_t(src[size_t(i * src_stride + r)]) : 0u; };
            const uint32_t want = r < width ? row(2 * x) | row(2 * x + 1) << 16 : 0xcdcdcdcd;
            ASSERT_EQ(out[size_t(x * out_stride + r)], want)
                << "width " << width << " n " << n << " n2 " << n2 << " pair row " << x << " column " << r;
          }
      }
}

TEST(Bf16ClearPairHalf, ZeroesOnlyTheGivenRowsHalf) {
  for (const int64_t c : {0, 1, 4, 7}) {
    const int64_t stride = 21, width = 18;
    std::vector<uint32_t> pairs(size_t(5 * stride));
    for (size_t e = 0; e < pairs.size(); ++e) pairs[e] = 0x9e3779b9u * uint32_t(e + 1);
    std::vector<uint32_t> want = pairs;
    for (int64_t r = 0; r < width; ++r) want[size_t(c / 2 * stride + r)] &= c % 2 == 0 ? 0xffff0000u : 0x0000ffffu;
    bf16_clear_pair_half(pairs.data(), stride, c, width);
    EXPECT_EQ(pairs, want) << "row " << c;
  }
}

}  // namespace
}  // namespace multihead::detail
