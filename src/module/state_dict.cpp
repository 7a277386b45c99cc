// MultiHeadAttention's weights by name: PyTorch's and Llama's naming, state_dict and
// load_state_dict (every mismatch reported at once; nothing written unless there is
// none), and infer_config (the configuration a set of tensors describes). Files are in
// multi_head_attention_io.cpp.
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "module/module_state.hpp"
#include "multihead/multi_head_attention.hpp"
#include "multihead/safetensors.hpp"

namespace multihead {

using namespace detail;  // Param, Dims, fail, read_float, write_float, for_each_element

namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::vector<int64_t> shape_of(const TensorView& v) { return {v.shape.begin(), v.shape.begin() + v.rank}; }

const std::set<std::string> kLlamaOnly = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                          "q_proj.bias",   "k_proj.bias",   "v_proj.bias",   "o_proj.bias"};
const std::set<std::string> kTorchOnly = {"in_proj_weight", "q_proj_weight",   "k_proj_weight", "v_proj_weight",
                                          "in_proj_bias",   "out_proj.weight", "out_proj.bias"};

// Llama's names when some are present and none of PyTorch's own.
WeightNames detect_names(const std::vector<std::string>& names) {
  bool llama = false, torch = false;
  for (const std::string& n : names) {
    llama |= kLlamaOnly.count(n) > 0;
    torch |= kTorchOnly.count(n) > 0;
  }
  return llama && !torch ? WeightNames::kLlama : WeightNames::kPyTorch;
}

std::string describe(const MultiHeadAttentionConfig& c) {
  std::string s = "embed_dim=" + std::to_string(c.embed_dim) + ", num_heads=" + std::to_string(c.num_heads) +
                  ", num_kv_heads=" + std::to_string(c.num_kv_heads) + ", head_dim=" + std::to_string(c.head_dim) +
                  ", v_head_dim=" + std::to_string(c.v_head_dim) + ", kdim=" + std::to_string(c.kdim) +
                  ", vdim=" + std::to_string(c.vdim) + ", out_dim=" + std::to_string(c.out_dim) +
                  ", bias=" + (c.bias ? "true" : "false") + ", add_bias_kv=" + (c.add_bias_kv ? "true" : "false");
  return s;
}

std::string join(const std::vector<std::string>& parts) {
  std::string s;
  for (size_t i = 0; i < parts.size(); ++i) s += (i ? "; " : "") + parts[i];
  return s;
}

}  // namespace

std::map<std::string, TensorView> MultiHeadAttention::state_dict(WeightNames names) const {
  const State& s = *state_;
  const Dims& d = s.dims;
  std::map<std::string, TensorView> r;
  if (names == WeightNames::kPyTorch) {
    for (int p = 0; p < kNumParams; ++p)
      if (s.has(Param(p))) r.emplace(kTorchNames[size_t(p)], s.value[size_t(p)].view());
    return r;
  }
  // Llama: one tensor per projection; in_proj_weight / in_proj_bias split into row ranges.
  auto rows = [](const Tensor& t, int64_t first, int64_t count) {
    TensorView v = t.view();
    const int64_t row = v.rank == 2 ? v.shape[1] : 1;
    v.data = static_cast<uint8_t*>(v.data) + size_t(first * row) * dtype_size(v.dtype);
    v.shape[0] = count;
    return v;
  };
  if (s.single_in_proj) {
    r.emplace("q_proj.weight", rows(s.value[kInW], 0, d.nq()));
    r.emplace("k_proj.weight", rows(s.value[kInW], d.nq(), d.nk()));
    r.emplace("v_proj.weight", rows(s.value[kInW], d.nq() + d.nk(), d.nv()));
  } else {
    r.emplace("q_proj.weight", s.value[kQW].view());
    r.emplace("k_proj.weight", s.value[kKW].view());
    r.emplace("v_proj.weight", s.value[kVW].view());
  }
  if (s.has(kInB)) {
    r.emplace("q_proj.bias", rows(s.value[kInB], 0, d.nq()));
    r.emplace("k_proj.bias", rows(s.value[kInB], d.nq(), d.nk()));
    r.emplace("v_proj.bias", rows(s.value[kInB], d.nq() + d.nk(), d.nv()));
    r.emplace("o_proj.bias", s.value[kOutB].view());
  }
  r.emplace("o_proj.weight", s.value[kOutW].view());
  for (Param p : {kBiasK, kBiasV})
    if (s.has(p)) r.emplace(kTorchNames[p], s.value[p].view());
  return r;
}

