// Text from files (src/io/text.cpp): the UTF-8 rules of Unicode table 3-7, and printable(),
// which every message and `multihead inspect` use to quote a file's bytes.
#include "io/text.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "multihead/safetensors.hpp"

namespace multihead {
namespace {

using safetensors_format::first_invalid_utf8;
using safetensors_format::invalid_utf8_bytes;

TEST(Utf8, AcceptsWellFormedText) {
  for (const std::string& s :
       std::initializer_list<std::string>{"", "w", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                          "\xed\x9f\xbf",      // U+D7FF, just below the surrogates
                                          "\xee\x80\x80",      // U+E000, just above them
                                          "\xf4\x8f\xbf\xbf",  // U+10FFFF, the last code point
                                          std::string("a\0b", 3)})
    EXPECT_EQ(first_invalid_utf8(s), std::nullopt) << printable(s);
}

TEST(Utf8, RejectsOverlongForms) {
  for (const std::string s :
       {"\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf", "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf"})
    EXPECT_EQ(first_invalid_utf8("ab" + s), std::optional<size_t>(2)) << printable(s);
}

TEST(Utf8, RejectsSurrogates) {
  for (const std::string s : {"\xed\xa0\x80", "\xed\xaf\xbf", "\xed\xb0\x80", "\xed\xbf\xbf"})
    EXPECT_EQ(first_invalid_utf8("x" + s), std::optional<size_t>(1)) << printable(s);
}

TEST(Utf8, RejectsCodePointsAboveU10FFFF) {
  for (const std::string s : {"\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xf7\xbf\xbf\xbf", "\xf8", "\xff", "\xfe"})
    EXPECT_EQ(first_invalid_utf8(s), std::optional<size_t>(0)) << printable(s);
}

TEST(Utf8, RejectsTruncatedAndStraySequences) {
  EXPECT_EQ(first_invalid_utf8("ab\xe2\x82"), std::optional<size_t>(2));    // cut at the end
  EXPECT_EQ(first_invalid_utf8("\xe2\x82x"), std::optional<size_t>(0));     // cut by an ASCII byte
  EXPECT_EQ(first_invalid_utf8("\xf0\x9f\x98"), std::optional<size_t>(0));  // 3 of 4 bytes
  EXPECT_EQ(first_invalid_utf8("\xc3"), std::optional<size_t>(0));          // a lead byte alone
  EXPECT_EQ(first_invalid_utf8("a\x80"), std::optional<size_t>(1));         // a stray continuation byte
  EXPECT_EQ(first_invalid_utf8("\xc3\xa9\xa9"), std::optional<size_t>(2));  // one continuation too many
}

TEST(Utf8, InvalidBytesAreShownEscaped) {
  EXPECT_EQ(invalid_utf8_bytes("ab\xc0\x80z", 2), "\\xc0\\x80");
  EXPECT_EQ(invalid_utf8_bytes("\xff\xff", 0), "\\xff");
  EXPECT_EQ(invalid_utf8_bytes("\xed\xa0\x80", 0), "\\xed\\xa0\\x80");
}

TEST(Printable, EscapesControlBytesAndDel) {
  EXPECT_EQ(printable("a\x1b[31mb"), "a\\x1b[31mb");
  EXPECT_EQ(printable(std::string("\0\n\t\x7f", 4)), "\\x00\\x0a\\x09\\x7f");
}

TEST(Printable, EscapesInvalidUtf8ByteByByte) {
  EXPECT_EQ(printable("w\xff"), "w\\xff");
  EXPECT_EQ(printable("\xc0\x80"), "\\xc0\\x80");
  EXPECT_EQ(printable("\xed\xa0\x80x"), "\\xed\\xa0\\x80x");
  const std::string shown = printable("\xf4\x90\x80\x80\xe2\x82");
  EXPECT_EQ(first_invalid_utf8(shown), std::nullopt) << shown;  // what a Python str can hold
}

TEST(Printable, EscapesC1ControlsButKeepsOtherText) {
  EXPECT_EQ(printable("\xc2\x9b"
                      "2J"),
            "\\xc2\\x9b2J");  // U+009B, CSI on some terminals
  EXPECT_EQ(printable("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc2\xa0"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc2\xa0");
}

TEST(Printable, CutsAtACharacterBoundary) {
  EXPECT_EQ(printable("abcdef", 4), "abcd... (6 bytes)");
  EXPECT_EQ(printable("ab\xe2\x82\xac", 4), "ab... (5 bytes)");  // the euro sign does not fit
  EXPECT_EQ(printable("abc", 3), "abc");
}

}  // namespace
}  // namespace multihead
