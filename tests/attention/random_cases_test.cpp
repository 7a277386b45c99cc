// Every ctest run draws fresh random cases of every kind (forward and backward) from a
// printed seed: MULTIHEAD_TEST_SEED=<seed> replays the run, and each failing case
// prints the `multihead check --replay KIND:SEED` line that replays it alone.
#include <iostream>

#include "support/cases.hpp"

namespace multihead::test {
namespace {

using reference::CaseKind;

constexpr int64_t kCasesPerKind = 60;  // 19 kinds: 1140 cases per run

class RandomCases : public ::testing::TestWithParam<CaseKind> {};

TEST_P(RandomCases, ForwardAndBackwardMatchOracle) {
  const CaseKind kind = GetParam();
  // One stream per kind, so the kinds' tests may run in any order or alone.
  const uint64_t seed = reference::derive_seed(test_seed(), uint64_t(kind));
  const reference::CheckReport report = reference::run_checks(kCasesPerKind, seed, /*backward=*/true, {kind});
  const reference::CheckRow& row = report.rows.front();
  std::cout << "[   INFO   ] " << reference::to_string(kind) << ": " << row.count << " cases, "
            << row.failed << " failed, worst error/allowed " << row.worst_ratio << " (" << row.worst_what
            << ")" << std::endl;
  EXPECT_EQ(row.count, kCasesPerKind);
  int shown = 0;
  for (const reference::CheckFailure& f : report.failures) {
    if (++shown > 5) break;
    ADD_FAILURE() << f.c.describe() << "\n"
                  << f.result.report() << "  replay: multihead check --replay " << reference::to_string(f.c.kind)
                  << ":" << f.c.seed << "   (run: MULTIHEAD_TEST_SEED=" << test_seed() << ")";
  }
  EXPECT_TRUE(report.pass()) << report.failures.size() << " of " << row.count << " cases failed";
}

INSTANTIATE_TEST_SUITE_P(AllKinds, RandomCases, ::testing::ValuesIn(reference::all_case_kinds()),
                         [](const ::testing::TestParamInfo<CaseKind>& info) {
                           return std::string(reference::to_string(info.param));
                         });

TEST(RandomCases, CoverAtLeastAThousandCasesPerRun) {
  EXPECT_GE(kCasesPerKind * int64_t(reference::all_case_kinds().size()), 1000);
}

TEST(RandomCases, ReplayFromSeedGivesTheSameCase) {
  for (CaseKind kind : reference::all_case_kinds()) {
    const reference::Case a = reference::case_from_seed(kind, 12345);
    const reference::Case b = reference::case_from_seed(kind, 12345);
    EXPECT_EQ(a.describe(), b.describe());
  }
}

}  // namespace
}  // namespace multihead::test
