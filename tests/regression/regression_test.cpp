// One test per fixed bug, named for the symptom.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "multihead/multihead.hpp"
#include "reference/attention_reference.hpp"

namespace multihead {
namespace {

Tensor random_tensor(std::initializer_list<int64_t> shape, std::mt19937& rng) {
  Tensor t = Tensor::empty(DType::kF32, shape);
  std::normal_distribution<float> nd;
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = nd(rng);
  return t;
}

// probs without lse read the (absent) lse through a null pointer.
TEST(Regression, CrashWhenProbsRequestedWithoutLse) {
  std::mt19937 rng(1);
  Tensor q = random_tensor({1, 5, 2, 8}, rng), k = random_tensor({1, 7, 2, 8}, rng), v = random_tensor({1, 7, 2, 8}, rng);
  Tensor out = Tensor::empty(DType::kF32, {1, 5, 2, 8}), probs = Tensor::empty(DType::kF32, {1, 2, 5, 7});
  attention_forward(q, k, v, ForwardOutputs{out.view(), std::nullopt, probs.view()});
  for (int64_t r = 0; r < 2 * 5; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < 7; ++j) sum += probs.data_as<float>()[r * 7 + j];
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

// A window lying wholly past the last key made the key range start past k_len, so
// the kernels read key rows that do not exist (NaN in dq of fully masked rows).
TEST(Regression, NanInDqWhenWindowStartsPastLastKey) {
  std::mt19937 rng(2);
  Tensor q = random_tensor({1, 8, 3, 16}, rng), k = random_tensor({1, 4, 3, 16}, rng),
         v = random_tensor({1, 4, 3, 11}, rng), dout = random_tensor({1, 8, 3, 11}, rng);
  AttentionOptions o;
  o.causal = CausalAlign::kTopLeft;
  o.window = {0, 3};
  o.softcap = 1.47f;
  AttentionResult r = attention_forward(q, k, v, o);
  AttentionGrads g = attention_backward(dout, q, k, v, r.out, r.lse, o);
  // Rows 4..7 see key j = i only (left = 0), which is past Lk = 4: fully masked.
  for (int64_t i = 4; i < 8; ++i)
    for (int64_t h = 0; h < 3; ++h) {
      EXPECT_EQ(r.lse.data_as<float>()[h * 8 + i], -INFINITY);
      for (int64_t d = 0; d < 16; ++d) EXPECT_EQ(g.dq.data_as<float>()[(i * 3 + h) * 16 + d], 0.0f);
    }
  for (int64_t e = 0; e < g.dq.numel(); ++e) ASSERT_FALSE(std::isnan(g.dq.data_as<float>()[e]));
  for (int64_t e = 0; e < g.dk.numel(); ++e) ASSERT_FALSE(std::isnan(g.dk.data_as<float>()[e]));
}

// A query with zero heads beside key/value heads (H = 0, Hkv = 2: H % Hkv == 0) planned
// H / Hkv = 0 heads per group and divided by it: SIGFPE. The forward now writes nothing (its
// outputs have no elements), the backward zeroes dk and dv (sums over no query head), and
// the cached form still appends the new tokens.
TEST(Regression, ZeroQueryHeadsBesideKvHeadsCrashedWithSigfpe) {
  std::mt19937 rng(7);
  const Tensor q = Tensor::empty(DType::kF32, {1, 3, 0, 8}), k = random_tensor({1, 3, 2, 8}, rng),
               v = random_tensor({1, 3, 2, 8}, rng);
  for (CausalAlign causal : {CausalAlign::kNone, CausalAlign::kBottomRight}) {
    AttentionOptions o;
    o.causal = causal;
    const AttentionResult r = attention_forward(q.view(), k.view(), v.view(), o);
    EXPECT_EQ(r.out.numel(), 0);
    EXPECT_EQ(r.lse.numel(), 0);

    Tensor dk = Tensor::empty(DType::kF32, {1, 3, 2, 8}), dv = Tensor::empty(DType::kF32, {1, 3, 2, 8});
    for (const Tensor* t : {&dk, &dv}) std::fill_n(t->data_as<float>(), t->numel(), NAN);
    const Tensor dq = Tensor::empty(DType::kF32, {1, 3, 0, 8});
    attention_backward(dq.view(), q.view(), k.view(), v.view(), r.out.view(), r.lse.view(),
                       BackwardOutputs{dq.view(), dk.view(), dv.view(), std::nullopt, std::nullopt}, o);
    for (const Tensor* t : {&dk, &dv})
      for (int64_t e = 0; e < t->numel(); ++e) ASSERT_EQ(t->data_as<float>()[e], 0.0f);
  }

  KvCacheOptions co;
  co.num_kv_heads = 2, co.head_dim = 8, co.capacity = 16;
  KvCache cache(co);
  const int64_t id = cache.new_sequence();
  const Tensor q1 = Tensor::empty(DType::kF32, {1, 1, 0, 8}), k1 = random_tensor({1, 1, 2, 8}, rng),
               v1 = random_tensor({1, 1, 2, 8}, rng);
  CachedAttentionInputs in;
  in.k_new = k1.view(), in.v_new = v1.view();
  const AttentionResult r = attention_forward_cached(q1.view(), cache, std::vector<int64_t>{id}, {}, in);
  EXPECT_EQ(r.out.numel(), 0);
  EXPECT_EQ(cache.length(id), 1);
}

// window = (2^63 - 1, 2^63 - 1) masked every key instead of none: the kernels' bound
// diag + right + 1 overflowed (and the oracle's diag - left). A window at least Lq + Lk wide
// is now unbounded in the plan, and the oracle compares distances. Same bits as no window,
// dense and over the cache, with and without causal; the oracle agrees.
TEST(Regression, HugeWindowMaskedEveryKeyInsteadOfNone) {
  std::mt19937 rng(11);
  const Tensor q = random_tensor({2, 5, 4, 16}, rng), k = random_tensor({2, 9, 2, 16}, rng),
               v = random_tensor({2, 9, 2, 16}, rng);
  const int64_t huge = std::numeric_limits<int64_t>::max();
  for (CausalAlign causal : {CausalAlign::kNone, CausalAlign::kBottomRight, CausalAlign::kTopLeft}) {
    for (Window w : {Window{huge, huge}, Window{huge, -1}, Window{-1, huge}, Window{14, 14}}) {
      AttentionOptions none, wide;
      none.causal = wide.causal = causal;
      wide.window = w;
      const AttentionResult a = attention_forward(q.view(), k.view(), v.view(), none);
      const AttentionResult b = attention_forward(q.view(), k.view(), v.view(), wide);
      ASSERT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.nbytes())) << w.left << " " << w.right;
      ASSERT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.nbytes()));
      const reference::ForwardResult ra = reference::attention_forward(q.view(), k.view(), v.view(), none);
      const reference::ForwardResult rb = reference::attention_forward(q.view(), k.view(), v.view(), wide);
      ASSERT_EQ(ra.out, rb.out);
    }
  }
  KvCacheOptions co;
  co.num_kv_heads = 2, co.head_dim = 16, co.capacity = 32;
  KvCache cache(co);
  const int64_t id = cache.new_sequence();
  const Tensor k1 = random_tensor({9, 2, 16}, rng), v1 = random_tensor({9, 2, 16}, rng), q1 = random_tensor({1, 3, 4, 16}, rng);
  cache.append(id, k1.view(), v1.view());
  AttentionOptions none, wide;
  wide.window = {huge, huge};
  const AttentionResult a = attention_forward_cached(q1.view(), cache, std::vector<int64_t>{id}, none);
  const AttentionResult b = attention_forward_cached(q1.view(), cache, std::vector<int64_t>{id}, wide);
  EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.nbytes()));
}

