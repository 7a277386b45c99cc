// Helpers of the attention-over-the-cache tests: a cache filled with random sequences
// (the whole pool NaN first, released blocks NaN again), one cached call, and the oracle
// on the cache's dequantized gather() of every sequence, judged by the pass rule.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "multihead/multihead.hpp"
#include "reference/attention_reference.hpp"
#include "reference/compare.hpp"

namespace multihead::cached_test {

inline const char* name(KvCacheDType d) { return to_string(d); }

struct CachedCase {
  KvCacheDType dtype = KvCacheDType::kF32;
  int64_t block_size = 16;
  int64_t H = 4, Hkv = 2, D = 32, Dv = 32;
  int64_t Lq = 1;
  std::vector<int64_t> lengths{40};  // cached tokens per sequence before the call
  DType q_dtype = DType::kF32;
  bool causal = true;
  Window window{};
  float softcap = 0.0f;
  std::optional<float> scale{};
  bool alibi = false, sinks = false;
  bool append = false;  // k_new / v_new of Lq tokens per sequence
  int64_t rotary_dim = 0;
  bool rotary_interleaved = false;
  bool nan_garbage = true;  // the pool starts as NaN (else zeros)
  uint64_t seed = 1;

  std::string describe() const {
    std::ostringstream s;
    s << "seed=" << seed << " dtype=" << name(dtype) << " block=" << block_size << " H=" << H << " Hkv=" << Hkv
      << " D=" << D << " Dv=" << Dv << " Lq=" << Lq << " q=" << to_string(q_dtype) << " lengths=[";
    for (int64_t l : lengths) s << l << ' ';
    s << "] causal=" << causal << " window=(" << window.left << "," << window.right << ") softcap=" << softcap
      << " alibi=" << alibi << " sinks=" << sinks << " append=" << append << " rotary=" << rotary_dim
      << (rotary_interleaved ? "i" : "");
    return s.str();
  }
};

inline Tensor random_tensor(DType dtype, std::initializer_list<int64_t> shape, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(dtype, shape);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float x = normal(rng);
    if (dtype == DType::kBF16) t.data_as<bf16>()[i] = float_to_bf16(x);
    else t.data_as<float>()[i] = x;
  }
  return t;
}

inline void fill_bytes(const KvCache& cache, unsigned char byte) {
  std::memset(const_cast<std::byte*>(cache.layout().k_blocks), byte, cache.nbytes());
}

// The cache, its sequences and the call's inputs.
struct Fixture {
  KvCache cache;
  std::vector<int64_t> ids;
  Tensor q, k_new, v_new, alibi, sinks;
  AttentionOptions options;
  CachedAttentionInputs inputs;

  explicit Fixture(const CachedCase& c)
      : cache(KvCacheOptions{.num_kv_heads = c.Hkv, .head_dim = c.D, .v_head_dim = c.Dv,
                             .capacity = total_tokens(c), .block_size = c.block_size, .dtype = c.dtype}) {
    std::mt19937_64 rng(c.seed);
    fill_bytes(cache, c.nan_garbage ? 0xff : 0x00);  // 0xff..: NaN in f32, bf16 and scales
    for (int64_t len : c.lengths) {
      ids.push_back(cache.new_sequence());
      // In a few appends of random sizes, so blocks are filled piecewise.
      int64_t done = 0;
      while (done < len) {
        const int64_t n = std::min<int64_t>(len - done, 1 + int64_t(rng() % 37));
        Tensor k = random_tensor(DType::kF32, {n, c.Hkv, c.D}, rng), v = random_tensor(DType::kF32, {n, c.Hkv, c.Dv}, rng);
        cache.append(ids.back(), k.view(), v.view());
        done += n;
      }
    }
    // A released sequence whose blocks are garbage again.
    const int64_t decoy = cache.new_sequence();
    Tensor k = random_tensor(DType::kF32, {c.block_size + 1, c.Hkv, c.D}, rng);
    Tensor v = random_tensor(DType::kF32, {c.block_size + 1, c.Hkv, c.Dv}, rng);
    cache.append(decoy, k.view(), v.view());
    std::vector<int32_t> table(cache.block_table(decoy).begin(), cache.block_table(decoy).end());
    cache.release(decoy);
    const KvCacheLayout l = cache.layout();
    for (int32_t b : table) {
      std::memset(const_cast<std::byte*>(l.k_blocks) + b * l.k_block_bytes, 0xff, size_t(l.k_block_bytes));
      std::memset(const_cast<std::byte*>(l.v_blocks) + b * l.v_block_bytes, 0xff, size_t(l.v_block_bytes));
    }
    const int64_t B = int64_t(c.lengths.size());
    q = random_tensor(c.q_dtype, {B, c.Lq, c.H, c.D}, rng);
    if (c.append) {
      k_new = random_tensor(c.q_dtype, {B, c.Lq, c.Hkv, c.D}, rng);
      v_new = random_tensor(c.q_dtype, {B, c.Lq, c.Hkv, c.Dv}, rng);
      inputs.k_new = k_new.view(), inputs.v_new = v_new.view();
    }
    inputs.rotary_dim = c.rotary_dim;
    inputs.rotary_interleaved = c.rotary_interleaved;
    options.causal = c.causal ? CausalAlign::kBottomRight : CausalAlign::kNone;
    options.window = c.window;
    options.softcap = c.softcap;
    options.scale = c.scale;
    std::uniform_real_distribution<float> u(0.05f, 0.6f);
    if (c.alibi) {
      alibi = Tensor::empty(DType::kF32, {c.H});
      for (int64_t h = 0; h < c.H; ++h) alibi.data_as<float>()[h] = u(rng);
      options.alibi_slopes = alibi.view();
    }
    if (c.sinks) {
      sinks = Tensor::empty(DType::kF32, {c.H});
      for (int64_t h = 0; h < c.H; ++h) sinks.data_as<float>()[h] = 4.0f * u(rng) - 1.0f;
      options.sinks = sinks.view();
    }
  }

