// The forward sweeps of the correctness method (docs/ARCHITECTURE.md), judged against the double
// oracle with the pass rule of reference/compare.hpp (probabilities checked too).
#include "support/cases.hpp"

namespace multihead::test {
namespace {

class ForwardSweep : public ::testing::TestWithParam<Case> {};

TEST_P(ForwardSweep, MatchesOracle) {
  const Case& c = GetParam();
  const reference::CaseResult r = reference::run_case(c, /*backward=*/false);
  EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report();
}

INSTANTIATE_TEST_SUITE_P(HeadDim, ForwardSweep, ::testing::ValuesIn(head_dim_sweep()), case_name);
INSTANTIATE_TEST_SUITE_P(Length, ForwardSweep, ::testing::ValuesIn(length_sweep()), case_name);
INSTANTIATE_TEST_SUITE_P(Option, ForwardSweep, ::testing::ValuesIn(option_sweep()), case_name);
INSTANTIATE_TEST_SUITE_P(Float16, ForwardSweep, ::testing::ValuesIn(f16_cases()), case_name);

}  // namespace
}  // namespace multihead::test