// bf16 with logits near 1e6 (|q|, |k| ~ 1e3): the output was exact but dV was off by more
// than its own size, because the backward re-scored the tile with f32 products of the
// scaled queries while the forward summed bf16 pairs on vdpbf16ps: a relative difference of
// 1e-7 in a score of 1e6 moves P = exp(S - lse) completely. The backward now recomputes the
// forward's scores bit for bit (the same pairs, products and scale). Checked against the
// oracle at logits up to ~1e6, f32 and bf16, under every ISA.
TEST(Regression, Bf16GradientsWrongAtLargeLogitsBecauseTheBackwardRescoredDifferently) {
  for (DType dtype : {DType::kF32, DType::kBF16})
    for (float magnitude : {1.0f, 1e3f, 3e3f}) {
      std::mt19937 rng(5);
      const int64_t B = 1, L = 33, H = 2, D = 16;
      Tensor q = random_tensor({B, L, H, D}, rng), k = random_tensor({B, L, H, D}, rng);
      const Tensor v = random_tensor({B, L, H, D}, rng), dout = random_tensor({B, L, H, D}, rng);
      for (Tensor* t : {&q, &k})
        for (int64_t e = 0; e < t->numel(); ++e) t->data_as<float>()[e] *= magnitude;
      const auto as = [&](const Tensor& t) {  // the inputs in the case's dtype
        Tensor r = Tensor::empty(dtype, {B, L, H, D});
        for (int64_t e = 0; e < t.numel(); ++e)
          if (dtype == DType::kBF16) r.data_as<bf16>()[e] = float_to_bf16(t.data_as<float>()[e]);
          else r.data_as<float>()[e] = t.data_as<float>()[e];
        return r;
      };
      const Tensor qd = as(q), kd = as(k), vd = as(v);
      AttentionOptions o;
      o.causal = CausalAlign::kTopLeft;
      Tensor out = Tensor::empty(DType::kF32, {B, L, H, D}), lse = Tensor::empty(DType::kF32, {B, H, L});
      attention_forward(qd.view(), kd.view(), vd.view(), ForwardOutputs{out.view(), lse.view(), std::nullopt}, o);
      Tensor dq = Tensor::empty(DType::kF32, {B, L, H, D}), dk = Tensor::empty(DType::kF32, {B, L, H, D}),
             dv = Tensor::empty(DType::kF32, {B, L, H, D});
      attention_backward(dout.view(), qd.view(), kd.view(), vd.view(), out.view(), lse.view(),
                         BackwardOutputs{dq.view(), dk.view(), dv.view(), std::nullopt, std::nullopt}, o);
      const reference::BackwardResult want = reference::attention_backward(dout.view(), qd.view(), kd.view(), vd.view(), o);
      double worst = 0, size = 1;
      for (int64_t e = 0; e < dv.numel(); ++e) {
        worst = std::max(worst, std::abs(double(dv.data_as<float>()[e]) - want.dv[size_t(e)]));
        size = std::max(size, std::abs(want.dv[size_t(e)]));
      }
      // dV = Pᵀ dO: with P right it is off by f32 (bf16: P rounded to bf16, 2^-8) rounding of
      // L-term sums; the defect was an error larger than dV itself.
      EXPECT_LE(worst, (dtype == DType::kBF16 ? 1e-2 : 1e-5) * size) << to_string(dtype) << " magnitude " << magnitude;
    }
}

}  // namespace
// Found by fuzz/validator_fuzz: a view whose extent is exactly 2^63 - 1 elements (a dim of
// size 2 with a stride of 2^63 - 1 - (Lk - 1)) made check_layout compute extent + 1 before
// its overflow check (signed overflow; a 1-byte bool mask then passed). CapacityExceeded.
TEST(Regression, ViewWhoseExtentIsInt64MaxOverflowedTheLayoutCheck) {
  std::mt19937 rng(8);
  const Tensor q = random_tensor({2, 3, 2, 8}, rng), k = random_tensor({2, 5, 2, 8}, rng), v = random_tensor({2, 5, 2, 8}, rng);
  bool keep[5] = {true, true, true, true, true};
  TensorView mask = TensorView::of(keep, {1, 1, 1, 5});
  mask.shape[0] = 2;
  mask.strides[0] = std::numeric_limits<int64_t>::max() - 4;  // extent (2-1)·stride + 4 = 2^63 - 1
  AttentionOptions o;
  o.mask = mask;
  try {
    attention_forward(q.view(), k.view(), v.view(), o);
    ADD_FAILURE() << "accepted a mask whose extent does not fit";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCapacityExceeded) << e.what();
  }
}

