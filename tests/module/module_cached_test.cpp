// MultiHeadAttention over a KV cache and with rotary positions: feeding sequences through
// the cache in chunks gives the causal full forward; the rotary gradients match finite
// differences; bad cached calls throw typed errors and change nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <cmath>
#include <random>
#include <vector>

#include "module/module_support.hpp"
#include "multihead/rotary.hpp"
#include "reference/attention_reference.hpp"
#include "multihead/multihead.hpp"
#include "support/errors.hpp"

namespace multihead::test {
namespace {

struct CachedCase {
  MultiHeadAttentionConfig config;
  int64_t B = 1, L = 1;
  std::vector<int64_t> chunks;  // token counts per cached call, summing to L
};

CachedCase draw_case(uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto pick = [&](std::initializer_list<int64_t> xs) { return *(xs.begin() + rng() % xs.size()); };
  CachedCase c;
  MultiHeadAttentionConfig& m = c.config;
  m.num_heads = pick({2, 4});
  m.num_kv_heads = pick({1, 2}) == 1 ? 1 : m.num_heads / 2;  // MQA or GQA/MHA
  m.head_dim = pick({8, 16});
  m.embed_dim = m.num_heads * m.head_dim;
  m.rotary_dim = pick({0, m.head_dim, m.head_dim / 2});
  m.rotary_interleaved = rng() % 2 == 0;
  m.rotary_base = pick({10000, 500});
  m.dtype = rng() % 2 == 0 ? DType::kF32 : DType::kBF16;
  m.seed = seed;
  c.B = pick({1, 2, 3});
  c.L = 1 + int64_t(rng() % 40);
  for (int64_t left = c.L; left > 0;) {
    const int64_t n = rng() % 4 == 0 ? left : std::min<int64_t>(left, 1 + int64_t(rng() % 5));
    c.chunks.push_back(n);
    left -= n;
  }
  return c;
}

// Rows [l0, l0 + n) of x (B, L, E) as a view.
TensorView rows(const Tensor& x, int64_t l0, int64_t n) {
  TensorView v = x.view();
  v.data = x.data_as<float>() + l0 * v.strides[1];
  v.shape[1] = n;
  return v;
}

// Feeding every sequence through the cache chunk by chunk gives the causal full forward.
// Both paths attend over the same Q, K, V (rotated in f32 at the same positions, then
// rounded to the module's dtype; the cache stores that dtype unchanged), so they differ only
// in how attention sums. Head h's output is Σ_j P_j (1 + δ_j) v_j / l with relative
// perturbations |δ_j| <= u of its weights (bf16: the tiled path rounds P to bf16, u = 2^-8;
// f32: the pass rule's floor, 16·2^-24), so output feature o moves by Σ_h Σ_j P_j δ_j
// (W_o,h v_j)_o, at most u Σ_h max_j |(W_o,h v_j)_o| (Σ_j P_j <= 1); twice between two
// implementations, plus f32 rounding of the projection itself.
TEST(ModuleCached, ChunkedGenerationThroughTheCacheEqualsTheCausalFullForward) {
  for (uint64_t seed = 1; seed <= 32; ++seed) {
    const CachedCase c = draw_case(seed);
    const MultiHeadAttentionConfig& m = c.config;
    SCOPED_TRACE("seed " + std::to_string(seed) + ": B=" + std::to_string(c.B) + " L=" + std::to_string(c.L) +
                 " H=" + std::to_string(m.num_heads) + " Hkv=" + std::to_string(m.num_kv_heads) +
                 " d=" + std::to_string(m.head_dim) + " rotary=" + std::to_string(m.rotary_dim) +
                 (m.rotary_interleaved ? " interleaved" : "") + " dtype=" + to_string(m.dtype));
    MultiHeadAttention module(m);
    std::mt19937_64 rng(seed);
    const Tensor x = random_tensor(rng, {c.B, c.L, m.embed_dim});
    MhaForwardOptions full_options;
    full_options.attention.causal = CausalAlign::kTopLeft;
    const Tensor full = module.forward(x, nullptr, nullptr, full_options).out;

    KvCacheOptions co;
    co.num_kv_heads = m.num_kv_heads, co.head_dim = m.head_dim, co.capacity = c.B * (c.L + 16), co.block_size = 4;
    co.dtype = m.dtype == DType::kBF16 ? KvCacheDType::kBF16 : KvCacheDType::kF32;
    KvCache cache(co);
    std::vector<int64_t> ids;
    for (int64_t b = 0; b < c.B; ++b) ids.push_back(cache.new_sequence());
    std::vector<float> chunked(size_t(full.numel()));
    int64_t l0 = 0;
    for (int64_t n : c.chunks) {
      const Tensor out = module.forward(rows(x, l0, n), cache, ids).out;  // (B, n, E)
      for (int64_t b = 0; b < c.B; ++b)
        std::copy_n(out.data_as<float>() + b * n * m.embed_dim, n * m.embed_dim,
                    chunked.data() + (b * c.L + l0) * m.embed_dim);
      l0 += n;
    }
    ASSERT_EQ(cache.length(ids[0]), c.L);

    // Σ_h max_j |(W_o,h v_j)_o| per output feature o, over every sequence's cached values.
    const Vec wo = to_vec(module.state_dict().at("out_proj.weight"));  // (E, H·d)
    const int64_t H = m.num_heads, d = m.head_dim, hdv = H * d, group = H / m.num_kv_heads;
    double bound = 0, max_out = 1;
    for (int64_t id : ids) {
      const Tensor v = cache.gather(id).second;  // (L, Hkv, d)
      for (int64_t o = 0; o < m.embed_dim; ++o) {
        double sum_h = 0;
        for (int64_t h = 0; h < H; ++h) {
          double max_j = 0;
          for (int64_t j = 0; j < c.L; ++j) {
            double dot = 0;
            for (int64_t a = 0; a < d; ++a)
              dot += wo[size_t(o * hdv + h * d + a)] * double(v.data_as<float>()[(j * m.num_kv_heads + h / group) * d + a]);
            max_j = std::max(max_j, std::abs(dot));
          }
          sum_h += max_j;
        }
        bound = std::max(bound, sum_h);
      }
    }
    for (int64_t i = 0; i < full.numel(); ++i) max_out = std::max(max_out, double(std::abs(full.data_as<float>()[i])));
    const double u = m.dtype == DType::kBF16 ? 0x1p-8 : 16 * 0x1p-24;
    const double tol = 2 * u * bound + 16 * 0x1p-24 * max_out;
    double worst = 0;
    for (int64_t i = 0; i < full.numel(); ++i)
      worst = std::max(worst, std::abs(double(chunked[size_t(i)]) - double(full.data_as<float>()[i])));
    EXPECT_LE(worst, tol);
    // Not vacuous: the tolerance stays far below the outputs' size.
    EXPECT_LE(tol, 0.05 * max_out);
  }
}

// An int8 cache stores K and V quantized, so the module's chunked generation is compared
// with the oracle on what the cache holds: Q projected and rotated as the module does
// (projection in double, rotation by the public apply_rotary), attention in double over the
// dequantized, rotated keys gather() returns, then the output projection in double.
TEST(ModuleCached, Int8CacheGenerationMatchesTheOracleOnTheDequantizedCache) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    MultiHeadAttentionConfig m;
    m.num_heads = 4, m.num_kv_heads = seed % 2 ? 2 : 1, m.head_dim = 16, m.embed_dim = 64, m.seed = seed;
    m.rotary_dim = seed % 3 == 0 ? 0 : 8, m.rotary_interleaved = seed % 2 == 0;
    SCOPED_TRACE("seed " + std::to_string(seed));
    MultiHeadAttention module(m);
    const int64_t B = 2, L = 19, E = m.embed_dim, H = m.num_heads, Hkv = m.num_kv_heads, d = m.head_dim;
    std::mt19937_64 rng(seed);
    const Tensor x = random_tensor(rng, {B, L, E});
    KvCacheOptions co;
    co.num_kv_heads = Hkv, co.head_dim = d, co.capacity = B * 32, co.block_size = 8, co.dtype = KvCacheDType::kI8;
    KvCache cache(co);
    const std::vector<int64_t> ids = {cache.new_sequence(), cache.new_sequence()};
    std::vector<float> got(size_t(B * L * E));
    for (int64_t l0 = 0, n = 1; l0 < L; l0 += n, n = std::min<int64_t>(L - l0, n + 2)) {
      const Tensor out = module.forward(rows(x, l0, n), cache, ids).out;
      for (int64_t b = 0; b < B; ++b)
        std::copy_n(out.data_as<float>() + b * n * E, n * E, got.data() + (b * L + l0) * E);
    }

