// NaN and inf in the inputs (docs/CONTRACT.md, "Non-finite inputs"): keys a query cannot
// see (window, causal range, key padding, a False mask entry, a bias at or below its
// dtype's lowest value) never affect it, whatever their K and V hold; NaN in what a query
// sees makes its row NaN, never an empty row (out 0, lse -inf). Forward on the decode and
// tiled paths, f32 and bf16, and the backward; every ISA (ctest runs under each).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "multihead/multihead.hpp"

namespace multihead {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// (B, L, heads, dim) of dtype with N(0, 1) values.
Tensor random_tensor(DType dtype, std::initializer_list<int64_t> shape, std::mt19937& rng) {
  Tensor t = Tensor::empty(dtype, shape);
  std::normal_distribution<float> normal;
  for (int64_t e = 0; e < t.numel(); ++e) {
    if (dtype == DType::kF32) {
      t.data_as<float>()[e] = normal(rng);
    } else {
      t.data_as<bf16>()[e] = float_to_bf16(normal(rng));
    }
  }
  return t;
}

void set(Tensor& t, int64_t e, float x) {
  if (t.dtype() == DType::kF32) {
    t.data_as<float>()[e] = x;
  } else {
    t.data_as<bf16>()[e] = float_to_bf16(x);
  }
}

// Element (b, l, h, d) of a contiguous (B, L, H, D) tensor.
int64_t at(const Tensor& t, int64_t b, int64_t l, int64_t h, int64_t d) {
  return ((b * t.size(1) + l) * t.size(2) + h) * t.size(3) + d;
}

float value(const Tensor& t, int64_t e) {
  return t.dtype() == DType::kF32 ? t.data_as<float>()[e] : bf16_to_float(t.data_as<bf16>()[e]);
}

// Each element's bits (f32 or bf16).
std::vector<uint32_t> bits(const Tensor& t) {
  std::vector<uint32_t> out(size_t(t.numel()));
  for (int64_t e = 0; e < t.numel(); ++e) out[size_t(e)] = std::bit_cast<uint32_t>(value(t, e));
  return out;
}

// "" when a and b hold the same bits, else where they first differ.
std::string first_difference(const Tensor& a, const Tensor& b) {
  const std::vector<uint32_t> x = bits(a), y = bits(b);
  for (size_t e = 0; e < x.size(); ++e)
    if (x[e] != y[e])
      return "element " + std::to_string(e) + ": " + std::to_string(std::bit_cast<float>(x[e])) + " vs " +
             std::to_string(std::bit_cast<float>(y[e]));
  return "";
}

bool row_nonfinite(const Tensor& out, int64_t b, int64_t i, int64_t h) {
  const int64_t Dv = out.size(3);
  for (int64_t a = 0; a < Dv; ++a)
    if (!std::isfinite(value(out, at(out, b, i, h, a)))) return true;
  return false;
}

struct Shape4 {
  int64_t Lq, Lk, H, Hkv, D;
};

// Decode (Lq <= 4, split and unsplit keys) and tiled shapes, GQA and MHA.
std::vector<Shape4> shapes() { return {{1, 40, 4, 2, 16}, {3, 150, 2, 2, 32}, {1, 1100, 2, 1, 16}, {70, 90, 4, 2, 16}}; }

std::string describe(const Shape4& s, DType dtype) {
  return "Lq " + std::to_string(s.Lq) + " Lk " + std::to_string(s.Lk) + " H " + std::to_string(s.H) + " Hkv " +
         std::to_string(s.Hkv) + " D " + std::to_string(s.D) + " " + to_string(dtype);
}

// Options under which key 0 of batch 0 is seen by no query (key 1 of batch 1 is padding).
struct Exclusion {
  const char* name;
  AttentionOptions options;
};

std::vector<Exclusion> exclusions_of_key0(const Shape4& s, Tensor* mask, Tensor* seqlens, Tensor* bias) {
  std::vector<Exclusion> out;
  AttentionOptions window;
  window.causal = CausalAlign::kBottomRight;
  window.window = {s.Lk - s.Lq - 1, 0};  // query i sees keys [i + Lk - Lq - left, i + Lk - Lq]: never key 0
  out.push_back({"window", window});
  *mask = Tensor::empty(DType::kBool, {2, 1, 1, s.Lk});
  for (int64_t e = 0; e < mask->numel(); ++e) mask->data_as<bool>()[e] = e % s.Lk != 0;
  AttentionOptions masked;
  masked.mask = mask->view();
  out.push_back({"mask", masked});
  *bias = Tensor::zeros(DType::kF32, {2, 1, 1, s.Lk});
  for (int64_t b = 0; b < 2; ++b) bias->data_as<float>()[b * s.Lk] = -kInf;
  AttentionOptions biased;
  biased.bias = bias->view();
  out.push_back({"bias -inf", biased});
  *seqlens = Tensor::empty(DType::kI32, {2});
  seqlens->data_as<int32_t>()[0] = int32_t(s.Lk), seqlens->data_as<int32_t>()[1] = int32_t(s.Lk - 1);
  AttentionOptions padded;  // batch 1's last key is padding: poisoned below through key_padded
  padded.seqlens_k = seqlens->view();
  out.push_back({"padding", padded});
  return out;
}

// NaN in K and +inf in V of keys no query sees: out and lse keep their bits.
TEST(NonfiniteInputs, NanKeysAndInfValuesNoQueryCanSeeChangeNoBit) {
  std::mt19937 rng(11);
  for (const Shape4& s : shapes())
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const Tensor q = random_tensor(dtype, {2, s.Lq, s.H, s.D}, rng);
      const Tensor k = random_tensor(dtype, {2, s.Lk, s.Hkv, s.D}, rng);
      const Tensor v = random_tensor(dtype, {2, s.Lk, s.Hkv, s.D}, rng);
      Tensor mask, seqlens, bias;
      for (const Exclusion& x : exclusions_of_key0(s, &mask, &seqlens, &bias)) {
        const AttentionResult clean = attention_forward(q.view(), k.view(), v.view(), x.options);
        Tensor k_bad = random_tensor(dtype, {2, s.Lk, s.Hkv, s.D}, rng), v_bad = random_tensor(dtype, {2, s.Lk, s.Hkv, s.D}, rng);
        std::memcpy(k_bad.data(), k.data(), k.nbytes());
        std::memcpy(v_bad.data(), v.data(), v.nbytes());
        const bool padding = std::string(x.name) == "padding";
        for (int64_t h = 0; h < s.Hkv; ++h) {
          const int64_t b = padding ? 1 : 0, j = padding ? s.Lk - 1 : 0;
          set(k_bad, at(k_bad, b, j, h, 0), kNaN);
          set(v_bad, at(v_bad, b, j, h, s.D - 1), kInf);
          if (!padding) {
            set(k_bad, at(k_bad, 1, 0, h, 1), -kInf);
            set(v_bad, at(v_bad, 1, 0, h, 0), kNaN);
          }
        }
        const AttentionResult got = attention_forward(q.view(), k_bad.view(), v_bad.view(), x.options);
        EXPECT_EQ(first_difference(got.out, clean.out), "") << x.name << ": out, " << describe(s, dtype);
        EXPECT_EQ(first_difference(got.lse, clean.lse), "") << x.name << ": lse, " << describe(s, dtype);
      }
    }
}

