// The oracle: naive attention exactly as docs/CONTRACT.md states it, with an
// analytical backward. One template on the accumulation type:
//   Acc = double : the oracle (tests, `multihead check`)
//   Acc = float  : the "baseline" of the pass rule, i.e. the same math done the way a
//                  plain implementation in the test dtype would do it.
// Inputs are read from views of any float dtype and strides (stride 0 broadcasts)
// and converted; results are contiguous row-major std::vector<double> in the shapes
// named below. Results do not depend on the thread count. The oracle trusts the API's
// validation and checks only what it needs to stay in bounds (throwing Error).
// ALiBi's diagonal is the causal one for top-left, else bottom-right (as windows).
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
  std::vector<double> dbias;   // shape of options.bias (contiguous), empty without bias;
                               // summed over its size-1 and missing dims, one entry per
                               // logical element along a stride-0 dim
  std::vector<double> dsinks;  // (H), empty without sinks
  // (H), empty without sinks: the sensitivity of dsinks to rounding P ∘ Z before P·V.
  // With a_bij = exp(sink_h - lse_bi) · P_bij · Z_bij · (dout_bi · v_bj) over every (b, i, j)
  // of head h, the l1 and l2 norms Σ|a| and sqrt(Σ a²): relative errors δ_bij (|δ| <= u) in
  // P ∘ Z move dsink_h by -Σ a·δ (reference/allowances.cpp turns this into an allowance).
  std::vector<double> dsinks_rounding_l1, dsinks_rounding_l2;
  // (H), empty without sinks: the sensitivity of dsinks to the f32 error of the scores.
  // dsink_h moves by Σ b_ij δs_ij, b_ij = e^{sink - lse_i} P_ij (Z_ij dP0_ij - 2 D_i) (through
  // lse_i and D_i), and δs_ij is a sum of single roundings (each <= 2^-24 of its result): the
  // D additions of the dot product q_i · k_j (result: a partial sum, times scale), the
  // scaling and softcap (2|s_ij|), the exponent's subtraction (|s_ij - lse_i|) and exp's
  // 1 ulp (2). dsinks_score_l1 = Σ |b| (D·scale·Σ_d |q_id k_jd| + the rest), the worst case
  // in any order; dsinks_score_l2 = sqrt(Σ b² (scale² Σ_m (Σ_{d<=m} q_id k_jd)² + the rest²)),
  // the l2 norm of the single roundings' coefficients in sequential order (a 16-lane order's
  // partial sums are shorter).
  std::vector<double> dsinks_score_l1, dsinks_score_l2;
  // Shape of dbias, empty without bias: the same sensitivity for dbias. dbias_e sums
  // dS_ij = P_ij (Z_ij dP_ij - D_i) over the (b, h, i, j) that land on e, so a row's δD_i =
  // Σ_j' a_ij' δ_ij' (a as above, without the sink factor) moves it by -W δD_i, with W the
  // row's Σ P_ij over those j: the norms over every row's W·a_ij'.
  std::vector<double> dbias_rounding_l1, dbias_rounding_l2;
  // Shape of dbias, empty without bias: its sensitivity to the f32 rounding of the two
  // Dv-long dot products in dS_ij = P_ij (Z_ij dP_ij - D_i), dP_ij = dout_i · v_j and
  // D_i = dout_i · out_i (their single roundings, in units of 2^-24): l1 = Σ |P Z| Dv Σ|dout v|
  // + W Dv Σ|dout out| (worst case), l2 = the l2 norm of the roundings' coefficients
  // (partial sums in sequential order), over the (b, h, i, j) that land on each element.
  std::vector<double> dbias_dot_l1, dbias_dot_l2;
};

// The oracle: double accumulation, nothing rounded.
ForwardResult attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                                const AttentionOptions& options);
BackwardResult attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                                  const TensorView& v, const AttentionOptions& options);

// round_to: where a low-precision implementation rounds, the float baseline rounds
// to this dtype when it is bf16 or f16: P before P·V (forward and dv), dS before
// dq/dk, and the outputs out, dq, dk, dv. lse, probs, dbias, dsinks stay float.
// With kF32 the baseline is plain float math.
ForwardResult baseline_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                               const AttentionOptions& options, DType round_to);
BackwardResult baseline_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                                 const TensorView& v, const AttentionOptions& options, DType round_to);

}  // namespace multihead::reference
