#include "bench/bench.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "bench/naive.hpp"
#include "multihead/attention.hpp"
#include "multihead/error.hpp"
#include "reference/attention_reference.hpp"
#include "reference/compare.hpp"
#if MULTIHEAD_BENCH_HAVE_MODULE
#include "multihead/multi_head_attention.hpp"
#endif

extern "C" char* openblas_get_corename(void);
extern char** environ;

namespace multihead::bench {

// bench/torch_peer.py, embedded at configure time (torch_peer_source.cpp).
extern const char* const kTorchPeerSource;

namespace {

namespace ref = multihead::reference;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

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

Budget budget_for(const BenchOptions& o) {
  if (o.quick) return {1500, 5, 1000, o.repeats, 8192};
  return {8000, 15, 5000, o.repeats, 32768};
}

struct Stats {
  double median = 0, min = 0, max = 0;
  int n = 0;
};

Stats stats_of(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  return {n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]), ms.front(), ms.back(), int(n)};
}

// Warm-up (at least twice, up to 0.1 s: scratch faulted in, clocks up), then repeats;
// `before` runs untimed ahead of every call.
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
// scales the median to the whole.
struct NaiveTime {
  double ms = 0;
  int64_t units = 0;
};
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

std::string format(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

// ---------------------------------------------------------------- data

void fill_normal(float* x, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < n; ++i) x[i] = normal(rng);
}

// N(0, 1) values in `dtype`, and the same (rounded) values as f32 for the naive path.
struct Input {
  Tensor t;
  std::vector<float> f32;
};
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

// ---------------------------------------------------------------- checks

// The sub-problem a check runs the oracle on: batches {0, B-1}, query rows
// [row0, row0 + rows·row_step) by row_step, heads [h0, h0 + heads).
TensorView slice(const TensorView& t, int64_t batches, int64_t row0, int64_t rows, int64_t row_step, int64_t h0,
                 int64_t heads) {
  TensorView s = t;
  s.data = static_cast<char*>(t.data) + (row0 * t.strides[1] + h0 * t.strides[2]) * int64_t(dtype_size(t.dtype));
  s.shape = {batches, rows, heads, t.shape[3]};
  s.strides = {batches > 1 ? t.strides[0] * (t.shape[0] - 1) : t.strides[0], t.strides[1] * row_step, t.strides[2],
               1};
  return s;
}

struct Check {
  std::vector<ref::Comparison> comparisons;
  std::string text() const {
    double worst = 0;
    for (const ref::Comparison& c : comparisons) {
      if (!c.pass()) return "FAIL " + c.what + format(" %.3g/%.3g", c.max_error, c.allowed);
      worst = std::max(worst, c.max_error / std::max(c.allowed, 1e-300));
    }
    return format("ok %.2f", worst);
  }
  bool pass() const {
    return std::all_of(comparisons.begin(), comparisons.end(), [](const ref::Comparison& c) { return c.pass(); });
  }
};

// The forward output on up to 32 query rows spread over the sequence (the last row
// included) of batches {0, B-1}, all heads, against the oracle on that slice. Causal
// masking of the sliced rows becomes an explicit keep-mask with the rows' original
// indices, so the slice means exactly what the full problem meant.
Check check_forward_rows(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                         CausalAlign causal) {
  const int64_t B = q.shape[0], Lq = q.shape[1], H = q.shape[2], Lk = k.shape[1], Hkv = k.shape[2];
  const int64_t batches = B > 1 ? 2 : 1, rows = std::min<int64_t>(Lq, 32);
  const int64_t step = rows > 1 ? (Lq - 1) / (rows - 1) : 1, row0 = Lq - 1 - (rows - 1) * step;
  const TensorView qs = slice(q, batches, row0, rows, step, 0, H), outs = slice(out, batches, row0, rows, step, 0, H);
  const TensorView ks = slice(k, batches, 0, Lk, 1, 0, Hkv), vs = slice(v, batches, 0, Lk, 1, 0, Hkv);
  AttentionOptions options;
  Tensor mask;
  if (causal != CausalAlign::kNone) {
    const int64_t offset = causal == CausalAlign::kBottomRight ? Lk - Lq : 0;
    mask = Tensor::empty(DType::kBool, {rows, Lk});
    bool* m = mask.data_as<bool>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < Lk; ++j) m[r * Lk + j] = j <= row0 + r * step + offset;
    options.mask = mask.view();
  }
  const ref::ForwardResult oracle = ref::attention_forward(qs, ks, vs, options);
  const ref::ForwardResult baseline = ref::baseline_forward(qs, ks, vs, options, out.dtype);
  return {{ref::compare("out", outs, oracle.out, baseline.out, q.dtype, ref::Pass::kForward)}};
}

