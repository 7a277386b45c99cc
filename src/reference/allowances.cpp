// Per-case widenings of the pass rule (compare.hpp's Allowance), each derived beside it:
// what a case's shape and options add to the error an honest implementation makes.
#include "reference/allowances.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace multihead::reference {

namespace {

// Unit roundoff of the 16-bit dtype a low-precision implementation rounds P ∘ Z (and dS) to
// (the baseline's model, attention_reference.hpp): 2^-8 for bf16, 2^-11 for f16; 0 for f32.
double p_rounding_unit(DType dtype) {
  if (dtype == DType::kBF16) return 0x1p-8;
  if (dtype == DType::kF16) return 0x1p-11;
  return 0.0;
}

// u · min(l1, 7 l2), maximised over entries: the bound derived at dsinks_extra.
double rounding_bound(const Case& c, const std::vector<double>& l1, const std::vector<double>& l2) {
  const double u = p_rounding_unit(c.dtype);
  double extra = 0.0;
  for (size_t e = 0; e < l1.size(); ++e) extra = std::max(extra, u * std::min(l1[e], 7.0 * l2[e]));
  return extra;
}

}  // namespace

// The floor and ceiling of dq and dk scale by max(1, scale·√Dv / (1 - p)).
//
// Derivation. dq_i = scale Σ_j dS'_ij k_j with dS_ij = P_ij (Z_ij dP_ij - D_i),
// dP_ij = dout_i · v_j, D_i = dout_i · out_i (dk_j = scale Σ_i dS'_ij q_i likewise). Let u be
// the unit roundoff of whatever perturbs the terms: 2^-8 where a 16-bit implementation rounds
// P ∘ Z before P·V and dS before the dq/dk products, a few units of f32's 2^-24 where an equally
// valid order of f32 operations differs. Then out_i is off by at most u Σ_j P_ij Z_ij |v_j|,
// D_i by |δD_i| <= u Σ_j P_ij Z_ij |dout_i · v_j|, dS by u |dS_ij|, and to first order in u
// (the softcap factor 1 - tanh² is <= 1):
//   |δdq_id| <= scale Σ_j (P_ij |δD_i| + u |dS_ij|) |k_jd|
//            <= 3u · scale · max_j |dout_i · v_j| · max Z · max |k_d|,
// using Σ_j P_ij <= 1 and |D_i| <= max_j Z_ij |dout_i · v_j|. With the cases' N(0, 1) data a
// Dv-long dot product dout_i · v_j has size √Dv, and Z <= 1 / (1 - p): the honest error of dq
// and dk is proportional to scale · √Dv / (1 - p). The gradient's own size is the same while
// the softmax is spread, so compare()'s magnitude max(1, max|oracle|) follows it; but where P
// saturates (one key per row: Lk = 1, a window of width 0, or scores spread by scale·√D >> 1),
// the oracle's dS goes to 0 (Z dP_ij = D_i) while the rounding of Z dP_ij - D_i does not, the
// magnitude falls to 1 and floor and ceiling become absolute. Both were set at
// scale·√Dv = 1 (D = Dv, scale = 1/√D, no dropout: the ceiling measured at D = Dv = 128), so
// both scale by this factor (1 there). Seen: mixed:8859192053360702186 (bf16, D = 1, Dv = 77,
// window (0, 0), dropout 0.1, scale·√D = 1 but scale·√Dv = 8.8): dk off by 7.4e-2 against the
// 1e-1 ceiling, the baseline by 9.7e-2, both through δD_i; dropout:2735198118157566341 (f32,
// Lq = Lk = 1, p = 0.9, factor 10): dq off by 6.8e-6 against 3 x 8.9e-7 + the 4e-6 floor. The
// factor is in √Dv, not √D: the error enters through dP = dout·v and D = dout·out, which are
// Dv long. out, lse, dv carry no such factor (out and dv are sums of P ∘ Z times rows of V or
// dout, whose rounding is relative to their own size; lse sees no P ∘ Z rounding).
double gradient_error_scale(const Case& c) {
  const double scale = c.scale ? double(*c.scale) : 1.0 / std::sqrt(double(c.D));
  return std::max(1.0, scale * std::sqrt(double(c.Dv)) / (1.0 - double(c.dropout_p)));
}

