// Attention over the paged KV cache against the double oracle run on the cache's
// dequantized gather(): cache dtypes, block sizes, GQA, random lengths, decode (Lq = 1,
// split keys) and chunked prefill (Lq > 1), score options, the k_new append path and
// rotary; NaN garbage in the pool; bitwise equality across thread counts; and the
// token-by-token property (decoding through the cache = one causal forward).
#include "attention/cached_support.hpp"

namespace multihead {
namespace {

using cached_test::CachedCase;
using cached_test::expect_matches_oracle;
using cached_test::Fixture;

constexpr KvCacheDType kDtypes[] = {KvCacheDType::kF32, KvCacheDType::kBF16, KvCacheDType::kI8};

TEST(CachedAttention, EveryDtypeBlockSizeAndGroupMatchesOracle) {
  uint64_t seed = 100;
  for (KvCacheDType dtype : kDtypes)
    for (int64_t block : {1, 16, 256})
      for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}, {3, 1}})
        for (int64_t Lq : {1, 5}) {
          CachedCase c;
          c.dtype = dtype, c.block_size = block, c.H = H, c.Hkv = Hkv, c.Lq = Lq, c.seed = seed++;
          c.lengths = {37, 5, 130};
          expect_matches_oracle(c);
        }
}

// Random shapes and options, each printed with its seed.
TEST(CachedAttention, RandomCasesMatchOracle) {
  for (uint64_t seed = 1; seed <= 120; ++seed) {
    std::mt19937_64 rng(seed * 7919);
    const auto pick = [&](std::initializer_list<int64_t> xs) { return *(xs.begin() + rng() % xs.size()); };
    CachedCase c;
    c.seed = seed;
    c.dtype = kDtypes[rng() % 3];
    c.block_size = pick({1, 2, 8, 16, 32, 64, 128, 256});
    c.Hkv = pick({1, 2, 3});
    c.H = c.Hkv * pick({1, 2, 4});
    c.D = pick({1, 8, 17, 32, 64, 80, 128});
    c.Dv = rng() % 3 == 0 ? pick({3, 16, 48}) : c.D;
    c.Lq = pick({1, 1, 2, 4, 5, 17, 70});
    c.q_dtype = rng() % 3 == 0 ? DType::kBF16 : DType::kF32;
    c.lengths.clear();
    const int64_t B = pick({1, 2, 3});
    for (int64_t b = 0; b < B; ++b) c.lengths.push_back(int64_t(rng() % 300) + (rng() % 2 ? c.Lq : 0));
    c.causal = rng() % 4 != 0;
    if (rng() % 3 == 0) c.window = {int64_t(rng() % 60), rng() % 2 ? -1 : int64_t(rng() % 5)};
    if (rng() % 3 == 0) c.softcap = 5.0f + float(rng() % 20);
    if (rng() % 4 == 0) c.scale = 0.05f + 0.01f * float(rng() % 20);
    c.alibi = rng() % 3 == 0;
    c.sinks = rng() % 3 == 0;
    c.append = rng() % 2 == 0;
    if (rng() % 3 == 0 && c.D >= 2) {
      c.rotary_dim = 2 * (1 + int64_t(rng() % uint64_t(c.D / 2)));
      c.rotary_interleaved = rng() % 2;
    }
    if (c.rotary_dim > 0 && !c.append)
      for (int64_t& l : c.lengths) l = std::max(l, c.Lq);
    expect_matches_oracle(c);
  }
}

TEST(CachedAttention, ScoreOptionsMatchOracle) {
  for (KvCacheDType dtype : kDtypes) {
    CachedCase c;
    c.dtype = dtype, c.H = 8, c.Hkv = 2, c.D = 64, c.Dv = 48, c.Lq = 6, c.lengths = {200, 77, 6};
    c.seed = 7;
    c.window = {30, -1};
    expect_matches_oracle(c);
    c.causal = false, c.window = {20, 3};
    expect_matches_oracle(c);
    c.window = {}, c.causal = true, c.alibi = true, c.sinks = true;
    expect_matches_oracle(c);
    c.alibi = false, c.softcap = 8.0f, c.scale = 0.3f;
    expect_matches_oracle(c);
    c.softcap = 0.0f, c.scale = std::nullopt, c.causal = false, c.sinks = true;
    expect_matches_oracle(c);
  }
}

// Decode calls with few heads split their keys (chunks of >= 512 keys, merged by LSE).
TEST(CachedAttention, DecodeWithSplitKeysMatchesOracle) {
  uint64_t seed = 300;
  for (KvCacheDType dtype : kDtypes)
    for (int64_t Lq : {1, 3}) {
      CachedCase c;
      c.dtype = dtype, c.H = 4, c.Hkv = 1, c.D = 128, c.Dv = 128, c.Lq = Lq, c.block_size = 16;
      c.lengths = {3000, 1100};
      c.seed = seed++;
      c.sinks = Lq == 3;
      c.window = Lq == 3 ? Window{1500, -1} : Window{};
      expect_matches_oracle(c);
    }
}

TEST(CachedAttention, AppendAndRotaryMatchOracle) {
  uint64_t seed = 400;
  for (KvCacheDType dtype : kDtypes)
    for (DType q_dtype : {DType::kF32, DType::kBF16})
      for (bool interleaved : {false, true}) {
        CachedCase c;
        c.dtype = dtype, c.q_dtype = q_dtype, c.H = 6, c.Hkv = 3, c.D = 32, c.Dv = 32, c.Lq = 4;
        c.lengths = {0, 19, 64};
        c.append = true, c.rotary_dim = interleaved ? 16 : 32, c.rotary_interleaved = interleaved;
        c.seed = seed++;
        expect_matches_oracle(c);
      }
}

