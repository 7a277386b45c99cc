// transpose_columns16 and transpose16 (kernels/cpu/simd_tiles-inl.hpp) on every compiled target
// this CPU runs: dst[c·dst_stride + a] = src[a·src_stride + c] for 16 columns c and dims a, an
// exact permutation (every bit kept, NaN payloads and -0 included). AVX-512 moves whole blocks
// of 16 dims through the in-register 16 x 16 transpose and the rest one by one; the other
// targets go one by one. Dims 1..50 cover no block, whole blocks and every tail; odd strides
// make every load and store unaligned; cells the call must not write are checked unchanged.
// g++ 12 reports _mm512_undefined_ps() inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/transpose_test.cpp"
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
void TransposeColumns16ForTest(const float* src, int64_t src_stride, int64_t dims, float* dst, int64_t dst_stride) {
  transpose_columns16(src, src_stride, dims, dst, dst_stride);
}
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <vector>

#include "kernels/per_target.hpp"

namespace multihead::detail {
namespace {

// A distinct bit pattern per source cell (some of them NaNs with payloads, one -0).
float cell(int64_t a, int64_t c) {
  const uint32_t id = uint32_t(a * 16 + c);
  if (id % 7 == 3) return std::bit_cast<float>(0x7fc00000u | id);  // quiet NaN, payload id
  if (id == 5) return -0.0f;
  return std::bit_cast<float>(0x3f800000u + id * 977u);
}

TEST(TransposeColumns16, ExactPermutationOnEveryTargetForEveryDimTail) {
  constexpr uint32_t kUntouched = 0xdeadbeefu;
  const auto targets = MULTIHEAD_EACH_TARGET(TransposeColumns16ForTest);
  ASSERT_FALSE(targets.empty());
  for (const auto& [target, name, fn] : targets)
    for (int64_t dims = 1; dims <= 50; ++dims) {
      const int64_t src_stride = 16 + 3, dst_stride = dims + 5;
      std::vector<float> src(size_t(dims * src_stride), std::bit_cast<float>(kUntouched));
      for (int64_t a = 0; a < dims; ++a)
        for (int64_t c = 0; c < 16; ++c) src[size_t(a * src_stride + c)] = cell(a, c);
      std::vector<float> dst(size_t(16 * dst_stride + 1), std::bit_cast<float>(kUntouched));
      fn(src.data(), src_stride, dims, dst.data() + 1, dst_stride);  // + 1: unaligned
      for (int64_t e = 0; e < int64_t(dst.size()); ++e) {
        const int64_t c = (e - 1) / dst_stride, a = (e - 1) % dst_stride;
        const bool inside = e >= 1 && a < dims;
        const uint32_t want = inside ? std::bit_cast<uint32_t>(cell(a, c)) : kUntouched;
        ASSERT_EQ(std::bit_cast<uint32_t>(dst[size_t(e)]), want)
            << name << ": dims " << dims << (inside ? " at column " : " outside, column ") << c << ", dim " << a;
      }
    }
}

}  // namespace
}  // namespace multihead::detail
#endif  // HWY_ONCE
