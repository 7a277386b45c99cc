// outer_product / outer_strip / outer_micro (kernels/cpu/simd_tiles-inl.hpp) on every compiled
// target this CPU runs, bit for bit against a scalar twin:
//   out[a, r] (+)= Σ_x sc[a·sa + x·sx] · vec[x·vstride + r]
// summed over x in order, one multiply-add per term: fused (one rounding) where the target
// has FMA (AVX-512, AVX2), a product then a sum (two roundings) on HWY_SCALAR, whose MulAdd
// is mul * x + add. Counts 1..19 cover every tail of the 8-, 6- and 4-value blocks; widths
// cover the 4-vector strips (AVX-512), the 2-vector ones and both together.
// g++ 12 reports _mm512_undefined_ps() inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/outer_product_test.cpp"
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_AVX3_DL)  // the library's targets
#endif
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/simd_tiles-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {
int64_t RowVectorForOuterTest() { return row_vector(); }
void OuterProductForTest(const float* vec, int64_t vstride, const float* sc, int64_t sa, int64_t sx, int64_t X,
                         int64_t count, int64_t width, float* out, bool accumulate) {
  outer_product(vec, vstride, sc, sa, sx, X, count, width, out, accumulate);
}
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <gtest/gtest.h>

#include <hwy/aligned_allocator.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/per_target.hpp"

namespace multihead::detail {
namespace {

// One term of the sum as the target's hn::MulAdd computes it.
float mul_add(float s, float v, float acc, bool fused) {
  if (fused) return std::fma(s, v, acc);
  const float product = s * v;  // rounded, then the sum rounded (no -mfma in this file's baseline code)
  return product + acc;
}

// The twin: out (count x width) (+)= Σ_x sc(x, a) · vec[x, :], x in order.
void outer_twin(const float* vec, int64_t vstride, const float* sc, int64_t sa, int64_t sx, int64_t X,
                int64_t count, int64_t width, float* out, bool accumulate, bool fused) {
  for (int64_t a = 0; a < count; ++a)
    for (int64_t r = 0; r < width; ++r) {
      float acc = accumulate ? out[a * width + r] : 0.0f;
      for (int64_t x = 0; x < X; ++x) acc = mul_add(sc[a * sa + x * sx], vec[x * vstride + r], acc, fused);
      out[a * width + r] = acc;
    }
}

// Values of mixed magnitude, so that a different order or rounding changes the bits.
std::vector<float> random_values(std::mt19937_64& rng, size_t n) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-6, 6);
  std::vector<float> x(n);
  for (float& v : x) v = std::ldexp(normal(rng), exponent(rng));
  return x;
}

TEST(OuterProduct, BitwiseEqualToAnInOrderMultiplyAddTwinOnEveryTargetForEveryTailAndStrip) {
  const auto targets = MULTIHEAD_EACH_TARGET(OuterProductForTest);
  const auto lanes = MULTIHEAD_EACH_TARGET(RowVectorForOuterTest);
  ASSERT_FALSE(targets.empty());
  std::mt19937_64 rng(20261205);
  int64_t compared = 0;
  for (size_t t = 0; t < targets.size(); ++t) {
    const auto& [target, name, fn] = targets[t];
    const int64_t N = lanes[t].fn();
    const bool fused = target != HWY_SCALAR && target != HWY_EMU128;
    // Widths (multiples of 2 vectors): 2N only, 4N (one 4-vector strip on AVX-512), 6N (4 + 2).
    for (const int64_t width : {2 * N, 4 * N, 6 * N})
      for (int64_t count = 1; count <= 19; ++count)
        for (const int64_t X : {int64_t(1), int64_t(2), int64_t(7), int64_t(33)})
          for (const bool sc_rows : {true, false})  // sc(x, a) at a·sa + x·sx: rows of K, or columns of dS
            for (const bool accumulate : {false, true}) {
              const int64_t vstride = width + 3;  // odd: vec rows are read unaligned
              const int64_t sa = sc_rows ? X + 1 : 1, sx = sc_rows ? 1 : count + 2;
              const std::vector<float> vec = random_values(rng, size_t(X * vstride));
              const std::vector<float> sc = random_values(rng, size_t(count * sa + X * sx));
              const std::vector<float> start = random_values(rng, size_t(count * width));
              // out rows are vector-aligned (hn::Load / hn::Store): width is a multiple of N.
              auto out = hwy::AllocateAligned<float>(size_t(count * width));
              std::copy(start.begin(), start.end(), out.get());
              std::vector<float> want = start;
              fn(vec.data(), vstride, sc.data(), sa, sx, X, count, width, out.get(), accumulate);
              outer_twin(vec.data(), vstride, sc.data(), sa, sx, X, count, width, want.data(), accumulate, fused);
              for (int64_t e = 0; e < count * width; ++e) {
                ASSERT_EQ(std::bit_cast<uint32_t>(out[size_t(e)]), std::bit_cast<uint32_t>(want[size_t(e)]))
                    << name << ": width " << width << " count " << count << " X " << X << " sc_rows " << sc_rows
                    << " accumulate " << accumulate << " at a = " << e / width << ", r = " << e % width << ": got "
                    << out[size_t(e)] << ", want " << want[size_t(e)];
                ++compared;
              }
            }
  }
  RecordProperty("compared", std::to_string(compared));
}

}  // namespace
}  // namespace multihead::detail
#endif  // HWY_ONCE