// Gradients of the last K/V group (its H / Hkv query heads, all rows) of batches
// {0, B-1}: heads of different groups are independent, so the slice is exact.
Check check_backward_group(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                           const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                           const AttentionOptions& options) {
  const int64_t B = q.shape[0], Lq = q.shape[1], H = q.shape[2], Lk = k.shape[1], Hkv = k.shape[2], G = H / Hkv;
  const int64_t batches = B > 1 ? 2 : 1;
  const auto qside = [&](const TensorView& t) { return slice(t, batches, 0, Lq, 1, H - G, G); };
  const auto kside = [&](const TensorView& t) { return slice(t, batches, 0, Lk, 1, Hkv - 1, 1); };
  const ref::ForwardResult fo = ref::attention_forward(qside(q), kside(k), kside(v), options);
  const ref::ForwardResult fb = ref::baseline_forward(qside(q), kside(k), kside(v), options, q.dtype);
  const ref::BackwardResult bo = ref::attention_backward(qside(dout), qside(q), kside(k), kside(v), options);
  const ref::BackwardResult bb =
      ref::baseline_backward(qside(dout), qside(q), kside(k), kside(v), options, q.dtype);
  return {{ref::compare("out", qside(out), fo.out, fb.out, q.dtype, ref::Pass::kForward),
           ref::compare("dq", qside(dq), bo.dq, bb.dq, q.dtype, ref::Pass::kBackward),
           ref::compare("dk", kside(dk), bo.dk, bb.dk, q.dtype, ref::Pass::kBackward),
           ref::compare("dv", kside(dv), bo.dv, bb.dv, q.dtype, ref::Pass::kBackward)}};
}

// ---------------------------------------------------------------- cases

struct AttentionCase {
  std::string id, group, title;
  int64_t B, Lq, Lk, H, Hkv, D;
  CausalAlign causal;
  DType dtype;
  bool backward = false;
  bool decode = false;  // bandwidth-bound: K/V evicted from the caches before each call

  // (i, j) pairs a query may attend (exactly half-and-a-diagonal for square causal).
  double visible_pairs() const {
    if (causal == CausalAlign::kNone) return double(Lq) * double(Lk);
    const int64_t offset = causal == CausalAlign::kBottomRight ? Lk - Lq : 0;
    double pairs = 0;
    for (int64_t i = 0; i < Lq; ++i) pairs += double(std::clamp<int64_t>(i + offset + 1, 0, Lk));
    return pairs;
  }
  // 4·B·H·D per visible pair forward; the backward is 2.5× that.
  double flops() const { return 4.0 * double(B * H * D) * visible_pairs() * (backward ? 3.5 : 1.0); }
  double kv_bytes() const { return 2.0 * double(B * Lk * Hkv * D) * double(dtype_size(dtype)); }
  std::string shape() const {
    std::string s = format("B=%lld ", (long long)B);
    s += Lq == Lk ? format("L=%lld", (long long)Lq) : format("Lq=%lld Lk=%lld", (long long)Lq, (long long)Lk);
    s += format(" H=%lld", (long long)H);
    if (Hkv != H) s += format(" Hkv=%lld", (long long)Hkv);
    s += format(" D=%lld", (long long)D);
    if (causal == CausalAlign::kTopLeft) s += " causal";
    if (causal == CausalAlign::kBottomRight) s += Lq == Lk ? " causal" : " causal-br";
    return s;
  }
  NaiveShape naive_shape() const {
    return {B, Lq, Lk, H, Hkv, D, D, causal != CausalAlign::kNone, 1.0f / std::sqrt(float(D))};
  }
};

std::vector<AttentionCase> attention_cases() {
  const auto f32 = DType::kF32, b16 = DType::kBF16;
  const auto none = CausalAlign::kNone, tl = CausalAlign::kTopLeft, br = CausalAlign::kBottomRight;
  return {
      {"S1", "S1", "encoder fwd fp32", 8, 512, 512, 12, 12, 64, none, f32},
      {"S2-fp32", "S2", "prefill fwd fp32", 1, 2048, 2048, 32, 8, 128, tl, f32},
      {"S2-bf16", "S2", "prefill fwd bf16", 1, 2048, 2048, 32, 8, 128, tl, b16},
      {"S3-fp32", "S3", "decode fwd fp32", 1, 1, 4096, 32, 8, 128, br, f32, false, true},
      {"S3-bf16", "S3", "decode fwd bf16", 1, 1, 4096, 32, 8, 128, br, b16, false, true},
      {"S4", "S4", "train fwd+bwd fp32", 4, 1024, 1024, 8, 8, 64, tl, f32, true},
  };
}

constexpr int64_t kModuleB = 8, kModuleL = 256, kModuleE = 512, kModuleHeads = 8;

