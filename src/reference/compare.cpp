#include "reference/compare.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "multihead/error.hpp"

namespace multihead::reference {
namespace {

// Absolute tolerances for results of magnitude <= 1; compare() multiplies both by
// max(1, max|oracle|), so they act as relative tolerances for larger results.
//
// floor: what the rule grants even when the baseline happens to be (nearly) exact,
//   e.g. for outputs that are sums of a few exactly representable terms. A
//   different but equally valid summation order costs a few units of roundoff per
//   entry: f32 has unit roundoff u = 2^-24 = 6e-8, so 1e-6 allows ~16 u. bf16
//   (u = 2^-8 = 3.9e-3) and f16 (u = 2^-11 = 4.9e-4) results are rounded to the
//   16-bit type once anyway, and the baseline, rounded the same way, supplies that
//   through k; 1e-3 (a quarter of bf16's u, two of f16's) covers the rest.
//   f32 gradients get 4e-6 (~64 u): each entry is a sum over rows of dS = P (dP - D),
//   where dP and D are D-long dot products that cancel; with few keys and D = 256
//   the baseline's error is by chance ~5x below ours about once in 5000 random
//   cases (seen in the random-case test), while a real defect costs >= 1e-3.
// ceiling: a hard cap, so that a poor baseline (one whose error is inflated by an
//   unlucky case) cannot make a broken kernel pass. It sits far above any honest
//   error. Measured at B=2, H=8, L=1025, D=128 with N(0, 1) inputs, the f32 baseline
//   is off by 6e-7 (out) and 1.4e-6 (dk), so 1e-3 forward leaves ~1000x headroom;
//   the bf16 baseline (P and outputs rounded to bf16) is off by 1.5e-3 (out) and
//   2.8e-3 (dk), so 5e-2 forward leaves ~30x. Gradients sum over a whole sequence
//   and go through dS = P (dP - D), which cancels, so their caps are 5x (f32) and
//   2x (16-bit) wider.
// A case may scale floor and ceiling (dq and dk grow with scale·√Dv / (1 - p)) and add
// a derived bound on an error its baseline does not reliably show (dsinks): Allowance in
// compare.hpp, each term derived in reference/allowances.cpp where it is computed.
struct Tolerance {
  double floor;
  double ceiling;
};

Tolerance tolerance(DType dtype, Pass pass) {
  const bool forward = pass == Pass::kForward;
  if (dtype == DType::kF32) return forward ? Tolerance{1e-6, 1e-3} : Tolerance{4e-6, 5e-3};
  return {1e-3, forward ? 5e-2 : 1e-1};  // bf16, f16
}

// k of the rule: ours may be this many times worse than the baseline.
double error_factor(Pass pass) { return pass == Pass::kForward ? 2.0 : 3.0; }

double read_float(const TensorView& t, int64_t offset) {
  switch (t.dtype) {
    case DType::kF32: return static_cast<const float*>(t.data)[offset];
    case DType::kBF16: return bf16_to_float(static_cast<const bf16*>(t.data)[offset]);
    case DType::kF16: return f16_to_float(static_cast<const f16*>(t.data)[offset]);
    default:
      throw Error(ErrorKind::kInvalidArgument, "ours", "dtype", "f32, bf16 or f16", to_string(t.dtype));
  }
}

// The elements of a view in row-major order of its logical shape.
std::vector<double> read_view(const TensorView& t) {
  std::vector<double> r;
  r.reserve(size_t(std::max<int64_t>(t.numel(), 0)));
  if (t.numel() == 0) return r;
  Shape index{};
  while (true) {
    r.push_back(read_float(t, t.offset(index)));
    int d = t.rank - 1;
    for (; d >= 0; --d) {  // odometer increment, last dim fastest
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
    if (d < 0) return r;
  }
}

Comparison compare_with(const std::string& what, const std::vector<double>& ours,
                        const std::vector<double>& oracle, const std::vector<double>& baseline,
                        Tolerance tol, Pass pass, Allowance allowance) {
  if (ours.size() != oracle.size() || baseline.size() != oracle.size())
    throw Error(ErrorKind::kInvalidShape, what, "numel", std::to_string(oracle.size()),
                "ours " + std::to_string(ours.size()) + ", baseline " + std::to_string(baseline.size()));
  Comparison c;
  c.what = what;
  double magnitude = 1.0;
  for (double x : oracle)
    if (std::isfinite(x)) magnitude = std::max(magnitude, std::abs(x));
  constexpr double kInf = std::numeric_limits<double>::infinity();
  for (size_t e = 0; e < oracle.size(); ++e) {
    const double o = oracle[e];
    if (!std::isfinite(o)) {
      // -inf lse of an empty row: ours must say exactly the same; a NaN oracle fails.
      if (std::isnan(o) || ours[e] != o) c.nan_or_inf_mismatch = true;
      continue;
    }
    if (!std::isfinite(ours[e])) {
      c.nan_or_inf_mismatch = true;
      continue;
    }
    c.max_error = std::max(c.max_error, std::abs(ours[e] - o));
    // A NaN or infinite baseline grants nothing beyond the ceiling.
    const double be = std::abs(baseline[e] - o);
    c.baseline_error = std::max(c.baseline_error, std::isfinite(be) ? be : kInf);
  }
  const double scale = std::max(1.0, allowance.scale);
  c.allowed = std::min(error_factor(pass) * c.baseline_error + tol.floor * scale * magnitude,
                       tol.ceiling * scale * magnitude) +
              std::max(0.0, allowance.extra);
  return c;
}

}  // namespace

std::string Comparison::to_string() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-6s max error %.3e  baseline %.3e  allowed %.3e  %s", what.c_str(), max_error,
                baseline_error, allowed,
                pass() ? "pass" : (nan_or_inf_mismatch ? "FAIL (NaN/inf mismatch)" : "FAIL"));
  return buf;
}

Comparison compare(const std::string& what, const TensorView& ours, const std::vector<double>& oracle,
                   const std::vector<double>& baseline, DType input_dtype, Pass pass, Allowance allowance) {
  // Results stored in a 16-bit dtype are judged as 16-bit even from f32 inputs.
  const DType judged = ours.dtype == DType::kF32 ? input_dtype : ours.dtype;
  return compare_with(what, read_view(ours), oracle, baseline, tolerance(judged, pass), pass, allowance);
}

Comparison compare(const std::string& what, const std::vector<double>& ours, const std::vector<double>& oracle,
                   const std::vector<double>& baseline, DType input_dtype, Pass pass, Allowance allowance) {
  return compare_with(what, ours, oracle, baseline, tolerance(input_dtype, pass), pass, allowance);
}

}  // namespace multihead::reference