// Found by fuzz/validator_fuzz: a rank-0 (scalar) bias, which broadcasts like any other,
// made the backward's non-finite scan read shape[rank - 1] at index -1. A NaN scalar bias is
// now seen (every gradient the rows see is NaN), a finite one changes nothing.
TEST(Regression, ScalarBiasReadOutOfBoundsInTheBackwardsNonFiniteScan) {
  std::mt19937 rng(9);
  const Tensor q = random_tensor({1, 6, 2, 8}, rng), k = random_tensor({1, 7, 2, 8}, rng), v = random_tensor({1, 7, 2, 8}, rng),
               dout = random_tensor({1, 6, 2, 8}, rng);
  for (float value : {0.25f, std::numeric_limits<float>::quiet_NaN()}) {
    float b = value;
    AttentionOptions o;
    o.bias = TensorView::of(&b, {});
    const AttentionResult r = attention_forward(q.view(), k.view(), v.view(), o);
    Tensor dq = Tensor::empty(DType::kF32, {1, 6, 2, 8}), dk = Tensor::empty(DType::kF32, {1, 7, 2, 8}),
           dv = Tensor::empty(DType::kF32, {1, 7, 2, 8});
    attention_backward(dout.view(), q.view(), k.view(), v.view(), r.out.view(), r.lse.view(),
                       BackwardOutputs{dq.view(), dk.view(), dv.view(), std::nullopt, std::nullopt}, o);
    for (int64_t e = 0; e < dq.numel(); ++e)
      ASSERT_EQ(std::isnan(dq.data_as<float>()[e]), std::isnan(value)) << "bias " << value << ", dq element " << e;
  }
}

}  // namespace multihead