Row make_row(std::string id, std::string title, std::string shape) {
  Row row;
  row.id = std::move(id), row.title = std::move(title), row.shape = std::move(shape);
  return row;
}

void set_rate(Row& row, double peak, const std::string& peak_name) {
  if (row.bytes > 0) {
    row.unit = "GB/s";
    row.rate = row.bytes / (row.median_ms * 1e-3) * 1e-9;
  } else {
    row.unit = "GFLOP/s";
    row.rate = row.flops / (row.median_ms * 1e-3) * 1e-9;
  }
  row.peak_name = peak_name;
  if (peak > 0) row.peak_fraction = row.rate / peak;
}

void set_stats(Row& row, const Stats& s) {
  row.ran = true;
  row.median_ms = s.median, row.min_ms = s.min, row.max_ms = s.max, row.repeats = s.n;
}

void set_check(Row& row, const Check& check) {
  row.check = check.text();
  row.check_pass = check.pass();
}

void set_naive(Row& row, const NaiveTime& t, int64_t total, const char* unit) {
  row.naive_ms = t.ms;
  row.naive_note = t.units == total ? "full shape"
                                    : format("timed on %lld of %lld %s, scaled", (long long)t.units,
                                             (long long)total, unit);
}

Row run_attention_case(const AttentionCase& c, const Budget& budget, const Peaks& peaks, int threads) {
  Row row = make_row(c.id, c.title, c.shape());
  row.flops = c.flops();
  if (c.decode) row.bytes = c.kv_bytes();
  Input q = random_input(c.dtype, {c.B, c.Lq, c.H, c.D}, 1);
  Input k = random_input(c.dtype, {c.B, c.Lk, c.Hkv, c.D}, 2);
  Input v = random_input(c.dtype, {c.B, c.Lk, c.Hkv, c.D}, 3);
  // A bf16 model keeps bf16 activations: the output is in the input dtype.
  Tensor out = Tensor::empty(c.dtype, {c.B, c.Lq, c.H, c.D});
  AttentionOptions options;
  options.causal = c.causal;

  if (!c.backward) {
    const ForwardOutputs outputs{out.view(), std::nullopt, std::nullopt};
    set_stats(row, time_calls(budget, [&] { attention_forward(q.t, k.t, v.t, outputs, options); },
                              [&] { if (c.decode) evict_caches(); }));
    set_check(row, check_forward_rows(q.t, k.t, v.t, out, c.causal));
  } else {
    Input dout = random_input(DType::kF32, {c.B, c.Lq, c.H, c.D}, 4);
    Tensor lse = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq});
    Tensor dq = Tensor::empty(DType::kF32, {c.B, c.Lq, c.H, c.D});
    Tensor dk = Tensor::empty(DType::kF32, {c.B, c.Lk, c.Hkv, c.D});
    Tensor dv = Tensor::empty(DType::kF32, {c.B, c.Lk, c.Hkv, c.D});
    const ForwardOutputs outputs{out.view(), lse.view(), std::nullopt};
    const BackwardOutputs grads{dq.view(), dk.view(), dv.view(), std::nullopt, std::nullopt};
    set_stats(row, time_calls(budget,
                              [&] {
                                attention_forward(q.t, k.t, v.t, outputs, options);
                                attention_backward(dout.t, q.t, k.t, v.t, out, lse, grads, options);
                              },
                              [] {}));
    set_check(row, check_backward_group(q.t, k.t, v.t, out, dout.t, dq, dk, dv, options));
  }
  const bool bf16_dot = c.dtype == DType::kBF16 && !c.decode;
  set_rate(row, c.decode ? peaks.read_gbps : bf16_dot ? peaks.bf16_gflops.value_or(0) : peaks.fp32_gflops,
           c.decode ? "read" : bf16_dot ? "bf16 dot" : "fp32 FMA");

  // The naive path on the same (bf16-rounded) values, in f32.
  const NaiveShape s = c.naive_shape();
  const int64_t groups = c.B * c.Hkv;
  const auto heads = [&](std::vector<float>& t, int64_t L, int64_t n) { return HeadsView{t.data(), L * n * c.D, n * c.D}; };
  std::vector<float> nout(size_t(c.B * c.Lq * c.H * c.D));
  if (!c.backward) {
    set_naive(row, time_naive(groups, threads, budget, [&](int64_t units) {
                naive_attention_forward(s, heads(q.f32, c.Lq, c.H), heads(k.f32, c.Lk, c.Hkv), heads(v.f32, c.Lk, c.Hkv),
                                        heads(nout, c.Lq, c.H), units, threads);
              }), groups, "(b, kv-head) groups");
  } else {
    std::vector<float> ndout(size_t(c.B * c.Lq * c.H * c.D)), ndq(ndout.size()), ndk(k.f32.size()), ndv(v.f32.size());
    fill_normal(ndout.data(), int64_t(ndout.size()), 4);
    set_naive(row, time_naive(groups, threads, budget, [&](int64_t units) {
                naive_attention_forward_backward(s, heads(q.f32, c.Lq, c.H), heads(k.f32, c.Lk, c.Hkv),
                                                 heads(v.f32, c.Lk, c.Hkv), heads(nout, c.Lq, c.H),
                                                 heads(ndout, c.Lq, c.H), heads(ndq, c.Lq, c.H),
                                                 heads(ndk, c.Lk, c.Hkv), heads(ndv, c.Lk, c.Hkv), units, threads);
              }), groups, "(b, kv-head) groups");
  }
  return row;
}