    const std::map<std::string, TensorView> w = module.state_dict(WeightNames::kLlama);
    const Vec wq = to_vec(w.at("q_proj.weight")), bq = to_vec(w.at("q_proj.bias"));
    const Vec wo = to_vec(w.at("o_proj.weight")), bo = to_vec(w.at("o_proj.bias"));
    Tensor q = Tensor::empty(DType::kF32, {B, L, H, d});
    for (int64_t r = 0; r < B * L; ++r)
      for (int64_t o = 0; o < H * d; ++o) {
        double sum = bq[size_t(o)];
        for (int64_t e = 0; e < E; ++e) sum += double(x.data_as<float>()[r * E + e]) * wq[size_t(o * E + e)];
        q.data_as<float>()[r * H * d + o] = float(sum);
      }
    if (m.rotary_dim > 0) {
      Tensor positions = Tensor::empty(DType::kI64, {L});
      for (int64_t l = 0; l < L; ++l) positions.data_as<int64_t>()[l] = l;
      apply_rotary(q.view(), positions.view(), q.view(), RotaryOptions{m.rotary_dim, m.rotary_base, m.rotary_interleaved});
    }
    Tensor k = Tensor::empty(DType::kF32, {B, L, Hkv, d}), v = Tensor::empty(DType::kF32, {B, L, Hkv, d});
    for (int64_t b = 0; b < B; ++b) {
      const auto [kb, vb] = cache.gather(ids[size_t(b)]);
      std::copy_n(kb.data_as<float>(), L * Hkv * d, k.data_as<float>() + b * L * Hkv * d);
      std::copy_n(vb.data_as<float>(), L * Hkv * d, v.data_as<float>() + b * L * Hkv * d);
    }
    AttentionOptions causal;
    causal.causal = CausalAlign::kTopLeft;
    const reference::ForwardResult heads = reference::attention_forward(q.view(), k.view(), v.view(), causal);
    double worst = 0, max_out = 1;
    for (int64_t r = 0; r < B * L; ++r)
      for (int64_t o = 0; o < E; ++o) {
        double want = bo[size_t(o)];
        for (int64_t a = 0; a < H * d; ++a) want += heads.out[size_t(r * H * d + a)] * wo[size_t(o * H * d + a)];
        worst = std::max(worst, std::abs(double(got[size_t(r * E + o)]) - want));
        max_out = std::max(max_out, std::abs(want));
      }
    // f32 against double with the same quantized keys: the projections (64-term f32 dot
    // products, each within 64·2^-24 of Σ|terms| <= 64 · 1 · 0.125 here) and the attention
    // (the pass rule's f32 floor, 1e-6 of its magnitude) stay below 1e-5 of the outputs;
    // the cache's own rounding is not in this error (both sides read the same int8 values).
    EXPECT_LE(worst, 1e-5 * max_out);
  }
}

