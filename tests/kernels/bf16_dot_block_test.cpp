// bf16_dot_block (kernels/cpu/bf16_dot.cpp), the bf16 decode scores on AVX512-BF16's vdpbf16ps:
// sums[r·16/R + c] = q_r · k_c for R = 1, 2, 4 rows and 16/R keys, bit for bit against a scalar
// twin. Per (row, key), lane l of 16 holds the pair of elements (2l, 2l + 1) of every 32-element
// step x along D; vdpbf16ps adds the odd product, then the even one, each rounded to f32 (the
// products of two bf16 are exact in f32, so each step is one fma):
//   acc_l = fma(q[x+2l+1], k[x+2l+1], acc_l);  acc_l = fma(q[x+2l], k[x+2l], acc_l)
// K elements at or past D read as 0 (masked load: the NaNs stored after each K row here must
// not reach a sum); then the 16 lanes go through sum_lanes16's tree (lane_sum_test.cpp):
//   b_k = (x[4k] + x[4k+2]) + (x[4k+1] + x[4k+3]),  (b_0 + b_1) + (b_2 + b_3).
// vdpbf16ps flushes subnormal inputs and results to zero; N(0, 1) data keeps clear of them.
// Skipped where the CPU lacks AVX512-BF16 (the kernels then never call it).
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

float tree16(const float* x) {
  float b[4];
  for (int k = 0; k < 4; ++k) b[k] = (x[4 * k] + x[4 * k + 2]) + (x[4 * k + 1] + x[4 * k + 3]);
  return (b[0] + b[1]) + (b[2] + b[3]);
}

float bf(uint16_t bits) { return bf16_to_float(bf16{bits}); }

// q: D elements (zero past D up to the pair stride), k: D elements.
float dot_twin(const uint16_t* q, const uint16_t* k, int64_t D) {
  float lane[16] = {};
  for (int64_t x = 0; x < D; x += 32)
    for (int l = 0; l < 16; ++l) {
      const int64_t even = x + 2 * l, odd = even + 1;
      const float k_odd = odd < D ? bf(k[odd]) : 0.0f, k_even = even < D ? bf(k[even]) : 0.0f;
      lane[l] = std::fma(bf(q[odd]), k_odd, lane[l]);
      lane[l] = std::fma(bf(q[even]), k_even, lane[l]);
    }
  return tree16(lane);
}

TEST(Bf16DotBlock, BitwiseEqualToThePairwiseFmaAndLaneTreeTwinForEveryBlockingAndTail) {
  if (!has_avx512_bf16()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  std::mt19937_64 rng(1616);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto draw = [&] {
    uint16_t b;
    do b = float_to_bf16(std::ldexp(normal(rng), int(rng() % 9) - 4)).bits;
    while ((b & 0x7f80) == 0 && (b & 0x7fff) != 0);  // no subnormals (vdpbf16ps flushes them)
    return b;
  };
  int64_t differs_from_serial = 0, compared = 0;
  for (const int R : {1, 2, 4})
    for (const int64_t D : {1, 2, 3, 16, 31, 32, 33, 63, 64, 65, 100, 128, 255, 256}) {
      const int C = 16 / R;
      const int64_t pair_stride = (D + 31) / 32 * 16;  // pairs per q row, a multiple of 16
      std::vector<uint32_t> q(size_t(R * pair_stride), 0u);
      std::vector<uint16_t> qe(size_t(R * pair_stride * 2), 0);  // q as elements, for the twin
      for (int r = 0; r < R; ++r)
        for (int64_t d = 0; d < D; ++d) qe[size_t(r * pair_stride * 2 + d)] = draw();
      for (size_t e = 0; e < q.size(); ++e) q[e] = uint32_t(qe[2 * e]) | uint32_t(qe[2 * e + 1]) << 16;
      // K rows where they lie: odd offsets (unaligned) and NaN (0x7fc0) right after each row.
      const int64_t k_stride = D + 40;
      std::vector<uint16_t> k(size_t(C * k_stride + 1), 0x7fc0);
      for (int c = 0; c < C; ++c)
        for (int64_t d = 0; d < D; ++d) k[size_t(1 + c * k_stride + d)] = draw();
      const uint32_t* q_rows[4];
      const uint16_t* k_rows[16];
      for (int r = 0; r < R; ++r) q_rows[r] = q.data() + r * pair_stride;
      for (int c = 0; c < C; ++c) k_rows[c] = k.data() + 1 + c * k_stride;
      alignas(64) float sums[16];
      bf16_dot_block(R, q_rows, k_rows, D, sums);
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
          const uint16_t* qr = qe.data() + r * pair_stride * 2;
          const float want = dot_twin(qr, k_rows[c], D);
          ASSERT_EQ(std::bit_cast<uint32_t>(sums[r * C + c]), std::bit_cast<uint32_t>(want))
              << "R " << R << " D " << D << " row " << r << " key " << c << ": got " << sums[r * C + c]
              << ", want " << want;
          float serial = 0.0f;
          for (int64_t d = 0; d < D; ++d) serial = std::fma(bf(qr[d]), bf(k_rows[c][d]), serial);
          differs_from_serial += serial != want;
          ++compared;
        }
    }
  EXPECT_GT(differs_from_serial, compared / 4);  // the data tells the orders apart
}

}  // namespace
}  // namespace multihead::detail
