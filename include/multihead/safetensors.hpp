// safetensors files: an 8-byte little-endian header length, a JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"k": "v"}}, then the raw little-endian tensor bytes.
// The reader treats every file as hostile: see docs/SAFETENSORS.md for the rules.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "multihead/tensor.hpp"

namespace multihead {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;  // F32, BF16, F16 (others are a FormatError)
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

// A parsed file: owned, aligned copies of every tensor (never views into unaligned bytes).
struct SafetensorsFile {
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> infos;          // in header order
  std::map<std::string, Tensor> tensors;  // name -> owning tensor (rank <= 4)
};

// Throws Error{kIoError} when the file cannot be read, Error{kFormatError} naming the
// file, the tensor and the field when the bytes break a rule.
SafetensorsFile read_safetensors(const std::string& path);
SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& label = "<memory>");

// Writes tensors (any strides; written contiguous) in name order, 8-byte-aligned header.
void write_safetensors(const std::string& path, const std::map<std::string, TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
std::vector<uint8_t> serialize_safetensors(const std::map<std::string, TensorView>& tensors,
                                           const std::map<std::string, std::string>& metadata = {});

// The header half of the reader, for callers that need the tensor list without the
// tensor bytes (`multihead inspect`): every rule of docs/SAFETENSORS.md, the file's size
// standing in for the data section (it must end exactly where the last tensor does).
// Errors as read_safetensors.
struct SafetensorsHeader {
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> infos;  // in header order
};
SafetensorsHeader read_safetensors_header(const std::string& path);

// The safetensors dtype string ("F32", "BF16", "F16") of a dtype this format stores.
const char* safetensors_dtype_name(DType dtype);

// Text from a file (a name, a metadata value), safe to print: control characters (C0, DEL,
// C1) and bytes that are not valid UTF-8 escaped as \xNN, cut after max bytes (at a UTF-8
// boundary) with the full length noted.
std::string printable(const std::string& s, size_t max = 4096);

}  // namespace multihead