void MultiHeadAttention::load_state_dict(const std::map<std::string, TensorView>& tensors, const std::string& prefix) {
  std::map<std::string, const TensorView*> given;  // names without the prefix
  for (const auto& [name, view] : tensors)
    if (name.compare(0, prefix.size(), prefix) == 0) given.emplace(name.substr(prefix.size()), &view);
  std::vector<std::string> names;
  for (const auto& entry : given) names.push_back(entry.first);
  const std::map<std::string, TensorView> expected = state_dict(detect_names(names));

  // Every difference first; nothing is written unless there is none.
  std::vector<std::string> diffs;
  for (const auto& [name, want] : expected) {
    const auto it = given.find(name);
    if (it == given.end()) {
      diffs.push_back("missing " + prefix + name + " " + shape_string(shape_of(want)));
      continue;
    }
    const TensorView& got = *it->second;
    if (got.rank < 0 || got.rank > kMaxRank || shape_of(got) != shape_of(want))
      diffs.push_back(
          prefix + name + " shape " +
          (got.rank >= 0 && got.rank <= kMaxRank ? shape_string(shape_of(got)) : "rank " + std::to_string(got.rank)) +
          ", expected " + shape_string(shape_of(want)));
    if (!is_floating(got.dtype))
      diffs.push_back(prefix + name + " dtype " + to_string(got.dtype) + ", expected float32, bfloat16 or float16");
    else if (got.data == nullptr && got.numel() > 0)
      diffs.push_back(prefix + name + " has no data");
  }
  for (const auto& entry : given)
    if (!expected.count(entry.first)) diffs.push_back("unexpected " + printable(prefix + entry.first));  // names from a file
  if (!diffs.empty())
    fail(ErrorKind::kModelMismatch, prefix.empty() ? "state_dict" : "state_dict (prefix \"" + prefix + "\")", "",
         "the tensors of a module with " + describe(config_),
         std::to_string(diffs.size()) + (diffs.size() == 1 ? " difference: " : " differences: ") + join(diffs));

  for (const auto& [name, want] : expected) {
    const TensorView& got = *given.at(name);
    for_each_element(got, [&](int64_t offset, int64_t i) { write_float(want, i, read_float(got, offset)); });
  }
}