  static int64_t total_tokens(const CachedCase& c) {
    int64_t t = 0;
    for (int64_t l : c.lengths) t += l + c.Lq + 2 * c.block_size;
    return t + 2 * c.block_size;
  }

  AttentionResult run() { return attention_forward_cached(q.view(), cache, ids, options, inputs); }
};

// A (1, L, heads, dim) view of batch entry b of a (B, L, heads, dim) tensor.
inline TensorView batch_view(const TensorView& t, int64_t b) {
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + b * t.strides[0] * int64_t(dtype_size(t.dtype));
  v.shape[0] = 1;
  return v;
}

inline TensorView as_batch1(const Tensor& t) {  // (L, heads, dim) -> (1, L, heads, dim)
  return TensorView::contiguous(const_cast<void*>(t.data()), t.dtype(), {1, t.size(0), t.size(1), t.size(2)});
}

// The queries the kernel attends with: q rotated like the call rotates it.
inline Tensor rotated_queries(const CachedCase& c, const Fixture& f) {
  const int64_t B = int64_t(c.lengths.size());
  Tensor out = Tensor::empty(c.q_dtype, {B, c.Lq, c.H, c.D});
  std::memcpy(out.data(), f.q.data(), f.q.nbytes());
  if (c.rotary_dim == 0) return out;
  Tensor positions = Tensor::empty(DType::kI64, {B, c.Lq});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < c.Lq; ++i)
      positions.data_as<int64_t>()[b * c.Lq + i] = c.lengths[size_t(b)] + i - (c.append ? 0 : c.Lq);
  apply_rotary(f.q.view(), positions.view(), out.view(), RotaryOptions{c.rotary_dim, 10000.0, c.rotary_interleaved});
  return out;
}

// Runs the case's call and judges out and lse against the oracle on each sequence's
// gather() (after the call: appended keys included, as stored).
inline void expect_matches_oracle(const CachedCase& c) {
  SCOPED_TRACE(c.describe());
  Fixture f(c);
  const Tensor q_used = rotated_queries(c, f);
  const AttentionResult r = f.run();
  std::vector<double> ours_out, ours_lse, oracle_out, oracle_lse, base_out, base_lse;
  const int64_t B = int64_t(c.lengths.size());
  for (int64_t b = 0; b < B; ++b) {
    auto [k, v] = f.cache.gather(f.ids[size_t(b)]);
    const TensorView qb = batch_view(q_used.view(), b);
    const reference::ForwardResult o = reference::attention_forward(qb, as_batch1(k), as_batch1(v), f.options);
    const reference::ForwardResult base =
        reference::baseline_forward(qb, as_batch1(k), as_batch1(v), f.options, c.q_dtype);
    oracle_out.insert(oracle_out.end(), o.out.begin(), o.out.end());
    oracle_lse.insert(oracle_lse.end(), o.lse.begin(), o.lse.end());
    base_out.insert(base_out.end(), base.out.begin(), base.out.end());
    base_lse.insert(base_lse.end(), base.lse.begin(), base.lse.end());
    const int64_t n_out = c.Lq * c.H * c.Dv, n_lse = c.H * c.Lq;
    for (int64_t e = b * n_out; e < (b + 1) * n_out; ++e)
      ours_out.push_back(c.q_dtype == DType::kF32 ? r.out.data_as<float>()[e] : bf16_to_float(r.out.data_as<bf16>()[e]));
    for (int64_t e = 0; e < n_lse; ++e) ours_lse.push_back(r.lse.data_as<float>()[b * n_lse + e]);
  }
  const auto co = reference::compare("out", ours_out, oracle_out, base_out, c.q_dtype, reference::Pass::kForward);
  const auto cl = reference::compare("lse", ours_lse, oracle_lse, base_lse, c.q_dtype, reference::Pass::kForward);
  EXPECT_TRUE(co.pass()) << co.to_string();
  EXPECT_TRUE(cl.pass()) << cl.to_string();
}

}  // namespace multihead::cached_test