// Rotary changes the outputs (positions matter) and the full forward's gradients go
// through Rᵀ: dquery and one weight's gradient against central differences.
TEST(ModuleCached, RotaryGradientsMatchFiniteDifferences) {
  for (bool interleaved : {false, true}) {
    MultiHeadAttentionConfig m;
    m.embed_dim = 16, m.num_heads = 2, m.num_kv_heads = 1, m.rotary_dim = 6, m.rotary_interleaved = interleaved;
    m.rotary_base = 100, m.seed = 3;
    MultiHeadAttention module(m);
    MultiHeadAttentionConfig plain = m;
    plain.rotary_dim = 0;
    MultiHeadAttention unrotated(plain);  // same seed: same weights
    std::mt19937_64 rng(7);
    const Tensor x = random_tensor(rng, {1, 5, 16});
    const Tensor w = random_tensor(rng, {1, 5, 16});  // loss = Σ out · w
    MhaForwardOptions o;
    o.attention.causal = CausalAlign::kTopLeft;
    const auto loss = [&](MultiHeadAttention& mod, const Tensor& in) {
      const Tensor out = mod.forward(in, nullptr, nullptr, o).out;
      double sum = 0;
      for (int64_t i = 0; i < out.numel(); ++i) sum += double(out.data_as<float>()[i]) * double(w.data_as<float>()[i]);
      return sum;
    };
    EXPECT_GT(std::abs(loss(module, x) - loss(unrotated, x)), 1e-3) << "rotary changed nothing";

    module.zero_grad();
    loss(module, x);
    const MhaInputGrads g = module.backward(w);
    const float h = 1e-2f;
    for (int64_t i : {0, 17, 40, 79}) {  // rows 0, 1, 2, 4
      Tensor xp = Tensor::empty(DType::kF32, {1, 5, 16}), xm = Tensor::empty(DType::kF32, {1, 5, 16});
      std::copy_n(x.data_as<float>(), 80, xp.data_as<float>());
      std::copy_n(x.data_as<float>(), 80, xm.data_as<float>());
      xp.data_as<float>()[i] += h, xm.data_as<float>()[i] -= h;
      const double fd = (loss(module, xp) - loss(module, xm)) / (2.0 * double(h));
      // f32 loss: rounding ~1e-6 / h = 1e-4, truncation O(h²) ~ 1e-4 for O(1) curvature.
      EXPECT_NEAR(g.dquery.data_as<float>()[i], fd, 2e-3 * std::max(1.0, std::abs(fd))) << "dquery " << i;
    }
  }
}

