// The paged KV cache: capacity to the token, copy-on-write sharing, the quantization error
// bounds and the layout kernels will read, non-finite values, and failing calls that name
// their argument and change nothing. The random operation sequences against a plain model
// are in kv_cache_model_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "module/kv_cache_support.hpp"
#include "multihead/error.hpp"
#include "multihead/kv_cache.hpp"
#include "multihead/tensor.hpp"

namespace multihead {
namespace {

using kv_cache_test::cache_hash;
using kv_cache_test::expected_row;
using kv_cache_test::Input;
using kv_cache_test::kAllDtypes;
using kv_cache_test::make_input;
using kv_cache_test::same_bits;

Input dense(std::mt19937_64& rng, int64_t n, int64_t Hkv, int64_t w) { return make_input(rng, n, Hkv, w, false, false); }

uint64_t full_hash(const KvCache& c, const std::vector<int64_t>& ids) { return cache_hash(c, ids); }

TEST(KvCache, FillsToCapacityExactlyThenRejectsOneMoreToken) {
  for (KvCacheDType dtype : kAllDtypes) {
    SCOPED_TRACE(to_string(dtype));
    std::mt19937_64 rng(5);
    KvCache c({.num_kv_heads = 2, .head_dim = 8, .v_head_dim = 4, .capacity = 100, .block_size = 16, .dtype = dtype});
    EXPECT_EQ(c.capacity(), 112);  // 100 rounded up to 7 blocks of 16
    EXPECT_EQ(c.num_blocks(), 7);
    const int64_t a = c.new_sequence(), b = c.new_sequence();
    c.append(a, dense(rng, 37, 2, 8).view, dense(rng, 37, 2, 4).view);  // 3 blocks
    c.append(b, dense(rng, 64, 2, 8).view, dense(rng, 64, 2, 4).view);  // 4 blocks
    c.append(a, dense(rng, 11, 2, 8).view, dense(rng, 11, 2, 4).view);  // fills a's third block
    EXPECT_EQ(c.used_tokens(), 112);
    EXPECT_EQ(c.num_free_blocks(), 0);
    const uint64_t before = full_hash(c, {a, b});
    for (int64_t id : {a, b}) {
      try {
        c.append(id, dense(rng, 1, 2, 8).view, dense(rng, 1, 2, 4).view);
        ADD_FAILURE() << "no error";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kCapacityExceeded) << e.what();
      }
      EXPECT_EQ(full_hash(c, {a, b}), before);
    }
    EXPECT_EQ(c.length(a), 48);
    c.truncate(a, 32);  // frees a whole block
    EXPECT_EQ(c.num_free_blocks(), 1);
    c.append(a, dense(rng, 16, 2, 8).view, dense(rng, 16, 2, 4).view);
    EXPECT_EQ(c.num_free_blocks(), 0);
  }
}

TEST(KvCache, ForkSharesFullBlocksAndCopiesAPartialLastBlockOnAppend) {
  for (KvCacheDType dtype : kAllDtypes) {
    SCOPED_TRACE(to_string(dtype));
    std::mt19937_64 rng(9);
    KvCache c({.num_kv_heads = 2, .head_dim = 3, .capacity = 64, .block_size = 4, .dtype = dtype});
    const int64_t parent = c.new_sequence();
    c.append(parent, dense(rng, 10, 2, 3).view, dense(rng, 10, 2, 3).view);  // 2 full blocks + 2 tokens
    const auto [pk, pv] = c.gather(parent);
    EXPECT_EQ(c.num_free_blocks(), 16 - 3);
    const int64_t child = c.fork(parent);
    EXPECT_EQ(c.num_free_blocks(), 16 - 3);  // nothing copied
    EXPECT_EQ(c.used_tokens(), 20);
    c.append(child, dense(rng, 1, 2, 3).view, dense(rng, 1, 2, 3).view);
    EXPECT_EQ(c.num_free_blocks(), 16 - 4);  // the partial last block was copied
    const auto pt = c.block_table(parent);
    const std::vector<int32_t> parent_table(pt.begin(), pt.end());
    const auto ct = c.block_table(child);
    ASSERT_EQ(ct.size(), 3u);
    EXPECT_EQ(ct[0], parent_table[0]);  // full blocks stay shared
    EXPECT_EQ(ct[1], parent_table[1]);
    EXPECT_NE(ct[2], parent_table[2]);
    // The parent now owns its last block alone: appending into it copies nothing.
    c.append(parent, dense(rng, 1, 2, 3).view, dense(rng, 1, 2, 3).view);
    EXPECT_EQ(c.num_free_blocks(), 16 - 4);
    const auto [pk2, pv2] = c.gather(parent);
    EXPECT_TRUE(same_bits(pk2.data_as<float>(), pk.data_as<float>(), size_t(pk.numel())));
    EXPECT_TRUE(same_bits(pv2.data_as<float>(), pv.data_as<float>(), size_t(pv.numel())));
    // Many child tokens never change the parent's first 10.
    c.append(child, dense(rng, 20, 2, 3).view, dense(rng, 20, 2, 3).view);
    const auto [pk3, pv3] = c.gather(parent);
    EXPECT_TRUE(same_bits(pk3.data_as<float>(), pk.data_as<float>(), size_t(pk.numel())));
    // A fork of a block-aligned sequence copies nothing on append.
    c.truncate(parent, 8);
    const int64_t aligned = c.fork(parent);
    const int64_t free_before = c.num_free_blocks();
    c.append(aligned, dense(rng, 1, 2, 3).view, dense(rng, 1, 2, 3).view);
    EXPECT_EQ(c.num_free_blocks(), free_before - 1);  // one new block, no copy
    c.release(aligned);
    c.release(child);
    c.release(parent);
    EXPECT_EQ(c.num_free_blocks(), 16);
  }
}

TEST(KvCache, CopyOnWriteCopyCountsAgainstCapacity) {
  std::mt19937_64 rng(3);
  KvCache c({.num_kv_heads = 1, .head_dim = 2, .capacity = 8, .block_size = 4});
  const int64_t a = c.new_sequence();
  c.append(a, dense(rng, 6, 1, 2).view, dense(rng, 6, 1, 2).view);
  const int64_t b = c.fork(a);
  const int64_t filler = c.new_sequence();
  EXPECT_EQ(c.num_free_blocks(), 0);
  const uint64_t before = full_hash(c, {a, b, filler});
  // One token fits a's partial block, but the block is shared: the copy needs a block.
  EXPECT_THROW(c.append(b, dense(rng, 1, 1, 2).view, dense(rng, 1, 1, 2).view), Error);
  EXPECT_EQ(full_hash(c, {a, b, filler}), before);
  c.release(a);  // now b owns it alone
  c.append(b, dense(rng, 2, 1, 2).view, dense(rng, 2, 1, 2).view);
  EXPECT_EQ(c.length(b), 8);
}

// int8: one f32 scale per (token, kv head); per element |x - scale·q| <= scale/2.
// Why: scale = max|x|/127 rounded to f32, so |x|/scale <= 127·(1 + 2^-24); q is x/scale
// (in double, relative error 2^-53) rounded to the nearest integer and clamped to
// [-127, 127], which moves it by at most 1/2 (or, at the clamp, by at most 127·2^-24 <
// 1/2). Multiplying by scale: |x - scale·q| <= scale/2, plus at most 2^-46·scale from the
// double division. gather's f32 value is fl(scale·q) (q has 8 bits: the product is the
// correctly rounded one). bf16: round to nearest even keeps 8 significant bits, so the
// error is at most half an ulp = 2^-8 relative to |x| (normal numbers). Not 2^-9: x =
// 1 + 2^-8 is a tie that rounds to 1, an error of 2^-8 / (1 + 2^-8) relative.
TEST(KvCache, QuantizationErrorBounds) {
  std::mt19937_64 rng(11);
  for (KvCacheDType dtype : {KvCacheDType::kI8, KvCacheDType::kBF16}) {
    SCOPED_TRACE(to_string(dtype));
    KvCache c({.num_kv_heads = 3, .head_dim = 40, .v_head_dim = 24, .capacity = 256, .block_size = 8, .dtype = dtype});
    const int64_t id = c.new_sequence();
    const Input k = make_input(rng, 50, 3, 40, false, true), v = make_input(rng, 50, 3, 24, false, false);
    c.append(id, k.view, v.view);
    const auto [gk, gv] = c.gather(id);
    const KvCacheLayout l = c.layout();
    const auto table = c.block_table(id);
    for (int which = 0; which < 2; ++which) {
      const Input& in = which ? v : k;
      const int64_t w = which ? 24 : 40;
      const float* g = (which ? gv : gk).data_as<float>();
      for (int64_t t = 0; t < 50; ++t)
        for (int64_t h = 0; h < 3; ++h) {
          const int64_t b = table[size_t(t / 8)], slot = t % 8;
          double scale = 0;
          const int8_t* q = nullptr;
          if (dtype == KvCacheDType::kI8) {
            scale = (which ? l.v_scales : l.k_scales)[b * l.scales_block_stride + h * 8 + slot];
            q = reinterpret_cast<const int8_t*>((which ? l.v_blocks : l.k_blocks) +
                                                b * (which ? l.v_block_bytes : l.k_block_bytes)) +
                (h * 8 + slot) * w;
          }
          double maxabs = 0;
          for (int64_t d = 0; d < w; ++d) maxabs = std::max(maxabs, std::fabs(double(in.values[size_t((t * 3 + h) * w + d)])));
          for (int64_t d = 0; d < w; ++d) {
            const double x = in.values[size_t((t * 3 + h) * w + d)];
            const float got = g[(t * 3 + h) * w + d];
            if (dtype == KvCacheDType::kI8) {
              ASSERT_EQ(scale, double(float(maxabs / 127.0)));
              ASSERT_LE(std::fabs(x - scale * q[d]), scale / 2 * (1 + 0x1p-40)) << "t " << t << " h " << h << " d " << d;
              ASSERT_EQ(got, float(scale) * float(q[d]));
              if (maxabs == 0) {
                ASSERT_EQ(got, 0.0f);
              }
            } else {
              ASSERT_LE(std::fabs(x - got), std::fabs(x) * 0x1p-8) << "t " << t << " h " << h << " d " << d;
            }
          }
        }
    }
  }
}

// What the header promises a kernel: reading through layout() and block_table() gives
// what gather() gives, for every dtype, with padding in the blocks (odd D).
TEST(KvCache, LayoutDescribesWhereEveryElementLies) {
  for (KvCacheDType dtype : kAllDtypes) {
    SCOPED_TRACE(to_string(dtype));
    std::mt19937_64 rng(21);
    const int64_t Hkv = 3, D = 5, Dv = 7, bs = 4;
    KvCache c({.num_kv_heads = Hkv, .head_dim = D, .v_head_dim = Dv, .capacity = 40, .block_size = bs, .dtype = dtype});
    const KvCacheLayout l = c.layout();
    EXPECT_EQ(l.k_block_bytes % 64, 0);
    EXPECT_EQ(l.v_block_bytes % 64, 0);
    EXPECT_GE(l.k_block_bytes, int64_t(Hkv * bs * D * element_size(dtype)));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(l.k_blocks) % 64, 0u);
    EXPECT_EQ(l.num_blocks, 10);
    EXPECT_EQ(l.k_scales != nullptr, dtype == KvCacheDType::kI8);
    const int64_t a = c.new_sequence(), b = c.new_sequence();
    c.append(a, dense(rng, 3, Hkv, D).view, dense(rng, 3, Hkv, Dv).view);
    c.append(b, dense(rng, 9, Hkv, D).view, dense(rng, 9, Hkv, Dv).view);
    c.append(a, dense(rng, 6, Hkv, D).view, dense(rng, 6, Hkv, Dv).view);  // interleaved blocks
    for (int64_t id : {a, b}) {
      const auto [gk, gv] = c.gather(id);
      const auto table = c.block_table(id);
      ASSERT_EQ(int64_t(table.size()), (c.length(id) + bs - 1) / bs);
      for (int which = 0; which < 2; ++which) {
        const int64_t w = which ? Dv : D;
        const std::byte* base = which ? l.v_blocks : l.k_blocks;
        const int64_t block_bytes = which ? l.v_block_bytes : l.k_block_bytes;
        const float* scales = which ? l.v_scales : l.k_scales;
        const float* g = (which ? gv : gk).data_as<float>();
        for (int64_t t = 0; t < c.length(id); ++t)
          for (int64_t h = 0; h < Hkv; ++h)
            for (int64_t d = 0; d < w; ++d) {
              const int32_t blk = table[size_t(t / bs)];
              const int64_t slot = t % bs, e = (h * bs + slot) * w + d;
              const std::byte* p = base + blk * block_bytes;
              float x = 0;
              if (dtype == KvCacheDType::kF32) std::memcpy(&x, p + e * 4, 4);
              if (dtype == KvCacheDType::kBF16) {
                bf16 y;
                std::memcpy(&y, p + e * 2, 2);
                x = bf16_to_float(y);
              }
              if (dtype == KvCacheDType::kI8)
                x = scales[blk * l.scales_block_stride + h * bs + slot] * float(reinterpret_cast<const int8_t*>(p)[e]);
              ASSERT_EQ(x, g[(t * Hkv + h) * w + d]) << "id " << id << " t " << t << " h " << h << " d " << d;
            }
      }
    }
  }
}