// Linux keeps a resettable high-water mark of the resident set (VmHWM).
int64_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) return std::strtoll(line.c_str() + std::strlen(key) + 1, nullptr, 10);
  return -1;
}
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return bool(out);
}

// Forward at a long sequence: the fused kernel's extra memory must grow with L, not L².
Row run_memory_case(const Budget& budget, const Peaks& peaks) {
  const int64_t L = budget.memory_L, D = 64;
  Row row = make_row("memory", "long fwd fp32", format("B=1 L=%lld H=1 D=%lld", (long long)L, (long long)D));
  row.flops = 4.0 * double(L) * double(L) * double(D);
  Input q = random_input(DType::kF32, {1, L, 1, D}, 1), k = random_input(DType::kF32, {1, L, 1, D}, 2),
        v = random_input(DType::kF32, {1, L, 1, D}, 3);
  Tensor out = Tensor::zeros(DType::kF32, {1, L, 1, D});  // faulted in: not the kernel's memory
  const ForwardOutputs outputs{out.view(), std::nullopt, std::nullopt};
  const auto call = [&] { attention_forward(q.t, k.t, v.t, outputs, {}); };

  const int64_t rss_before = status_kib("VmRSS:");
  const bool reset = reset_peak_rss();
  const double first_ms = time_ms(call);  // the cold call: whatever it allocates counts
  const double inputs_mib = 4.0 * double(4 * L * D) / (1 << 20);
  const double scores_mib = 4.0 * double(L) * double(L) / (1 << 20);
  if (reset && rss_before >= 0) {
    row.rss_growth_mib = double(status_kib("VmHWM:") - rss_before) / 1024.0;
    row.note = format("peak RSS +%.1f MiB in the first call (q, k, v, out: %.0f MiB; an L×L f32 score matrix: %.0f MiB)",
                      *row.rss_growth_mib, inputs_mib, scores_mib);
  } else {
    row.note = "peak RSS n/a (/proc/self/clear_refs not writable)";
  }
  // Further calls only when they fit the budget: at L = 32768 one call is the case.
  std::vector<double> ms{first_ms};
  const int extra = budget.fixed_repeats > 0 ? budget.fixed_repeats - 1
                                             : std::clamp(int(budget.case_ms / first_ms) - 1, 0, budget.max_repeats - 1);
  for (int r = 0; r < extra; ++r) ms.push_back(time_ms(call));
  set_stats(row, stats_of(ms));
  set_rate(row, peaks.fp32_gflops, "fp32 FMA");
  set_check(row, check_forward_rows(q.t, k.t, v.t, out, CausalAlign::kNone));
  row.naive_note = format("n/a (its L×L scores need %.0f MiB per thread)", scores_mib);
  return row;
}

