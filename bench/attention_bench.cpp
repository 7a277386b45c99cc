// Micro-benchmarks of the functional API (Google Benchmark), for kernel work between
// `multihead bench` runs:  multihead_bench --benchmark_filter=Forward
// Counters: FLOPS (forward 4·B·H·Lq·Lk·D, half for causal; backward 2.5× forward) and,
// for decode, bytes of K and V read per second.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <vector>

#include "bench/naive.hpp"
#include "multihead/attention.hpp"

namespace {

using multihead::CausalAlign;
using multihead::DType;
using multihead::Tensor;

Tensor random_tensor(DType dtype, std::initializer_list<int64_t> shape, uint64_t seed) {
  Tensor t = Tensor::empty(dtype, shape);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::kBF16) t.data_as<multihead::bf16>()[i] = multihead::float_to_bf16(normal(rng));
    else t.data_as<float>()[i] = normal(rng);
  }
  return t;
}

// Arguments: B, Lq, Lk, H, Hkv, D, causal (0 none, 1 top-left, 2 bottom-right), bf16 (0/1).
struct Shape {
  int64_t B, Lq, Lk, H, Hkv, D;
  CausalAlign causal;
  DType dtype;
  explicit Shape(const benchmark::State& s)
      : B(s.range(0)), Lq(s.range(1)), Lk(s.range(2)), H(s.range(3)), Hkv(s.range(4)), D(s.range(5)),
        causal(CausalAlign(s.range(6))), dtype(s.range(7) ? DType::kBF16 : DType::kF32) {}
  double forward_flops() const {
    const double full = 4.0 * double(B * H * D) * double(Lq) * double(Lk);
    return causal == CausalAlign::kNone || Lq == 1 ? full : full / 2;
  }
};

void BM_Forward(benchmark::State& state) {
  const Shape s(state);
  Tensor q = random_tensor(s.dtype, {s.B, s.Lq, s.H, s.D}, 1), k = random_tensor(s.dtype, {s.B, s.Lk, s.Hkv, s.D}, 2),
         v = random_tensor(s.dtype, {s.B, s.Lk, s.Hkv, s.D}, 3), out = Tensor::empty(s.dtype, {s.B, s.Lq, s.H, s.D});
  multihead::AttentionOptions options;
  options.causal = s.causal;
  for (auto _ : state) multihead::attention_forward(q, k, v, {out.view(), std::nullopt, std::nullopt}, options);
  state.counters["FLOPS"] = benchmark::Counter(s.forward_flops(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["KV_bytes"] = benchmark::Counter(double(k.nbytes() + v.nbytes()),
                                                  benchmark::Counter::kIsIterationInvariantRate,
                                                  benchmark::Counter::kIs1024);
}

void BM_ForwardBackward(benchmark::State& state) {
  const Shape s(state);
  Tensor q = random_tensor(s.dtype, {s.B, s.Lq, s.H, s.D}, 1), k = random_tensor(s.dtype, {s.B, s.Lk, s.Hkv, s.D}, 2),
         v = random_tensor(s.dtype, {s.B, s.Lk, s.Hkv, s.D}, 3), dout = random_tensor(DType::kF32, {s.B, s.Lq, s.H, s.D}, 4);
  Tensor out = Tensor::empty(s.dtype, {s.B, s.Lq, s.H, s.D}), lse = Tensor::empty(DType::kF32, {s.B, s.H, s.Lq});
  Tensor dq = Tensor::empty(DType::kF32, {s.B, s.Lq, s.H, s.D}), dk = Tensor::empty(DType::kF32, {s.B, s.Lk, s.Hkv, s.D}),
         dv = Tensor::empty(DType::kF32, {s.B, s.Lk, s.Hkv, s.D});
  multihead::AttentionOptions options;
  options.causal = s.causal;
  for (auto _ : state) {
    multihead::attention_forward(q, k, v, {out.view(), lse.view(), std::nullopt}, options);
    multihead::attention_backward(dout, q, k, v, out, lse, {dq.view(), dk.view(), dv.view(), std::nullopt, std::nullopt},
                                  options);
  }
  state.counters["FLOPS"] = benchmark::Counter(3.5 * s.forward_flops(), benchmark::Counter::kIsIterationInvariantRate);
}

// The naive path of `multihead bench`, single shape per run (f32 only).
void BM_NaiveForward(benchmark::State& state) {
  const Shape s(state);
  std::vector<float> q(size_t(s.B * s.Lq * s.H * s.D), 0.5f), k(size_t(s.B * s.Lk * s.Hkv * s.D), 0.25f),
      v(k.size(), 1.0f), out(q.size());
  const multihead::bench::NaiveShape n{s.B, s.Lq, s.Lk, s.H, s.Hkv, s.D, s.D, s.causal != CausalAlign::kNone,
                                       1.0f / std::sqrt(float(s.D))};
  const auto view = [&](std::vector<float>& t, int64_t L, int64_t heads) {
    return multihead::bench::HeadsView{t.data(), L * heads * s.D, heads * s.D};
  };
  const int threads = multihead::get_num_threads();
  for (auto _ : state)
    multihead::bench::naive_attention_forward(n, view(q, s.Lq, s.H), view(k, s.Lk, s.Hkv), view(v, s.Lk, s.Hkv),
                                              view(out, s.Lq, s.H), s.B * s.Hkv, threads);
  state.counters["FLOPS"] = benchmark::Counter(s.forward_flops(), benchmark::Counter::kIsIterationInvariantRate);
}

// B, Lq, Lk, H, Hkv, D, causal, bf16
BENCHMARK(BM_Forward)
    ->ArgNames({"B", "Lq", "Lk", "H", "Hkv", "D", "causal", "bf16"})
    ->Args({8, 512, 512, 12, 12, 64, 0, 0})        // S1
    ->Args({1, 2048, 2048, 32, 8, 128, 1, 0})      // S2 fp32
    ->Args({1, 2048, 2048, 32, 8, 128, 1, 1})      // S2 bf16
    ->Args({1, 1, 4096, 32, 8, 128, 2, 0})         // S3 fp32 (K/V warm in cache)
    ->Args({1, 1, 4096, 32, 8, 128, 2, 1})         // S3 bf16
    ->Args({1, 256, 256, 4, 4, 64, 0, 0})          // small: per-call overhead
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_ForwardBackward)
    ->ArgNames({"B", "Lq", "Lk", "H", "Hkv", "D", "causal", "bf16"})
    ->Args({4, 1024, 1024, 8, 8, 64, 1, 0})        // S4
    ->Args({1, 256, 256, 4, 4, 64, 1, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_NaiveForward)
    ->ArgNames({"B", "Lq", "Lk", "H", "Hkv", "D", "causal", "bf16"})
    ->Args({1, 512, 512, 2, 2, 64, 0, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
