// The pass rule of docs/ARCHITECTURE.md, in one place for tests and `multihead check`:
//   max|ours - oracle| <= k * max|baseline - oracle| + floor,  and  <= ceiling
// with k = 2 for forward quantities and 3 for backward ones; floor and ceiling
// scale with the oracle's magnitude and depend on the dtype. A case may widen the rule only
// by derived terms (Allowance).
#pragma once

#include <string>
#include <vector>

#include "multihead/tensor.hpp"

namespace multihead::reference {

enum class Pass { kForward, kBackward };

// What one case adds to the rule, each term derived where the case computes it
// (reference/allowances.cpp): the defaults leave the rule as stated above.
struct Allowance {
  // Multiplies floor and ceiling: the case's error scale relative to the one they were set
  // at (values below 1 count as 1).
  double scale = 1.0;
  // Absolute, added to the allowed error (floor and ceiling alike): a derived bound on an
  // error source whose size the baseline's own error does not reliably show.
  double extra = 0.0;
};

struct Comparison {
  std::string what;        // "out", "lse", "dq", ...
  double max_error = 0;    // max |ours - oracle| (inf entries must match exactly)
  double baseline_error = 0;
  double allowed = 0;      // min(k * baseline_error + floor · scale, ceiling · scale) + extra
  bool nan_or_inf_mismatch = false;  // ours has NaN, or an infinity where the oracle has none
  bool pass() const { return !nan_or_inf_mismatch && max_error <= allowed; }
  std::string to_string() const;
};

// ours: a view of any float dtype and strides whose logical shape (row-major order
// of elements) matches the oracle vectors, which are contiguous. A result stored in
// bf16/f16 is judged with the 16-bit tolerances even when the inputs were f32 (pass a
// baseline rounded to that dtype too).
Comparison compare(const std::string& what, const TensorView& ours, const std::vector<double>& oracle,
                   const std::vector<double>& baseline, DType input_dtype, Pass pass, Allowance allowance = {});
// Same, for results already in a contiguous vector.
Comparison compare(const std::string& what, const std::vector<double>& ours,
                   const std::vector<double>& oracle, const std::vector<double>& baseline,
                   DType input_dtype, Pass pass, Allowance allowance = {});

}  // namespace multihead::reference
