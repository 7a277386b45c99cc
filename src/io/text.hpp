// Text that comes from a file (names, dtype strings, metadata, paths): whether it is
// well-formed UTF-8, and how it is quoted in messages (printable(), declared in
// multihead/safetensors.hpp, is defined in text.cpp).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace multihead::safetensors_format {

// The length (1..4) of the well-formed UTF-8 sequence that starts s[i] (i < s.size()), or 0 when the
// bytes there are ill-formed (Unicode table 3-7: no overlong forms, no surrogates
// U+D800..DFFF, nothing above U+10FFFF, no truncated sequence).
size_t utf8_sequence_length(std::string_view s, size_t i);

// The offset of the first ill-formed byte, or nothing when all of s is UTF-8.
std::optional<size_t> first_invalid_utf8(std::string_view s);

// The ill-formed bytes at s[at] (the first byte and the continuation bytes after it),
// escaped for a message: "\xc0\x80".
std::string invalid_utf8_bytes(std::string_view s, size_t at);

}  // namespace multihead::safetensors_format
