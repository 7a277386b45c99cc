// The header half of the safetensors reader, for callers that need the tensor list
// without the tensor bytes (`multihead inspect`). Internal: not installed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "multihead/safetensors.hpp"

namespace multihead {

struct SafetensorsHeader {
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> infos;  // in header order
};

// Every rule of docs/SAFETENSORS.md, the file's size standing in for the data section
// (it must end exactly where the last tensor does); the tensor bytes are not read.
// Errors as read_safetensors.
SafetensorsHeader read_safetensors_header(const std::string& path);

// The safetensors dtype string ("F32", "BF16", "F16") of a dtype this format stores.
const char* safetensors_dtype_name(DType dtype);

// Text from a file, safe to print: control bytes escaped as \xNN, cut after max bytes
// (at a UTF-8 boundary) with the full length noted.
std::string printable(const std::string& s, size_t max = 4096);

}  // namespace multihead
