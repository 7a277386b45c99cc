// `multihead inspect`: what a safetensors file holds and whether its tensors form a
// MultiHeadAttention module. Only the header is read (every format rule still applies).
// Part of the CLI (library multihead_inspect, also linked by the tests); public API only.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "multihead/multi_head_attention.hpp"
#include "multihead/safetensors.hpp"

namespace multihead {

struct Inspection {
  std::string path, prefix;
  int64_t num_heads = 0;  // as asked; 0: inferred (the fewest heads the shapes allow)
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;                 // under the prefix, in name order
  size_t total_tensors = 0;                        // in the whole file
  std::optional<MultiHeadAttentionConfig> config;  // set when the tensors form a module
  std::string mismatch;                            // otherwise, why not
  std::vector<std::string> candidate_prefixes;     // then: prefixes where a module seems to sit
};

// Throws FormatError / IoError as read_safetensors; a ModelMismatch becomes `mismatch`.
Inspection inspect_safetensors(const std::string& path, const std::string& prefix = "", int64_t num_heads = 0);

// The report `multihead inspect` prints: a table of the tensors, then the verdict.
std::string format_inspection(const Inspection& inspection);

}  // namespace multihead