Row run_module_case(const Budget& budget, const Peaks& peaks, int threads) {
  const int64_t B = kModuleB, L = kModuleL, E = kModuleE, heads = kModuleHeads, N = B * L, d = E / heads;
  Row row = make_row("S5", "module fwd+bwd fp32",
                     format("B=%lld L=%lld E=%lld heads=%lld causal", (long long)B, (long long)L, (long long)E,
                            (long long)heads));
  // Projections 2·N·E·4E forward, attention 4·B·H·d per visible pair; backward 2× and 2.5×.
  const double proj = 8.0 * double(N) * double(E) * double(E);
  const double attn = 4.0 * double(B * heads * d) * double(L) * double(L + 1) / 2.0;
  row.flops = 3.0 * proj + 3.5 * attn;
#if MULTIHEAD_BENCH_HAVE_MODULE
  MultiHeadAttentionConfig config;
  config.embed_dim = E;
  config.num_heads = heads;
  config.seed = 1;
  MultiHeadAttention module(config);
  Input x = random_input(DType::kF32, {B, L, E}, 1), dy = random_input(DType::kF32, {B, L, E}, 2);
  MhaForwardOptions options;
  options.attention.causal = CausalAlign::kTopLeft;
  options.training = true;
  MhaOutput y;
  MhaInputGrads g;
  set_stats(row, time_calls(budget,
                            [&] {
                              y = module.forward(x.t, nullptr, nullptr, options);
                              g = module.backward(dy.t);
                            },
                            [] {}));
  set_rate(row, peaks.fp32_gflops, "fp32 FMA");

  // The naive module on the module's own weights; its output and input gradient are the
  // check (the attention inside is checked against the oracle by S1-S4).
  const std::map<std::string, TensorView> weights = module.state_dict();
  const auto copy = [&](const char* name, std::vector<float>& to) {
    const auto it = weights.find(name);
    if (it == weights.end() || it->second.dtype != DType::kF32 || !it->second.is_contiguous()) return false;
    const float* p = it->second.data_as<const float>();
    to.assign(p, p + it->second.numel());
    return true;
  };
  NaiveModule m;
  m.E = E, m.heads = heads;
  if (!(copy("in_proj_weight", m.w_in) && copy("in_proj_bias", m.b_in) && copy("out_proj.weight", m.w_out) &&
        copy("out_proj.bias", m.b_out))) {
    row.naive_note = "n/a (module weights not in PyTorch's fused naming)";
    row.check = "n/a";
    return row;
  }
  m.dw_in.assign(m.w_in.size(), 0.0f), m.db_in.assign(m.b_in.size(), 0.0f);
  m.dw_out.assign(m.w_out.size(), 0.0f), m.db_out.assign(m.b_out.size(), 0.0f);
  std::vector<float> ny(size_t(N * E)), ndx(size_t(N * E));
  // Batches are independent (parameter gradients aside): a subset of them scales.
  const NaiveTime naive = time_naive(B, 1, budget, [&](int64_t batches) {
    naive_module_forward_backward(m, x.f32.data(), dy.f32.data(), ny.data(), ndx.data(), batches, L, true, threads);
  });
  set_naive(row, naive, B, "batches");
  // On the batches the naive path last ran: the relative max difference of two f32
  // computations of the same sums, ~1e-6 apart.
  const size_t checked = size_t(naive.units * L * E);
  const auto rel_diff = [&](const Tensor& ours, const std::vector<float>& reference) {
    const float* p = ours.data_as<const float>();
    double diff = 0, scale = 0;
    for (size_t i = 0; i < checked; ++i) {
      diff = std::max(diff, double(std::fabs(p[i] - reference[i])));
      scale = std::max(scale, double(std::fabs(reference[i])));
    }
    return std::isfinite(diff) ? diff / std::max(scale, 1e-30) : INFINITY;
  };
  const double worst = std::max(rel_diff(y.out, ny), rel_diff(g.dquery, ndx));
  constexpr double kTolerance = 1e-4;
  row.check_pass = worst <= kTolerance;
  row.check = format("%s %.1e", row.check_pass ? "ok" : "FAIL", worst);
  row.note = format("check: max relative difference of out and dquery from the naive f32 module on %lld of %lld batches (<= %.0e)",
                    (long long)naive.units, (long long)B, kTolerance);
#else
  (void)budget, (void)peaks, (void)threads;
  row.note = "n/a (module unavailable)";
  row.check = "n/a";
  row.naive_note = "n/a (module unavailable)";
#endif
  return row;
}

// ---------------------------------------------------------------- PyTorch peer

const char* causal_name(CausalAlign c) {
  return c == CausalAlign::kNone ? "none" : c == CausalAlign::kTopLeft ? "top_left" : "bottom_right";
}

// Runs argv with extra environment entries; returns its stdout, or nullopt when it
// could not run or exited non-zero (stderr goes to `stderr_path`).
std::optional<std::string> run_capture(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                       const std::string& stderr_path) {
  std::vector<std::string> env_strings = env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e, key = entry.substr(0, entry.find('=') + 1);
    if (std::none_of(env.begin(), env.end(), [&](const std::string& x) { return x.rfind(key, 0) == 0; }))
      env_strings.push_back(entry);
  }
  std::vector<char*> args, envp;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  for (const std::string& e : env_strings) envp.push_back(const_cast<char*>(e.c_str()));
  args.push_back(nullptr), envp.push_back(nullptr);
  int pipe_fd[2];
  if (pipe(pipe_fd) != 0) return std::nullopt;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fd[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, pipe_fd[0]);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fd[1]);
  std::string output;
  if (rc == 0) {
    char buf[4096];
    for (ssize_t n; (n = read(pipe_fd[0], buf, sizeof buf)) > 0;) output.append(buf, size_t(n));
  }
  close(pipe_fd[0]);
  if (rc != 0) return std::nullopt;
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  return output;
}

