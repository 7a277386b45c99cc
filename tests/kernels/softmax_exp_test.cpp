// softmax_exp (kernels/cpu/simd_tiles-inl.hpp) on every target this CPU runs: within 1 ulp
// of e^x over the softmax's range, including subnormal results, with 0 at -inf and NaN kept.
// g++ 12 reports _mm512_undefined_ps() inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/softmax_exp_test.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/simd_tiles-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {
// out[i] = softmax_exp(x[i]) for n values, n a multiple of the vector length.
void SoftmaxExpForTest(const float* x, float* out, int64_t n) {
  const FloatTag d;
  for (int64_t i = 0; i < n; i += row_vector()) hn::StoreU(softmax_exp(hn::LoadU(d, x + i)), d, out + i);
}
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace multihead::detail {
namespace {

using ExpFn = void (*)(const float*, float*, int64_t);

// Each compiled target the CPU supports, called directly (dispatch stays untouched).
std::vector<std::pair<const char*, ExpFn>> targets() {
  std::vector<std::pair<const char*, ExpFn>> out;
  const int64_t supported = hwy::SupportedTargets();
#if HWY_TARGETS & HWY_AVX3
  if (supported & HWY_AVX3) out.push_back({"avx512", &N_AVX3::SoftmaxExpForTest});
#endif
#if HWY_TARGETS & HWY_AVX2
  if (supported & HWY_AVX2) out.push_back({"avx2", &N_AVX2::SoftmaxExpForTest});
#endif
#if HWY_TARGETS & HWY_SSE4
  if (supported & HWY_SSE4) out.push_back({"sse4", &N_SSE4::SoftmaxExpForTest});
#endif
#if HWY_TARGETS & HWY_EMU128
  out.push_back({"emu128", &N_EMU128::SoftmaxExpForTest});
#endif
  return out;
}

// |got - e^x| in units of the last place of the float nearest e^x (subnormal spacing below FLT_MIN).
double ulp_error(float x, float got) {
  const double want = std::exp(double(x));
  const float nearest = float(want);
  const double ulp = std::max<double>(std::nextafter(nearest, std::numeric_limits<float>::infinity()) - nearest,
                                      std::numeric_limits<float>::denorm_min());
  return std::fabs(double(got) - want) / ulp;
}

TEST(SoftmaxExp, WithinOneUlpOfExpOnEveryTargetWithZeroAtMinusInfinityAndNaNKept) {
  // Every 997th float from -110 (results underflow to 0 below about -103.97) up to 1, by
  // bit pattern, so each binade is sampled alike.
  std::vector<float> x;
  const auto bits_of = [](float v) { return std::bit_cast<uint32_t>(v); };
  for (uint32_t b = bits_of(-0.0f); b <= bits_of(-110.0f); b += 997) x.push_back(std::bit_cast<float>(b));
  for (uint32_t b = 0; b <= bits_of(1.0f); b += 997) x.push_back(std::bit_cast<float>(b));
  const float specials[] = {0.0f, -0.0f, -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                            -1e30f, -104.0f, -87.3f, -88.0f};
  for (float s : specials) x.push_back(s);
  while (x.size() % 16 != 0) x.push_back(0.0f);
  std::vector<float> out(x.size());
  const auto all = targets();
  ASSERT_FALSE(all.empty());
  for (const auto& [name, fn] : all) {
    fn(x.data(), out.data(), int64_t(x.size()));
    double worst = 0.0;
    float worst_x = 0.0f;
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x[i])) {
        EXPECT_TRUE(std::isnan(out[i])) << name;
        continue;
      }
      if (x[i] == -std::numeric_limits<float>::infinity() || x[i] <= -104.0f) {
        EXPECT_EQ(out[i], 0.0f) << name << " at " << x[i];
        continue;
      }
      const double e = ulp_error(x[i], out[i]);
      if (e > worst) worst = e, worst_x = x[i];
    }
    EXPECT_LE(worst, 1.0) << name << ": worst at x = " << worst_x;
    RecordProperty(std::string("worst_ulp_") + name, std::to_string(worst));
  }
}

}  // namespace
}  // namespace multihead::detail
#endif  // HWY_ONCE
