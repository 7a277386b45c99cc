// The oracle checked on its own: its forward against hand-checkable cases of
// docs/CONTRACT.md, and the float baseline (the same math rounded like a low-precision
// kernel) against the oracle. Its backward is checked in finite_difference_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "reference/attention_reference.hpp"
#include "reference/reference_case.hpp"

namespace {

using namespace multihead;
namespace ref = multihead::reference;

using multihead::reference_test::Case;
using multihead::reference_test::view;

constexpr double kInf = std::numeric_limits<double>::infinity();

// ---------------------------------------------------------------------------------
// Forward: hand-checkable cases of the contract.

TEST(ReferenceForward, SingleKeyOutputsItsValue) {
  Case c;
  c.Lk = 1;
  c.init(3);
  const ref::ForwardResult f = c.forward();
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t i = 0; i < c.Lq; ++i)
      for (int64_t h = 0; h < c.H; ++h) {
        double s = 0;
        for (int64_t d = 0; d < c.D; ++d)
          s += double(c.q[size_t(((b * c.Lq + i) * c.H + h) * c.D + d)]) * c.k[size_t((b * c.Hkv + h) * c.D + d)];
        EXPECT_NEAR(f.lse[size_t((b * c.H + h) * c.Lq + i)], s / std::sqrt(3.0), 1e-12);
        EXPECT_EQ(f.probs[size_t((b * c.H + h) * c.Lq + i)], 1.0);
        for (int64_t d = 0; d < c.Dv; ++d)
          EXPECT_EQ(f.out[size_t(((b * c.Lq + i) * c.H + h) * c.Dv + d)], c.v[size_t((b * c.Hkv + h) * c.Dv + d)]);
      }
}

TEST(ReferenceForward, EqualScoresAverageTheValues) {
  Case c;
  c.init(4);
  std::fill(c.q.begin(), c.q.end(), 0.0f);
  const ref::ForwardResult f = c.forward();
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t i = 0; i < c.Lq; ++i) {
        EXPECT_NEAR(f.lse[size_t((b * c.H + h) * c.Lq + i)], std::log(double(c.Lk)), 1e-15);
        for (int64_t d = 0; d < c.Dv; ++d) {
          double mean = 0;
          for (int64_t j = 0; j < c.Lk; ++j) mean += c.v[size_t(((b * c.Lk + j) * c.Hkv + h) * c.Dv + d)];
          EXPECT_NEAR(f.out[size_t(((b * c.Lq + i) * c.H + h) * c.Dv + d)], mean / double(c.Lk), 1e-15);
        }
      }
}

TEST(ReferenceForward, FullyMaskedRowGivesZeroOutputAndMinusInfLse) {
  Case c;
  c.B = 1;
  c.H = 1;
  c.Hkv = 1;
  c.mask_shape = {c.Lq, c.Lk};
  c.with_sinks = true;  // a sink does not revive an empty row
  c.init(5);
  std::fill(c.mask.begin(), c.mask.end(), uint8_t{1});
  for (int64_t j = 0; j < c.Lk; ++j) c.mask[size_t(1 * c.Lk + j)] = 0;
  const ref::ForwardResult f = c.forward();
  EXPECT_EQ(f.lse[1], -kInf);
  EXPECT_TRUE(std::isfinite(f.lse[0]) && std::isfinite(f.lse[2]));
  for (int64_t d = 0; d < c.Dv; ++d) EXPECT_EQ(f.out[size_t(1 * c.Dv + d)], 0.0);
  for (int64_t j = 0; j < c.Lk; ++j) EXPECT_EQ(f.probs[size_t(1 * c.Lk + j)], 0.0);
}

TEST(ReferenceForward, ZeroKeysMaskEveryRow) {
  Case c;
  c.Lk = 0;
  c.init(6);
  const ref::ForwardResult f = c.forward();
  ASSERT_EQ(f.out.size(), size_t(c.B * c.Lq * c.H * c.Dv));
  for (double x : f.out) EXPECT_EQ(x, 0.0);
  for (double x : f.lse) EXPECT_EQ(x, -kInf);
  EXPECT_TRUE(f.probs.empty());
  const ref::BackwardResult g = c.backward();
  for (double x : g.dq) EXPECT_EQ(x, 0.0);
  EXPECT_TRUE(g.dk.empty() && g.dv.empty());
}

