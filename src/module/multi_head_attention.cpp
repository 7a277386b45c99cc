// MultiHeadAttention: projections (BLAS GEMMs, module/linear.hpp) around the functional
// attention. The projections' outputs are read by attention through strided head views,
// never reshaped by copies. Weights, gradients, what backward needs from the last
// forward (the tape) and scratch buffers live in State; buffers only grow, so
// steady-state calls touch no fresh pages.
#include "multihead/multi_head_attention.hpp"

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <numbers>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "attention/validate.hpp"
#include "module/dropout_seed.hpp"
#include "module/linear.hpp"
#include "multihead/error.hpp"

namespace multihead {

using detail::Matrix;
using detail::Rows;

namespace {

[[noreturn]] void fail(ErrorKind kind, const std::string& tensor, const std::string& dim, const std::string& expected,
                       const std::string& got) {
  throw Error(kind, tensor, dim, expected, got);
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::vector<int64_t> shape_of(const TensorView& v) { return {v.shape.begin(), v.shape.begin() + v.rank}; }

// Draws that are the same on every platform (std distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double uniform() { return double(gen_() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {                                              // Box-Muller
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::mt19937_64 gen_;
};

// A buffer that only grows: reused across calls.
class Scratch {
 public:
  template <class T>
  T* get(int64_t n) {
    const size_t bytes = size_t(std::max<int64_t>(n, 1)) * sizeof(T);
    if (bytes > capacity_) {
      buffer_ = Tensor::empty(DType::kF32, {int64_t((bytes + 3) / 4)});
      capacity_ = buffer_.nbytes();
    }
    return static_cast<T*>(buffer_.data());
  }

 private:
  Tensor buffer_;
  size_t capacity_ = 0;
};

// Parameters in PyTorch's order (named_parameters of nn.MultiheadAttention).
enum Param { kInW, kQW, kKW, kVW, kInB, kBiasK, kBiasV, kOutW, kOutB, kNumParams };
constexpr std::array<const char*, kNumParams> kTorchNames = {"in_proj_weight", "q_proj_weight",   "k_proj_weight",
                                                             "v_proj_weight",  "in_proj_bias",    "bias_k",
                                                             "bias_v",         "out_proj.weight", "out_proj.bias"};

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

// Sizes of a resolved config in DESIGN.md letters; N* are projection widths.
struct Dims {
  int64_t E = 0, H = 0, Hkv = 0, d = 0, dv = 0, kdim = 0, vdim = 0, out = 0;
  int64_t nq() const { return H * d; }
  int64_t nk() const { return Hkv * d; }
  int64_t nv() const { return Hkv * dv; }
  int64_t ntot() const { return nq() + nk() + nv(); }
  int64_t hdv() const { return H * dv; }
  explicit Dims(const MultiHeadAttentionConfig& c)
      : E(c.embed_dim),
        H(c.num_heads),
        Hkv(c.num_kv_heads),
        d(c.head_dim),
        dv(c.v_head_dim),
        kdim(c.kdim),
        vdim(c.vdim),
        out(c.out_dim) {}
  // PyTorch's single in_proj_weight (3E, E): same input for q, k, v and equal widths.
  bool packed() const { return kdim == E && vdim == E && Hkv == H && nq() == E && dv == d; }
};

float read_float(const TensorView& t, int64_t offset) {
  switch (t.dtype) {
    case DType::kF32:
      return static_cast<const float*>(t.data)[offset];
    case DType::kBF16:
      return bf16_to_float(static_cast<const bf16*>(t.data)[offset]);
    default:
      return f16_to_float(static_cast<const f16*>(t.data)[offset]);
  }
}

void write_float(const TensorView& t, int64_t offset, float x) {
  if (t.dtype == DType::kBF16)
    static_cast<bf16*>(t.data)[offset] = float_to_bf16(x);
  else
    static_cast<float*>(t.data)[offset] = x;
}

// Calls f(source offset, destination index) for every element of a rank <= 4 view, in
// row-major order.
template <class F>
void for_each_element(const TensorView& v, F&& f) {
  Shape shape{1, 1, 1, 1}, strides{0, 0, 0, 0};
  for (int d = 0; d < v.rank; ++d) {
    shape[4 - v.rank + d] = v.shape[d];
    strides[4 - v.rank + d] = v.strides[d];
  }
  int64_t n = 0;
  for (int64_t a = 0; a < shape[0]; ++a)
    for (int64_t b = 0; b < shape[1]; ++b)
      for (int64_t c = 0; c < shape[2]; ++c)
        for (int64_t e = 0; e < shape[3]; ++e)
          f(a * strides[0] + b * strides[1] + c * strides[2] + e * strides[3], n++);
}

// Offset of (b, h, i, j) in a view that broadcasts to (B, H, Lq, Lk) (numpy rules).
int64_t broadcast_offset(const TensorView& v, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t index[4] = {b, h, i, j};
  int64_t o = 0;
  for (int d = 0; d < v.rank; ++d)
    if (v.shape[d] != 1) o += index[4 - v.rank + d] * v.strides[d];
  return o;
}

// Size of the view's dim aligned with (B, H, Lq, Lk) dim td (1 when absent).
int64_t broadcast_size(const TensorView& v, int td) {
  const int d = td - (4 - v.rank);
  return d >= 0 ? v.shape[d] : 1;
}

TensorView view4(void* data, DType dtype, const Shape& shape, const Shape& strides) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.rank = 4;
  v.shape = shape;
  v.strides = strides;
  return v;
}

// (B, L, F) view of any strides -> dense (B·L, F) rows.
void copy_rows(const TensorView& x, float* dst) {
  const float* src = static_cast<const float*>(x.data);
  const int64_t B = x.shape[0], L = x.shape[1], F = x.shape[2];
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) {
      const float* row = src + b * x.strides[0] + l * x.strides[1];
      float* out = dst + (b * L + l) * F;
      if (x.strides[2] == 1)
        std::memcpy(out, row, size_t(F) * sizeof(float));
      else
        for (int64_t f = 0; f < F; ++f) out[f] = row[f * x.strides[2]];
    }
}