std::string last_line(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

void run_torch_peer(const std::vector<AttentionCase>& cases, bool module, const Budget& budget, int threads,
                    BenchReport& report) {
  TorchInfo& info = report.torch;
  const char* python = "/usr/bin/python3";
  if (access(python, X_OK) != 0) {
    info.error = "n/a (no /usr/bin/python3)";
    return;
  }
  json spec = {{"threads", threads},
               {"repeats", budget.fixed_repeats},
               {"max_repeats", budget.max_repeats},
               {"budget_s", budget.case_ms * 1e-3},
               {"cases", json::array()}};
  for (const AttentionCase& c : cases)
    spec["cases"].push_back({{"id", c.id}, {"kind", "attention"}, {"B", c.B}, {"Lq", c.Lq}, {"Lk", c.Lk}, {"H", c.H},
                             {"Hkv", c.Hkv}, {"D", c.D}, {"causal", causal_name(c.causal)},
                             {"dtype", c.dtype == DType::kBF16 ? "bfloat16" : "float32"}, {"backward", c.backward},
                             {"evict", c.decode}});
  if (module)
    spec["cases"].push_back({{"id", "S5"}, {"kind", "module"}, {"B", kModuleB}, {"L", kModuleL}, {"E", kModuleE},
                             {"heads", kModuleHeads}, {"causal", true}});

  char script[] = "/tmp/multihead_torch_peer_XXXXXX";
  const int fd = mkstemp(script);
  if (fd < 0) {
    info.error = "n/a (cannot write the peer script)";
    return;
  }
  const size_t len = std::strlen(kTorchPeerSource);
  const bool written = write(fd, kTorchPeerSource, len) == ssize_t(len);
  close(fd);
  const std::string stderr_path = std::string(script) + ".err";
  // glibc would hand PyTorch's large tensors back to the OS after every call and fault
  // them in again (~0.6 GiB/s here: S1 7x slower); keeping freed memory in the heap is
  // part of PyTorch's best configuration.
  std::vector<std::string> env = {"OMP_NUM_THREADS=" + std::to_string(threads),
                                  "OPENBLAS_NUM_THREADS=" + std::to_string(threads), "MALLOC_MMAP_MAX_=0",
                                  "MALLOC_TRIM_THRESHOLD_=68719476736"};
  if (__builtin_cpu_supports("avx512f")) {
    env.push_back("OPENBLAS_CORETYPE=SkylakeX");
    env.push_back("ATEN_CPU_CAPABILITY=avx512");
  }
  const std::optional<std::string> output =
      written ? run_capture({python, script, spec.dump()}, env, stderr_path) : std::nullopt;
  const std::string err = last_line(stderr_path);
  unlink(script);
  unlink(stderr_path.c_str());
  if (!output) {
    info.error = "n/a (peer failed: " + (err.empty() ? std::string("no output") : err) + ")";
    return;
  }
  json result;
  try {
    result = json::parse(*output);
  } catch (const json::exception&) {
    info.error = "n/a (peer printed no JSON)";
    return;
  }
  if (!result.value("available", false)) {
    info.error = "n/a (" + result.value("error", std::string("torch missing")) + ")";
    return;
  }
  info.available = true;
  info.version = result.value("version", "");
  info.threads = result.value("threads", 0);
  info.openblas_config = result.value("openblas_config", "");
  for (const auto& path : result["blas"]) info.blas += (info.blas.empty() ? "" : ", ") + path.get<std::string>();
  for (Row& row : report.rows) {
    if (!result["cases"].contains(row.id)) continue;
    const json& r = result["cases"][row.id];
    if (r.contains("median_ms")) {
      row.torch_ms = r["median_ms"].get<double>();
      row.torch_note = format("%d repeats, min %.3f ms", r.value("repeats", 0), r.value("min_ms", 0.0));
    } else {
      row.torch_note = "n/a (" + r.value("error", std::string("failed")) + ")";
    }
  }
}

bool selected(const BenchOptions& o, const std::string& group, const std::string& id) {
  return o.cases.empty() || std::find(o.cases.begin(), o.cases.end(), group) != o.cases.end() ||
         std::find(o.cases.begin(), o.cases.end(), id) != o.cases.end();
}

std::string ratio(const std::optional<double>& other_ms, const Row& row) {
  if (!other_ms || !row.ran) return "n/a";
  return format("%.2f", *other_ms / row.median_ms);
}

}  // namespace

const std::vector<std::string>& case_groups() {
  static const std::vector<std::string> groups{"S1", "S2", "S3", "S4", "S5", "memory"};
  return groups;
}

