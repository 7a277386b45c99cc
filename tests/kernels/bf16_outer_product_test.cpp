// bf16_outer_product (kernels/cpu/bf16_dot.cpp), the bf16 tile micro-kernel on vdpbf16ps:
//   out[a, r] (+)= Σ_x2 dot2(sc(x2, a), vec[x2, r]),  sc(x2, a) = sc[a·sa + x2·sx] (one pair)
// bit for bit against a scalar twin: per output, over x2 in order, the odd (high) product and
// then the even (low) one, each added with one rounding (bf16 products are exact in f32, so
// each is an fma); without accumulate the sum starts at 0 and is then multiplied by scale
// (one more rounding), with accumulate it starts at out and is not scaled. Counts 1..19 cover
// the 8-value blocks and every tail; widths 32 and 96 one and three 32-column strips.
// Skipped where the CPU lacks AVX512-BF16.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cpu/bf16_dot.hpp"
#include "multihead/tensor.hpp"

namespace multihead::detail {
namespace {

float lo(uint32_t pair) { return bf16_to_float(bf16{uint16_t(pair & 0xffffu)}); }
float hi(uint32_t pair) { return bf16_to_float(bf16{uint16_t(pair >> 16)}); }

void outer_twin(const uint32_t* vec, int64_t vstride, const uint32_t* sc, int64_t sa, int64_t sx, int64_t X2,
                int64_t count, int64_t width, float* out, bool accumulate, float scale) {
  for (int64_t a = 0; a < count; ++a)
    for (int64_t r = 0; r < width; ++r) {
      float acc = accumulate ? out[a * width + r] : 0.0f;
      for (int64_t x = 0; x < X2; ++x) {
        const uint32_t s = sc[a * sa + x * sx], v = vec[x * vstride + r];
        acc = std::fma(hi(s), hi(v), acc);
        acc = std::fma(lo(s), lo(v), acc);
      }
      out[a * width + r] = accumulate ? acc : acc * scale;
    }
}

TEST(Bf16OuterProduct, BitwiseEqualToThePairwiseFmaTwinForEveryTailWithAndWithoutAccumulate) {
  if (!has_avx512_bf16()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  std::mt19937_64 rng(3232);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto pair = [&] {
    const auto one = [&] {
      uint16_t b;
      do b = float_to_bf16(std::ldexp(normal(rng), int(rng() % 9) - 4)).bits;
      while ((b & 0x7f80) == 0 && (b & 0x7fff) != 0);  // no subnormals (vdpbf16ps flushes them)
      return uint32_t(b);
    };
    const uint32_t low = one();
    return low | one() << 16;
  };
  for (const int64_t width : {32, 96})
    for (int64_t count = 1; count <= 19; ++count)
      for (const int64_t X2 : {1, 2, 5, 17})
        for (const bool sc_rows : {true, false})
          for (const bool accumulate : {false, true}) {
            const float scale = 0.125f * 1.3f;
            const int64_t vstride = width + 5, sa = sc_rows ? X2 + 1 : 1, sx = sc_rows ? 1 : count + 3;
            std::vector<uint32_t> vec(size_t(X2 * vstride)), sc(size_t(count * sa + X2 * sx));
            for (uint32_t& p : vec) p = pair();
            for (uint32_t& p : sc) p = pair();
            std::vector<float> out(size_t(count * width)), want;
            for (float& x : out) x = normal(rng);
            want = out;
            bf16_outer_product(vec.data(), vstride, sc.data(), sa, sx, X2, count, width, out.data(), accumulate,
                               scale);
            outer_twin(vec.data(), vstride, sc.data(), sa, sx, X2, count, width, want.data(), accumulate, scale);
            for (int64_t e = 0; e < count * width; ++e)
              ASSERT_EQ(std::bit_cast<uint32_t>(out[size_t(e)]), std::bit_cast<uint32_t>(want[size_t(e)]))
                  << "width " << width << " count " << count << " X2 " << X2 << " sc_rows " << sc_rows
                  << " accumulate " << accumulate << " at a = " << e / width << ", r = " << e % width
                  << ": got " << out[size_t(e)] << ", want " << want[size_t(e)];
          }
}

}  // namespace
}  // namespace multihead::detail