// An owned contiguous copy of an option tensor. collapse: dims that a stride of 0
// broadcasts become size 1 (same meaning as a mask, far less memory).
TensorView copy_option(const TensorView& v, Scratch& scratch, bool collapse) {
  TensorView c = v;
  int64_t n = 1;
  for (int d = v.rank - 1; d >= 0; --d) {
    if (collapse && v.strides[d] == 0 && v.shape[d] > 1) c.shape[d] = 1;
    c.strides[d] = n;
    n *= c.shape[d];
  }
  const size_t size = dtype_size(v.dtype);
  uint8_t* dst = scratch.get<uint8_t>(n * int64_t(size));
  c.data = dst;
  TensorView src = v;
  src.shape = c.shape;
  const uint8_t* base = static_cast<const uint8_t*>(v.data);
  for_each_element(
      src, [&](int64_t offset, int64_t i) { std::memcpy(dst + size_t(i) * size, base + size_t(offset) * size, size); });
  return c;
}

// Bias value as f32; at or below its dtype's lowest finite value it masks: -inf.
float bias_value(const TensorView& bias, int64_t offset) {
  const float x = read_float(bias, offset);
  const float lowest = bias.dtype == DType::kBF16  ? bf16_to_float(bf16{0xff7f})
                       : bias.dtype == DType::kF16 ? -65504.0f
                                                   : -FLT_MAX;
  return x <= lowest ? -INFINITY : x;
}

void check_input(const TensorView& x, const char* name, int64_t features, const char* letter) {
  if (x.rank != 3)
    fail(ErrorKind::kInvalidShape, name, "rank", "3 (B, L, features)", std::to_string(x.rank) + " " + x.shape_string());
  if (x.dtype != DType::kF32) fail(ErrorKind::kInvalidArgument, name, "dtype", "float32", to_string(x.dtype));
  for (int d = 0; d < 3; ++d) {
    if (x.shape[d] < 0)
      fail(ErrorKind::kInvalidShape, name, "dim " + std::to_string(d), ">= 0", std::to_string(x.shape[d]));
    if (x.strides[d] < 0)
      fail(ErrorKind::kInvalidArgument, name, "stride of dim " + std::to_string(d), ">= 0",
           std::to_string(x.strides[d]));
  }
  if (x.shape[2] != features)
    fail(ErrorKind::kInvalidShape, name, std::string("dim 2 (") + letter + ")", std::to_string(features),
         std::to_string(x.shape[2]));
  if (x.data == nullptr && x.numel() > 0) fail(ErrorKind::kInvalidArgument, name, "data", "a non-null pointer", "null");
}

void check_dim(const TensorView& x, const char* name, int d, const char* letter, int64_t expected,
               const std::string& why) {
  if (x.shape[d] != expected)
    fail(ErrorKind::kInvalidShape, name, "dim " + std::to_string(d) + " (" + letter + ")",
         std::to_string(expected) + " (" + why + ")", std::to_string(x.shape[d]));
}