TEST(ReferenceForward, EmptyBatchOrQueriesGiveEmptyResults) {
  for (auto [b, lq] : {std::pair{0, 3}, {2, 0}}) {
    Case c;
    c.B = b;
    c.Lq = lq;
    c.init(7);
    const ref::ForwardResult f = c.forward();
    EXPECT_TRUE(f.out.empty() && f.lse.empty() && f.probs.empty());
    const ref::BackwardResult g = c.backward();
    EXPECT_TRUE(g.dq.empty());
    for (double x : g.dk) EXPECT_EQ(x, 0.0);
  }
}

TEST(ReferenceForward, SinkWithOneKeyWeighsItByTheLogistic) {
  Case c;
  c.B = 1;
  c.Lq = 1;
  c.Lk = 1;
  c.H = 1;
  c.Hkv = 1;
  c.D = 1;
  c.Dv = 1;
  c.with_sinks = true;
  c.init(8);
  c.q = {1.0f};
  c.k = {0.5f};
  c.v = {3.0f};
  c.sinks = {0.25f};
  const ref::ForwardResult f = c.forward();
  const double s = 0.5;
  EXPECT_NEAR(f.probs[0], 1.0 / (1.0 + std::exp(0.25 - s)), 1e-15);
  EXPECT_NEAR(f.out[0], 3.0 / (1.0 + std::exp(0.25 - s)), 1e-15);
  EXPECT_NEAR(f.lse[0], std::log(std::exp(s) + std::exp(0.25)), 1e-15);
}

// Which (i, j) a configuration allows, read off the probabilities.
std::vector<std::vector<int>> allowed(const Case& c) {
  const ref::ForwardResult f = c.forward();
  std::vector<std::vector<int>> r(size_t(c.Lq), std::vector<int>(size_t(c.Lk)));
  for (int64_t i = 0; i < c.Lq; ++i)
    for (int64_t j = 0; j < c.Lk; ++j) r[size_t(i)][size_t(j)] = f.probs[size_t(i * c.Lk + j)] > 0;
  return r;
}

Case pattern_case(int64_t lq, int64_t lk) {
  Case c;
  c.B = 1;
  c.H = 1;
  c.Hkv = 1;
  c.Lq = lq;
  c.Lk = lk;
  c.init(9);
  std::fill(c.q.begin(), c.q.end(), 0.0f);  // equal scores: every allowed key gets weight > 0
  return c;
}

TEST(ReferenceForward, CausalAlignmentsOnUnequalLengths) {
  Case c = pattern_case(2, 4);
  c.scalars.causal = CausalAlign::kTopLeft;
  EXPECT_EQ(allowed(c), (std::vector<std::vector<int>>{{1, 0, 0, 0}, {1, 1, 0, 0}}));
  c.scalars.causal = CausalAlign::kBottomRight;
  EXPECT_EQ(allowed(c), (std::vector<std::vector<int>>{{1, 1, 1, 0}, {1, 1, 1, 1}}));

  Case tall = pattern_case(4, 2);
  tall.scalars.causal = CausalAlign::kTopLeft;
  EXPECT_EQ(allowed(tall), (std::vector<std::vector<int>>{{1, 0}, {1, 1}, {1, 1}, {1, 1}}));
  tall.scalars.causal = CausalAlign::kBottomRight;  // the first Lq - Lk rows see nothing
  EXPECT_EQ(allowed(tall), (std::vector<std::vector<int>>{{0, 0}, {0, 0}, {1, 0}, {1, 1}}));
  EXPECT_EQ(tall.forward().lse[0], -kInf);
}

TEST(ReferenceForward, WindowsFollowTheCausalAlignmentElseBottomRight) {
  Case c = pattern_case(2, 4);
  c.scalars.window = {1, 0};
  EXPECT_EQ(allowed(c), (std::vector<std::vector<int>>{{0, 1, 1, 0}, {0, 0, 1, 1}}));
  c.scalars.causal = CausalAlign::kTopLeft;
  EXPECT_EQ(allowed(c), (std::vector<std::vector<int>>{{1, 0, 0, 0}, {1, 1, 0, 0}}));
  c.scalars.causal = CausalAlign::kNone;
  c.scalars.window = {-1, 0};  // right = 0 alone is bottom-right causal
  EXPECT_EQ(allowed(c), (std::vector<std::vector<int>>{{1, 1, 1, 0}, {1, 1, 1, 1}}));
  c.scalars.window = {0, 1};
  EXPECT_EQ(allowed(c), (std::vector<std::vector<int>>{{0, 0, 1, 1}, {0, 0, 0, 1}}));
}

