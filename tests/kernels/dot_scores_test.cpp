// dot_scores / dot_block / dot_rows (kernels/cpu/simd_tiles-inl.hpp), the decode scores
// S[r·rs + c·cs] = q_r · k_c, on every compiled target this CPU runs, bit for bit against a
// scalar twin that states the order of every operation. With N lanes (16 on AVX-512, 8 on
// AVX2, 1 on HWY_SCALAR) and full = D rounded down to a multiple of N:
//   lane l:  acc_l = multiply-add chain over x = l, l + N, ... < full (from 0)
//   sum:     the lanes reduced by the target's fixed tree (below)
//   tail:    sum = fma(q[x], k[x], sum) for x in [full, D)
// Multiply-adds are fused on AVX-512 and AVX2, a product then a sum on HWY_SCALAR. The trees:
//   AVX-512 (sum_lanes16, kernels/cpu/lane_sum.hpp): per 128-bit block k
//     b_k = (x[4k] + x[4k+2]) + (x[4k+1] + x[4k+3]), then (b_0 + b_1) + (b_2 + b_3)
//   AVX2 (sum_lanes8, the tree of Highway's SumOfLanes on 256 bits):
//     ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7))
//   HWY_SCALAR: the one lane.
// The result must not depend on how rows and keys are blocked (1 row x 16 keys, 2 x 8, 4 x 4;
// AVX2 1 x 8, 2 x 4, 4 x 2,
// with repeated last rows and keys), on K's dtype (bf16 and f16 widen exactly) or on where
// the rows lie; ahead(c) runs exactly once per key, in order.
// g++ 12 reports _mm512_undefined_ps() inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/dot_scores_test.cpp"
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_AVX3_DL)  // the library's targets
#endif
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <vector>

#include "kernels/cpu/simd_tiles-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {
int64_t RowVectorForDotTest() { return row_vector(); }
// k points at elements of `dtype`; the keys whose ahead() ran are appended to `ahead`.
void DotScoresForTest(DType dtype, const float* q, int64_t q_stride, int64_t rows, const void* k, int64_t k_stride,
                      int64_t D, int64_t nk, float* s, int64_t rs, int64_t cs, std::vector<int64_t>* ahead) {
  with_float_type(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    dot_scores(q, q_stride, rows, static_cast<const T*>(k), k_stride, D, nk, s, rs, cs,
               [ahead](int64_t c) { ahead->push_back(c); });
  });
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
#include <random>
#include <string>

#include "kernels/per_target.hpp"