bool same_view(const TensorView& a, const TensorView& b) {
  if (a.data != b.data || a.dtype != b.dtype || a.rank != b.rank) return false;
  for (int d = 0; d < a.rank; ++d)
    if (a.shape[d] != b.shape[d] || a.strides[d] != b.strides[d]) return false;
  return true;
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

MultiHeadAttentionConfig MultiHeadAttentionConfig::resolved() const {
  MultiHeadAttentionConfig c = *this;
  auto positive = [](const char* field, int64_t value) {
    if (value < 1) fail(ErrorKind::kInvalidArgument, "config", field, ">= 1", std::to_string(value));
  };
  auto not_negative = [](const char* field, int64_t value) {
    if (value < 0) fail(ErrorKind::kInvalidArgument, "config", field, ">= 0 (0 = default)", std::to_string(value));
  };
  positive("embed_dim", c.embed_dim);
  positive("num_heads", c.num_heads);
  const std::initializer_list<std::pair<const char*, int64_t>> defaults = {{"num_kv_heads", c.num_kv_heads},
                                                                           {"head_dim", c.head_dim},
                                                                           {"v_head_dim", c.v_head_dim},
                                                                           {"kdim", c.kdim},
                                                                           {"vdim", c.vdim},
                                                                           {"out_dim", c.out_dim}};
  for (auto [field, value] : defaults) not_negative(field, value);
  if (c.num_kv_heads == 0) c.num_kv_heads = c.num_heads;
  if (c.num_heads % c.num_kv_heads != 0)
    fail(ErrorKind::kInvalidArgument, "config", "num_kv_heads", "a divisor of num_heads=" + std::to_string(c.num_heads),
         std::to_string(c.num_kv_heads));
  if (c.head_dim == 0) {
    if (c.embed_dim % c.num_heads != 0)
      fail(ErrorKind::kInvalidArgument, "config", "head_dim",
           "given when embed_dim=" + std::to_string(c.embed_dim) +
               " is not divisible by num_heads=" + std::to_string(c.num_heads),
           "0 (default)");
    c.head_dim = c.embed_dim / c.num_heads;
  }
  if (c.v_head_dim == 0) c.v_head_dim = c.head_dim;
  if (c.kdim == 0) c.kdim = c.embed_dim;
  if (c.vdim == 0) c.vdim = c.embed_dim;
  if (c.out_dim == 0) c.out_dim = c.embed_dim;
  if (!(c.dropout >= 0.0f && c.dropout < 1.0f))
    fail(ErrorKind::kInvalidArgument, "config", "dropout", "in [0, 1)", std::to_string(c.dropout));
  if (c.dtype != DType::kF32 && c.dtype != DType::kBF16)
    fail(ErrorKind::kInvalidArgument, "config", "dtype", "float32 or bfloat16", to_string(c.dtype));
  return c;
}

struct MultiHeadAttention::State {
  explicit State(const MultiHeadAttentionConfig& c) : dims(c), packed(dims.packed()) {}

  Dims dims;
  bool packed;
  std::array<Tensor, kNumParams> value, grad;  // empty when the config has no such parameter
  uint64_t dropout_calls = 0;

  // The tape: what backward needs from the last successful forward.
  bool has_forward = false;
  bool self = false;
  int64_t B = 0, Lq = 0, Lk = 0, Lke = 0;  // Lke = Lk + appended keys
  AttentionOptions options;                // its tensors are the owned copies below
  TensorView q, k, v;                      // attention inputs: head views into the projections
  TensorView heads, lse;                   // O (B, Lq, H, dv) f32, lse (B, H, Lq)
  const float *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr;  // f32 weights used
  const float *b_in = nullptr, *bo = nullptr, *bias_k = nullptr, *bias_v = nullptr;
  Scratch x_q, x_k, x_v;    // input copies, dense (B·L, features)
  Scratch proj_q, proj_kv;  // projections, f32 (layout in forward)
  Scratch low_q, low_kv;    // their bf16 roundings (bf16 weights)
  Scratch heads_buf, lse_buf;
  Scratch mask, bias, seqlens, alibi, sinks;
  Scratch w_in, w_out, b_all;  // f32 weights when the stored ones cannot be used as they are

  // Scratch of single calls.
  Scratch probs, dout, dheads, dq, dk, dv;

  bool has(Param p) const { return value[p].data() != nullptr; }
  float* g(Param p) const { return grad[p].data_as<float>(); }

  // The f32 weights the GEMMs read; back to back (q, k, v) when fused is asked.
  void prepare_weights(bool fused);
};

void MultiHeadAttention::State::prepare_weights(bool fused) {
  const Dims& d = dims;
  const int64_t nq_e = d.nq() * d.E, nk_k = d.nk() * d.kdim, nv_v = d.nv() * d.vdim;
  const bool low = value[kOutW].dtype() == DType::kBF16;
  auto convert = [](const Tensor& t, float* dst) {
    const bf16* src = t.data_as<bf16>();
    for (int64_t i = 0; i < t.numel(); ++i) dst[i] = bf16_to_float(src[i]);
  };
  // Input projections: read in place when stored as f32 and either already back to back
  // (packed) or not needed so; else converted or gathered into one block.
  if (!low && (packed || !fused)) {
    wq = value[packed ? kInW : kQW].data_as<float>();
    wk = packed ? wq + nq_e : value[kKW].data_as<float>();
    wv = packed ? wk + nk_k : value[kVW].data_as<float>();
  } else {
    float* w = w_in.get<float>(nq_e + nk_k + nv_v);
    float* at = w;
    for (Param p : {kInW, kQW, kKW, kVW}) {
      if (!has(p)) continue;
      if (low)
        convert(value[p], at);
      else
        std::memcpy(at, value[p].data(), value[p].nbytes());
      at += value[p].numel();
    }
    wq = w;
    wk = wq + nq_e;
    wv = wk + nk_k;
  }
  if (!low) {
    wo = value[kOutW].data_as<float>();
    b_in = has(kInB) ? value[kInB].data_as<float>() : nullptr;
    bo = has(kOutB) ? value[kOutB].data_as<float>() : nullptr;
    bias_k = has(kBiasK) ? value[kBiasK].data_as<float>() : nullptr;
    bias_v = has(kBiasV) ? value[kBiasV].data_as<float>() : nullptr;
    return;
  }
  float* wo_f = w_out.get<float>(value[kOutW].numel());
  convert(value[kOutW], wo_f);
  wo = wo_f;
  // Biases back to back in one buffer.
  int64_t total = 0;
  for (Param p : {kInB, kOutB, kBiasK, kBiasV}) total += has(p) ? value[p].numel() : 0;
  float* b = b_all.get<float>(total);
  auto take = [&](Param p) -> const float* {
    if (!has(p)) return nullptr;
    convert(value[p], b);
    const float* r = b;
    b += value[p].numel();
    return r;
  };
  b_in = take(kInB);
  bo = take(kOutB);
  bias_k = take(kBiasK);
  bias_v = take(kBiasV);
}

MultiHeadAttention::MultiHeadAttention(const MultiHeadAttentionConfig& config)
    : config_(config.resolved()), state_(std::make_unique<State>(config_)) {
  State& s = *state_;
  const Dims& d = s.dims;
  const DType dt = config_.dtype;
  auto make = [&](Param p, std::initializer_list<int64_t> shape) {
    s.value[p] = Tensor::empty(dt, shape);
    s.grad[p] = Tensor::zeros(DType::kF32, shape);
  };
  if (s.packed) {
    make(kInW, {3 * d.E, d.E});
  } else {
    make(kQW, {d.nq(), d.E});
    make(kKW, {d.nk(), d.kdim});
    make(kVW, {d.nv(), d.vdim});
  }
  if (config_.bias) make(kInB, {d.ntot()});
  if (config_.add_bias_kv) {
    make(kBiasK, {1, 1, d.nk()});
    make(kBiasV, {1, 1, d.nv()});
  }
  make(kOutW, {d.out, d.hdv()});
  if (config_.bias) make(kOutB, {d.out});

  // PyTorch's _reset_parameters, from our own generator: xavier_uniform_ on the input
  // projections (fan_in = columns, fan_out = rows), nn.Linear's kaiming_uniform_(a=√5)
  // on out_proj.weight (U(±1/√fan_in)), xavier_normal_ on bias_k/bias_v (a (1, 1, N)
  // tensor has fan_in = fan_out = N), zero biases.
  Rng rng(config_.seed);
  auto fill_uniform = [&](Param p, double bound) {
    const TensorView& v = s.value[p].view();
    for (int64_t i = 0; i < v.numel(); ++i) write_float(v, i, float(bound * (2.0 * rng.uniform() - 1.0)));
  };
  auto fill_normal = [&](Param p, double stddev) {
    const TensorView& v = s.value[p].view();
    for (int64_t i = 0; i < v.numel(); ++i) write_float(v, i, float(stddev * rng.normal()));
  };
  auto xavier_bound = [](const Tensor& t) { return std::sqrt(6.0 / double(t.size(0) + t.size(1))); };
  for (Param p : {kInW, kQW, kKW, kVW})
    if (s.has(p)) fill_uniform(p, xavier_bound(s.value[p]));
  fill_uniform(kOutW, 1.0 / std::sqrt(double(d.hdv())));
  for (Param p : {kBiasK, kBiasV})
    if (s.has(p)) fill_normal(p, std::sqrt(1.0 / double(s.value[p].size(2))));
  for (Param p : {kInB, kOutB})
    if (s.has(p)) std::memset(s.value[p].data(), 0, s.value[p].nbytes());
}

MultiHeadAttention::~MultiHeadAttention() = default;
MultiHeadAttention::MultiHeadAttention(MultiHeadAttention&&) noexcept = default;
MultiHeadAttention& MultiHeadAttention::operator=(MultiHeadAttention&&) noexcept = default;

namespace {

// The attention options of one forward, with owned copies of every tensor (backward
// reuses them; the caller's may be gone). Keys appended by add_bias_kv /
// add_zero_attn (extra > 0) are visible to every query, as in PyTorch (which pads
// attn_mask and key_padding_mask with "may attend"): what restricts keys by position
// (key padding, causal, window, ALiBi) is then written into an explicit mask / bias
// over the Lk + extra keys, since those options would apply to the appended keys too.
struct OptionBuffers {
  Scratch &mask, &bias, &seqlens, &alibi, &sinks;
};

AttentionOptions own_options(const AttentionOptions& user, OptionBuffers buf, int64_t B, int64_t H, int64_t Lq,
                             int64_t Lk, int64_t extra) {
  AttentionOptions o;
  o.scale = user.scale;
  o.softcap = user.softcap;
  if (user.sinks) o.sinks = copy_option(*user.sinks, buf.sinks, false);
  if (extra == 0) {
    o.causal = user.causal;
    o.window = user.window;
    if (user.mask) o.mask = copy_option(*user.mask, buf.mask, true);
    if (user.bias) o.bias = copy_option(*user.bias, buf.bias, true);
    if (user.seqlens_k) o.seqlens_k = copy_option(*user.seqlens_k, buf.seqlens, false);
    if (user.alibi_slopes) o.alibi_slopes = copy_option(*user.alibi_slopes, buf.alibi, false);
    return o;
  }
  const int64_t Lke = Lk + extra;
  // CONTRACT.md's key range and diagonal, over the input keys.
  auto key_len = [&](int64_t b) -> int64_t {
    return user.seqlens_k ? static_cast<const int32_t*>(user.seqlens_k->data)[b * user.seqlens_k->strides[0]] : Lk;
  };
  auto kv_offset = [&](int64_t b) { return user.causal == CausalAlign::kTopLeft ? 0 : key_len(b) - Lq; };
  const bool positional =
      user.seqlens_k || user.causal != CausalAlign::kNone || user.window.left >= 0 || user.window.right >= 0;
  if (user.mask || positional) {
    const int64_t mb = (user.mask && broadcast_size(*user.mask, 0) > 1) || user.seqlens_k ? B : 1;
    const int64_t mh = user.mask && broadcast_size(*user.mask, 1) > 1 ? H : 1;
    bool* m = buf.mask.get<bool>(mb * mh * Lq * Lke);
    for (int64_t b = 0; b < mb; ++b) {
      const int64_t len = key_len(b), off = kv_offset(b);
      for (int64_t h = 0; h < mh; ++h)
        for (int64_t i = 0; i < Lq; ++i) {
          bool* row = m + ((b * mh + h) * Lq + i) * Lke;
          for (int64_t j = 0; j < Lk; ++j) {
            bool keep = j < len;
            if (user.causal != CausalAlign::kNone) keep = keep && j <= i + off;
            if (user.window.left >= 0) keep = keep && j >= i + off - user.window.left;
            if (user.window.right >= 0) keep = keep && j <= i + off + user.window.right;
            if (user.mask)
              keep = keep && static_cast<const bool*>(user.mask->data)[broadcast_offset(*user.mask, b, h, i, j)];
            row[j] = keep;
          }
          std::fill(row + Lk, row + Lke, true);
        }
    }
    o.mask = view4(m, DType::kBool, {mb, mh, Lq, Lke}, {mh * Lq * Lke, Lq * Lke, Lke, 1});
  }
  if (user.bias || user.alibi_slopes) {
    const int64_t bb =
        (user.bias && broadcast_size(*user.bias, 0) > 1) || (user.alibi_slopes && user.seqlens_k) ? B : 1;
    const int64_t bh = (user.bias && broadcast_size(*user.bias, 1) > 1) || user.alibi_slopes ? H : 1;
    float* t = buf.bias.get<float>(bb * bh * Lq * Lke);
    for (int64_t b = 0; b < bb; ++b) {
      const int64_t off = kv_offset(b);
      for (int64_t h = 0; h < bh; ++h) {
        const float slope = user.alibi_slopes
                                ? static_cast<const float*>(user.alibi_slopes->data)[h * user.alibi_slopes->strides[0]]
                                : 0.0f;
        for (int64_t i = 0; i < Lq; ++i) {
          float* row = t + ((b * bh + h) * Lq + i) * Lke;
          for (int64_t j = 0; j < Lk; ++j) {
            float x = user.bias ? bias_value(*user.bias, broadcast_offset(*user.bias, b, h, i, j)) : 0.0f;
            if (user.alibi_slopes) x -= slope * float(std::abs(j - (i + off)));
            row[j] = x;
          }
          std::fill(row + Lk, row + Lke, 0.0f);
        }
      }
    }
    o.bias = view4(t, DType::kF32, {bb, bh, Lq, Lke}, {bh * Lq * Lke, Lq * Lke, Lke, 1});
  }
  return o;
}

}  // namespace

MhaOutput MultiHeadAttention::forward(const TensorView& query, const TensorView* key, const TensorView* value,
                                      const MhaForwardOptions& options) {
  State& s = *state_;
  const Dims& d = s.dims;
  const MultiHeadAttentionConfig& c = config_;

  // Every check first: a failing call leaves the module (and its tape) as it was.
  check_input(query, "query", d.E, "E = embed_dim");
  const int64_t B = query.shape[0], Lq = query.shape[1];
  if (bool(key) != bool(value))
    fail(ErrorKind::kInvalidArgument, key ? "value" : "key", "",
         std::string("given together with ") + (key ? "key" : "value"), "missing");
  const bool self = !key || (same_view(*key, query) && same_view(*value, query));
  int64_t Lk = Lq;
  if (self) {
    if (d.kdim != d.E || d.vdim != d.E)
      fail(ErrorKind::kInvalidArgument, "key", "",
           "key and value inputs (kdim=" + std::to_string(d.kdim) + ", vdim=" + std::to_string(d.vdim) +
               ", embed_dim=" + std::to_string(d.E) + ")",
           "self-attention");
  } else {
    check_input(*key, "key", d.kdim, "kdim");
    check_input(*value, "value", d.vdim, "vdim");
    Lk = key->shape[1];
    check_dim(*key, "key", 0, "B", B, "query's B");
    check_dim(*value, "value", 0, "B", B, "query's B");
    check_dim(*value, "value", 1, "Lk", Lk, "key's Lk");
  }
  const AttentionOptions& user = options.attention;
  if (user.cu_seqlens_q || user.cu_seqlens_k)
    fail(ErrorKind::kUnsupported, "options.attention.cu_seqlens", "",
         "none (batches are (B, L, E); seqlens_k pads keys)", "cu_seqlens");
  if (user.dropout_p != 0.0f)
    fail(ErrorKind::kInvalidArgument, "options.attention.dropout_p", "", "0 (config.dropout applies in training mode)",
         std::to_string(user.dropout_p));
  const DType act = c.dtype;  // attention input dtype
  const int64_t extra = int64_t(c.add_bias_kv) + int64_t(c.add_zero_attn), Lke = Lk + extra;
  {
    // The options against the input keys; shapes only: no element of these is read.
    static float probe;
    detail::validate_inputs(TensorView::contiguous(&probe, act, {B, Lq, d.H, d.d}),
                            TensorView::contiguous(&probe, act, {B, Lk, d.Hkv, d.d}),
                            TensorView::contiguous(&probe, act, {B, Lk, d.Hkv, d.dv}), user, options.need_weights);
  }

  s.has_forward = false;
  s.prepare_weights(self);
  const int64_t nq = d.nq(), nk = d.nk(), nv = d.nv();
  // Projection layout: self-attention has one (B, Lq + extra, Ntot) buffer written by
  // one GEMM against [Wq; Wk; Wv]; cross-attention has (B, Lq, Nq) and (B, Lk + extra, Nk + Nv).
  // Each sequence's appended keys are rows Lk.. of its block.
  float *q_data, *k_data;
  int64_t q_ld, q_bs, kv_ld, kv_bs;
  float* xq = s.x_q.get<float>(B * Lq * d.E);
  copy_rows(query, xq);
  const Rows x = Rows::dense(xq, B, Lq, d.E, d.E);
  if (self) {
    q_ld = kv_ld = d.ntot();
    q_bs = kv_bs = (Lq + extra) * q_ld;
    q_data = k_data = s.proj_q.get<float>(B * q_bs);
    const Rows y{q_data, B, Lq, d.ntot(), q_ld, q_bs};
    detail::linear_forward(x, Matrix{s.wq, d.ntot(), d.E, d.E}, y, false);
    if (s.b_in) detail::add_bias(y, s.b_in);
    k_data += nq;
  } else {
    q_ld = nq, q_bs = Lq * nq;
    kv_ld = nk + nv, kv_bs = Lke * kv_ld;
    q_data = s.proj_q.get<float>(B * q_bs);
    k_data = s.proj_kv.get<float>(B * kv_bs);
    float* xk = s.x_k.get<float>(B * Lk * d.kdim);
    float* xv = s.x_v.get<float>(B * Lk * d.vdim);
    copy_rows(*key, xk);
    copy_rows(*value, xv);
    const Rows yq = Rows::dense(q_data, B, Lq, nq, nq), yk{k_data, B, Lk, nk, kv_ld, kv_bs},
               yv{k_data + nk, B, Lk, nv, kv_ld, kv_bs};
    detail::linear_forward(x, Matrix{s.wq, nq, d.E, d.E}, yq, false);
    detail::linear_forward(Rows::dense(xk, B, Lk, d.kdim, d.kdim), Matrix{s.wk, nk, d.kdim, d.kdim}, yk, false);
    detail::linear_forward(Rows::dense(xv, B, Lk, d.vdim, d.vdim), Matrix{s.wv, nv, d.vdim, d.vdim}, yv, false);
    if (s.b_in) {
      detail::add_bias(yq, s.b_in);
      detail::add_bias(yk, s.b_in + nq);
      detail::add_bias(yv, s.b_in + nq + nk);
    }
  }
  float* v_data = k_data + nk;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t e = 0; e < extra; ++e) {
      const int64_t row = Lk + e;
      const bool learned = c.add_bias_kv && e == 0;
      float* kr = k_data + b * kv_bs + row * kv_ld;
      float* vr = v_data + b * kv_bs + row * kv_ld;
      for (int64_t j = 0; j < nk; ++j) kr[j] = learned ? s.bias_k[j] : 0.0f;
      for (int64_t j = 0; j < nv; ++j) vr[j] = learned ? s.bias_v[j] : 0.0f;
      if (self) std::fill_n(q_data + b * q_bs + row * q_ld, nq, 0.0f);  // keeps the bf16 copy defined
    }
  void *q_att = q_data, *k_att = k_data, *v_att = v_data;
  if (act == DType::kBF16) {
    // bf16 weights: attention runs on bf16-rounded Q, K, V (same layout).
    auto round = [](const float* src, int64_t n, Scratch& dst) {
      bf16* out = dst.get<bf16>(n);
      for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16(src[i]);
      return out;
    };
    bf16* lq = round(q_data, B * q_bs, s.low_q);
    bf16* lk = self ? lq + nq : round(k_data, B * kv_bs, s.low_kv);
    q_att = lq, k_att = lk, v_att = lk + nk;
  }
  s.q = view4(q_att, act, {B, Lq, d.H, d.d}, {q_bs, q_ld, d.d, 1});
  s.k = view4(k_att, act, {B, Lke, d.Hkv, d.d}, {kv_bs, kv_ld, d.d, 1});
  s.v = view4(v_att, act, {B, Lke, d.Hkv, d.dv}, {kv_bs, kv_ld, d.dv, 1});

  s.options = own_options(user, OptionBuffers{s.mask, s.bias, s.seqlens, s.alibi, s.sinks}, B, d.H, Lq, Lk, extra);
  if (options.training && c.dropout > 0.0f) {
    s.options.dropout_p = c.dropout;
    s.options.dropout_seed = detail::module_dropout_seed(c.seed, s.dropout_calls++);
  }

  float* heads = s.heads_buf.get<float>(B * Lq * d.hdv());
  s.heads = view4(heads, DType::kF32, {B, Lq, d.H, d.dv}, {Lq * d.hdv(), d.hdv(), d.dv, 1});
  s.lse = TensorView::contiguous(s.lse_buf.get<float>(B * d.H * Lq), DType::kF32, {B, d.H, Lq});
  ForwardOutputs outputs{s.heads, s.lse, std::nullopt};
  MhaOutput result;
  if (options.need_weights) {
    if (options.average_weights) {
      outputs.probs = TensorView::contiguous(s.probs.get<float>(B * d.H * Lq * Lke), DType::kF32, {B, d.H, Lq, Lke});
    } else {
      result.weights = Tensor::empty(DType::kF32, {B, d.H, Lq, Lke});
      outputs.probs = result.weights.view();
    }
  }
  if (options.need_head_stats) {
    result.head_stats = Tensor::empty(DType::kF32, {B, d.H, Lq, 3});
    outputs.head_stats = result.head_stats.view();
  }
  attention_forward(s.q, s.k, s.v, outputs, s.options);
  if (options.need_weights && options.average_weights) {
    // Mean over heads, summed in head order.
    result.weights = Tensor::zeros(DType::kF32, {B, Lq, Lke});
    float* w = result.weights.data_as<float>();
    const float* p = static_cast<const float*>(outputs.probs->data);
    const float inv = 1.0f / float(d.H);
    for (int64_t b = 0; b < B; ++b) {
      float* wb = w + b * Lq * Lke;
      for (int64_t h = 0; h < d.H; ++h) {
        const float* ph = p + (b * d.H + h) * Lq * Lke;
        for (int64_t n = 0; n < Lq * Lke; ++n) wb[n] += ph[n];
      }
      for (int64_t n = 0; n < Lq * Lke; ++n) wb[n] *= inv;
    }
  }

  result.out = Tensor::empty(DType::kF32, {B, Lq, d.out});
  const Rows y = Rows::dense(result.out.data_as<float>(), 1, B * Lq, d.out, d.out);
  detail::linear_forward(Rows::dense(heads, 1, B * Lq, d.hdv(), d.hdv()), Matrix{s.wo, d.out, d.hdv(), d.hdv()}, y,
                         false);
  if (s.bo) detail::add_bias(y, s.bo);

  s.self = self;
  s.B = B, s.Lq = Lq, s.Lk = Lk, s.Lke = Lke;
  s.has_forward = true;
  return result;
}