TEST(ReferenceForward, MinusInfOrLowestBiasEqualsFalseMask) {
  Case masked;
  masked.mask_shape = {masked.B, masked.H, masked.Lq, masked.Lk};
  masked.init(10);
  std::fill(masked.mask.begin(), masked.mask.end(), uint8_t{1});
  masked.mask[3] = 0;
  masked.mask[7] = 0;
  masked.mask[20] = 0;
  const ref::ForwardResult want = masked.forward();

  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    Case biased;
    biased.init(10);
    const std::vector<float> lowest = {-std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::max()};
    std::vector<uint16_t> bits(size_t(biased.B * biased.H * biased.Lq * biased.Lk), 0);  // +0
    std::vector<float> f32(bits.size(), 0.0f);
    for (size_t e : {size_t(3), size_t(7), size_t(20)}) {
      f32[e] = e == 3 ? lowest[0] : lowest[1];
      // bf16 / f16: -inf, and each type's own lowest finite value.
      bits[e] = dtype == DType::kBF16 ? (e == 3 ? 0xff80 : 0xff7f) : (e == 3 ? 0xfc00 : 0xfbff);
    }
    AttentionOptions o;
    o.bias = view(dtype == DType::kF32 ? static_cast<const void*>(f32.data()) : bits.data(), dtype,
                  {biased.B, biased.H, biased.Lq, biased.Lk});
    const ref::ForwardResult got = ref::attention_forward(biased.q_view(), biased.k_view(), biased.v_view(), o);
    EXPECT_EQ(got.out, want.out) << to_string(dtype);
    EXPECT_EQ(got.lse, want.lse) << to_string(dtype);
    EXPECT_EQ(got.probs, want.probs) << to_string(dtype);
  }
}

TEST(ReferenceForward, AlibiEqualsAnExplicitDistanceBias) {
  for (CausalAlign causal : {CausalAlign::kNone, CausalAlign::kTopLeft, CausalAlign::kBottomRight}) {
    Case alibi;
    alibi.Lq = 3;
    alibi.Lk = 5;
    alibi.with_alibi = true;
    alibi.scalars.causal = causal;
    alibi.init(11);
    Case biased = alibi;
    biased.with_alibi = false;
    biased.bias_shape = {biased.H, biased.Lq, biased.Lk};
    biased.bias.clear();
    const int64_t kv_offset = causal == CausalAlign::kTopLeft ? 0 : biased.Lk - biased.Lq;
    for (int64_t h = 0; h < biased.H; ++h)
      for (int64_t i = 0; i < biased.Lq; ++i)
        for (int64_t j = 0; j < biased.Lk; ++j)
          biased.bias.push_back(-alibi.slopes[size_t(h)] * float(std::abs(j - (i + kv_offset))));
    const ref::ForwardResult a = alibi.forward(), b = biased.forward();
    for (size_t e = 0; e < a.out.size(); ++e) EXPECT_NEAR(a.out[e], b.out[e], 1e-14);
    for (size_t e = 0; e < a.lse.size(); ++e) EXPECT_NEAR(a.lse[e], b.lse[e], 1e-14);
  }
}

TEST(ReferenceForward, SoftcapSquashesScaledScoresBeforeTheBias) {
  Case c;
  c.B = 1;
  c.Lq = 1;
  c.Lk = 2;
  c.H = 1;
  c.Hkv = 1;
  c.D = 1;
  c.Dv = 1;
  c.bias_shape = {2};
  c.scalars.softcap = 2.0f;
  c.scalars.scale = 0.5f;
  c.init(12);
  c.q = {2.0f};
  c.k = {3.0f, -1.0f};
  c.v = {1.0f, 0.0f};
  c.bias = {0.5f, 0.25f};
  const double s0 = 2 * std::tanh(0.5 * 6 / 2) + 0.5, s1 = 2 * std::tanh(0.5 * -2 / 2) + 0.25;
  const ref::ForwardResult f = c.forward();
  EXPECT_NEAR(f.out[0], 1 / (1 + std::exp(s1 - s0)), 1e-15);
  EXPECT_NEAR(f.lse[0], std::log(std::exp(s0) + std::exp(s1)), 1e-15);
}