// Garbage (NaN) in never-written slots and released blocks changes no output bit.
TEST(CachedAttention, GarbageInUnusedBlocksChangesNothing) {
  for (KvCacheDType dtype : kDtypes) {
    CachedCase c;
    c.dtype = dtype, c.block_size = 16, c.H = 4, c.Hkv = 2, c.D = 40, c.Lq = 3, c.lengths = {45, 3, 17};
    c.window = {10, -1}, c.seed = 11;
    Fixture with_nan(c);
    c.nan_garbage = false;
    Fixture with_zeros(c);
    const AttentionResult a = with_nan.run(), b = with_zeros.run();
    EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.nbytes()), 0) << c.describe();
    EXPECT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.nbytes()), 0) << c.describe();
  }
}

TEST(CachedAttention, BitwiseIdenticalForAnyThreadCount) {
  const int saved = get_num_threads();
  for (KvCacheDType dtype : kDtypes)
    for (int64_t Lq : {1, 9}) {
      CachedCase c;
      c.dtype = dtype, c.H = 4, c.Hkv = 2, c.D = 64, c.Lq = Lq, c.lengths = {2100, 700}, c.seed = 21;
      c.sinks = true;
      std::vector<AttentionResult> results;
      for (int threads : {1, 2, 3, 5}) {
        set_num_threads(threads);
        Fixture f(c);
        results.push_back(f.run());
      }
      for (size_t t = 1; t < results.size(); ++t) {
        EXPECT_EQ(std::memcmp(results[0].out.data(), results[t].out.data(), results[0].out.nbytes()), 0)
            << c.describe() << " run " << t;
        EXPECT_EQ(std::memcmp(results[0].lse.data(), results[t].lse.data(), results[0].lse.nbytes()), 0)
            << c.describe() << " run " << t;
      }
    }
  set_num_threads(saved);
}

// Feeding a sequence through the cache, token by token (decode) or in chunks (chunked
// prefill), gives what one causal forward over the whole sequence gives (pass rule; the
// oracle runs on the keys as stored).
TEST(CachedAttention, IncrementalThroughCacheMatchesOneCausalForward) {
  for (KvCacheDType dtype : kDtypes)
    for (bool chunks : {false, true}) {
      const uint64_t seed = 500 + uint64_t(dtype) * 2 + chunks;
      SCOPED_TRACE("seed=" + std::to_string(seed) + " dtype=" + to_string(dtype) + " chunks=" + std::to_string(chunks));
      std::mt19937_64 rng(seed);
      const int64_t L = 150, H = 4, Hkv = 2, D = 32;
      KvCache cache(KvCacheOptions{.num_kv_heads = Hkv, .head_dim = D, .capacity = 256, .block_size = 16, .dtype = dtype});
      cached_test::fill_bytes(cache, 0xff);
      const int64_t id = cache.new_sequence();
      Tensor q = cached_test::random_tensor(DType::kF32, {1, L, H, D}, rng);
      Tensor k = cached_test::random_tensor(DType::kF32, {1, L, Hkv, D}, rng);
      Tensor v = cached_test::random_tensor(DType::kF32, {1, L, Hkv, D}, rng);
      Tensor out = Tensor::empty(DType::kF32, {1, L, H, D});
      AttentionOptions o;
      o.causal = CausalAlign::kBottomRight;
      const int64_t seqs[] = {id};
      for (int64_t i = 0; i < L;) {
        const int64_t n = chunks ? std::min<int64_t>(L - i, 1 + int64_t(rng() % 40)) : 1;
        const auto rows = [&](const Tensor& t) {
          TensorView view = t.view();
          view.data = static_cast<float*>(t.data()) + i * view.strides[1];
          view.shape[1] = n;
          return view;
        };
        CachedAttentionInputs in;
        in.k_new = rows(k), in.v_new = rows(v);
        attention_forward_cached(rows(q), cache, seqs, ForwardOutputs{rows(out)}, o, in);
        i += n;
      }
      auto [ks, vs] = cache.gather(id);
      const auto oracle = reference::attention_forward(q.view(), cached_test::as_batch1(ks), cached_test::as_batch1(vs), o);
      const auto base = reference::baseline_forward(q.view(), cached_test::as_batch1(ks), cached_test::as_batch1(vs), o,
                                                    DType::kF32);
      const auto cmp = reference::compare("out", out.view(), oracle.out, base.out, DType::kF32, reference::Pass::kForward);
      EXPECT_TRUE(cmp.pass()) << cmp.to_string();
      if (dtype == KvCacheDType::kF32) {  // an f32 cache stores k and v exactly: the full forward itself
        const AttentionResult full = attention_forward(q.view(), k.view(), v.view(), o);
        std::vector<double> ours(size_t(out.numel())), theirs(size_t(out.numel()));
        for (int64_t e = 0; e < out.numel(); ++e) ours[size_t(e)] = out.data_as<float>()[e];
        for (int64_t e = 0; e < out.numel(); ++e) theirs[size_t(e)] = full.out.data_as<float>()[e];
        const auto cf = reference::compare("out vs full forward", ours, oracle.out, base.out, DType::kF32,
                                           reference::Pass::kForward);
        const auto cf2 = reference::compare("full forward", theirs, oracle.out, base.out, DType::kF32,
                                            reference::Pass::kForward);
        EXPECT_TRUE(cf.pass() && cf2.pass()) << cf.to_string() << "\n" << cf2.to_string();
      }
    }
}

}  // namespace
}  // namespace multihead
