// The harness's own pieces, shared by its files (not part of `multihead bench`'s API,
// which is bench.hpp): time budgets and repeated timing, input data, the checks against
// the oracle, the rows of the report, the cases and the PyTorch peer.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "bench/bench.hpp"
#include "multihead/attention.hpp"
#include "multihead/kv_cache.hpp"
#include "reference/case_tables.hpp"
#include "reference/compare.hpp"

namespace multihead::bench {

// ---------------------------------------------------------------- timing (timing.cpp)

using Clock = std::chrono::steady_clock;

inline double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

template <class F>
double time_ms(F&& f) {
  const auto t0 = Clock::now();
  f();
  return ms_since(t0);
}

// How long each measurement may take: the default run takes a few minutes, --quick
// under one. --repeats fixes the count instead.
struct Budget {
  double case_ms;     // timed repeats of one case
  int max_repeats;
  double naive_ms;    // the naive path of one case (a subset of heads beyond that)
  int fixed_repeats;  // > 0: exactly this many
  int64_t memory_L;   // sequence length of the memory case
};
Budget budget_for(const BenchOptions& o);

struct Stats {
  double median = 0, min = 0, max = 0;
  int n = 0;
};
Stats stats_of(std::vector<double> ms);

// Warm-up (at least twice, up to 0.1 s: scratch faulted in, clocks up), then repeats;
// `before` runs untimed ahead of every call.
Stats time_calls(const Budget& budget, const std::function<void()>& call, const std::function<void()>& before);

// Times run(units) on a subset of `total` independent units (multiples of `step`,
// e.g. heads, one per thread) when the whole would exceed the naive budget, and
// scales the median to the whole.
struct NaiveTime {
  double ms = 0;
  int64_t units = 0;
};
NaiveTime time_naive(int64_t total, int64_t step, const Budget& budget, const std::function<void(int64_t)>& run);

std::string format(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

// ---------------------------------------------------------------- data (timing.cpp)

void fill_normal(float* x, int64_t n, uint64_t seed);

// N(0, 1) values in `dtype`, and the same (rounded) values as f32 for the naive path.
struct Input {
  Tensor t;
  std::vector<float> f32;
};
Input random_input(DType dtype, std::initializer_list<int64_t> shape, uint64_t seed);

// ---------------------------------------------------------------- checks (checks.cpp)

struct Check {
  std::vector<reference::Comparison> comparisons;
  std::string text() const;  // "ok 0.12" (worst error / allowed) or "FAIL what error/allowed"
  bool pass() const;
};

// The forward output on up to 32 query rows spread over the sequence (the last row
// included) of batches {0, B-1}, all heads, against the oracle on that slice.
Check check_forward_rows(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                         CausalAlign causal);
// Gradients of the last K/V group (its H / Hkv query heads, all rows) of batches {0, B-1}.
Check check_backward_group(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                           const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                           const AttentionOptions& options);

// ---------------------------------------------------------------- cases (cases.cpp)

// S5: the module, self-attention on (B, L, E) with `heads` heads.
constexpr int64_t kModuleB = 8, kModuleL = 256, kModuleE = 512, kModuleHeads = 8;

// "B=1 L=2048 H=32 Hkv=8 D=128 causal"
std::string shape_text(const reference::Case& c);

// Filling a row (cases.cpp): timing, rate against a peak, check.
void set_stats(Row& row, const Stats& s);
void set_rate(Row& row, double peak, const std::string& peak_name);
void set_check(Row& row, const Check& check);

Row run_attention_case(const reference::SpeedCase& sc, const Budget& budget, const Peaks& peaks, int threads);
Row run_memory_case(const Budget& budget, const Peaks& peaks);
Row run_module_case(const Budget& budget, const Peaks& peaks, int threads);

// ---------------------------------------------------------------- KV cache (cached_cases.cpp)

// D1-D3: attention_forward_cached over a paged KV cache of H 32, Hkv 8, D 128.
struct CachedCase {
  std::string id, group, title;
  KvCacheDType cache_dtype;
  DType q_dtype;                 // q, the new tokens and the output
  std::vector<int64_t> lengths;  // cached tokens per sequence before the call
  int64_t new_tokens;            // Lq: 1 decodes; more are appended, then attended (causal)
};
const std::vector<CachedCase>& cached_cases();
// With peer, D1-fp32 also times ONNX Runtime on the same keys (run_ort_decode).
Row run_cached_case(const CachedCase& c, const Budget& budget, const Peaks& peaks, int threads, bool peer);

// ---------------------------------------------------------------- processes (torch_peer.cpp)

// Runs argv (argv[0] an absolute path) with extra environment entries ("KEY=value", over
// the inherited ones); returns its stdout, or nullopt when it could not run or exited
// non-zero (stderr goes to `stderr_path`).
std::optional<std::string> run_capture(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                       const std::string& stderr_path);
// The last non-empty line of a file ("" when there is none).
std::string last_line(const std::string& path);

// ---------------------------------------------------------------- ONNX Runtime peer (ort_peer.cpp)

// One decode step of com.microsoft.GroupQueryAttention in ONNX Runtime (onnxruntime-node's
// CPU library, run by node): q (1, 1, H, D), the cached past_k / past_v (1, P, Hkv, D) and
// the new token's k_new / v_new (1, 1, Hkv, D), all f32; the query attends over the P + 1
// keys. ms: median time of one run (nullopt when ORT is unavailable, `note` says why);
// out: ORT's output (1, 1, H, D) from the last run, for the check against the oracle.
struct OrtDecode {
  std::optional<double> ms;
  std::string note;   // "ONNX Runtime 1.31.1, N repeats, min X ms" or "n/a (...)"
  std::vector<float> out;
};
OrtDecode run_ort_decode(const Tensor& q, const Tensor& past_k, const Tensor& past_v, const Tensor& k_new,
                         const Tensor& v_new, int threads, const Budget& budget);

// ---------------------------------------------------------------- PyTorch peer (torch_peer.cpp)

// Times the same cases (and S5 when `module`) in PyTorch (bench/torch_peer.py) and fills
// report.torch and the rows' torch_ms / torch_note.
void run_torch_peer(const std::vector<reference::SpeedCase>& cases, bool module, const Budget& budget, int threads,
                    BenchReport& report);

}  // namespace multihead::bench
