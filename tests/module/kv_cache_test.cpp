// The paged KV cache: random operation sequences against a plain model (rows per
// sequence, quantized as the cache must), failing calls that must change nothing (a hash
// of the whole pool and the bookkeeping), capacity to the token, copy-on-write sharing,
// the quantization error bounds and the layout kernels will read.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "multihead/error.hpp"
#include "multihead/kv_cache.hpp"
#include "multihead/tensor.hpp"

namespace multihead {
namespace {

constexpr KvCacheDType kAllDtypes[] = {KvCacheDType::kF32, KvCacheDType::kBF16, KvCacheDType::kI8};

// What the cache must give back for a row of f32 values (the values of the input view).
std::vector<float> expected_row(KvCacheDType dtype, const std::vector<float>& x) {
  std::vector<float> r(x.size());
  switch (dtype) {
    case KvCacheDType::kF32: r = x; break;
    case KvCacheDType::kBF16:
      for (size_t i = 0; i < x.size(); ++i) r[i] = bf16_to_float(float_to_bf16(x[i]));
      break;
    case KvCacheDType::kI8: {
      float maxabs = 0;
      for (float v : x) maxabs = std::max(maxabs, std::fabs(v));
      float scale = float(double(maxabs) / 127.0);
      if (maxabs > 0 && scale == 0) scale = std::numeric_limits<float>::denorm_min();
      for (size_t i = 0; i < x.size(); ++i) {
        const double q = scale == 0 ? 0.0 : std::clamp(std::nearbyint(double(x[i]) / scale), -127.0, 127.0);
        r[i] = scale * float(int8_t(q));  // int8 has no -0: a -0.0 quotient reads back as +0
      }
      break;
    }
  }
  return r;
}

// Input rows for append: n tokens of (Hkv, width) in a buffer with padded strides, as f32
// or bf16; `values` holds what the view reads (bf16-widened for bf16 inputs).
struct Input {
  std::vector<float> f32;
  std::vector<bf16> b16;
  std::vector<float> values;  // (n, Hkv, width) dense
  TensorView view;
};

Input make_input(std::mt19937_64& rng, int64_t n, int64_t Hkv, int64_t width, bool bf16_input, bool strided,
                 double special_prob = 0.0) {
  Input in;
  const int64_t s1 = width + (strided ? 3 : 0), s0 = Hkv * s1 + (strided ? 5 : 0);
  const size_t size = size_t(std::max<int64_t>(n * s0, 1));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> buf(size, -777.0f);
  in.values.resize(size_t(n * Hkv * width));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < Hkv; ++h) {
      const float row_scale = u(rng) < 0.1 ? 0.0f : std::exp(float(u(rng) * 8 - 4));  // some all-zero rows
      for (int64_t d = 0; d < width; ++d) {
        float x = normal(rng) * row_scale;
        if (u(rng) < special_prob) {
          const float specials[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                                    -std::numeric_limits<float>::infinity()};
          x = specials[size_t(u(rng) * 3) % 3];
        }
        buf[size_t(i * s0 + h * s1 + d)] = x;
      }
    }
  if (bf16_input) {
    in.b16.resize(size);
    for (size_t j = 0; j < size; ++j) in.b16[j] = float_to_bf16(buf[j]);
    in.view.data = in.b16.data();
    in.view.dtype = DType::kBF16;
  } else {
    in.f32 = buf;
    in.view.data = in.f32.data();
    in.view.dtype = DType::kF32;
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t d = 0; d < width; ++d) {
        const float x = buf[size_t(i * s0 + h * s1 + d)];
        in.values[size_t((i * Hkv + h) * width + d)] = bf16_input ? bf16_to_float(float_to_bf16(x)) : x;
      }
  in.view.rank = 3;
  in.view.shape = {n, Hkv, width, 0};
  in.view.strides = {s0, s1, 1, 0};
  return in;
}

bool row_finite(const std::vector<float>& x) {
  for (float v : x)
    if (!std::isfinite(v)) return false;
  return true;
}

uint64_t fnv(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// The whole pool and everything observable about the bookkeeping.
uint64_t cache_hash(const KvCache& c, const std::vector<int64_t>& ids) {
  uint64_t h = 1469598103934665603ull;
  h = fnv(h, c.layout().k_blocks, c.nbytes());
  const int64_t counts[] = {c.num_free_blocks(), c.used_tokens(), c.num_sequences()};
  h = fnv(h, counts, sizeof counts);
  for (int64_t id : ids) {
    const int64_t len = c.length(id);
    h = fnv(h, &id, 8);
    h = fnv(h, &len, 8);
    const auto t = c.block_table(id);
    h = fnv(h, t.data(), t.size() * 4);
  }
  return h;
}

bool same_bits(const float* a, const float* b, size_t n) { return n == 0 || std::memcmp(a, b, n * 4) == 0; }

// The model: per sequence its expected rows and its blocks (model handles with reference
// counts), enough to predict capacity failures and the sharing of blocks.
struct Model {
  KvCacheDType dtype;
  int64_t Hkv, D, Dv, bs, num_blocks;
  struct Seq {
    std::vector<float> k, v;  // (L, Hkv, D), (L, Hkv, Dv)
    std::vector<int> blocks;
  };
  std::map<int64_t, Seq> seqs;
  std::map<int, int> refs;  // live model block -> reference count
  int next_block = 0;

  int64_t length(const Seq& s) const { return int64_t(s.k.size()) / (Hkv * D); }
  int64_t free_blocks() const { return num_blocks - int64_t(refs.size()); }
  void drop(int b) {
    if (--refs[b] == 0) refs.erase(b);
  }
  int take() {
    refs[next_block] = 1;
    return next_block++;
  }
  // Blocks append(n) needs, copy-on-write included.
  int64_t blocks_needed(const Seq& s, int64_t n) const {
    const int64_t L = length(s), after = (L + n + bs - 1) / bs;
    const bool cow = n > 0 && L % bs != 0 && refs.at(s.blocks.back()) > 1;
    return after - int64_t(s.blocks.size()) + (cow ? 1 : 0);
  }
  void append(Seq& s, const Input& k, const Input& v, int64_t n) {
    const int64_t L = length(s);
    if (n > 0 && L % bs != 0 && refs.at(s.blocks.back()) > 1) {
      drop(s.blocks.back());
      s.blocks.back() = take();
    }
    while (int64_t(s.blocks.size()) < (L + n + bs - 1) / bs) s.blocks.push_back(take());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < Hkv; ++h) {
        auto row = [&](const Input& in, int64_t w) {
          std::vector<float> x(in.values.begin() + (i * Hkv + h) * w, in.values.begin() + (i * Hkv + h + 1) * w);
          return expected_row(dtype, x);
        };
        const auto kr = row(k, D), vr = row(v, Dv);
        s.k.insert(s.k.end(), kr.begin(), kr.end());
        s.v.insert(s.v.end(), vr.begin(), vr.end());
      }
  }
  void truncate(Seq& s, int64_t n) {
    s.k.resize(size_t(n * Hkv * D));
    s.v.resize(size_t(n * Hkv * Dv));
    while (int64_t(s.blocks.size()) > (n + bs - 1) / bs) {
      drop(s.blocks.back());
      s.blocks.pop_back();
    }
  }
};

std::vector<int64_t> live_ids(const Model& m) {
  std::vector<int64_t> ids;
  for (const auto& [id, s] : m.seqs) ids.push_back(id);
  return ids;
}

// Contents (bitwise), lengths, free blocks, and that the cache's block tables share
// blocks exactly where the model's do.
void check_against_model(const KvCache& c, const Model& m) {
  ASSERT_EQ(c.num_sequences(), int64_t(m.seqs.size()));
  ASSERT_EQ(c.num_free_blocks(), m.free_blocks());
  int64_t used = 0;
  std::map<int, int32_t> model_to_cache;
  std::map<int32_t, int> cache_to_model;
  for (const auto& [id, s] : m.seqs) {
    const int64_t L = m.length(s);
    used += L;
    ASSERT_EQ(c.length(id), L) << "sequence " << id;
    const auto [k, v] = c.gather(id);
    ASSERT_EQ(k.size(0), L);
    ASSERT_EQ(k.size(1), m.Hkv);
    ASSERT_EQ(k.size(2), m.D);
    ASSERT_EQ(v.size(2), m.Dv);
    ASSERT_TRUE(same_bits(k.data_as<float>(), s.k.data(), s.k.size())) << "k of sequence " << id;
    ASSERT_TRUE(same_bits(v.data_as<float>(), s.v.data(), s.v.size())) << "v of sequence " << id;
    const auto table = c.block_table(id);
    ASSERT_EQ(table.size(), s.blocks.size()) << "sequence " << id;
    for (size_t j = 0; j < table.size(); ++j) {
      ASSERT_GE(table[j], 0);
      ASSERT_LT(table[j], c.num_blocks());
      auto a = model_to_cache.emplace(s.blocks[j], table[j]);
      auto b = cache_to_model.emplace(table[j], s.blocks[j]);
      ASSERT_EQ(a.first->second, table[j]) << "sharing differs from the model";
      ASSERT_EQ(b.first->second, s.blocks[j]) << "sharing differs from the model";
    }
  }
  ASSERT_EQ(c.used_tokens(), used);
}

// Runs f, which must throw multihead::Error of `kind`, and checks the cache is unchanged.
void expect_rejected(const KvCache& c, const Model& m, ErrorKind kind, const std::function<void()>& f,
                     const std::string& what) {
  const auto ids = live_ids(m);
  const uint64_t before = cache_hash(c, ids);
  try {
    f();
    ADD_FAILURE() << what << ": no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << what << ": " << e.what();
  }
  EXPECT_EQ(cache_hash(c, ids), before) << what << ": a failing call changed the cache";
}

// How often the random walks hit each interesting path (checked to be non-zero).
struct Coverage {
  int capacity_rejections = 0, int8_rejections = 0, copies_on_write = 0, shared_appends = 0, truncates = 0;
};

void run_model_case(uint64_t seed, KvCacheDType dtype, Coverage& cov) {
  SCOPED_TRACE("seed " + std::to_string(seed) + ", dtype " + to_string(dtype));
  std::mt19937_64 rng(seed);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int64_t bs = int64_t(1) << pick(0, 4);
  KvCacheOptions o;
  o.num_kv_heads = pick(1, 3);
  o.head_dim = pick(1, 6);
  o.v_head_dim = pick(1, 6);
  o.block_size = bs;
  o.capacity = pick(1, 12) * bs - pick(0, bs - 1);  // rounded up to whole blocks
  o.dtype = dtype;
  KvCache c(o);
  ASSERT_EQ(c.capacity() % bs, 0);
  ASSERT_GE(c.capacity(), o.capacity);
  ASSERT_LT(c.capacity() - o.capacity, bs);
  Model m{dtype, o.num_kv_heads, o.head_dim, *o.v_head_dim, bs, c.num_blocks(), {}, {}, 0};
  std::vector<int64_t> dead;  // released ids

  for (int step = 0; step < 150; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const int64_t op = m.seqs.empty() ? 0 : pick(0, 99);
    auto random_live = [&] {
      auto it = m.seqs.begin();
      std::advance(it, pick(0, int64_t(m.seqs.size()) - 1));
      return it->first;
    };
    if (op < 8) {  // new
      const int64_t id = c.new_sequence();
      ASSERT_EQ(m.seqs.count(id), 0u);
      m.seqs[id];
    } else if (op < 55) {  // append
      const int64_t id = random_live();
      auto& s = m.seqs[id];
      const int64_t n = pick(0, 2 * bs + 3);
      const bool specials = pick(0, 9) == 0;
      const Input k = make_input(rng, n, m.Hkv, m.D, pick(0, 3) == 0, pick(0, 1) == 1, specials ? 0.05 : 0.0);
      const Input v = make_input(rng, n, m.Hkv, m.Dv, pick(0, 3) == 0, pick(0, 1) == 1, specials ? 0.05 : 0.0);
      const bool finite = row_finite(k.values) && row_finite(v.values);
      if (dtype == KvCacheDType::kI8 && !finite) {
        expect_rejected(c, m, ErrorKind::kInvalidArgument, [&] { c.append(id, k.view, v.view); }, "int8 non-finite");
        ++cov.int8_rejections;
      } else if (m.blocks_needed(s, n) > m.free_blocks()) {
        expect_rejected(c, m, ErrorKind::kCapacityExceeded, [&] { c.append(id, k.view, v.view); }, "over capacity");
        ++cov.capacity_rejections;
      } else {
        const int64_t L = m.length(s);
        if (n > 0 && L % bs != 0 && m.refs.at(s.blocks.back()) > 1) ++cov.copies_on_write;
        if (n > 0 && !s.blocks.empty() && m.refs.at(s.blocks.front()) > 1) ++cov.shared_appends;
        c.append(id, k.view, v.view);
        m.append(s, k, v, n);
      }
    } else if (op < 70) {  // truncate, sometimes out of range
      const int64_t id = random_live();
      auto& s = m.seqs[id];
      const int64_t L = m.length(s);
      const int64_t n = pick(0, 9) == 0 ? (pick(0, 1) ? L + 1 : -1) : pick(0, L);
      if (n < 0 || n > L) {
        expect_rejected(c, m, ErrorKind::kInvalidArgument, [&] { c.truncate(id, n); }, "truncate out of range");
      } else {
        c.truncate(id, n);
        m.truncate(s, n);
        ++cov.truncates;
      }
    } else if (op < 84) {  // fork
      const int64_t id = random_live();
      const int64_t child = c.fork(id);
      ASSERT_EQ(m.seqs.count(child), 0u);
      Model::Seq s = m.seqs[id];
      for (int b : s.blocks) ++m.refs[b];
      m.seqs[child] = s;
    } else if (op < 94) {  // release
      const int64_t id = random_live();
      c.release(id);
      for (int b : m.seqs[id].blocks) m.drop(b);
      m.seqs.erase(id);
      dead.push_back(id);
    } else if (op < 96) {  // reset
      for (const auto& [id, s] : m.seqs) dead.push_back(id);
      c.reset();
      m.seqs.clear();
      m.refs.clear();
    } else {  // calls on a released or unknown id
      const int64_t id = dead.empty() || pick(0, 1) ? int64_t(1) << 40 : dead[size_t(pick(0, int64_t(dead.size()) - 1))];
      const Input k = make_input(rng, 1, m.Hkv, m.D, false, false), v = make_input(rng, 1, m.Hkv, m.Dv, false, false);
      expect_rejected(c, m, ErrorKind::kInvalidArgument, [&] { c.append(id, k.view, v.view); }, "append dead id");
      expect_rejected(c, m, ErrorKind::kInvalidArgument, [&] { c.truncate(id, 0); }, "truncate dead id");
      expect_rejected(c, m, ErrorKind::kInvalidArgument, [&] { c.fork(id); }, "fork dead id");
      expect_rejected(c, m, ErrorKind::kInvalidArgument, [&] { c.release(id); }, "release dead id");
      expect_rejected(c, m, ErrorKind::kInvalidArgument, [&] { (void)c.length(id); }, "length dead id");
      expect_rejected(c, m, ErrorKind::kInvalidArgument, [&] { (void)c.gather(id); }, "gather dead id");
    }
    check_against_model(c, m);
    if (::testing::Test::HasFailure()) return;
  }
}

TEST(KvCache, RandomOperationsMatchModel) {
  for (KvCacheDType dtype : kAllDtypes) {
    Coverage cov;
    for (uint64_t seed = 1; seed <= 40; ++seed) {
      run_model_case(seed * 7919 + uint64_t(dtype), dtype, cov);
      if (HasFailure()) return;
    }
    SCOPED_TRACE(to_string(dtype));
    EXPECT_GT(cov.capacity_rejections, 20);
    EXPECT_GT(cov.copies_on_write, 20);
    EXPECT_GT(cov.shared_appends, 20);
    EXPECT_GT(cov.truncates, 20);
    if (dtype == KvCacheDType::kI8) {
      EXPECT_GT(cov.int8_rejections, 5);
    }
    std::printf("%s: %d capacity rejections, %d int8 rejections, %d copies on write, %d appends to forks, %d truncates\n",
                to_string(dtype), cov.capacity_rejections, cov.int8_rejections, cov.copies_on_write,
                cov.shared_appends, cov.truncates);
  }
}

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
