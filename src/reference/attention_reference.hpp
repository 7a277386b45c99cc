// The oracle: naive attention exactly as docs/CONTRACT.md states it, with an
// analytical backward. One template on the accumulation type:
//   Acc = double : the oracle (tests, `multihead check`)
//   Acc = float  : the "baseline" of the pass rule, i.e. the same math done the way a
//                  plain implementation in the test dtype would do it.
// Inputs are read from views of any dtype and converted; results are contiguous
// row-major std::vector<double> in the shapes named below.
#pragma once

#include <vector>

#include "multihead/attention.hpp"

namespace multihead::reference {

struct ForwardResult {
  std::vector<double> out;    // (B, Lq, H, Dv)   varlen: (1, total_q, H, Dv)
  std::vector<double> lse;    // (B, H, Lq)       varlen: (1, H, total_q); -inf for empty rows
  std::vector<double> probs;  // (B, H, Lq, Lk)   empty for varlen
};

struct BackwardResult {
  std::vector<double> dq;      // shape of q
  std::vector<double> dk;      // shape of k
  std::vector<double> dv;      // shape of v
  std::vector<double> dbias;   // shape of options.bias (contiguous), empty without bias
  std::vector<double> dsinks;  // (H), empty without sinks
};

// round_to: where a low-precision implementation rounds (P before P·V, and the
// outputs) the float baseline rounds to this dtype; the double oracle ignores it.
ForwardResult attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                                const AttentionOptions& options);
BackwardResult attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                                  const TensorView& v, const AttentionOptions& options);

ForwardResult baseline_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                               const AttentionOptions& options, DType round_to);
BackwardResult baseline_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                                 const TensorView& v, const AttentionOptions& options, DType round_to);

}  // namespace multihead::reference