TEST(KvCache, NonFiniteValuesAreStoredFaithfullyInFloatCachesAndRejectedInInt8) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<float> k = {1.0f, nan, -inf, 2.0f}, v = {inf, 0.5f};
  const TensorView kv = TensorView::of(k.data(), {2, 1, 2}), vv = TensorView::of(v.data(), {2, 1, 1});
  for (KvCacheDType dtype : {KvCacheDType::kF32, KvCacheDType::kBF16}) {
    KvCache c({.num_kv_heads = 1, .head_dim = 2, .v_head_dim = 1, .capacity = 4, .dtype = dtype});
    const int64_t id = c.new_sequence();
    c.append(id, kv, vv);
    const auto [gk, gv] = c.gather(id);
    EXPECT_TRUE(std::isnan(gk.data_as<float>()[1]));
    EXPECT_EQ(gk.data_as<float>()[2], -inf);
    EXPECT_EQ(gv.data_as<float>()[0], inf);
  }
  KvCache c({.num_kv_heads = 1, .head_dim = 2, .v_head_dim = 1, .capacity = 4, .dtype = KvCacheDType::kI8});
  const int64_t id = c.new_sequence();
  const uint64_t before = full_hash(c, {id});
  try {
    c.append(id, kv, vv);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_EQ(e.tensor(), "k");
    EXPECT_NE(e.dim().find("token 0"), std::string::npos) << e.what();
  }
  std::vector<float> finite_k = {1, 2, 3, 4};
  try {
    c.append(id, TensorView::of(finite_k.data(), {2, 1, 2}), vv);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.tensor(), "v");
    EXPECT_NE(e.dim().find("token 0"), std::string::npos) << e.what();
  }
  EXPECT_EQ(full_hash(c, {id}), before);
  EXPECT_EQ(c.length(id), 0);
}