MhaInputGrads MultiHeadAttention::backward(const TensorView& dout) {
  State& s = *state_;
  const Dims& d = s.dims;
  if (!s.has_forward)
    fail(ErrorKind::kInvalidArgument, "backward", "", "a successful forward call first", "no saved forward");
  const int64_t B = s.B, Lq = s.Lq, Lk = s.Lk, Lke = s.Lke;
  check_input(dout, "dout", d.out, "out_dim");
  check_dim(dout, "dout", 0, "B", B, "the forward's B");
  check_dim(dout, "dout", 1, "Lq", Lq, "the forward's Lq");
  const int64_t nq = d.nq(), nk = d.nk(), nv = d.nv(), hdv = d.hdv();

  // Output projection: dbo += Σ dout, dWo += doutᵀ O, dO = dout Wo.
  const float* dy = static_cast<const float*>(dout.data);
  if (!(dout.strides[2] == 1 && dout.strides[1] == d.out && dout.strides[0] == Lq * d.out)) {
    float* copy = s.dout.get<float>(B * Lq * d.out);
    copy_rows(dout, copy);
    dy = copy;
  }
  const Rows dY = Rows::dense(const_cast<float*>(dy), 1, B * Lq, d.out, d.out);
  if (s.has(kOutB)) detail::bias_grad(dY, s.g(kOutB));
  detail::linear_weight_grad(dY, Rows::dense(static_cast<float*>(s.heads.data), 1, B * Lq, hdv, hdv), s.g(kOutW), hdv);
  float* dheads = s.dheads.get<float>(B * Lq * hdv);
  detail::linear_input_grad(dY, Matrix{s.wo, d.out, hdv, hdv}, Rows::dense(dheads, 1, B * Lq, hdv, hdv), false);

  // Attention: separate dQ, dK, dV buffers (outputs may not share a byte range).
  float* dq = s.dq.get<float>(B * Lq * nq);
  float* dk = s.dk.get<float>(B * Lke * nk);
  float* dv = s.dv.get<float>(B * Lke * nv);
  BackwardOutputs grads{TensorView::contiguous(dq, DType::kF32, {B, Lq, d.H, d.d}),
                        TensorView::contiguous(dk, DType::kF32, {B, Lke, d.Hkv, d.d}),
                        TensorView::contiguous(dv, DType::kF32, {B, Lke, d.Hkv, d.dv}), std::nullopt, std::nullopt};
  attention_backward(TensorView::contiguous(dheads, DType::kF32, {B, Lq, d.H, d.dv}), s.q, s.k, s.v, s.heads, s.lse,
                     grads, s.options);

  // The learned appended key/value get their rows' gradients, summed over the batch;
  // the zero key/value's are dropped.
  if (s.has(kBiasK)) {
    detail::bias_grad(Rows{dk + Lk * nk, B, 1, nk, nk, Lke * nk}, s.g(kBiasK));
    detail::bias_grad(Rows{dv + Lk * nv, B, 1, nv, nv, Lke * nv}, s.g(kBiasV));
  }
  const Rows dQ = Rows::dense(dq, B, Lq, nq, nq), dK{dk, B, Lk, nk, nk, Lke * nk}, dV{dv, B, Lk, nv, nv, Lke * nv};
  if (s.has(kInB)) {
    float* gb = s.g(kInB);
    detail::bias_grad(dQ, gb);
    detail::bias_grad(dK, gb + nq);
    detail::bias_grad(dV, gb + nq + nk);
  }
  float *gwq, *gwk, *gwv;
  if (s.packed) {
    gwq = s.g(kInW);
    gwk = gwq + nq * d.E;
    gwv = gwk + nk * d.E;
  } else {
    gwq = s.g(kQW), gwk = s.g(kKW), gwv = s.g(kVW);
  }
  float* xq = s.x_q.get<float>(B * Lq * d.E);
  float* xk = s.self ? xq : s.x_k.get<float>(B * Lk * d.kdim);
  float* xv = s.self ? xq : s.x_v.get<float>(B * Lk * d.vdim);
  const Rows Xq = Rows::dense(xq, B, Lq, d.E, d.E), Xk = Rows::dense(xk, B, Lk, d.kdim, d.kdim),
             Xv = Rows::dense(xv, B, Lk, d.vdim, d.vdim);
  detail::linear_weight_grad(dQ, Xq, gwq, d.E);
  detail::linear_weight_grad(dK, Xk, gwk, d.kdim);
  detail::linear_weight_grad(dV, Xv, gwv, d.vdim);

  MhaInputGrads r;
  r.dquery = Tensor::empty(DType::kF32, {B, Lq, d.E});
  const Rows dXq = Rows::dense(r.dquery.data_as<float>(), B, Lq, d.E, d.E);
  detail::linear_input_grad(dQ, Matrix{s.wq, nq, d.E, d.E}, dXq, false);
  if (s.self) {
    // Q, K and V all came from the query: their input gradients add up.
    detail::linear_input_grad(dK, Matrix{s.wk, nk, d.E, d.E}, dXq, true);
    detail::linear_input_grad(dV, Matrix{s.wv, nv, d.E, d.E}, dXq, true);
  } else {
    r.dkey = Tensor::empty(DType::kF32, {B, Lk, d.kdim});
    r.dvalue = Tensor::empty(DType::kF32, {B, Lk, d.vdim});
    detail::linear_input_grad(dK, Matrix{s.wk, nk, d.kdim, d.kdim},
                              Rows::dense(r.dkey.data_as<float>(), B, Lk, d.kdim, d.kdim), false);
    detail::linear_input_grad(dV, Matrix{s.wv, nv, d.vdim, d.vdim},
                              Rows::dense(r.dvalue.data_as<float>(), B, Lk, d.vdim, d.vdim), false);
  }
  return r;
}

