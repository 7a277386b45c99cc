// Timing within a budget, and the benchmark's input data.
#include <algorithm>
#include <cstring>
#include <random>

#include "bench/harness.hpp"

namespace multihead::bench {

Budget budget_for(const BenchOptions& o) {
  if (o.quick) return {1500, 5, 1000, o.repeats, 8192};
  return {8000, 15, 5000, o.repeats, 32768};
}

Stats stats_of(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  return {n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]), ms.front(), ms.back(), int(n)};
}

Stats time_calls(const Budget& budget, const std::function<void()>& call, const std::function<void()>& before) {
  double first = 0, warm = 0;
  for (int w = 0; w < 10 && (w < 2 || warm < 100); ++w) {
    before();
    first = time_ms(call);
    warm += first;
  }
  const int n = budget.fixed_repeats > 0
                    ? budget.fixed_repeats
                    : std::clamp(int(budget.case_ms / std::max(first, 1e-6)), 1, budget.max_repeats);
  std::vector<double> ms;
  for (int r = 0; r < n; ++r) {
    before();
    ms.push_back(time_ms(call));
  }
  return stats_of(ms);
}

// Times run(units) on a subset of `total` independent units (multiples of `step`,
// e.g. heads, one per thread) when the whole would exceed the naive budget, and

NaiveTime time_naive(int64_t total, int64_t step, const Budget& budget, const std::function<void(int64_t)>& run) {
  int64_t units = std::min(total, step);
  const double calibration = time_ms([&] { run(units); });  // also the warm-up
  const double per_unit = calibration / double(units);
  units = std::clamp(int64_t(budget.naive_ms / per_unit) / step * step, std::min(total, step), total);
  const int n = std::clamp(int(budget.naive_ms / (per_unit * double(units))), 1, 3);
  std::vector<double> ms;
  for (int r = 0; r < n; ++r) ms.push_back(time_ms([&] { run(units); }));
  return {stats_of(ms).median * double(total) / double(units), units};
}

void fill_normal(float* x, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < n; ++i) x[i] = normal(rng);
}


Input random_input(DType dtype, std::initializer_list<int64_t> shape, uint64_t seed) {
  Input in;
  in.t = Tensor::empty(dtype, shape);
  in.f32.resize(size_t(in.t.numel()));
  fill_normal(in.f32.data(), in.t.numel(), seed);
  if (dtype == DType::kBF16) {
    bf16* p = in.t.data_as<bf16>();
    for (size_t i = 0; i < in.f32.size(); ++i) in.f32[i] = bf16_to_float(p[i] = float_to_bf16(in.f32[i]));
  } else {
    std::memcpy(in.t.data(), in.f32.data(), in.t.nbytes());
  }
  return in;
}

}  // namespace multihead::bench