TEST(ReferenceForward, DefaultScaleIsInverseSqrtD) {
  Case c;
  c.D = 5;
  c.init(13);
  Case explicit_scale = c;
  explicit_scale.scalars.scale = float(1 / std::sqrt(5.0));
  const ref::ForwardResult a = c.forward(), b = explicit_scale.forward();
  for (size_t e = 0; e < a.out.size(); ++e) EXPECT_NEAR(a.out[e], b.out[e], 1e-7);
}

TEST(ReferenceForward, KeyPaddingEqualsTruncatedKeysAndIgnoresGarbage) {
  Case padded;
  padded.B = 1;
  padded.Lk = 5;
  padded.seqlens_k = {3};
  padded.scalars.causal = CausalAlign::kBottomRight;
  padded.init(14);
  // Garbage in the padding must not leak into anything.
  for (int64_t j = 3; j < 5; ++j) {
    for (int64_t x = 0; x < padded.Hkv * padded.D; ++x)
      padded.k[size_t(j * padded.Hkv * padded.D + x)] = std::numeric_limits<float>::quiet_NaN();
    for (int64_t x = 0; x < padded.Hkv * padded.Dv; ++x)
      padded.v[size_t(j * padded.Hkv * padded.Dv + x)] = std::numeric_limits<float>::infinity();
  }
  Case truncated = padded;
  truncated.Lk = 3;
  truncated.seqlens_k.clear();
  truncated.k.resize(size_t(3 * padded.Hkv * padded.D));
  truncated.v.resize(size_t(3 * padded.Hkv * padded.Dv));
  const ref::ForwardResult a = padded.forward(), b = truncated.forward();
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.lse, b.lse);
  const ref::BackwardResult ga = padded.backward(), gb = truncated.backward();
  EXPECT_EQ(ga.dq, gb.dq);
  for (size_t e = 0; e < gb.dk.size(); ++e) EXPECT_EQ(ga.dk[e], gb.dk[e]);
  for (size_t e = gb.dk.size(); e < ga.dk.size(); ++e) EXPECT_EQ(ga.dk[e], 0.0);
}

TEST(ReferenceForward, VarlenEqualsSeparateSequences) {
  Case packed;
  packed.B = 1;
  packed.cu_q = {0, 2, 5};
  packed.cu_k = {0, 4, 5};
  packed.Lq = 5;
  packed.Lk = 5;
  packed.scalars.causal = CausalAlign::kBottomRight;
  packed.with_alibi = true;
  packed.init(15);
  const ref::ForwardResult f = packed.forward();
  const ref::BackwardResult g = packed.backward();
  EXPECT_TRUE(f.probs.empty());
  ASSERT_EQ(f.lse.size(), size_t(packed.H * 5));
  for (int s = 0; s < 2; ++s) {
    Case one = packed;
    one.cu_q.clear();
    one.cu_k.clear();
    const int64_t q0 = packed.cu_q[size_t(s)], k0 = packed.cu_k[size_t(s)];
    one.Lq = packed.cu_q[size_t(s) + 1] - q0;
    one.Lk = packed.cu_k[size_t(s) + 1] - k0;
    auto rows = [](const std::vector<float>& x, int64_t r0, int64_t n, int64_t width) {
      return std::vector<float>(x.begin() + r0 * width, x.begin() + (r0 + n) * width);
    };
    one.q = rows(packed.q, q0, one.Lq, packed.H * packed.D);
    one.dout = rows(packed.dout, q0, one.Lq, packed.H * packed.Dv);
    one.k = rows(packed.k, k0, one.Lk, packed.Hkv * packed.D);
    one.v = rows(packed.v, k0, one.Lk, packed.Hkv * packed.Dv);
    const ref::ForwardResult fs = one.forward();
    const ref::BackwardResult gs = one.backward();
    for (int64_t i = 0; i < one.Lq; ++i)
      for (int64_t h = 0; h < packed.H; ++h) {
        EXPECT_EQ(f.lse[size_t(h * 5 + q0 + i)], fs.lse[size_t(h * one.Lq + i)]);
        for (int64_t d = 0; d < packed.Dv; ++d)
          EXPECT_EQ(f.out[size_t(((q0 + i) * packed.H + h) * packed.Dv + d)],
                    fs.out[size_t((i * packed.H + h) * packed.Dv + d)]);
      }
    for (size_t e = 0; e < gs.dq.size(); ++e) EXPECT_EQ(g.dq[size_t(q0 * packed.H * packed.D) + e], gs.dq[e]);
    for (size_t e = 0; e < gs.dk.size(); ++e) EXPECT_EQ(g.dk[size_t(k0 * packed.Hkv * packed.D) + e], gs.dk[e]);
  }
}

