// What the safetensors reader, header parser and writer share (src/io only): the
// format's limits, its little-endian integers, the byte-size rule and the typed errors.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "multihead/safetensors.hpp"

namespace multihead::safetensors_format {

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's cap
inline constexpr uint64_t kMaxBytes = uint64_t(std::numeric_limits<int64_t>::max());

[[noreturn]] void format_error(const std::string& label, const std::string& subject, const std::string& field,
                               const std::string& expected, const std::string& got);
[[noreturn]] void io_error(const std::string& path, const std::string& what, const std::string& expected, int errnum);

uint64_t load_le64(const uint8_t* p);
void store_le64(uint8_t* p, uint64_t v);

// The byte size of a tensor, or nothing when it does not fit in 63 bits. The non-zero
// dims must multiply without overflow even when another dim is 0: a Tensor's strides
// are products of them.
std::optional<uint64_t> checked_bytes(DType dtype, const std::vector<int64_t>& shape);

// The header length n: capped, and within the `remaining` bytes after the 8-byte prefix.
void check_header_length(const std::string& label, uint64_t n, uint64_t remaining);

// The JSON header of `size` bytes, every rule of docs/SAFETENSORS.md checked against a
// data section of data_size bytes (which the tensors must tile exactly).
SafetensorsHeader parse_header(const std::string& label, const uint8_t* json, uint64_t size, uint64_t data_size);

}  // namespace multihead::safetensors_format
