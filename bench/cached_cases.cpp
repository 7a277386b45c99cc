// The KV-cache rows of `multihead bench` (D1-D3): attention_forward_cached over a paged
// cache, K/V evicted from the CPU caches before each call, rated as cache bytes read per
// second against the read bandwidth (decode) or FLOPs against the bf16 dot peak (chunked
// prefill), checked against the oracle on the cache's own (dequantized) contents, and
// compared with the same work through the functional API on the (B, Lk, Hkv, D) layout.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "bench/harness.hpp"
#include "multihead/attention_cached.hpp"
#include "multihead/kv_cache.hpp"

namespace multihead::bench {

namespace {

constexpr int64_t kH = 32, kHkv = 8, kD = 128;  // D1-D3 share Llama-8B-like heads

// Sequence lengths of D2: 8 drawn uniformly in [1000, 8000] from a fixed seed.
std::vector<int64_t> batched_lengths() {
  std::mt19937_64 rng(2026);
  std::uniform_int_distribution<int64_t> len(1000, 8000);
  std::vector<int64_t> lengths(8);
  for (int64_t& l : lengths) l = len(rng);
  return lengths;
}

// A dense (1, L, Hkv, D) view of a gathered (L, Hkv, D) tensor.
TensorView batch_of_one(const Tensor& t) {
  TensorView v = t.view();
  v.rank = 4;
  v.shape = {1, t.size(0), t.size(1), t.size(2)};
  v.strides = {t.numel(), t.size(1) * t.size(2), t.size(2), 1};
  return v;
}

// Entry b of a (B, ...) view, as a (1, ...) view.
TensorView entry(const TensorView& t, int64_t b) {
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + b * t.strides[0] * int64_t(dtype_size(t.dtype));
  v.shape[0] = 1;
  return v;
}

Tensor converted(const Tensor& f32, DType dtype) {
  Tensor t = Tensor::empty(dtype, f32.view().rank, f32.view().shape);
  const float* src = f32.data_as<float>();
  if (dtype == DType::kBF16) {
    bf16* dst = t.data_as<bf16>();
    for (int64_t i = 0; i < f32.numel(); ++i) dst[i] = float_to_bf16(src[i]);
  } else {
    std::copy_n(src, f32.numel(), t.data_as<float>());
  }
  return t;
}

// 2 · (cached tokens) · Hkv · D elements, plus int8's f32 scale per token and kv head.
double cache_bytes(KvCacheDType dtype, int64_t tokens) {
  const double elements = 2.0 * double(tokens) * double(kHkv * kD);
  return elements * double(element_size(dtype)) + (dtype == KvCacheDType::kI8 ? 2.0 * double(tokens * kHkv) * 4.0 : 0);
}

}  // namespace

const std::vector<CachedCase>& cached_cases() {
  static const std::vector<CachedCase> cases = {
      {"D1-fp32", "D1", "decode f32 cache", KvCacheDType::kF32, DType::kF32, {4096}, 1},
      {"D1-bf16", "D1", "decode bf16 cache", KvCacheDType::kBF16, DType::kBF16, {4096}, 1},
      {"D1-int8", "D1", "decode int8 cache", KvCacheDType::kI8, DType::kBF16, {4096}, 1},
      {"D2", "D2", "batched decode bf16", KvCacheDType::kBF16, DType::kBF16, batched_lengths(), 1},
      {"D3", "D3", "chunked prefill bf16", KvCacheDType::kBF16, DType::kBF16, {3584}, 512},
  };
  return cases;
}

Row run_cached_case(const CachedCase& cc, const Budget& budget, const Peaks& peaks, int threads, bool peer) {
  const int64_t B = int64_t(cc.lengths.size()), Lq = cc.new_tokens;
  const bool prefill = Lq > 1;  // D3: Lq new tokens appended on top of the cached prefix
  const int64_t total = std::accumulate(cc.lengths.begin(), cc.lengths.end(), int64_t(0));
  const int64_t longest = *std::max_element(cc.lengths.begin(), cc.lengths.end());
  Row row;
  row.id = cc.id, row.title = cc.title;
  row.shape = B == 1 ? format("Lk=%lld", (long long)(cc.lengths[0] + (prefill ? Lq : 0)))
                     : format("B=%lld Lk=%lld..%lld", (long long)B,
                              (long long)*std::min_element(cc.lengths.begin(), cc.lengths.end()), (long long)longest);
  row.shape += format(" Lq=%lld H=%lld Hkv=%lld D=%lld %s cache", (long long)Lq, (long long)kH, (long long)kHkv,
                      (long long)kD, to_string(cc.cache_dtype));

  KvCacheOptions o;
  o.num_kv_heads = kHkv, o.head_dim = kD, o.dtype = cc.cache_dtype;
  o.capacity = 0;  // each sequence in whole blocks
  for (int64_t len : cc.lengths) o.capacity += (len + Lq + o.block_size - 1) / o.block_size * o.block_size;
  KvCache cache(o);
  std::vector<int64_t> ids;
  for (int64_t b = 0; b < B; ++b) {
    ids.push_back(cache.new_sequence());
    const Input k = random_input(DType::kF32, {cc.lengths[size_t(b)], kHkv, kD}, 10 + 2 * uint64_t(b));
    const Input v = random_input(DType::kF32, {cc.lengths[size_t(b)], kHkv, kD}, 11 + 2 * uint64_t(b));
    cache.append(ids.back(), k.t.view(), v.t.view());
  }
  const Input q = random_input(cc.q_dtype, {B, Lq, kH, kD}, 1);
  const Input k_new = random_input(cc.q_dtype, {B, Lq, kHkv, kD}, 2), v_new = random_input(cc.q_dtype, {B, Lq, kHkv, kD}, 3);
  Tensor out = Tensor::empty(cc.q_dtype, {B, Lq, kH, kD});
  AttentionOptions options;
  options.causal = CausalAlign::kBottomRight;
  CachedAttentionInputs inputs;
  if (prefill) inputs.k_new = k_new.t.view(), inputs.v_new = v_new.t.view();
  const ForwardOutputs outputs{out.view(), std::nullopt, std::nullopt};

  set_stats(row, time_calls(budget, [&] { attention_forward_cached(q.t, cache, ids, outputs, options, inputs); },
                            [&] {
                              if (prefill)  // the same chunk again: back to the prefix
                                for (size_t b = 0; b < ids.size(); ++b) cache.truncate(ids[b], cc.lengths[b]);
                              evict_caches();
                            }));
  if (prefill) {
    // 4·H·D per visible (query, key) pair: query i sees the prefix and new keys 0..i.
    double pairs = 0;
    for (int64_t i = 0; i < Lq; ++i) pairs += double(cc.lengths[0] + i + 1);
    row.flops = 4.0 * double(kH * kD) * pairs * double(B);
    set_rate(row, peaks.bf16_gflops.value_or(0), "bf16 dot");
  } else {
    row.bytes = cache_bytes(cc.cache_dtype, total);
    set_rate(row, peaks.read_gbps, "read");
  }

  // The oracle on what the cache holds (int8: dequantized), first and last sequence.
  Check check;
  std::vector<Tensor> dense_k, dense_v;  // (1, L, Hkv, D) per sequence, for the functional API
  for (int64_t b = 0; b < B; ++b) {
    auto [k, v] = cache.gather(ids[size_t(b)]);
    if (b == 0 || b == B - 1) {
      const Check one = check_forward_rows(entry(q.t.view(), b), batch_of_one(k), batch_of_one(v),
                                           entry(out.view(), b), CausalAlign::kBottomRight);
      check.comparisons.insert(check.comparisons.end(), one.comparisons.begin(), one.comparisons.end());
    }
    const DType dense = cc.cache_dtype == KvCacheDType::kF32 ? DType::kF32 : DType::kBF16;
    dense_k.push_back(converted(k, dense));
    dense_v.push_back(converted(v, dense));
  }
  set_check(row, check);

  // The functional API on the (B, Lk, Hkv, D) layout: padded to the longest sequence with
  // seqlens_k (int8 has no dense form: bf16 holds the same keys rounded less).
  const DType dense = dense_k[0].dtype();
  const int64_t Lk = (prefill ? cc.lengths[0] + Lq : longest);
  Tensor k = Tensor::zeros(dense, {B, Lk, kHkv, kD}), v = Tensor::zeros(dense, {B, Lk, kHkv, kD});
  const size_t es = dtype_size(dense);
  for (int64_t b = 0; b < B; ++b) {
    const size_t n = size_t(dense_k[size_t(b)].numel()) * es;
    std::copy_n(static_cast<const char*>(dense_k[size_t(b)].data()), n, static_cast<char*>(k.data()) + size_t(b * Lk * kHkv * kD) * es);
    std::copy_n(static_cast<const char*>(dense_v[size_t(b)].data()), n, static_cast<char*>(v.data()) + size_t(b * Lk * kHkv * kD) * es);
  }
  Tensor seqlens = Tensor::empty(DType::kI32, {B});
  for (int64_t b = 0; b < B; ++b) seqlens.data_as<int32_t>()[b] = int32_t(prefill ? cc.lengths[size_t(b)] + Lq : cc.lengths[size_t(b)]);
  AttentionOptions dense_options = options;
  if (B > 1) dense_options.seqlens_k = seqlens.view();
  const Stats dense_stats =
      time_calls(budget, [&] { attention_forward(q.t, k, v, outputs, dense_options); }, [] { evict_caches(); });
  row.dense_ms = dense_stats.median;
  row.dense_note = format("functional API, %s (B, Lk, Hkv, D)%s", to_string(dense),
                          B > 1 ? " padded, seqlens_k" : "");
  if (prefill) row.dense_note += ", keys already in place (no append)";

  // The peer: ONNX Runtime's GroupQueryAttention decoding the last token over the rest
  // (its static cache), f32 only, checked against the oracle like ours.
  if (cc.id == "D1-fp32") {
    if (!peer) {
      row.ort_note = "n/a (--no-peer)";
    } else {
      const int64_t P = Lk - 1;
      Tensor past_k = Tensor::empty(DType::kF32, {1, P, kHkv, kD}), past_v = Tensor::empty(DType::kF32, {1, P, kHkv, kD});
      Tensor k_last = Tensor::empty(DType::kF32, {1, 1, kHkv, kD}), v_last = Tensor::empty(DType::kF32, {1, 1, kHkv, kD});
      const int64_t head_rows = kHkv * kD;
      std::copy_n(k.data_as<float>(), P * head_rows, past_k.data_as<float>());
      std::copy_n(v.data_as<float>(), P * head_rows, past_v.data_as<float>());
      std::copy_n(k.data_as<float>() + P * head_rows, head_rows, k_last.data_as<float>());
      std::copy_n(v.data_as<float>() + P * head_rows, head_rows, v_last.data_as<float>());
      const OrtDecode ort = run_ort_decode(q.t, past_k, past_v, k_last, v_last, threads, budget);
      row.ort_ms = ort.ms;
      row.ort_note = ort.note;
      if (ort.ms && ort.out.size() == size_t(kH * kD)) {
        Tensor ort_out = Tensor::empty(DType::kF32, {1, 1, kH, kD});
        std::copy(ort.out.begin(), ort.out.end(), ort_out.data_as<float>());
        const Check c = check_forward_rows(q.t, k, v, ort_out, CausalAlign::kBottomRight);
        row.ort_note += "; its output against the oracle: " + c.text();
      }
    }
  }
  row.naive_note = "n/a (see S3 for the naive decode path)";
  return row;
}

}  // namespace multihead::bench