// dsinks gets u · min(Σ|a|, 7 sqrt(Σ a²)) on top of the rule, maximised over heads, with a the
// sensitivities of BackwardResult::dsinks_rounding_l1 / _l2.
//
// Why. dsink_h = -Σ_{b,i} e^{sink_h - lse_i} D_i is a reduction of every row's D_i =
// dout_i · out_i into H numbers. A 16-bit implementation rounds P ∘ Z before P·V (the SIMD
// kernels round the unnormalised e^{s - m} ∘ Z to bf16, the baseline the normalised P ∘ Z),
// so out_i = Σ_j P_ij Z_ij (1 + δ_ij) v_j with |δ_ij| <= u, and
//   dsink_h(ours) - dsink_h = -Σ_{b,i,j} a_bij δ_bij,  a_bij = e^{sink - lse_i} P_ij Z_ij (dout_i · v_j)
// (the kernels' own reduction is exact to f32 given their out and lse). Ours and the baseline's
// δ are different roundings of different numbers, so the two errors are independent draws of
// the same size; with H = 1 the rule's max over H entries is one draw each, and
// |ours| > 3 |baseline| + floor happened for 6 of 20000 bf16/mixed cases (e.g. bf16:13161521189755830757:
// ours 1.6e-2, baseline 2.9e-3). The bound: |Σ a δ| <= u Σ|a| always; and with the rounding
// errors modelled as independent, zero-mean and bounded by u (the probabilistic model of
// rounding error, Higham & Mary 2019), Hoeffding's inequality gives
// P(|Σ a δ| >= λ u sqrt(Σ a²)) <= 2 exp(-λ² / 2): λ = 7 makes that 5e-11 per head.
// Other errors (f32 sums, the exponentials) are covered by the floor.
//
// And the scores. Each kernel computes s_ij in f32 (bf16 inputs too), off by |δs_ij| <=
// 2^-24 c_ij (BackwardResult::dsinks_score_l1), which moves lse_i and out_i and so
// dsink_h by Σ b_ij δs_ij. Where few heads and many rows meet (H = 1 or 2, Lk = 2, D >= 111,
// 60 rows and more) the baseline's draw of this error fell below ours by chance in f32:
// sinks:10090438984373657148 (dsinks off by 1.5e-5 against 1.4e-5 allowed) and
// extra_keys:546998634054731420 (9.1e-6 against 7.5e-6) in the 100000-case check. The same
// Hoeffding bound, 2^-24 min(Σ|b c|, 7 sqrt(Σ (b c)²)), is added for every dtype.
double dsinks_extra(const Case& c, const BackwardResult& oracle) {
  double score = 0.0;
  for (size_t h = 0; h < oracle.dsinks_score_l1.size(); ++h)
    score = std::max(score, 0x1p-24 * std::min(oracle.dsinks_score_l1[h], 7.0 * oracle.dsinks_score_l2[h]));
  return rounding_bound(c, oracle.dsinks_rounding_l1, oracle.dsinks_rounding_l2) + score;
}

// dbias gets the same bound, maximised over its elements (BackwardResult::dbias_rounding_l1 /
// _l2).
//
// Why. dbias_e = Σ dS_ij over the (b, h, i, j) that land on e, with dS_ij = P_ij (Z_ij dP_ij -
// D_i): D_i = dout_i · out_i carries the P ∘ Z rounding of out exactly as in dsinks, and each
// row passes it on weighted by its P_ij (the kernels' P and dP are f32 and their reduction into
// dbias exact to f32). Where one row dominates an element (Lk of 1 or 2, so P saturates and the
// exact dS nearly cancels) the rule's max over elements compares one draw with another, and
// ours exceeded 3 x the baseline's + floor in 2 of 100000 random cases, both bf16 with bias
// and Lk <= 2 (mixed:18240606595194708691, dbias off by 1.6e-2 against 1.5e-2 allowed;
// mixed:13043964939689596039, 3.4e-2 against 2.8e-2). The Hoeffding bound applies as above.
//
// And f32's own rounding: dP_ij and D_i are Dv-long f32 dot products whose difference dS
// takes; where it nearly cancels (one key with a sink: dS = P Z dP (1 - P)) and many rows
// reduce into one element, their rounding is what dbias shows, and the baseline's draw of it
// fell below ours by chance: mixed:1870232694793146763 (f32, Lq = Lk = 1, 12 rows into one
// element, D = Dv = 128, dropout, sinks): dbias off by 1.1e-5 against 7.9e-6 allowed, in a
// 16000-case run with seed 2. The same Hoeffding bound over those roundings,
// 2^-24 min(l1, 7 l2) from BackwardResult::dbias_dot_l1 / _l2, is added for every dtype.
double dbias_extra(const Case& c, const BackwardResult& oracle) {
  double dots = 0.0;
  for (size_t e = 0; e < oracle.dbias_dot_l1.size(); ++e)
    dots = std::max(dots, 0x1p-24 * std::min(oracle.dbias_dot_l1[e], 7.0 * oracle.dbias_dot_l2[e]));
  return rounding_bound(c, oracle.dbias_rounding_l1, oracle.dbias_rounding_l2) + dots;
}

}  // namespace multihead::reference