MultiHeadAttentionConfig MultiHeadAttention::infer_config(const std::map<std::string, TensorInfo>& tensors,
                                                          const std::string& prefix, int64_t num_heads) {
  std::map<std::string, const TensorInfo*> given;
  for (const auto& [name, info] : tensors)
    if (name.compare(0, prefix.size(), prefix) == 0) given.emplace(name.substr(prefix.size()), &info);
  std::vector<std::string> names;
  for (const auto& entry : given) names.push_back(entry.first);
  const bool llama = detect_names(names) == WeightNames::kLlama;

  std::vector<std::string> diffs;
  std::set<std::string> used;
  // A tensor of the given rank, or null (noting a wrong rank).
  auto find = [&](const std::string& name, size_t rank) -> const TensorInfo* {
    const auto it = given.find(name);
    if (it == given.end()) return nullptr;
    used.insert(name);
    const TensorInfo& t = *it->second;
    if (!is_floating(t.dtype))
      diffs.push_back(prefix + name + " dtype " + to_string(t.dtype) + ", expected float32, bfloat16 or float16");
    if (t.shape.size() != rank) {
      diffs.push_back(prefix + name + " shape " + shape_string(t.shape) + ", expected rank " + std::to_string(rank));
      return nullptr;
    }
    return &t;
  };
  auto missing = [&](const std::string& name) { diffs.push_back("missing " + prefix + name); };

  MultiHeadAttentionConfig c;
  int64_t nq = 0, nk = 0, nv = 0, hdv = 0;
  const TensorInfo* in_proj = llama ? nullptr : find("in_proj_weight", 2);
  const std::string wq = llama ? "q_proj.weight" : "q_proj_weight", wk = llama ? "k_proj.weight" : "k_proj_weight",
                    wv = llama ? "v_proj.weight" : "v_proj_weight", wo = llama ? "o_proj.weight" : "out_proj.weight",
                    bo = llama ? "o_proj.bias" : "out_proj.bias";
  if (in_proj) {
    c.embed_dim = c.kdim = c.vdim = in_proj->shape[1];
    nq = nk = nv = c.embed_dim;
    if (in_proj->shape[0] != 3 * c.embed_dim)
      diffs.push_back(prefix + "in_proj_weight shape " + shape_string(in_proj->shape) + ", expected (3 * " +
                      std::to_string(c.embed_dim) + ", " + std::to_string(c.embed_dim) + ")");
    for (const std::string& n : {wq, wk, wv})
      if (given.count(n)) diffs.push_back("unexpected " + prefix + n + " (with in_proj_weight)");
  } else {
    const TensorInfo *q = find(wq, 2), *k = find(wk, 2), *v = find(wv, 2);
    if (!q && !given.count(wq)) missing(llama ? wq : "in_proj_weight or " + wq);
    if (!k && !given.count(wk)) missing(wk);
    if (!v && !given.count(wv)) missing(wv);
    if (q) c.embed_dim = q->shape[1], nq = q->shape[0];
    if (k) c.kdim = k->shape[1], nk = k->shape[0];
    if (v) c.vdim = v->shape[1], nv = v->shape[0];
  }
  if (const TensorInfo* o = find(wo, 2)) {
    c.out_dim = o->shape[0];
    hdv = o->shape[1];
  } else if (!given.count(wo)) {
    missing(wo);
  }

  // Biases: all four projections or none (one flag, as PyTorch's bias).
  std::vector<std::pair<std::string, int64_t>> biases;  // name, expected length
  if (llama)
    biases = {{"q_proj.bias", nq}, {"k_proj.bias", nk}, {"v_proj.bias", nv}, {bo, c.out_dim}};
  else
    biases = {{"in_proj_bias", nq + nk + nv}, {bo, c.out_dim}};
  size_t present = 0;
  for (const auto& [name, length] : biases) {
    if (!given.count(name)) continue;
    ++present;
    if (const TensorInfo* t = find(name, 1); t && t->shape[0] != length)
      diffs.push_back(prefix + name + " shape " + shape_string(t->shape) + ", expected (" + std::to_string(length) +
                      ",)");
  }
  c.bias = present == biases.size();
  if (present != 0 && !c.bias)
    for (const auto& [name, length] : biases)
      if (!given.count(name)) diffs.push_back("missing " + prefix + name + " (the other projections have biases)");

  // add_bias_kv: both or neither.
  const bool has_bk = given.count("bias_k") > 0, has_bv = given.count("bias_v") > 0;
  c.add_bias_kv = has_bk && has_bv;
  if (has_bk != has_bv) missing(has_bk ? "bias_v" : "bias_k");
  const std::initializer_list<std::pair<const char*, int64_t>> kv_biases = {{"bias_k", nk}, {"bias_v", nv}};
  for (const auto& [name, length] : kv_biases)
    if (const TensorInfo* t = find(name, 3); t && (t->shape[0] != 1 || t->shape[1] != 1 || t->shape[2] != length))
      diffs.push_back(prefix + name + " shape " + shape_string(t->shape) + ", expected (1, 1, " +
                      std::to_string(length) + ")");

  for (const auto& entry : given)
    if (!used.count(entry.first) && !(in_proj && (entry.first == wq || entry.first == wk || entry.first == wv)))
      diffs.push_back("unexpected " + printable(prefix + entry.first));  // names from a file

  // Heads: d = Nq / H, Hkv = Nk / d, dv = Nv / Hkv. Without num_heads, the fewest heads
  // the widths allow: Hkv = 1 and H = Nq / Nk (1 for MHA-shaped weights).
  if (diffs.empty()) {
    const int64_t H = num_heads > 0 ? num_heads : (nk > 0 && nq % nk == 0 ? nq / nk : 1);
    auto divides = [&](int64_t a, int64_t b, const std::string& what) {
      if (a <= 0 || b % a != 0) diffs.push_back(what);
      return a > 0 && b % a == 0;
    };
    if (divides(H, nq,
                "q projection width " + std::to_string(nq) + " not divisible by num_heads=" + std::to_string(H))) {
      const int64_t hd = nq / H;
      if (divides(hd, nk,
                  "k projection width " + std::to_string(nk) + " not a multiple of head_dim=" + std::to_string(hd))) {
        const int64_t hkv = nk / hd;
        if (divides(hkv, H,
                    "num_kv_heads=" + std::to_string(hkv) +
                        " (k width / head_dim) does not divide num_heads=" + std::to_string(H)) &&
            divides(
                hkv, nv,
                "v projection width " + std::to_string(nv) + " not divisible by num_kv_heads=" + std::to_string(hkv))) {
          c.num_heads = H;
          c.num_kv_heads = hkv;
          c.head_dim = hd;
          c.v_head_dim = nv / hkv;
          if (hdv != H * c.v_head_dim)
            diffs.push_back(prefix + wo + " dim 1 " + std::to_string(hdv) +
                            ", expected num_heads * v_head_dim = " + std::to_string(H * c.v_head_dim));
          const bool standard = Dims(c).single_in_proj();
          if (!llama && standard != (in_proj != nullptr))
            diffs.push_back(standard
                                ? "q/k/v_proj_weight where PyTorch's layout is in_proj_weight (kdim = vdim = "
                                  "embed_dim, equal widths)"
                                : "in_proj_weight where the shapes need q_proj_weight, k_proj_weight, v_proj_weight");
        }
      }
    }
  }
  if (!diffs.empty())
    fail(ErrorKind::kModelMismatch, prefix.empty() ? "tensors" : "tensors (prefix \"" + prefix + "\")", "",
         "the tensors of one MultiHeadAttention",
         std::to_string(diffs.size()) + (diffs.size() == 1 ? " difference: " : " differences: ") + join(diffs));

  bool all_bf16 = true;
  for (const std::string& n : used) all_bf16 = all_bf16 && given.at(n)->dtype == DType::kBF16;
  c.dtype = all_bf16 ? DType::kBF16 : DType::kF32;
  return c.resolved();
}

}  // namespace multihead