bool is_case_name(const std::string& name) {
  const auto& groups = case_groups();
  if (std::find(groups.begin(), groups.end(), name) != groups.end()) return true;
  for (const AttentionCase& c : attention_cases())
    if (c.id == name) return true;
  return false;
}

bool BenchReport::pass() const {
  return std::all_of(rows.begin(), rows.end(), [](const Row& r) { return r.check_pass; });
}

BenchReport run_bench(const BenchOptions& options, std::FILE* log) {
  BenchReport report;
  report.options = options;
  report.threads = options.threads > 0 ? options.threads : get_num_threads();
  set_num_threads(report.threads);
  const int threads = report.threads;
  const Budget budget = budget_for(options);
  report.cpu = cpu_model();
  report.features = cpu_features();
  report.openblas_core = openblas_get_corename();

  std::fprintf(log, "measuring peaks (%d threads)...\n", threads);
  report.peaks = measure_peaks(threads, options.quick ? size_t(256) << 20 : size_t(1) << 30, options.quick ? 2 : 5);
  const auto done = [&](const Row& row) {
    std::fprintf(log, "  %-8s %10.3f ms  check %s\n", row.id.c_str(), row.median_ms, row.check.c_str());
    std::fflush(log);
  };
  if (selected(options, "memory", "memory")) {
    std::fprintf(log, "memory case (L=%lld)...\n", (long long)budget.memory_L);
    report.rows.push_back(run_memory_case(budget, report.peaks));
    done(report.rows.back());
  }
  std::vector<AttentionCase> ran;
  for (const AttentionCase& c : attention_cases()) {
    if (!selected(options, c.group, c.id)) continue;
    std::fprintf(log, "%s %s...\n", c.id.c_str(), c.shape().c_str());
    report.rows.push_back(run_attention_case(c, budget, report.peaks, threads));
    ran.push_back(c);
    done(report.rows.back());
  }
  const bool module = selected(options, "S5", "S5");
  if (module) {
    std::fprintf(log, "S5 module...\n");
    report.rows.push_back(run_module_case(budget, report.peaks, threads));
    done(report.rows.back());
  }
  if (options.peer && (!ran.empty() || module)) {
    std::fprintf(log, "PyTorch peer...\n");
    std::fflush(log);
    run_torch_peer(ran, module, budget, threads, report);
  } else if (!options.peer) {
    report.torch.error = "n/a (--no-peer)";
  }
  for (Row& row : report.rows)
    if (!row.torch_ms && row.torch_note.empty()) row.torch_note = row.id == "memory" ? "n/a (not a peer case)" : report.torch.error;
  return report;
}

void print_report(const BenchReport& r, std::FILE* out) {
  std::fprintf(out, "multihead bench%s: %s (%s), %d thread(s)\n", r.options.quick ? " --quick" : "", r.cpu.c_str(),
               r.features.c_str(), r.threads);
  const Peaks& p = r.peaks;
  std::fprintf(out, "peaks: fp32 FMA %.1f GFLOP/s (%s), bf16 dot %s, read %.1f GB/s (%.0f MiB buffer)\n",
               p.fp32_gflops, p.fp32_isa.c_str(),
               p.bf16_gflops ? format("%.1f GFLOP/s", *p.bf16_gflops).c_str() : "n/a (no avx512bf16)", p.read_gbps,
               double(p.read_bytes) / (1 << 20));
  std::fprintf(out, "%-8s %-20s %-44s %9s %9s %9s %3s %9s %-7s %6s %-8s %7s %7s  %s\n", "case", "what", "shape",
               "median ms", "min ms", "max ms", "n", "rate", "unit", "%peak", "of", "x naive", "x torch", "check");
  for (const Row& row : r.rows) {
    if (!row.ran) {
      std::fprintf(out, "%-8s %-20s %-44s %s\n", row.id.c_str(), row.title.c_str(), row.shape.c_str(), row.note.c_str());
      continue;
    }
    std::fprintf(out, "%-8s %-20s %-44s %9.3f %9.3f %9.3f %3d %9.1f %-7s %6s %-8s %7s %7s  %s\n", row.id.c_str(),
                 row.title.c_str(), row.shape.c_str(), row.median_ms, row.min_ms, row.max_ms, row.repeats, row.rate,
                 row.unit.c_str(), row.peak_fraction ? format("%.1f%%", 100 * *row.peak_fraction).c_str() : "n/a",
                 row.peak_name.c_str(), ratio(row.naive_ms, row).c_str(), ratio(row.torch_ms, row).c_str(),
                 row.check.c_str());
  }
  std::fprintf(out, "notes:\n");
  for (const Row& row : r.rows) {
    if (row.naive_ms) std::fprintf(out, "  %s: naive %.1f ms (%s)\n", row.id.c_str(), *row.naive_ms, row.naive_note.c_str());
    else if (!row.naive_note.empty()) std::fprintf(out, "  %s: naive %s\n", row.id.c_str(), row.naive_note.c_str());
    if (row.torch_ms) std::fprintf(out, "  %s: torch %.3f ms (%s)\n", row.id.c_str(), *row.torch_ms, row.torch_note.c_str());
    if (row.ran && !row.note.empty()) std::fprintf(out, "  %s: %s\n", row.id.c_str(), row.note.c_str());
  }
  std::fprintf(out, "  S3 rates count the K and V bytes read; K/V are evicted from the caches before each call\n");
  std::fprintf(out, "  OpenBLAS core type of this process: %s\n", r.openblas_core.c_str());
  if (r.torch.available)
    std::fprintf(out, "  PyTorch %s, %d threads, BLAS: %s [%s]\n", r.torch.version.c_str(), r.torch.threads,
                 r.torch.blas.c_str(), r.torch.openblas_config.c_str());
  else
    std::fprintf(out, "  PyTorch: %s\n", r.torch.error.c_str());
  std::fprintf(out, "checks: %s (check = worst error / allowed against the double oracle on a sample; <= 1 passes)\n",
               r.pass() ? "all passed" : "FAILED");
}

