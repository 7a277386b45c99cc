// Which inputs of a backward call hold values that the SIMD backward's tile products would
// let through 0 · x: with them it runs on the portable kernels, which skip every zero P
// and dS (docs/CONTRACT.md, "Non-finite inputs"). Non-finite K and V stay on the SIMD
// kernels: a key no row attends has its K zeroed for dQ, and dS is 0 wherever P is.
#pragma once

#include "multihead/attention.hpp"

namespace multihead::detail {

// Any NaN or ±inf among t's elements (any float dtype, any strides).
bool holds_nonfinite(const TensorView& t);
// Any NaN or +inf (-inf is a legal value there: an additive mask, an empty row's lse).
bool holds_nan_or_positive_inf(const TensorView& t);

// The backward's query-side inputs with a non-finite value: q, out and dout anywhere, lse
// and bias NaN or +inf (a NaN lse is also what a row that sees a NaN key gets), sinks
// NaN or ±inf.
bool backward_inputs_nonfinite(const TensorView& dout, const TensorView& q, const TensorView& out,
                               const TensorView& lse, const AttentionOptions& options);

}  // namespace multihead::detail