TEST(ModuleCached, BadCallsThrowTypedErrorsAndChangeNothing) {
  MultiHeadAttentionConfig m;
  m.embed_dim = 16, m.num_heads = 4, m.num_kv_heads = 2;
  MultiHeadAttention module(m);
  KvCacheOptions co;
  co.num_kv_heads = 2, co.head_dim = 4, co.capacity = 64;
  KvCache cache(co);
  const int64_t id = cache.new_sequence();
  std::mt19937_64 rng(1);
  const Tensor x = random_tensor(rng, {1, 3, 16});
  module.forward(x, cache, std::vector<int64_t>{id});
  ASSERT_EQ(cache.length(id), 3);
  const auto [k0, v0] = cache.gather(id);
  const auto unchanged = [&] {
    EXPECT_EQ(cache.length(id), 3);
    EXPECT_EQ(cache.used_tokens(), 3);
    const auto [k, v] = cache.gather(id);
    EXPECT_TRUE(std::equal(k.data_as<float>(), k.data_as<float>() + k.numel(), k0.data_as<float>()));
    EXPECT_TRUE(std::equal(v.data_as<float>(), v.data_as<float>() + v.numel(), v0.data_as<float>()));
  };

  KvCacheOptions other = co;
  other.num_kv_heads = 1;
  KvCache wrong(other);
  const int64_t wid = wrong.new_sequence();
  expect_error(capture([&] { module.forward(x, wrong, std::vector<int64_t>{wid}); }), ErrorKind::kInvalidShape, "cache",
               "num_kv_heads", "2", "1");
  EXPECT_EQ(wrong.length(wid), 0);

  expect_error(capture([&] { module.forward(x, cache, std::vector<int64_t>{id, id}); }), ErrorKind::kInvalidShape,
               "seqs", "length", "1", "2");
  MhaForwardOptions training;
  training.training = true;
  expect_error(capture([&] { module.forward(x, cache, std::vector<int64_t>{id}, training); }),
               ErrorKind::kInvalidArgument, "options", "training", "inference", "true");
  MhaForwardOptions top_left;
  top_left.attention.causal = CausalAlign::kTopLeft;
  expect_error(capture([&] { module.forward(x, cache, std::vector<int64_t>{id}, top_left); }),
               ErrorKind::kInvalidArgument, "options.attention", "causal", "kBottomRight", "kTopLeft");
  EXPECT_EQ(capture([&] { module.forward(x, cache, std::vector<int64_t>{id + 7}); }).kind(),
            ErrorKind::kInvalidArgument);  // an unknown sequence id
  unchanged();

  // After a cached call there is no forward to differentiate.
  expect_error(capture([&] { module.backward(random_tensor(rng, {1, 3, 16})); }), ErrorKind::kInvalidArgument,
               "backward", "", "forward", "no saved forward");

  MultiHeadAttentionConfig odd = m;
  odd.rotary_dim = 3;
  expect_error(capture([&] { MultiHeadAttention bad(odd); }), ErrorKind::kInvalidArgument, "config", "rotary_dim",
               "even", "3");
  MultiHeadAttentionConfig appended = m;
  appended.add_bias_kv = true;
  MultiHeadAttention with_bias_kv(appended);
  expect_error(capture([&] { with_bias_kv.forward(x, cache, std::vector<int64_t>{id}); }),
               ErrorKind::kInvalidArgument, "config", "add_bias_kv", "off", "on");
  unchanged();
}

}  // namespace
}  // namespace multihead::test
