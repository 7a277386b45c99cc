#include "cli/inspect.hpp"

#include <algorithm>
#include <cstdio>

#include "multihead/error.hpp"

namespace multihead {

namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + "]";
}

std::string pad(const std::string& s, size_t width) { return s + std::string(width - std::min(width, s.size()), ' '); }

std::string describe(const MultiHeadAttentionConfig& c) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "embed_dim=%lld num_heads=%lld num_kv_heads=%lld head_dim=%lld v_head_dim=%lld kdim=%lld vdim=%lld "
                "out_dim=%lld bias=%s add_bias_kv=%s dtype=%s",
                static_cast<long long>(c.embed_dim), static_cast<long long>(c.num_heads),
                static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.head_dim),
                static_cast<long long>(c.v_head_dim), static_cast<long long>(c.kdim), static_cast<long long>(c.vdim),
                static_cast<long long>(c.out_dim), c.bias ? "true" : "false", c.add_bias_kv ? "true" : "false",
                to_string(c.dtype));
  return buf;
}

}  // namespace

Inspection inspect_safetensors(const std::string& path, const std::string& prefix, int64_t num_heads) {
  SafetensorsHeader header = read_safetensors_header(path);
  Inspection r;
  r.path = path;
  r.prefix = prefix;
  r.num_heads = num_heads;
  r.metadata = std::move(header.metadata);
  r.total_tensors = header.infos.size();
  std::map<std::string, TensorInfo> by_name;
  for (const TensorInfo& info : header.infos) {
    if (info.name.compare(0, prefix.size(), prefix) == 0) r.tensors.push_back(info);
    by_name.emplace(info.name, info);
  }
  std::sort(r.tensors.begin(), r.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  try {
    r.config = MultiHeadAttention::infer_config(by_name, prefix, num_heads);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kModelMismatch) throw;
    const std::string what = e.what(), kind = std::string(to_string(e.kind())) + ": ";
    r.mismatch = what.compare(0, kind.size(), kind) == 0 ? what.substr(kind.size()) : what;
    // A whole-model file: point at the layers (names ending in a query projection).
    for (const auto& [name, info] : by_name)
      for (const std::string suffix : {"in_proj_weight", "q_proj_weight", "q_proj.weight"})
        if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
            name.compare(0, prefix.size(), prefix) == 0 && name.size() - suffix.size() != prefix.size())
          r.candidate_prefixes.push_back(name.substr(0, name.size() - suffix.size()));
  }
  return r;
}

std::string format_inspection(const Inspection& r) {
  std::string out =
      printable(r.path) + ": " + std::to_string(r.total_tensors) + " tensor" + (r.total_tensors == 1 ? "" : "s");
  if (!r.prefix.empty()) out += ", " + std::to_string(r.tensors.size()) + " under prefix '" + printable(r.prefix) + "'";
  out += "\n";
  for (const auto& [key, value] : r.metadata)
    out += "metadata " + printable(key, 80) + " = " + printable(value, 120) + "\n";

  size_t name_w = 4, dtype_w = 5, shape_w = 5;
  uint64_t total = 0;
  std::vector<std::string> names;  // printable
  for (const TensorInfo& t : r.tensors) {
    names.push_back(printable(t.name));
    name_w = std::max(name_w, names.back().size());
    dtype_w = std::max(dtype_w, std::string(safetensors_dtype_name(t.dtype)).size());
    shape_w = std::max(shape_w, shape_string(t.shape).size());
    total += t.end - t.begin;
  }
  if (!r.tensors.empty()) {
    out += pad("name", name_w) + "  " + pad("dtype", dtype_w) + "  " + pad("shape", shape_w) + "  bytes\n";
    for (size_t i = 0; i < r.tensors.size(); ++i) {
      const TensorInfo& t = r.tensors[i];
      out += pad(names[i], name_w) + "  " + pad(safetensors_dtype_name(t.dtype), dtype_w) + "  " +
             pad(shape_string(t.shape), shape_w) + "  " + std::to_string(t.end - t.begin) + "\n";
    }
    out += pad("total", name_w + dtype_w + shape_w + 4) + "  " + std::to_string(total) + "\n";
  }

  if (r.config) {
    out += "MultiHeadAttention: " + describe(*r.config) + "\n";
    if (r.num_heads == 0)
      out += "(weights do not fix num_heads: shown is the fewest heads the shapes allow; pass --num-heads N)\n";
  } else {
    out += "not a MultiHeadAttention module: " + printable(r.mismatch) + "\n";
    const size_t shown = std::min<size_t>(r.candidate_prefixes.size(), 3);
    for (size_t i = 0; i < shown; ++i) out += "  try --prefix '" + printable(r.candidate_prefixes[i]) + "'\n";
    if (r.candidate_prefixes.size() > shown)
      out += "  (and " + std::to_string(r.candidate_prefixes.size() - shown) + " more such prefixes)\n";
  }
  return out;
}

}  // namespace multihead