namespace multihead::detail {
namespace {

float mul_add(float a, float b, float acc, bool fused) {
  if (fused) return std::fma(a, b, acc);
  const float product = a * b;
  return product + acc;
}

// The target's lane reduction, as stated at the top of the file.
float reduce_lanes(const float* x, int64_t N) {
  if (N == 16) {
    float b[4];
    for (int k = 0; k < 4; ++k) b[k] = (x[4 * k] + x[4 * k + 2]) + (x[4 * k + 1] + x[4 * k + 3]);
    return (b[0] + b[1]) + (b[2] + b[3]);
  }
  if (N == 8) return ((x[0] + x[4]) + (x[2] + x[6])) + ((x[1] + x[5]) + (x[3] + x[7]));
  EXPECT_EQ(N, 1) << "no twin for " << N << " lanes";
  return x[0];
}

float dot_twin(const float* q, const float* k, int64_t D, int64_t N, bool fused) {
  const int64_t full = D / N * N;
  float lane[16] = {};
  for (int64_t l = 0; l < N; ++l)
    for (int64_t x = l; x < full; x += N) lane[l] = mul_add(q[x], k[x], lane[l], fused);
  float sum = reduce_lanes(lane, N);
  for (int64_t x = full; x < D; ++x) sum = std::fma(q[x], k[x], sum);
  return sum;
}

float widen(float x) { return x; }
float widen(bf16 x) { return bf16_to_float(x); }
float widen(f16 x) { return f16_to_float(x); }

// Rows of `dim` values `stride` apart, NaN in the gaps (never read).
template <typename T>
std::vector<T> rows_of(std::mt19937_64& rng, int64_t n, int64_t dim, int64_t stride, std::vector<float>* widened) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<T> x(size_t(n * stride + 1));
  widened->assign(size_t(n * stride + 1), std::nanf(""));
  for (size_t e = 0; e < x.size(); ++e) {
    const bool gap = int64_t(e) % stride >= dim || int64_t(e) >= n * stride;
    const float v = gap ? std::nanf("") : normal(rng);
    if constexpr (std::is_same_v<T, float>) {
      x[e] = v;
    } else if constexpr (std::is_same_v<T, bf16>) {
      x[e] = float_to_bf16(v);
    } else {
      x[e] = float_to_f16(v);
    }
    if (!gap) (*widened)[e] = widen(x[e]);
  }
  return x;
}

template <typename T>
void check_dtype(DType dtype) {
  const auto targets = MULTIHEAD_EACH_TARGET(DotScoresForTest);
  const auto lanes = MULTIHEAD_EACH_TARGET(RowVectorForDotTest);
  ASSERT_FALSE(targets.empty());
  std::mt19937_64 rng(uint64_t(dtype) * 7919 + 1);
  for (size_t t = 0; t < targets.size(); ++t) {
    const auto& [target, name, fn] = targets[t];
    const int64_t N = lanes[t].fn();
    const bool fused = target != HWY_SCALAR && target != HWY_EMU128;
    for (const int64_t D : {1, 7, 8, 15, 16, 17, 31, 33, 64, 80, 111})
      for (const int64_t rows : {1, 2, 3, 4, 5, 7})
        for (const int64_t nk : {1, 3, 8, 16, 17, 33})
          for (const bool transposed : {true, false}) {  // S as the forward's Sᵀ (cs = rows_pad) or row-major
            const int64_t q_stride = D + 3, k_stride = D + 5;
            std::vector<float> qw, kw;
            const std::vector<float> q = rows_of<float>(rng, rows, D, q_stride, &qw);
            const std::vector<T> k = rows_of<T>(rng, nk, D, k_stride, &kw);
            const int64_t rs = transposed ? 1 : nk + 1, cs = transposed ? rows + 2 : 1;
            std::vector<float> s(size_t(rows * rs + nk * cs + 1), -7.0f);
            std::vector<int64_t> ahead;
            fn(dtype, q.data(), q_stride, rows, k.data(), k_stride, D, nk, s.data(), rs, cs, &ahead);
            std::vector<int64_t> want_ahead(static_cast<size_t>(nk));
            for (int64_t c = 0; c < nk; ++c) want_ahead[size_t(c)] = c;
            EXPECT_EQ(ahead, want_ahead) << name << ": D " << D << " rows " << rows << " nk " << nk;
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < nk; ++c) {
                const float want = dot_twin(q.data() + r * q_stride, kw.data() + c * k_stride, D, N, fused);
                const float got = s[size_t(r * rs + c * cs)];
                ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want))
                    << name << " " << to_string(dtype) << ": D " << D << " rows " << rows << " nk " << nk
                    << " transposed " << transposed << " at row " << r << ", key " << c << ": got " << got
                    << ", want " << want;
              }
            // Only the rows x keys entries are written.
            for (size_t e = 0; e < s.size(); ++e) {
              const int64_t r = transposed ? int64_t(e) % cs : int64_t(e) / rs;
              const int64_t c = transposed ? int64_t(e) / cs : int64_t(e) % rs;
              if (r >= rows || c >= nk) {
                ASSERT_EQ(s[e], -7.0f) << name << ": wrote outside at " << e;
              }
            }
          }
  }
}

TEST(DotScores, F32KeysBitwiseEqualToTheLaneTreeTwinOnEveryTargetAnyBlocking) { check_dtype<float>(DType::kF32); }
TEST(DotScores, Bf16KeysBitwiseEqualToTheLaneTreeTwinOnEveryTargetAnyBlocking) { check_dtype<bf16>(DType::kBF16); }
TEST(DotScores, F16KeysBitwiseEqualToTheLaneTreeTwinOnEveryTargetAnyBlocking) { check_dtype<f16>(DType::kF16); }

}  // namespace
}  // namespace multihead::detail
#endif  // HWY_ONCE
