// The paged KV cache against a plain model: random operation sequences (new, append,
// truncate, fork, release, reset, calls on dead ids) checked after every step against rows
// per sequence, quantized as the cache must, and the model's block sharing; failing calls
// must change nothing (a hash of the whole pool and the bookkeeping).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iterator>
#include <map>
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

bool row_finite(const std::vector<float>& x) {
  for (float v : x)
    if (!std::isfinite(v)) return false;
  return true;
}

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

}  // namespace
}  // namespace multihead
