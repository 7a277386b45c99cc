// MultiHeadAttention's parameters: the config's defaults (resolved), which tensors a
// config has and their initialisation (PyTorch's _reset_parameters from our own
// generator), the f32 weights the GEMMs read (prepare_weights), and the optimizer's
// view of them (parameters, zero_grad, num_parameters). Names and state dicts are in
// state_dict.cpp.
#include <cmath>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/random.hpp"
#include "module/module_state.hpp"
#include "multihead/multi_head_attention.hpp"

namespace multihead {

using namespace detail;  // Param, Dims, fail, write_float

namespace {

// Draws that are the same on every platform (std distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double uniform() { return uniform01(gen_()); }  // [0, 1)
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();  // u1 in (0, 1]: the log stays finite
    return box_muller(u1, u2).first;
  }

 private:
  std::mt19937_64 gen_;
};

// The settings a parameter size comes from, as the caller gave them (resolved).
std::string dims_text(const MultiHeadAttentionConfig& c) {
  return "embed_dim=" + std::to_string(c.embed_dim) + ", num_heads=" + std::to_string(c.num_heads) +
         ", num_kv_heads=" + std::to_string(c.num_kv_heads) + ", head_dim=" + std::to_string(c.head_dim) +
         ", v_head_dim=" + std::to_string(c.v_head_dim) + ", kdim=" + std::to_string(c.kdim) +
         ", vdim=" + std::to_string(c.vdim) + ", out_dim=" + std::to_string(c.out_dim);
}

// Every parameter's element count, and their sum in bytes (values plus f32 gradients),
// must be computable: the module multiplies these settings (3·E·E, H·head_dim·E, ...), and
// an overflow would reach the caller as a negative size it never passed.
void check_parameter_sizes(const MultiHeadAttentionConfig& c) {
  int64_t total = 0;
  bool overflow = false;
  const auto mul = [&](int64_t a, int64_t b) {
    int64_t r = 0;
    overflow |= __builtin_mul_overflow(a, b, &r);
    return r;
  };
  const auto add = [&](int64_t a) { overflow |= __builtin_add_overflow(total, a, &total); };
  const int64_t nq = mul(c.num_heads, c.head_dim), nk = mul(c.num_kv_heads, c.head_dim),
                nv = mul(c.num_kv_heads, c.v_head_dim), hdv = mul(c.num_heads, c.v_head_dim);
  add(mul(nq, c.embed_dim));
  add(mul(nk, c.kdim));
  add(mul(nv, c.vdim));
  add(mul(3, c.embed_dim));  // single in_proj (3E, E) rows, or the biases' sum nq + nk + nv below
  add(nq), add(nk), add(nv);
  add(mul(c.out_dim, hdv));
  add(c.out_dim);
  const int64_t bytes = mul(total, int64_t(dtype_size(c.dtype)) + int64_t(sizeof(float)));
  if (overflow || bytes > (int64_t(1) << 62))
    fail(ErrorKind::kCapacityExceeded, "config", "parameters", "sizes whose bytes fit in 2^62", dims_text(c));
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
  if (c.rotary_dim < 0 || c.rotary_dim % 2 != 0 || c.rotary_dim > c.head_dim)
    fail(ErrorKind::kInvalidArgument, "config", "rotary_dim", "0 (off) or even and <= head_dim=" + std::to_string(c.head_dim),
         std::to_string(c.rotary_dim));
  if (!(std::isfinite(c.rotary_base) && c.rotary_base > 0.0))
    fail(ErrorKind::kInvalidArgument, "config", "rotary_base", "finite and > 0", std::to_string(c.rotary_base));
  check_parameter_sizes(c);
  return c;
}

void MultiHeadAttention::State::prepare_weights(bool fused) {
  const Dims& d = dims;
  const int64_t nq_e = d.nq() * d.E, nk_k = d.nk() * d.kdim, nv_v = d.nv() * d.vdim;
  const bool low = value[kOutW].dtype() == DType::kBF16;
  auto convert = [](const Tensor& t, float* dst) {
    const bf16* src = t.data_as<bf16>();
    for (int64_t i = 0; i < t.numel(); ++i) dst[i] = bf16_to_float(src[i]);
  };
  // Input projections: read in place when stored as f32 and either already back to back
  // (one in_proj_weight) or not needed so; else converted or gathered into one block.
  if (!low && (single_in_proj || !fused)) {
    wq = value[single_in_proj ? kInW : kQW].data_as<float>();
    wk = single_in_proj ? wq + nq_e : value[kKW].data_as<float>();
    wv = single_in_proj ? wk + nk_k : value[kVW].data_as<float>();
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
    try {
      s.value[p] = Tensor::empty(dt, shape);
      s.grad[p] = Tensor::zeros(DType::kF32, shape);
    } catch (const std::bad_alloc&) {  // sizes that fit (resolved) but not in memory
      int64_t numel = 1;
      for (int64_t n : shape) numel *= n;
      fail(ErrorKind::kCapacityExceeded, "config", kTorchNames[size_t(p)],
           "an allocation of " + std::to_string(numel) + " elements (and as many f32 gradients)",
           "out of memory (" + dims_text(config_) + ")");
    }
  };
  if (s.single_in_proj) {
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

}  // namespace multihead