// A key that some queries see and others do not (the causal diagonal): +inf in its V makes
// exactly the rows that see it non-finite. This leaked as 0 · inf = NaN into the rest.
TEST(NonfiniteInputs, InfValueOfAKeyOnTheCausalDiagonalReachesOnlyTheQueriesThatSeeIt) {
  std::mt19937 rng(12);
  for (const Shape4& s : {Shape4{3, 3, 2, 1, 16}, Shape4{70, 70, 2, 2, 16}, Shape4{4, 130, 4, 2, 32}})
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const Tensor q = random_tensor(dtype, {1, s.Lq, s.H, s.D}, rng);
      const Tensor k = random_tensor(dtype, {1, s.Lk, s.Hkv, s.D}, rng);
      Tensor v = random_tensor(dtype, {1, s.Lk, s.Hkv, s.D}, rng);
      const int64_t j = s.Lk - s.Lq + 1;  // seen by queries 1.. (bottom-right causal)
      for (int64_t h = 0; h < s.Hkv; ++h) set(v, at(v, 0, j, h, 2), kInf);
      AttentionOptions o;
      o.causal = CausalAlign::kBottomRight;
      const AttentionResult r = attention_forward(q.view(), k.view(), v.view(), o);
      for (int64_t i = 0; i < s.Lq; ++i)
        for (int64_t h = 0; h < s.H; ++h)
          EXPECT_EQ(row_nonfinite(r.out, 0, i, h), i >= 1) << describe(s, dtype) << ": query " << i << " head " << h;
    }
}

