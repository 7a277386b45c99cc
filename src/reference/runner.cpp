// The random-case runner: a case through the library, the double oracle and the float
// baseline, judged by the pass rule (compare.hpp); `multihead check` runs many of them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>

#include "reference/allowances.hpp"
#include "reference/attention_reference.hpp"
#include "reference/cases.hpp"

namespace multihead::reference {

bool CaseResult::pass() const {
  if (!problems.empty()) return false;
  return std::all_of(comparisons.begin(), comparisons.end(), [](const Comparison& c) { return c.pass(); });
}

namespace {
double ratio(const Comparison& c) {
  if (c.nan_or_inf_mismatch || std::isnan(c.max_error)) return std::numeric_limits<double>::infinity();
  if (c.allowed > 0) return c.max_error / c.allowed;
  return c.max_error > 0 ? std::numeric_limits<double>::infinity() : 0.0;
}
}  // namespace

const Comparison* CaseResult::worst() const {
  const Comparison* w = nullptr;
  for (const Comparison& c : comparisons)
    if (!w || ratio(c) > ratio(*w)) w = &c;
  return w;
}

double CaseResult::worst_ratio() const {
  if (!problems.empty()) return std::numeric_limits<double>::infinity();
  const Comparison* w = worst();
  return w ? ratio(*w) : 0.0;
}

std::string CaseResult::report() const {
  std::string s;
  for (const Comparison& c : comparisons) s += (c.pass() ? "  ok   " : "  FAIL ") + c.to_string() + "\n";
  for (const std::string& p : problems) s += "  FAIL " + p + "\n";
  return s;
}

CaseResult run_case(const Case& c, bool backward) {
  constexpr uint8_t kCanary = 0x7b;  // 0x7b7b7b7b is a huge finite float: unwritten outputs fail compare
  CaseResult r;
  const char* stage = "materialize";
  try {
    const CaseInputs in = materialize(c);
    const AttentionOptions& o = in.options;
    const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;

    StridedTensor out = make_strided(DType::kF32, c.B, c.Lq, c.H, c.Dv, c.layout, kCanary);
    Tensor lse = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq});  // (B, H, Lq)
    std::memset(lse.data(), kCanary, lse.nbytes());
    Tensor probs;  // (B, H, Lq, Lk)
    ForwardOutputs fo{out.view, lse.view(), std::nullopt};
    if (c.probs && !c.varlen()) {
      probs = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq, c.Lk});
      std::memset(probs.data(), kCanary, probs.nbytes());
      fo.probs = probs.view();
    }
    stage = "multihead::attention_forward";
    multihead::attention_forward(q, k, v, fo, o);
    if (!gaps_unchanged(out, kCanary)) r.problems.push_back("attention_forward wrote outside out's view");

    stage = "reference::attention_forward";
    const ForwardResult oracle = reference::attention_forward(q, k, v, o);
    stage = "reference::baseline_forward";
    const ForwardResult base = baseline_forward(q, k, v, o, c.dtype);
    stage = "compare";
    r.comparisons.push_back(compare("out", out.view, oracle.out, base.out, c.dtype, Pass::kForward));
    r.comparisons.push_back(compare("lse", lse.view(), oracle.lse, base.lse, c.dtype, Pass::kForward));
    if (fo.probs)
      r.comparisons.push_back(compare("probs", probs.view(), oracle.probs, base.probs, c.dtype, Pass::kForward));
    if (!backward) return r;

    StridedTensor dq = make_strided(DType::kF32, c.B, c.Lq, c.H, c.D, c.layout, kCanary);
    StridedTensor dk = make_strided(DType::kF32, c.B, c.Lk, c.Hkv, c.D, c.layout, kCanary);
    StridedTensor dv = make_strided(DType::kF32, c.B, c.Lk, c.Hkv, c.Dv, c.layout, kCanary);
    BackwardOutputs grads{dq.view, dk.view, dv.view, std::nullopt, std::nullopt};
    Tensor dbias, dsinks;
    if (o.bias) {
      dbias = Tensor::empty(DType::kF32, o.bias->rank, o.bias->shape);  // shape of bias
      std::memset(dbias.data(), kCanary, dbias.nbytes());
      grads.dbias = dbias.view();
    }
    if (o.sinks) {
      dsinks = Tensor::empty(DType::kF32, {c.H});  // (H)
      std::memset(dsinks.data(), kCanary, dsinks.nbytes());
      grads.dsinks = dsinks.view();
    }
    stage = "multihead::attention_backward";
    multihead::attention_backward(in.dout.view(), q, k, v, out.view, lse.view(), grads, o);
    if (!gaps_unchanged(dq, kCanary) || !gaps_unchanged(dk, kCanary) || !gaps_unchanged(dv, kCanary))
      r.problems.push_back("attention_backward wrote outside a gradient's view");

    stage = "reference::attention_backward";
    const BackwardResult oracle_b = reference::attention_backward(in.dout.view(), q, k, v, o);
    stage = "reference::baseline_backward";
    const BackwardResult base_b = baseline_backward(in.dout.view(), q, k, v, o, c.dtype);
    stage = "compare";
    const Allowance gradient{gradient_error_scale(c), 0.0};
    r.comparisons.push_back(compare("dq", dq.view, oracle_b.dq, base_b.dq, c.dtype, Pass::kBackward, gradient));
    r.comparisons.push_back(compare("dk", dk.view, oracle_b.dk, base_b.dk, c.dtype, Pass::kBackward, gradient));
    r.comparisons.push_back(compare("dv", dv.view, oracle_b.dv, base_b.dv, c.dtype, Pass::kBackward));
    if (grads.dbias)
      r.comparisons.push_back(compare("dbias", dbias.view(), oracle_b.dbias, base_b.dbias, c.dtype,
                                      Pass::kBackward, Allowance{1.0, dbias_extra(c, oracle_b)}));
    if (grads.dsinks)
      r.comparisons.push_back(compare("dsinks", dsinks.view(), oracle_b.dsinks, base_b.dsinks, c.dtype,
                                      Pass::kBackward, Allowance{1.0, dsinks_extra(c, oracle_b)}));
  } catch (const std::exception& e) {
    r.problems.push_back(std::string(stage) + " threw: " + e.what());
  }
  return r;
}

CheckReport run_checks(int64_t n, uint64_t seed, bool backward, const std::vector<CaseKind>& kinds) {
  CheckReport report;
  report.seed = seed;
  report.backward = backward;
  for (CaseKind kind : kinds) {
    CheckRow row;
    row.kind = kind;
    report.rows.push_back(row);
  }
  if (kinds.empty()) return report;
  for (int64_t i = 0; i < n; ++i) {
    const size_t slot = size_t(i) % kinds.size();
    const Case c = case_from_seed(kinds[slot], derive_seed(seed, uint64_t(i)));
    CaseResult result = run_case(c, backward);
    CheckRow& row = report.rows[slot];
    ++row.count;
    row.flops += c.flops();
    const double ratio = result.worst_ratio();
    if (row.count == 1 || ratio > row.worst_ratio) {
      row.worst_ratio = ratio;
      const Comparison* w = result.worst();
      row.worst_what = !result.problems.empty() ? "error" : w ? w->what : "-";
      row.worst_error = w ? w->max_error : 0.0;
      row.worst_allowed = w ? w->allowed : 0.0;
    }
    if (!result.pass()) {
      ++row.failed;
      report.failures.push_back(CheckFailure{c, std::move(result)});
    }
  }
  return report;
}

}  // namespace multihead::reference
