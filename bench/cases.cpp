// The rows of `multihead bench`: the attention speed cases (reference::speed_cases(),
// S1-S4), the long-sequence memory case and the module (S5), each timed, rated against a
// peak, checked against the oracle and compared with the naive path.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>

#include "bench/harness.hpp"
#include "bench/naive.hpp"
#include "multihead/multi_head_attention.hpp"

namespace multihead::bench {

namespace {

using reference::Case;
using reference::SpeedCase;

// (i, j) pairs a query may attend (exactly half-and-a-diagonal for square causal).
double visible_pairs(const Case& c) {
  if (c.causal == CausalAlign::kNone) return double(c.Lq) * double(c.Lk);
  const int64_t offset = c.causal == CausalAlign::kBottomRight ? c.Lk - c.Lq : 0;
  double pairs = 0;
  for (int64_t i = 0; i < c.Lq; ++i) pairs += double(std::clamp<int64_t>(i + offset + 1, 0, c.Lk));
  return pairs;
}
// 4·B·H·D per visible pair forward; the backward is 2.5× that.
double timed_flops(const SpeedCase& sc) {
  const Case& c = sc.problem;
  return 4.0 * double(c.B * c.H * c.D) * visible_pairs(c) * (sc.backward ? 3.5 : 1.0);
}
double kv_bytes(const Case& c) { return 2.0 * double(c.B * c.Lk * c.Hkv * c.D) * double(dtype_size(c.dtype)); }
NaiveShape naive_shape(const Case& c) {
  return {c.B, c.Lq, c.Lk, c.H, c.Hkv, c.D, c.D, c.causal != CausalAlign::kNone, 1.0f / std::sqrt(float(c.D))};
}

Row make_row(std::string id, std::string title, std::string shape) {
  Row row;
  row.id = std::move(id), row.title = std::move(title), row.shape = std::move(shape);
  return row;
}




void set_naive(Row& row, const NaiveTime& t, int64_t total, const char* unit) {
  row.naive_ms = t.ms;
  row.naive_note = t.units == total ? "full shape"
                                    : format("timed on %lld of %lld %s, scaled", (long long)t.units,
                                             (long long)total, unit);
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

}  // namespace

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

std::string shape_text(const Case& c) {
  std::string s = format("B=%lld ", (long long)c.B);
  s += c.Lq == c.Lk ? format("L=%lld", (long long)c.Lq) : format("Lq=%lld Lk=%lld", (long long)c.Lq, (long long)c.Lk);
  s += format(" H=%lld", (long long)c.H);
  if (c.Hkv != c.H) s += format(" Hkv=%lld", (long long)c.Hkv);
  s += format(" D=%lld", (long long)c.D);
  if (c.causal == CausalAlign::kTopLeft) s += " causal";
  if (c.causal == CausalAlign::kBottomRight) s += c.Lq == c.Lk ? " causal" : " causal-br";
  return s;
}

Row run_attention_case(const SpeedCase& sc, const Budget& budget, const Peaks& peaks, int threads) {
  const Case& c = sc.problem;
  Row row = make_row(sc.id, sc.title, shape_text(c));
  row.flops = timed_flops(sc);
  if (sc.decode) row.bytes = kv_bytes(c);
  Input q = random_input(c.dtype, {c.B, c.Lq, c.H, c.D}, 1);
  Input k = random_input(c.dtype, {c.B, c.Lk, c.Hkv, c.D}, 2);
  Input v = random_input(c.dtype, {c.B, c.Lk, c.Hkv, c.D}, 3);
  // A bf16 model keeps bf16 activations: the output is in the input dtype.
  Tensor out = Tensor::empty(c.dtype, {c.B, c.Lq, c.H, c.D});
  AttentionOptions options;
  options.causal = c.causal;

  if (!sc.backward) {
    const ForwardOutputs outputs{out.view(), std::nullopt, std::nullopt};
    set_stats(row, time_calls(budget, [&] { attention_forward(q.t, k.t, v.t, outputs, options); },
                              [&] { if (sc.decode) evict_caches(); }));
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
  const bool bf16_dot = c.dtype == DType::kBF16 && !sc.decode;
  set_rate(row, sc.decode ? peaks.read_gbps : bf16_dot ? peaks.bf16_gflops.value_or(0) : peaks.fp32_gflops,
           sc.decode ? "read" : bf16_dot ? "bf16 dot" : "fp32 FMA");

  // The naive path on the same (bf16-rounded) values, in f32.
  const NaiveShape s = naive_shape(c);
  const int64_t groups = c.B * c.Hkv;
  const auto heads = [&](std::vector<float>& t, int64_t L, int64_t n) { return HeadsView{t.data(), L * n * c.D, n * c.D}; };
  std::vector<float> nout(size_t(c.B * c.Lq * c.H * c.D));
  if (!sc.backward) {
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
  return row;
}

}  // namespace multihead::bench