// Each bad argument: its kind, the argument named, expected and got; nothing changed.
TEST(KvCache, ErrorsNameTheArgumentAndChangeNothing) {
  std::mt19937_64 rng(1);
  KvCache c({.num_kv_heads = 2, .head_dim = 4, .v_head_dim = 3, .capacity = 32, .block_size = 8});
  const int64_t id = c.new_sequence();
  c.append(id, dense(rng, 5, 2, 4).view, dense(rng, 5, 2, 3).view);
  const uint64_t before = full_hash(c, {id});
  struct Expect {
    ErrorKind kind;
    std::string tensor, dim, expected_part;
  };
  auto check = [&](const std::function<void()>& f, const Expect& want) {
    SCOPED_TRACE(want.tensor + " " + want.dim);
    try {
      f();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), want.kind) << e.what();
      EXPECT_EQ(e.tensor(), want.tensor) << e.what();
      EXPECT_EQ(e.dim(), want.dim) << e.what();
      EXPECT_NE(e.expected().find(want.expected_part), std::string::npos) << e.what();
    }
    EXPECT_EQ(full_hash(c, {id}), before);
  };
  Input k = dense(rng, 2, 2, 4), v = dense(rng, 2, 2, 3);
  TensorView bad = k.view;
  bad.shape[2] = 3;
  check([&] { c.append(id, bad, v.view); }, {ErrorKind::kInvalidShape, "k", "dim 2 (D)", "4 (the cache's head_dim)"});
  bad = k.view;
  bad.shape[1] = 1;
  check([&] { c.append(id, bad, v.view); }, {ErrorKind::kInvalidShape, "k", "dim 1 (Hkv)", "2"});
  bad = v.view;
  bad.shape[2] = 4;
  check([&] { c.append(id, k.view, bad); }, {ErrorKind::kInvalidShape, "v", "dim 2 (Dv)", "3 (the cache's v_head_dim)"});
  const Input v1 = dense(rng, 1, 2, 3);
  check([&] { c.append(id, k.view, v1.view); }, {ErrorKind::kInvalidShape, "v", "dim 0 (n)", "2 (k's n)"});
  bad = k.view;
  bad.rank = 4;
  bad.shape[3] = 1;
  check([&] { c.append(id, bad, v.view); }, {ErrorKind::kInvalidShape, "k", "rank", "3 (n, Hkv, D)"});
  bad = k.view;
  bad.dtype = DType::kF16;
  check([&] { c.append(id, bad, v.view); }, {ErrorKind::kInvalidArgument, "k", "dtype", "float32 or bfloat16"});
  bad = v.view;
  bad.strides[2] = 2;
  check([&] { c.append(id, k.view, bad); }, {ErrorKind::kInvalidArgument, "v", "stride of last dim", "1"});
  bad = v.view;
  bad.data = nullptr;
  check([&] { c.append(id, k.view, bad); }, {ErrorKind::kInvalidArgument, "v", "data", "non-null"});
  check([&] { c.truncate(id, 6); }, {ErrorKind::kInvalidArgument, "n", "", "[0, 5]"});
  check([&] { c.truncate(id, -1); }, {ErrorKind::kInvalidArgument, "n", "", "[0, 5]"});
  check([&] { c.append(id + 1, k.view, v.view); }, {ErrorKind::kInvalidArgument, "id", "", "live sequence"});
  check([&] { c.fork(-3); }, {ErrorKind::kInvalidArgument, "id", "", "live sequence"});
  check([&] { c.append(id, dense(rng, 28, 2, 4).view, dense(rng, 28, 2, 3).view); },
        {ErrorKind::kCapacityExceeded, "KvCache", "blocks", "at most 3 free blocks"});
  // Zero tokens is a valid no-op.
  c.append(id, dense(rng, 0, 2, 4).view, dense(rng, 0, 2, 3).view);
  EXPECT_EQ(full_hash(c, {id}), before);

  auto bad_options = [](KvCacheOptions o, const std::string& name) {
    SCOPED_TRACE(name);
    try {
      KvCache c2(o);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.tensor(), name) << e.what();
    }
  };
  const KvCacheOptions good{.num_kv_heads = 1, .head_dim = 4};
  KvCacheOptions o = good;
  o.block_size = 3, bad_options(o, "block_size");
  o.block_size = 512, bad_options(o, "block_size");
  o.block_size = 0, bad_options(o, "block_size");
  o = good, o.capacity = 0, bad_options(o, "capacity");
  o = good, o.num_kv_heads = 0, bad_options(o, "num_kv_heads");
  o = good, o.head_dim = 0, bad_options(o, "head_dim");
  o = good, o.v_head_dim = 0, bad_options(o, "v_head_dim");
  o = good, o.capacity = int64_t(1) << 62, bad_options(o, "capacity");  // > 2^31 blocks
  for (int64_t bs : {1, 2, 4, 8, 16, 32, 64, 128, 256}) {
    o = good, o.block_size = bs;
    EXPECT_NO_THROW(KvCache{o}) << bs;
  }
}