void write_json(const BenchReport& r, const std::string& path) {
  const auto opt = [](const std::optional<double>& x) { return x ? json(*x) : json(nullptr); };
  json rows = json::array();
  for (const Row& row : r.rows) {
    json j = {{"id", row.id}, {"title", row.title}, {"shape", row.shape}, {"ran", row.ran}, {"note", row.note},
              {"check", row.check}, {"check_pass", row.check_pass}};
    if (row.ran) {
      j.update({{"median_ms", row.median_ms}, {"min_ms", row.min_ms}, {"max_ms", row.max_ms},
                {"repeats", row.repeats}, {"flops", row.flops}, {"bytes", row.bytes}, {"unit", row.unit},
                {"rate", row.rate}, {"peak", row.peak_name}, {"peak_fraction", opt(row.peak_fraction)},
                {"naive_ms", opt(row.naive_ms)}, {"naive_note", row.naive_note},
                {"speedup_naive", row.naive_ms ? json(*row.naive_ms / row.median_ms) : json(nullptr)},
                {"torch_ms", opt(row.torch_ms)}, {"torch_note", row.torch_note},
                {"speedup_torch", row.torch_ms ? json(*row.torch_ms / row.median_ms) : json(nullptr)},
                {"rss_growth_mib", opt(row.rss_growth_mib)}});
    }
    rows.push_back(j);
  }
  const Peaks& p = r.peaks;
  const json doc = {
      {"quick", r.options.quick},
      {"threads", r.threads},
      {"cpu", r.cpu},
      {"features", r.features},
      {"openblas_core", r.openblas_core},
      {"peaks",
       {{"fp32_gflops", p.fp32_gflops}, {"fp32_isa", p.fp32_isa}, {"bf16_gflops", opt(p.bf16_gflops)},
        {"read_gbps", p.read_gbps}, {"read_bytes", p.read_bytes}}},
      {"torch",
       {{"available", r.torch.available}, {"version", r.torch.version}, {"threads", r.torch.threads},
        {"blas", r.torch.blas}, {"openblas_config", r.torch.openblas_config}, {"error", r.torch.error}}},
      {"rows", rows},
      {"pass", r.pass()},
  };
  std::ofstream out(path);
  out << doc.dump(2) << "\n";
  if (!out) throw Error(ErrorKind::kIoError, path, "file", "writable", std::strerror(errno));
}

void reexec_with_openblas_coretype() {
  constexpr const char* kMarker = "MULTIHEAD_BENCH_REEXEC";
  const char* current = std::getenv("OPENBLAS_CORETYPE");
  if (!__builtin_cpu_supports("avx512f") || std::getenv(kMarker) || (current && std::strcmp(current, "SkylakeX") == 0))
    return;
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t pos = 0; pos < cmdline.size();) {
    const size_t end = cmdline.find('\0', pos);
    args.push_back(cmdline.substr(pos, end - pos));
    pos = end == std::string::npos ? cmdline.size() : end + 1;
  }
  if (args.empty()) return;
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fprintf(stderr, "multihead bench: re-running with OPENBLAS_CORETYPE=SkylakeX (was %s): OpenBLAS reads it when loaded\n",
               current ? current : "unset");
  std::fflush(nullptr);
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  setenv(kMarker, "1", 1);
  execv("/proc/self/exe", argv.data());
  // Only reached when exec failed: go on with the core type OpenBLAS already picked.
  unsetenv(kMarker);
}

}  // namespace multihead::bench
