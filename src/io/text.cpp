// Well-formed UTF-8, and text from a file made safe to print: names, metadata and paths
// reach terminals and Python strings, which must never see a control byte or an invalid
// sequence from the file (a UnicodeDecodeError, an escape sequence run by a terminal).
#include "io/text.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "multihead/safetensors.hpp"

namespace multihead {
namespace safetensors_format {

size_t utf8_sequence_length(std::string_view s, size_t i) {
  // Unicode table 3-7: the first byte fixes the length and the range of the second byte.
  struct Form {
    uint8_t first_lo, first_hi;
    size_t length;
    uint8_t second_lo, second_hi;
  };
  static constexpr Form kForms[] = {
      {0xc2, 0xdf, 2, 0x80, 0xbf}, {0xe0, 0xe0, 3, 0xa0, 0xbf},  // no overlong 3-byte forms
      {0xe1, 0xec, 3, 0x80, 0xbf}, {0xed, 0xed, 3, 0x80, 0x9f},  // no surrogates U+D800..DFFF
      {0xee, 0xef, 3, 0x80, 0xbf}, {0xf0, 0xf0, 4, 0x90, 0xbf},  // no overlong 4-byte forms
      {0xf1, 0xf3, 4, 0x80, 0xbf}, {0xf4, 0xf4, 4, 0x80, 0x8f},  // nothing above U+10FFFF
  };
  const auto b0 = uint8_t(s[i]);
  if (b0 <= 0x7f) return 1;
  for (const Form& f : kForms) {
    if (b0 < f.first_lo || b0 > f.first_hi) continue;
    if (s.size() - i < f.length) return 0;  // truncated
    const auto b1 = uint8_t(s[i + 1]);
    if (b1 < f.second_lo || b1 > f.second_hi) return 0;
    for (size_t k = 2; k < f.length; ++k)
      if ((uint8_t(s[i + k]) & 0xc0) != 0x80) return 0;
    return f.length;
  }
  return 0;  // 0x80..0xc1 (a continuation byte, an overlong 2-byte form) or 0xf5..0xff
}

std::optional<size_t> first_invalid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::nullopt;
}

std::string invalid_utf8_bytes(std::string_view s, size_t at) {
  size_t end = at + 1;  // the sequence the bad byte tried to start
  while (end < s.size() && end < at + 4 && (uint8_t(s[end]) & 0xc0) == 0x80) ++end;
  return printable(std::string(s.substr(at, end - at)));
}

}  // namespace safetensors_format

std::string printable(const std::string& s, size_t max) {
  std::string out;
  const auto escape = [&](size_t from, size_t n) {
    for (size_t k = from; k < from + n; ++k) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(uint8_t(s[k])));
      out += buf;
    }
  };
  size_t i = 0;
  while (i < s.size()) {
    const size_t n = safetensors_format::utf8_sequence_length(s, i);
    if (i + std::max<size_t>(n, 1) > max) break;  // cut at a character boundary
    const auto c = uint8_t(s[i]);
    if (n == 0) {
      escape(i, 1);  // an ill-formed byte
      ++i;
      continue;
    }
    // C0 controls, DEL and the C1 controls U+0080..U+009F (some terminals act on them).
    if (c < 0x20 || c == 0x7f || (c == 0xc2 && uint8_t(s[i + 1]) < 0xa0))
      escape(i, n);
    else
      out.append(s, i, n);
    i += n;
  }
  if (i < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

}  // namespace multihead