TEST(KvCache, ResetFreesEverythingAndInvalidatesIds) {
  std::mt19937_64 rng(2);
  KvCache c({.num_kv_heads = 1, .head_dim = 4, .capacity = 64, .block_size = 16, .dtype = KvCacheDType::kBF16});
  const int64_t a = c.new_sequence();
  c.append(a, dense(rng, 40, 1, 4).view, dense(rng, 40, 1, 4).view);
  const int64_t b = c.fork(a);
  EXPECT_EQ(c.num_free_blocks(), 1);
  c.reset();
  EXPECT_EQ(c.num_free_blocks(), 4);
  EXPECT_EQ(c.num_sequences(), 0);
  EXPECT_EQ(c.used_tokens(), 0);
  EXPECT_THROW((void)c.length(a), Error);
  EXPECT_THROW((void)c.length(b), Error);
  const int64_t d = c.new_sequence();
  EXPECT_NE(d, a);
  EXPECT_NE(d, b);
  c.append(d, dense(rng, 64, 1, 4).view, dense(rng, 64, 1, 4).view);
  EXPECT_EQ(c.num_free_blocks(), 0);
  EXPECT_EQ(c.nbytes(), size_t(2 * 4 * 16 * 4 * 2));  // K and V: 4 blocks of 16 tokens x 4 bf16
}

TEST(KvCache, Bf16InputIsStoredWithoutRoundingTwice) {
  std::mt19937_64 rng(4);
  const Input k = make_input(rng, 5, 2, 6, true, true), v = make_input(rng, 5, 2, 6, true, false);
  for (KvCacheDType dtype : kAllDtypes) {
    KvCache c({.num_kv_heads = 2, .head_dim = 6, .capacity = 16, .block_size = 2, .dtype = dtype});
    const int64_t id = c.new_sequence();
    c.append(id, k.view, v.view);
    const auto [gk, gv] = c.gather(id);
    for (int64_t i = 0; i < 5 * 2; ++i) {
      const std::vector<float> row(k.values.begin() + i * 6, k.values.begin() + (i + 1) * 6);
      const auto want = expected_row(dtype, row);
      EXPECT_TRUE(same_bits(gk.data_as<float>() + i * 6, want.data(), 6)) << to_string(dtype) << " row " << i;
    }
  }
}

}  // namespace
}  // namespace multihead
