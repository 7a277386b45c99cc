// The backward sweeps of the correctness method (docs/ARCHITECTURE.md), judged against the double
// oracle with the pass rule of reference/compare.hpp (the forward quantities are checked on the way).
#include "support/cases.hpp"

namespace multihead::test {
namespace {

class BackwardSweep : public ::testing::TestWithParam<Case> {};

TEST_P(BackwardSweep, MatchesOracle) {
  const Case& c = GetParam();
  const reference::CaseResult r = reference::run_case(c, /*backward=*/true);
  EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report();
}

INSTANTIATE_TEST_SUITE_P(HeadDim, BackwardSweep, ::testing::ValuesIn(head_dim_sweep()), case_name);
INSTANTIATE_TEST_SUITE_P(Length, BackwardSweep, ::testing::ValuesIn(length_sweep()), case_name);
INSTANTIATE_TEST_SUITE_P(Option, BackwardSweep, ::testing::ValuesIn(option_sweep()), case_name);
INSTANTIATE_TEST_SUITE_P(Float16, BackwardSweep, ::testing::ValuesIn(f16_cases()), case_name);

}  // namespace
}  // namespace multihead::test
