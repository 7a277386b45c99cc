// f32 dsinks failed the pass rule in 2 of 100000 random cases (`multihead check -n 100000
// --seed 1 --threads 1`), both with H <= 2, Lk = 2, D >= 111 and 60 or more query rows per
// head. Cause (not the kernels): every score s_ij is an f32 dot product whose rounding moves
// lse_i and out_i, and dsink = -Σ e^{sink - lse_i} dout_i·out_i sums that over every row; the
// baseline's own f32 scores draw an independent error of the same size, and with one or
// two heads the rule's "3 x the baseline's max error" compared one draw with another. The
// rule now adds the derived bound on the score rounding (dsinks_extra in
// reference/allowances.cpp, from the oracle's dsinks_score_l1 / _l2).
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

// The failing cases of `multihead check -n 100000 --seed 1 --threads 1` before the fix.
const std::vector<std::pair<CaseKind, uint64_t>>& failed_seeds() {
  static const std::vector<std::pair<CaseKind, uint64_t>> seeds = {{CaseKind::kSinks, 10090438984373657148ull},
                                                                   {CaseKind::kExtraKeys, 546998634054731420ull}};
  return seeds;
}

TEST(Regression, F32DsinksFailedThePassRuleWhenTheBaselinesScoreRoundingWasSmallByChance) {
  for (const auto& [kind, seed] : failed_seeds()) {
    const Case c = reference::case_from_seed(kind, seed);
    const reference::CaseResult r = reference::run_case(c, /*backward=*/true);
    EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report() << "replay: multihead check --replay "
                          << reference::to_string(kind) << ":" << seed;
  }
}

// The derived bound alone covers the kernels' dsinks error (without the baseline's term),
// and is not vacuous: it stays below a hundredth of the mean contribution of one query row,
// so a lost row, sequence or sign would still fail.
TEST(Regression, F32DsinksErrorIsTheScoreRoundingAndStaysWithinItsDerivedBound) {
  for (const auto& [kind, seed] : failed_seeds()) {
    const Case c = reference::case_from_seed(kind, seed);
    ASSERT_EQ(c.dtype, DType::kF32);
    ASSERT_FALSE(c.varlen() && c.probs);
    reference::CaseInputs in = reference::materialize(c);
    const AttentionOptions& o = in.options;
    const KernelGradients g = kernel_gradients(c, in);
    const reference::BackwardResult oracle =
        reference::attention_backward(in.dout.view(), in.q.view, in.k.view, in.v.view, o);
    const reference::ForwardResult oracle_f = reference::attention_forward(in.q.view, in.k.view, in.v.view, o);
    for (int64_t h = 0; h < c.H; ++h) {
      const double bound =
          0x1p-24 * std::min(oracle.dsinks_score_l1[size_t(h)], 7.0 * oracle.dsinks_score_l2[size_t(h)]);
      const double error = std::abs(double(g.dsinks.data_as<float>()[h]) - oracle.dsinks[size_t(h)]);
      EXPECT_LE(error, bound) << c.describe() << " head " << h;
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
      EXPECT_LE(bound, 0.01 * sum / rows) << c.describe() << " head " << h;
    }
  }
}

}  // namespace
}  // namespace multihead