// A NaN in one query row: that row's out and lse are NaN (it was out 0 and lse -inf, the
// answer for a row with no allowed key), the other rows keep their bits.
TEST(NonfiniteInputs, NanQueryRowIsNanNotReportedAsFullyMasked) {
  std::mt19937 rng(13);
  for (const Shape4& s : shapes())
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      Tensor q = random_tensor(dtype, {1, s.Lq, s.H, s.D}, rng);
      const Tensor k = random_tensor(dtype, {1, s.Lk, s.Hkv, s.D}, rng);
      const Tensor v = random_tensor(dtype, {1, s.Lk, s.Hkv, s.D}, rng);
      const AttentionResult clean = attention_forward(q.view(), k.view(), v.view());
      const int64_t i = s.Lq - 1, h = s.H - 1;
      set(q, at(q, 0, i, h, 0), kNaN);
      const AttentionResult got = attention_forward(q.view(), k.view(), v.view());
      for (int64_t a = 0; a < s.D; ++a) EXPECT_TRUE(std::isnan(value(got.out, at(got.out, 0, i, h, a)))) << describe(s, dtype);
      EXPECT_TRUE(std::isnan(got.lse.data_as<float>()[h * s.Lq + i])) << describe(s, dtype);
      std::vector<uint32_t> want = bits(clean.out), have = bits(got.out);
      for (int64_t a = 0; a < s.D; ++a) want[size_t(at(got.out, 0, i, h, a))] = have[size_t(at(got.out, 0, i, h, a))];
      EXPECT_EQ(have, want) << describe(s, dtype) << ": other rows changed";
    }
}

// The backward with NaN in K and inf in V of keys no query sees: every gradient keeps its
// bits, the poisoned keys' dk and dv 0 (dq was NaN through 0 · NaN at window edges).
TEST(NonfiniteInputs, BackwardNanKeysNoQueryCanSeeLeaveGradientsFinite) {
  std::mt19937 rng(14);
  for (const Shape4& s : shapes()) {
    const DType dtype = DType::kF32;
    const Tensor q = random_tensor(dtype, {2, s.Lq, s.H, s.D}, rng);
    const Tensor k = random_tensor(dtype, {2, s.Lk, s.Hkv, s.D}, rng);
    const Tensor v = random_tensor(dtype, {2, s.Lk, s.Hkv, s.D}, rng);
    const Tensor dout = random_tensor(dtype, {2, s.Lq, s.H, s.D}, rng);
    Tensor mask, seqlens, bias;
    for (const Exclusion& x : exclusions_of_key0(s, &mask, &seqlens, &bias)) {
      if (std::string(x.name) == "padding") continue;
      const auto grads = [&](const Tensor& kk, const Tensor& vv) {
        const AttentionResult r = attention_forward(q.view(), kk.view(), vv.view(), x.options);
        std::vector<Tensor> g;
        for (const Tensor* t : {&q, &k, &v}) g.push_back(Tensor::empty(DType::kF32, {t->size(0), t->size(1), t->size(2), t->size(3)}));
        std::optional<TensorView> dbias;
        Tensor db;
        if (x.options.bias) db = Tensor::empty(DType::kF32, {2, 1, 1, s.Lk}), dbias = db.view();
        attention_backward(dout.view(), q.view(), kk.view(), vv.view(), r.out.view(), r.lse.view(),
                           BackwardOutputs{g[0].view(), g[1].view(), g[2].view(), dbias, std::nullopt}, x.options);
        return g;
      };
      const std::vector<Tensor> clean = grads(k, v);
      Tensor k_bad = Tensor::empty(dtype, {2, s.Lk, s.Hkv, s.D}), v_bad = Tensor::empty(dtype, {2, s.Lk, s.Hkv, s.D});
      std::memcpy(k_bad.data(), k.data(), k.nbytes());
      std::memcpy(v_bad.data(), v.data(), v.nbytes());
      for (int64_t h = 0; h < s.Hkv; ++h) set(k_bad, at(k_bad, 0, 0, h, 0), kNaN), set(v_bad, at(v_bad, 0, 0, h, 1), kInf);
      const std::vector<Tensor> got = grads(k_bad, v_bad);
      for (size_t t = 0; t < 3; ++t)
        EXPECT_EQ(first_difference(got[t], clean[t]), "") << x.name << " " << describe(s, dtype) << ": gradient " << t;
      for (int64_t h = 0; h < s.Hkv; ++h)
        for (int64_t d = 0; d < s.D; ++d) {
          EXPECT_EQ(got[1].data_as<float>()[at(got[1], 0, 0, h, d)], 0.0f) << x.name << " " << describe(s, dtype);
          EXPECT_EQ(got[2].data_as<float>()[at(got[2], 0, 0, h, d)], 0.0f) << x.name << " " << describe(s, dtype);
        }
    }
  }
}

