// The command line's parsing layer (cli/arguments.hpp) on its own: the strict parsers, the
// validators' canonical rewrite and messages, and the escaping of user text. (Not named
// *_test.cpp: tests/CMakeLists.txt globs those into multihead_tests, which lacks the CLI.)
#include <cstdint>
#include <limits>
#include <string>

#include <gtest/gtest.h>

#include "cli/arguments.hpp"

namespace cli = multihead::cli;

TEST(CliArguments, IntegersAreWholeDecimalTextWithinRange) {
  EXPECT_EQ(cli::parse_integer<uint64_t>("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(cli::parse_integer<int64_t>("-9223372036854775808"), INT64_MIN);
  EXPECT_EQ(cli::parse_integer<int64_t>("007"), 7);  // decimal, not octal
  EXPECT_EQ(cli::parse_integer<int>("5", 0, 5), 5);
  for (const char* bad : {"-1", "+1", "", " 1", "1 ", "1x", "0x10", "18446744073709551616", "1e3", "1.0", "-"})
    EXPECT_FALSE(cli::parse_integer<uint64_t>(bad)) << bad;
  EXPECT_FALSE(cli::parse_integer<int64_t>("9223372036854775808"));
  EXPECT_FALSE(cli::parse_integer<int64_t>("99999999999999999999"));
  EXPECT_FALSE(cli::parse_integer<int>("6", 0, 5));
  EXPECT_FALSE(cli::parse_integer<int>("-1", 0, 5));
}

TEST(CliArguments, RealsAreFiniteWholeTextWithinRange) {
  EXPECT_EQ(cli::parse_real("0.5", 0, 1), 0.5);
  EXPECT_EQ(cli::parse_real("-1e-3", -1, 1), -1e-3);
  for (const char* bad : {"nan", "-nan", "inf", "-inf", "infinity", "1e999", "", "+1", "1,5", "0.5 ", "2"})
    EXPECT_FALSE(cli::parse_real(bad, -1, 1)) << bad;
}

TEST(CliArguments, ValidatorsRewriteCanonicallyOrNameTheRange) {
  std::string text = "010";
  EXPECT_EQ(cli::integer<uint64_t>()(text), "");
  EXPECT_EQ(text, "10");  // CLI11's own conversion (base 0) would read "010" as 8
  text = "-1";
  EXPECT_EQ(cli::integer<uint64_t>()(text), "expected an integer in [0, 18446744073709551615], got '-1'");
  text = "nan";
  const double max = std::numeric_limits<double>::max();
  // Bounds as %g: DBL_MAX is not printed as 309 digits.
  EXPECT_EQ(cli::real(0, max)(text), "expected a finite number in [0, 1.79769e+308], got 'nan'");
  text = "0.1";
  EXPECT_EQ(cli::real(0, 1)(text), "");
  EXPECT_EQ(std::stod(text), 0.1);
  text = "";
  EXPECT_EQ(cli::non_empty("a file path")(text), "expected a file path, got ''");
}

TEST(CliArguments, EscapeLeavesOnlyPrintableText) {
  EXPECT_EQ(cli::escape("plain ünïcode ✓"), "plain ünïcode ✓");
  EXPECT_EQ(cli::escape("a\x1b[31mb\n\x7f"), "a\\x1b[31mb\\x0a\\x7f");
  EXPECT_EQ(cli::escape("\xff\xfe"), "\\xff\\xfe");                      // not UTF-8
  EXPECT_EQ(cli::escape("\xc0\xaf"), "\\xc0\\xaf");                      // overlong '/'
  EXPECT_EQ(cli::escape("\xed\xa0\x80"), "\\xed\\xa0\\x80");             // a surrogate
  EXPECT_EQ(cli::escape("\xe2\x9c"), "\\xe2\\x9c");                      // cut short
  EXPECT_EQ(cli::escape("\xc2\x9b" "1m"), "\\xc2\\x9b1m");               // C1 CSI
  EXPECT_EQ(cli::escape(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(cli::escape(std::string(300, 'x'), 10), std::string(10, 'x') + "... (300 bytes)");
  const std::string once = cli::escape("\x1b]0;title\x07");
  EXPECT_EQ(cli::escape(once), once);  // escaping twice (value, then whole message) changes nothing
}