std::vector<Parameter> MultiHeadAttention::parameters() {
  State& s = *state_;
  std::vector<Parameter> params;
  for (int p = 0; p < kNumParams; ++p)
    if (s.has(Param(p))) params.push_back(Parameter{kTorchNames[size_t(p)], &s.value[size_t(p)], &s.grad[size_t(p)]});
  return params;
}

void MultiHeadAttention::zero_grad() {
  for (Tensor& g : state_->grad)
    if (g.data()) std::memset(g.data(), 0, g.nbytes());
}

int64_t MultiHeadAttention::num_parameters() const {
  int64_t n = 0;
  for (const Tensor& v : state_->value) n += v.data() ? v.numel() : 0;
  return n;
}

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
  if (s.packed) {
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
    if (!expected.count(entry.first)) diffs.push_back("unexpected " + prefix + entry.first);
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
  const TensorInfo* packed = llama ? nullptr : find("in_proj_weight", 2);
  const std::string wq = llama ? "q_proj.weight" : "q_proj_weight", wk = llama ? "k_proj.weight" : "k_proj_weight",
                    wv = llama ? "v_proj.weight" : "v_proj_weight", wo = llama ? "o_proj.weight" : "out_proj.weight",
                    bo = llama ? "o_proj.bias" : "out_proj.bias";
  if (packed) {
    c.embed_dim = c.kdim = c.vdim = packed->shape[1];
    nq = nk = nv = c.embed_dim;
    if (packed->shape[0] != 3 * c.embed_dim)
      diffs.push_back(prefix + "in_proj_weight shape " + shape_string(packed->shape) + ", expected (3 * " +
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
    if (!used.count(entry.first) && !(packed && (entry.first == wq || entry.first == wk || entry.first == wv)))
      diffs.push_back("unexpected " + prefix + entry.first);

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
          const bool standard = Dims(c).packed();
          if (!llama && standard != (packed != nullptr))
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