TEST(ReferenceForward, GqaEqualsMhaWithRepeatedKv) {
  Case gqa;
  gqa.H = 4;
  gqa.Hkv = 2;
  gqa.init(16);
  Case mha = gqa;
  mha.Hkv = 4;
  mha.k.clear();
  mha.v.clear();
  for (int64_t bj = 0; bj < gqa.B * gqa.Lk; ++bj)
    for (int64_t h = 0; h < 4; ++h) {
      const int64_t g = h / 2;
      for (int64_t d = 0; d < gqa.D; ++d) mha.k.push_back(gqa.k[size_t((bj * 2 + g) * gqa.D + d)]);
      for (int64_t d = 0; d < gqa.Dv; ++d) mha.v.push_back(gqa.v[size_t((bj * 2 + g) * gqa.Dv + d)]);
    }
  EXPECT_EQ(gqa.forward().out, mha.forward().out);
  const ref::BackwardResult a = gqa.backward(), b = mha.backward();
  EXPECT_EQ(a.dq, b.dq);
  // GQA's dk is the sum of MHA's dk over the heads of a group.
  for (int64_t bj = 0; bj < gqa.B * gqa.Lk; ++bj)
    for (int64_t g = 0; g < 2; ++g)
      for (int64_t d = 0; d < gqa.D; ++d)
        EXPECT_NEAR(a.dk[size_t((bj * 2 + g) * gqa.D + d)],
                    b.dk[size_t((bj * 4 + 2 * g) * gqa.D + d)] + b.dk[size_t((bj * 4 + 2 * g + 1) * gqa.D + d)], 1e-14);
}

TEST(ReferenceForward, StridedBroadcastAndBf16ViewsMatchContiguousF32) {
  Case c;
  c.init(17);  // grid values with <= 8 significant bits are exact in bf16
  // q stored as (B, H, Lq, D) and seen as (B, Lq, H, D) through strides, in bf16.
  std::vector<bf16> q_bhld(c.q.size());
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t i = 0; i < c.Lq; ++i)
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t d = 0; d < c.D; ++d) {
          const float x = c.q[size_t(((b * c.Lq + i) * c.H + h) * c.D + d)];
          ASSERT_EQ(bf16_to_float(float_to_bf16(x)), x);
          q_bhld[size_t(((b * c.H + h) * c.Lq + i) * c.D + d)] = float_to_bf16(x);
        }
  TensorView q = view(q_bhld.data(), DType::kBF16, {c.B, c.Lq, c.H, c.D});
  q.strides = {c.H * c.Lq * c.D, c.D, c.Lq * c.D, 1};
  // k and v shared by every batch entry through a stride-0 batch dim.
  for (int64_t x = 0; x < c.Lk * c.Hkv * c.D; ++x) c.k[size_t(c.Lk * c.Hkv * c.D + x)] = c.k[size_t(x)];
  for (int64_t x = 0; x < c.Lk * c.Hkv * c.Dv; ++x) c.v[size_t(c.Lk * c.Hkv * c.Dv + x)] = c.v[size_t(x)];
  TensorView k = c.k_view(), v = c.v_view();
  k.strides[0] = 0;
  v.strides[0] = 0;
  const ref::ForwardResult a = ref::attention_forward(q, k, v, {}), b = c.forward();
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.lse, b.lse);
  const ref::BackwardResult ga = ref::attention_backward(c.dout_view(), q, k, v, {}), gb = c.backward();
  EXPECT_EQ(ga.dq, gb.dq);
}

