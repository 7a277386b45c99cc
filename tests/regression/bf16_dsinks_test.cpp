// bf16 dsinks failed the pass rule in about 3 of 10000 random bf16/mixed cases, always with
// H = 1. Cause (not the kernels: their dsinks is exact to f32 given their out and lse): the
// forward rounds P ∘ Z to bf16 before P·V, out carries that rounding into D_i = dout_i·out_i
// and so into dsink = -Σ e^{sink - lse_i} D_i, and the baseline's error is an independent
// draw of the same size (it rounds the normalised P, the kernels the unnormalised e^{s - m}).
// With H = 1 the rule's "3 x the baseline's max error" is one draw against another, which
// falls below ours by chance. The rule now adds the derived bound on that rounding
// (dsinks_extra in reference/allowances.cpp, from the oracle's dsinks_rounding_l1 / _l2).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "multihead/multihead.hpp"
#include "regression/case_gradients.hpp"
#include "reference/attention_reference.hpp"
#include "reference/cases.hpp"

namespace multihead {
namespace {

using reference::Case;
using reference::CaseKind;

// The failing cases of `multihead check -k bf16 -k mixed -n 20000 --seed 1` before the fix.
const std::vector<std::pair<CaseKind, uint64_t>>& failed_seeds() {
  static const std::vector<std::pair<CaseKind, uint64_t>> seeds = {
      {CaseKind::kBf16, 3902768183478404574ull},   {CaseKind::kBf16, 13161521189755830757ull},
      {CaseKind::kMixed, 1189091554666715630ull},  {CaseKind::kMixed, 1118122445793845134ull},
      {CaseKind::kMixed, 1497697760872852665ull},  {CaseKind::kMixed, 1438149864131415949ull}};
  return seeds;
}

TEST(Regression, Bf16DsinksFailedThePassRuleWhenTheBaselinesRoundingWasSmallByChance) {
  for (const auto& [kind, seed] : failed_seeds()) {
    const Case c = reference::case_from_seed(kind, seed);
    const reference::CaseResult r = reference::run_case(c, /*backward=*/true);
    EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report() << "replay: multihead check --replay "
                          << reference::to_string(kind) << ":" << seed;
  }
}

// The derived bound alone covers the kernels' dsinks error (without the baseline's term),
// and is not vacuous: it stays below a tenth of |dsinks| and below the mean contribution of
// one query row, so a lost row, sequence or sign would still fail.
TEST(Regression, Bf16DsinksErrorIsThePRoundingInOutAndStaysWithinItsDerivedBound) {
  for (const auto& [kind, seed] : failed_seeds()) {
    const Case c = reference::case_from_seed(kind, seed);
    ASSERT_EQ(c.dtype, DType::kBF16);
    ASSERT_FALSE(c.varlen() && c.probs);
    reference::CaseInputs in = reference::materialize(c);
    const AttentionOptions& o = in.options;
    const KernelGradients g = kernel_gradients(c, in);
    const reference::BackwardResult oracle =
        reference::attention_backward(in.dout.view(), in.q.view, in.k.view, in.v.view, o);
    const reference::ForwardResult oracle_f = reference::attention_forward(in.q.view, in.k.view, in.v.view, o);
    const double u = 0x1p-8;  // bf16's unit roundoff
    for (int64_t h = 0; h < c.H; ++h) {
      const double bound = u * std::min(oracle.dsinks_rounding_l1[size_t(h)], 7.0 * oracle.dsinks_rounding_l2[size_t(h)]);
      const double error = std::abs(double(g.dsinks.data_as<float>()[h]) - oracle.dsinks[size_t(h)]);
      EXPECT_LE(error, bound) << c.describe() << " head " << h;
      EXPECT_LE(bound, 0.1 * std::abs(oracle.dsinks[size_t(h)])) << c.describe() << " head " << h;
      // Mean |e^{sink - lse_i} D_i| over the head's rows (the oracle's out and lse).
      double rows = 0, sum = 0;
      const float sink = in.sinks.data_as<float>()[h];
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t i = 0; i < c.Lq; ++i) {
          const double l = oracle_f.lse[size_t((b * c.H + h) * c.Lq + i)];
          if (std::isinf(l)) continue;
          double Di = 0;
          for (int64_t d = 0; d < c.Dv; ++d) {
            const size_t e = size_t(((b * c.Lq + i) * c.H + h) * c.Dv + d);
            Di += double(in.dout.data_as<float>()[e]) * oracle_f.out[e];
          }
          sum += std::abs(std::exp(double(sink) - l) * Di), rows += 1;
        }
      EXPECT_LE(bound, sum / rows) << c.describe() << " head " << h;
    }
  }
}

}  // namespace
}  // namespace multihead