// The backward with a NaN query row: its dq row is NaN (it was finite), and so are dk and
// dv of every key it sees; the other dq rows stay finite.
TEST(NonfiniteInputs, BackwardNanQueryRowGivesNanGradientsWhereTheExactOnesAre) {
  std::mt19937 rng(15);
  for (const Shape4& s : shapes()) {
    Tensor q = random_tensor(DType::kF32, {1, s.Lq, s.H, s.D}, rng);
    const Tensor k = random_tensor(DType::kF32, {1, s.Lk, s.Hkv, s.D}, rng);
    const Tensor v = random_tensor(DType::kF32, {1, s.Lk, s.Hkv, s.D}, rng);
    const Tensor dout = random_tensor(DType::kF32, {1, s.Lq, s.H, s.D}, rng);
    const int64_t i = 0, h = 0;
    set(q, at(q, 0, i, h, 1), kNaN);
    const AttentionResult r = attention_forward(q.view(), k.view(), v.view());
    Tensor dq = Tensor::empty(DType::kF32, {1, s.Lq, s.H, s.D}), dk = Tensor::empty(DType::kF32, {1, s.Lk, s.Hkv, s.D}),
           dv = Tensor::empty(DType::kF32, {1, s.Lk, s.Hkv, s.D});
    attention_backward(dout.view(), q.view(), k.view(), v.view(), r.out.view(), r.lse.view(),
                       BackwardOutputs{dq.view(), dk.view(), dv.view(), std::nullopt, std::nullopt});
    EXPECT_TRUE(row_nonfinite(dq, 0, i, h)) << describe(s, DType::kF32);
    for (int64_t j = 0; j < s.Lk; ++j) {
      EXPECT_TRUE(row_nonfinite(dk, 0, j, 0)) << describe(s, DType::kF32) << " key " << j;
      EXPECT_TRUE(row_nonfinite(dv, 0, j, 0)) << describe(s, DType::kF32) << " key " << j;
    }
    for (int64_t i2 = 0; i2 < s.Lq; ++i2)
      for (int64_t h2 = 0; h2 < s.H; ++h2)
        if (i2 != i || h2 != h) {
          EXPECT_FALSE(row_nonfinite(dq, 0, i2, h2)) << describe(s, DType::kF32);
        }
  }
}

// The same over the paged KV cache (f32 and bf16 blocks hold what was appended): NaN and
// inf in tokens a query cannot see (its window) change no bit of out and lse, on the
// decode path (Lq 1, keys split or not) and the tiled one (Lq 70).
TEST(NonfiniteInputs, NanAndInfInCachedTokensOutsideTheWindowChangeNoBit) {
  std::mt19937 rng(16);
  for (KvCacheDType storage : {KvCacheDType::kF32, KvCacheDType::kBF16})
    for (const Shape4& s : {Shape4{1, 200, 4, 2, 16}, Shape4{1, 1500, 2, 1, 32}, Shape4{70, 200, 4, 2, 16}}) {
      const Tensor q = random_tensor(DType::kF32, {1, s.Lq, s.H, s.D}, rng);
      const Tensor k = random_tensor(DType::kF32, {s.Lk, s.Hkv, s.D}, rng);
      const Tensor v = random_tensor(DType::kF32, {s.Lk, s.Hkv, s.D}, rng);
      Tensor k_bad = Tensor::empty(DType::kF32, {s.Lk, s.Hkv, s.D}), v_bad = Tensor::empty(DType::kF32, {s.Lk, s.Hkv, s.D});
      std::memcpy(k_bad.data(), k.data(), k.nbytes());
      std::memcpy(v_bad.data(), v.data(), v.nbytes());
      for (int64_t j : {int64_t(0), int64_t(5)})  // tokens before every query's window
        for (int64_t h = 0; h < s.Hkv; ++h) {
          k_bad.data_as<float>()[(j * s.Hkv + h) * s.D] = kNaN;
          v_bad.data_as<float>()[(j * s.Hkv + h) * s.D + 1] = kInf;
        }
      AttentionOptions o;
      o.causal = CausalAlign::kBottomRight;
      o.window = {s.Lk - s.Lq - 10, 0};  // query i sees tokens from i + 10 on
      const auto run = [&](const Tensor& kk, const Tensor& vv) {
        KvCacheOptions co;
        co.num_kv_heads = s.Hkv, co.head_dim = s.D, co.capacity = 2048, co.dtype = storage;
        KvCache cache(co);
        const int64_t id = cache.new_sequence();
        cache.append(id, kk.view(), vv.view());
        return attention_forward_cached(q.view(), cache, std::vector<int64_t>{id}, o);
      };
      const AttentionResult clean = run(k, v), got = run(k_bad, v_bad);
      EXPECT_EQ(first_difference(got.out, clean.out), "") << to_string(storage) << " " << describe(s, DType::kF32);
      EXPECT_EQ(first_difference(got.lse, clean.lse), "") << to_string(storage) << " " << describe(s, DType::kF32);
    }
}

}  // namespace
}  // namespace multihead