TEST(ReferenceForward, ProbabilitiesSumToOneAndReproduceTheOutput) {
  Case c;
  c.scalars.causal = CausalAlign::kTopLeft;
  c.init(18);
  const ref::ForwardResult f = c.forward();
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t i = 0; i < c.Lq; ++i) {
        const double* p = &f.probs[size_t(((b * c.H + h) * c.Lq + i) * c.Lk)];
        EXPECT_NEAR(std::accumulate(p, p + c.Lk, 0.0), 1.0, 1e-15);
        for (int64_t d = 0; d < c.Dv; ++d) {
          double o = 0;
          for (int64_t j = 0; j < c.Lk; ++j) o += p[j] * c.v[size_t(((b * c.Lk + j) * c.Hkv + h) * c.Dv + d)];
          EXPECT_NEAR(f.out[size_t(((b * c.Lq + i) * c.H + h) * c.Dv + d)], o, 1e-15);
        }
      }
}

// ---------------------------------------------------------------------------------
// Baseline: the same math in float, rounded like a low-precision kernel.

TEST(ReferenceBaseline, F32BaselineIsCloseToTheOracle) {
  Case c;
  c.Lq = 17;
  c.Lk = 33;
  c.D = 16;
  c.Dv = 8;
  c.with_sinks = true;
  c.bias_shape = {c.Lq, c.Lk};
  c.init(19);
  const ref::ForwardResult f = c.forward();
  const ref::ForwardResult bf = ref::baseline_forward(c.q_view(), c.k_view(), c.v_view(), c.options(), DType::kF32);
  for (size_t e = 0; e < f.out.size(); ++e) EXPECT_NEAR(bf.out[e], f.out[e], 1e-5);
  for (size_t e = 0; e < f.lse.size(); ++e) EXPECT_NEAR(bf.lse[e], f.lse[e], 1e-5);
  const ref::BackwardResult g = c.backward();
  const ref::BackwardResult bg =
      ref::baseline_backward(c.dout_view(), c.q_view(), c.k_view(), c.v_view(), c.options(), DType::kF32);
  for (size_t e = 0; e < g.dq.size(); ++e) EXPECT_NEAR(bg.dq[e], g.dq[e], 1e-4);
  for (size_t e = 0; e < g.dk.size(); ++e) EXPECT_NEAR(bg.dk[e], g.dk[e], 1e-4);
  for (size_t e = 0; e < g.dv.size(); ++e) EXPECT_NEAR(bg.dv[e], g.dv[e], 1e-4);
  for (size_t e = 0; e < g.dbias.size(); ++e) EXPECT_NEAR(bg.dbias[e], g.dbias[e], 1e-4);
  for (size_t e = 0; e < g.dsinks.size(); ++e) EXPECT_NEAR(bg.dsinks[e], g.dsinks[e], 1e-4);
}

TEST(ReferenceBaseline, LowPrecisionBaselineRoundsItsOutputs) {
  Case c;
  c.Lq = 9;
  c.Lk = 40;
  c.D = 8;
  c.init(20);
  const ref::ForwardResult f = c.forward();
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    auto representable = [dtype](double x) {
      const float y = float(x);
      return dtype == DType::kBF16 ? bf16_to_float(float_to_bf16(y)) == y : f16_to_float(float_to_f16(y)) == y;
    };
    const ref::ForwardResult b = ref::baseline_forward(c.q_view(), c.k_view(), c.v_view(), c.options(), dtype);
    double err = 0;
    for (size_t e = 0; e < f.out.size(); ++e) {
      EXPECT_TRUE(representable(b.out[e])) << b.out[e];
      err = std::max(err, std::abs(b.out[e] - f.out[e]));
    }
    EXPECT_GT(err, 0.0) << to_string(dtype);
    EXPECT_LT(err, 2e-2) << to_string(dtype);
    const ref::BackwardResult g =
        ref::baseline_backward(c.dout_view(), c.q_view(), c.k_view(), c.v_view(), c.options(), dtype);
    for (double x : g.dq) EXPECT_TRUE(representable(x)) << x;
    for (double x : g.dv) EXPECT_TRUE(representable(x)) << x;
  }
}

}  // namespace
