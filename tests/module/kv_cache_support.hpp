// Helpers shared by the KV cache tests (kv_cache_test.cpp, kv_cache_model_test.cpp): what
// the cache must give back for a row, random input rows in strided buffers, and a hash of
// the whole pool and its bookkeeping (a failing call must leave it unchanged).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "multihead/kv_cache.hpp"
#include "multihead/tensor.hpp"

namespace multihead::kv_cache_test {

inline constexpr KvCacheDType kAllDtypes[] = {KvCacheDType::kF32, KvCacheDType::kBF16, KvCacheDType::kI8};

// What the cache must give back for a row of f32 values (the values of the input view).
inline std::vector<float> expected_row(KvCacheDType dtype, const std::vector<float>& x) {
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

inline Input make_input(std::mt19937_64& rng, int64_t n, int64_t Hkv, int64_t width, bool bf16_input, bool strided,
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

inline uint64_t fnv(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// The whole pool and everything observable about the bookkeeping.
inline uint64_t cache_hash(const KvCache& c, const std::vector<int64_t>& ids) {
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

inline bool same_bits(const float* a, const float* b, size_t n) { return n == 0 || std::memcmp(a, b, n * 4) == 0; }

}  // namespace multihead::kv_cache_test
