// The module against a straightforward double-precision composition of the same math:
// projections done naively in double around the reference attention
// (src/reference/attention_reference.hpp) for the forward and the analytic backward
// chain, and central finite differences of an all-double composition on tiny shapes.
// The appended keys' semantics (always visible) are written out here independently of
// the module: an explicit keep mask and bias per (b, h, i, j).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "module/dropout_seed.hpp"
#include "module/module_support.hpp"
#include "reference/attention_reference.hpp"

namespace multihead::test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct ModuleCase {
  std::string name;
  MultiHeadAttentionConfig config;
  bool cross = false;
  int64_t B = 2, Lq = 5, Lk = 5;
  CausalAlign causal = CausalAlign::kNone;
  Window window{};
  int mask_rank = 0;  // 0: none, 2: (Lq, Lk), 4: (B, 1, Lq, Lk)
  bool bias = false;  // additive (H, Lq, Lk), some -inf
  bool seqlens = false;
  bool alibi = false;
  float softcap = 0.0f;
  bool sinks = false;
  bool strided = false;  // inputs as non-contiguous views
  double tol = 1e-4;
};

void PrintTo(const ModuleCase& c, std::ostream* os) { *os << c.name; }
std::string case_name(const ::testing::TestParamInfo<ModuleCase>& info) { return info.param.name; }

// Sizes of a resolved config.
struct Dims {
  int64_t E, H, Hkv, d, dv, kdim, vdim, out;
  bool packed;
  explicit Dims(const MultiHeadAttentionConfig& c)
      : E(c.embed_dim),
        H(c.num_heads),
        Hkv(c.num_kv_heads),
        d(c.head_dim),
        dv(c.v_head_dim),
        kdim(c.kdim),
        vdim(c.vdim),
        out(c.out_dim),
        packed(c.kdim == c.embed_dim && c.vdim == c.embed_dim && Hkv == H && H * d == E && dv == d) {}
  int64_t nq() const { return H * d; }
  int64_t nk() const { return Hkv * d; }
  int64_t nv() const { return Hkv * dv; }
  int64_t hdv() const { return H * dv; }
};

// Inputs and the user's options over the input keys; owns every tensor.
struct Problem {
  MultiHeadAttentionConfig config;  // resolved
  bool cross = false;
  int64_t B = 0, Lq = 0, Lk = 0, extra = 0;
  Tensor query_store, key_store, value_store;
  TensorView query, key, value;
  Tensor mask, bias, seqlens, alibi, sinks;
  AttentionOptions options;
  int64_t Lke() const { return Lk + extra; }
};

// (B, L, F) random input; strided: a view into a (L, B, F + 2) block.
void make_input(std::mt19937_64& rng, int64_t B, int64_t L, int64_t F, bool strided, Tensor& store, TensorView& view) {
  if (!strided) {
    store = random_tensor(rng, {B, L, F});
    view = store.view();
    return;
  }
  store = random_tensor(rng, {L, B, F + 2});
  view = TensorView::contiguous(store.data(), DType::kF32, {B, L, F});
  view.strides = {F + 2, B * (F + 2), 1, 0};
}

Problem make_problem(const ModuleCase& mc, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Problem p;
  p.config = mc.config.resolved();
  const Dims d(p.config);
  p.cross = mc.cross;
  p.B = mc.B, p.Lq = mc.Lq, p.Lk = mc.cross ? mc.Lk : mc.Lq;
  p.extra = int64_t(p.config.add_bias_kv) + int64_t(p.config.add_zero_attn);
  make_input(rng, p.B, p.Lq, d.E, mc.strided, p.query_store, p.query);
  if (p.cross) {
    make_input(rng, p.B, p.Lk, d.kdim, mc.strided, p.key_store, p.key);
    make_input(rng, p.B, p.Lk, d.vdim, mc.strided, p.value_store, p.value);
  }
  AttentionOptions& o = p.options;
  o.causal = mc.causal;
  o.window = mc.window;
  o.softcap = mc.softcap;
  if (mc.mask_rank) {
    p.mask = mc.mask_rank == 2 ? Tensor::empty(DType::kBool, {p.Lq, p.Lk})
                               : Tensor::empty(DType::kBool, {p.B, 1, p.Lq, p.Lk});
    bool* m = p.mask.data_as<bool>();
    for (int64_t i = 0; i < p.mask.numel(); ++i) m[i] = uniform(rng, 0, 1) < 0.75;
    o.mask = p.mask.view();
  }
  if (mc.bias) {
    p.bias = random_tensor(rng, {d.H, p.Lq, p.Lk});
    float* b = p.bias.data_as<float>();
    for (int64_t i = 0; i < p.bias.numel(); ++i)
      if (uniform(rng, 0, 1) < 0.1) b[i] = -std::numeric_limits<float>::infinity();
    o.bias = p.bias.view();
  }
  if (mc.seqlens) {
    p.seqlens = Tensor::empty(DType::kI32, {p.B});
    for (int64_t b = 0; b < p.B; ++b) p.seqlens.data_as<int32_t>()[b] = int32_t(std::max<int64_t>(0, p.Lk - 3 * b));
    o.seqlens_k = p.seqlens.view();
  }
  if (mc.alibi) {
    p.alibi = Tensor::empty(DType::kF32, {d.H});
    for (int64_t h = 0; h < d.H; ++h) p.alibi.data_as<float>()[h] = float(std::pow(0.5, double(h + 1)));
    o.alibi_slopes = p.alibi.view();
  }
  if (mc.sinks) {
    p.sinks = random_tensor(rng, {d.H});
    o.sinks = p.sinks.view();
  }
  return p;
}

// Element (b, h, i, j) of a contiguous tensor that broadcasts to (B, H, Lq, Lk).
double broadcast_at(const Tensor& t, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t index[4] = {b, h, i, j};
  int64_t offset = 0;
  for (int dim = 0; dim < t.rank(); ++dim) {
    const int64_t at = t.size(dim) == 1 ? 0 : index[4 - t.rank() + dim];
    offset = offset * t.size(dim) + at;
  }
  return element(t.view(), offset);
}

// The contract written out per element over Lk + extra keys, the appended ones always
// visible: keep (B, H, Lq, Lke) and an additive bias (ALiBi included), -inf = masked.
struct Full {
  std::vector<uint8_t> keep;
  Vec bias;
  bool has_bias = false;
};

Full materialize(const Problem& p) {
  const Dims d(p.config);
  const AttentionOptions& o = p.options;
  const int64_t Lke = p.Lke();
  Full f;
  f.keep.assign(size_t(p.B * d.H * p.Lq * Lke), 1);
  f.bias.assign(f.keep.size(), 0.0);
  f.has_bias = bool(o.bias) || bool(o.alibi_slopes);
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t len = o.seqlens_k ? p.seqlens.data_as<int32_t>()[b] : p.Lk;
    const int64_t off = o.causal == CausalAlign::kTopLeft ? 0 : len - p.Lq;
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t i = 0; i < p.Lq; ++i)
        for (int64_t j = 0; j < p.Lk; ++j) {
          const size_t at = size_t(((b * d.H + h) * p.Lq + i) * Lke + j);
          bool keep = j < len;
          if (o.causal != CausalAlign::kNone && j > i + off) keep = false;
          if (o.window.left >= 0 && j < i + off - o.window.left) keep = false;
          if (o.window.right >= 0 && j > i + off + o.window.right) keep = false;
          if (o.mask && broadcast_at(p.mask, b, h, i, j) == 0.0) keep = false;
          f.keep[at] = keep;
          double x = o.bias ? broadcast_at(p.bias, b, h, i, j) : 0.0;
          if (o.alibi_slopes) x -= p.alibi.data_as<float>()[h] * std::abs(double(j - (i + off)));
          f.bias[at] = x;
        }
  }
  return f;
}

// The module's weights (double) split per projection.
struct Weights {
  const double *wq, *wk, *wv, *bin, *wo, *bo, *bias_k, *bias_v;
};

Weights split(const std::map<std::string, Vec>& w, const Dims& d) {
  auto get = [&](const char* name) -> const double* {
    const auto it = w.find(name);
    return it == w.end() ? nullptr : it->second.data();
  };
  Weights r{};
  if (d.packed) {
    r.wq = get("in_proj_weight");
    r.wk = r.wq + d.nq() * d.E;
    r.wv = r.wk + d.nk() * d.E;
  } else {
    r.wq = get("q_proj_weight"), r.wk = get("k_proj_weight"), r.wv = get("v_proj_weight");
  }
  r.bin = get("in_proj_bias");
  r.wo = get("out_proj.weight");
  r.bo = get("out_proj.bias");
  r.bias_k = get("bias_k");
  r.bias_v = get("bias_v");
  return r;
}

// y (rows, N) = x (rows, K) Wᵀ + b.
Vec project(const Vec& x, int64_t rows, int64_t K, const double* W, int64_t N, const double* b) {
  Vec y(size_t(rows * N));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = 0; n < N; ++n) {
      double s = b ? b[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += x[size_t(r * K + k)] * W[n * K + k];
      y[size_t(r * N + n)] = s;
    }
  return y;
}

// Keys or values (B, Lk + extra, N): projected rows, then bias_k / bias_v, then zeros.
Vec project_keys(const Problem& p, const Vec& x, int64_t K, const double* W, int64_t N, const double* b,
                 const double* learned) {
  const Vec y = project(x, p.B * p.Lk, K, W, N, b);
  Vec r(size_t(p.B * p.Lke() * N), 0.0);
  for (int64_t bi = 0; bi < p.B; ++bi) {
    std::copy_n(y.begin() + bi * p.Lk * N, p.Lk * N, r.begin() + bi * p.Lke() * N);
    if (learned) std::copy_n(learned, N, r.begin() + (bi * p.Lke() + p.Lk) * N);
  }
  return r;
}

// a (rows, N)ᵀ x (rows, K): (N, K).
Vec at_x(const Vec& a, int64_t rows, int64_t N, const Vec& x, int64_t K) {
  Vec r(size_t(N * K), 0.0);
  for (int64_t row = 0; row < rows; ++row)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) r[size_t(n * K + k)] += a[size_t(row * N + n)] * x[size_t(row * K + k)];
  return r;
}

// a (rows, N) W (N, K): (rows, K).
Vec a_w(const Vec& a, int64_t rows, int64_t N, const double* W, int64_t K) {
  Vec r(size_t(rows * K), 0.0);
  for (int64_t row = 0; row < rows; ++row)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) r[size_t(row * K + k)] += a[size_t(row * N + n)] * W[n * K + k];
  return r;
}

Vec column_sums(const Vec& a, int64_t rows, int64_t N) {
  Vec r(size_t(N), 0.0);
  for (int64_t row = 0; row < rows; ++row)
    for (int64_t n = 0; n < N; ++n) r[size_t(n)] += a[size_t(row * N + n)];
  return r;
}

Tensor to_tensor(const Vec& v, DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t = Tensor::empty(dtype, shape);
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kBF16)
      t.data_as<bf16>()[i] = float_to_bf16(float(v[i]));
    else
      t.data_as<float>()[i] = float(v[i]);
  }
  return t;
}

Vec concat(std::initializer_list<Vec> parts) {
  Vec r;
  for (const Vec& p : parts) r.insert(r.end(), p.begin(), p.end());
  return r;
}

// Keys/values rows [0, Lk) of each batch of a (B, Lk + extra, N) array.
Vec input_rows(const Problem& p, const Vec& a, int64_t N) {
  Vec r(size_t(p.B * p.Lk * N));
  for (int64_t b = 0; b < p.B; ++b) std::copy_n(a.begin() + b * p.Lke() * N, p.Lk * N, r.begin() + b * p.Lk * N);
  return r;
}

struct Inputs {
  Vec xq, xk, xv;  // (B, L, features); xk = xv = xq for self-attention
};

Inputs inputs_of(const Problem& p) {
  Inputs x;
  x.xq = to_vec(p.query);
  x.xk = p.cross ? to_vec(p.key) : x.xq;
  x.xv = p.cross ? to_vec(p.value) : x.xq;
  return x;
}

// Forward of the double composition around the reference attention.
struct Composition {
  Tensor q, k, v;               // attention inputs, rounded to the attention dtype
  Tensor full_mask, full_bias;  // the reference's mask/bias when keys are appended
  AttentionOptions options;
  Vec heads;  // (B, Lq, H·dv)
  Vec out;    // (B, Lq, out_dim)
  Vec probs;  // (B, H, Lq, Lke)
};

Composition compose_forward(const Problem& p, const std::map<std::string, Vec>& weights, float dropout,
                            uint64_t dropout_seed) {
  const Dims d(p.config);
  const Weights w = split(weights, d);
  const Inputs x = inputs_of(p);
  const DType act = p.config.dtype;
  const int64_t Lke = p.Lke();
  Composition c;
  const Vec Q = project(x.xq, p.B * p.Lq, d.E, w.wq, d.nq(), w.bin);
  const Vec K = project_keys(p, x.xk, d.kdim, w.wk, d.nk(), w.bin ? w.bin + d.nq() : nullptr, w.bias_k);
  const Vec V = project_keys(p, x.xv, d.vdim, w.wv, d.nv(), w.bin ? w.bin + d.nq() + d.nk() : nullptr, w.bias_v);
  c.q = to_tensor(Q, act, {p.B, p.Lq, d.H, d.d});
  c.k = to_tensor(K, act, {p.B, Lke, d.Hkv, d.d});
  c.v = to_tensor(V, act, {p.B, Lke, d.Hkv, d.dv});
  if (p.extra == 0) {
    c.options = p.options;
  } else {
    const Full f = materialize(p);
    c.full_mask = Tensor::empty(DType::kBool, {p.B, d.H, p.Lq, Lke});
    for (size_t i = 0; i < f.keep.size(); ++i) c.full_mask.data_as<bool>()[i] = f.keep[i] != 0;
    c.options.mask = c.full_mask.view();
    if (f.has_bias) {
      c.full_bias = to_tensor(f.bias, DType::kF32, {p.B, d.H, p.Lq, Lke});
      c.options.bias = c.full_bias.view();
    }
    c.options.scale = p.options.scale;
    c.options.softcap = p.options.softcap;
    c.options.sinks = p.options.sinks;
  }
  c.options.dropout_p = dropout;
  c.options.dropout_seed = dropout_seed;
  const reference::ForwardResult r = reference::attention_forward(c.q, c.k, c.v, c.options);
  c.heads = r.out;
  c.probs = r.probs;
  c.out = project(c.heads, p.B * p.Lq, d.hdv(), w.wo, d.out, w.bo);
  return c;
}

struct Gradients {
  std::map<std::string, Vec> params;  // PyTorch names
  Vec dquery, dkey, dvalue;           // dkey, dvalue empty for self-attention
};

// The analytic chain in double: output projection, reference attention backward, input
// projections; self-attention folds the three input gradients into dquery.
Gradients compose_backward(const Problem& p, const std::map<std::string, Vec>& weights, const Composition& c,
                           const Vec& dout) {
  const Dims d(p.config);
  const Weights w = split(weights, d);
  const Inputs x = inputs_of(p);
  const int64_t rows = p.B * p.Lq, krows = p.B * p.Lk;
  Gradients g;
  const Vec dheads = a_w(dout, rows, d.out, w.wo, d.hdv());
  g.params["out_proj.weight"] = at_x(dout, rows, d.out, c.heads, d.hdv());
  if (w.bo) g.params["out_proj.bias"] = column_sums(dout, rows, d.out);

  const Tensor dh = to_tensor(dheads, DType::kF32, {p.B, p.Lq, d.H, d.dv});
  const reference::BackwardResult r = reference::attention_backward(dh, c.q, c.k, c.v, c.options);
  if (w.bias_k) {
    Vec gk(size_t(d.nk()), 0.0), gv(size_t(d.nv()), 0.0);
    for (int64_t b = 0; b < p.B; ++b) {
      for (int64_t n = 0; n < d.nk(); ++n) gk[size_t(n)] += r.dk[size_t((b * p.Lke() + p.Lk) * d.nk() + n)];
      for (int64_t n = 0; n < d.nv(); ++n) gv[size_t(n)] += r.dv[size_t((b * p.Lke() + p.Lk) * d.nv() + n)];
    }
    g.params["bias_k"] = gk;
    g.params["bias_v"] = gv;
  }
  const Vec dQ = r.dq, dK = input_rows(p, r.dk, d.nk()), dV = input_rows(p, r.dv, d.nv());
  if (w.bin)
    g.params["in_proj_bias"] =
        concat({column_sums(dQ, rows, d.nq()), column_sums(dK, krows, d.nk()), column_sums(dV, krows, d.nv())});
  Vec gq = at_x(dQ, rows, d.nq(), x.xq, d.E), gk = at_x(dK, krows, d.nk(), x.xk, d.kdim),
      gv = at_x(dV, krows, d.nv(), x.xv, d.vdim);
  if (d.packed) {
    g.params["in_proj_weight"] = concat({gq, gk, gv});
  } else {
    g.params["q_proj_weight"] = gq;
    g.params["k_proj_weight"] = gk;
    g.params["v_proj_weight"] = gv;
  }
  g.dquery = a_w(dQ, rows, d.nq(), w.wq, d.E);
  Vec dkey = a_w(dK, krows, d.nk(), w.wk, d.kdim), dvalue = a_w(dV, krows, d.nv(), w.wv, d.vdim);
  if (p.cross) {
    g.dkey = dkey;
    g.dvalue = dvalue;
  } else {
    for (size_t i = 0; i < g.dquery.size(); ++i) g.dquery[i] += dkey[i] + dvalue[i];
  }
  return g;
}

// Σ out ⊙ G of an all-double composition (its own attention, from the materialized
// mask and bias): the function central differences differentiate.
double double_loss(const Problem& p, const Full& f, const std::map<std::string, Vec>& weights, const Inputs& x,
                   const Vec& G) {
  const Dims d(p.config);
  const Weights w = split(weights, d);
  const int64_t Lke = p.Lke();
  const Vec Q = project(x.xq, p.B * p.Lq, d.E, w.wq, d.nq(), w.bin);
  const Vec K = project_keys(p, x.xk, d.kdim, w.wk, d.nk(), w.bin ? w.bin + d.nq() : nullptr, w.bias_k);
  const Vec V = project_keys(p, x.xv, d.vdim, w.wv, d.nv(), w.bin ? w.bin + d.nq() + d.nk() : nullptr, w.bias_v);
  const double scale = p.options.scale ? double(*p.options.scale) : 1.0 / std::sqrt(double(d.d));
  const double cap = p.options.softcap;
  Vec heads(size_t(p.B * p.Lq * d.hdv()), 0.0);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t hk = h / (d.H / d.Hkv);
      for (int64_t i = 0; i < p.Lq; ++i) {
        Vec s(size_t(Lke), -kInf);
        double mx = -kInf;
        bool any = false;
        for (int64_t j = 0; j < Lke; ++j) {
          const size_t at = size_t(((b * d.H + h) * p.Lq + i) * Lke + j);
          if (!f.keep[at] || f.bias[at] == -kInf) continue;
          double dot = 0;
          for (int64_t t = 0; t < d.d; ++t)
            dot += Q[size_t((b * p.Lq + i) * d.nq() + h * d.d + t)] * K[size_t((b * Lke + j) * d.nk() + hk * d.d + t)];
          double z = scale * dot;
          if (cap > 0) z = cap * std::tanh(z / cap);
          s[size_t(j)] = z + f.bias[at];
          mx = std::max(mx, s[size_t(j)]);
          any = true;
        }
        if (!any) continue;  // fully masked: output 0
        const double sink = p.options.sinks ? double(p.sinks.data_as<float>()[h]) : -kInf;
        mx = std::max(mx, sink);
        double sum = std::exp(sink - mx);
        for (int64_t j = 0; j < Lke; ++j) sum += std::exp(s[size_t(j)] - mx);
        for (int64_t j = 0; j < Lke; ++j) {
          const double pj = std::exp(s[size_t(j)] - mx) / sum;
          for (int64_t t = 0; t < d.dv; ++t)
            heads[size_t((b * p.Lq + i) * d.hdv() + h * d.dv + t)] +=
                pj * V[size_t((b * Lke + j) * d.nv() + hk * d.dv + t)];
        }
      }
    }
  const Vec out = project(heads, p.B * p.Lq, d.hdv(), w.wo, d.out, w.bo);
  double loss = 0;
  for (size_t i = 0; i < out.size(); ++i) loss += out[i] * G[i];
  return loss;
}

// Every parameter of the module set to random values (biases non-zero too), through
// load_state_dict.
void randomize(MultiHeadAttention& m, std::mt19937_64& rng, double scale = 0.5) {
  std::map<std::string, Tensor> owned;
  std::map<std::string, TensorView> views;
  for (const auto& [name, view] : m.state_dict()) {
    Tensor t = Tensor::empty(DType::kF32, view.rank, view.shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = float(uniform(rng, -scale, scale));
    views.emplace(name, t.view());
    owned.emplace(name, std::move(t));
  }
  m.load_state_dict(views);
}

MhaOutput run_forward(MultiHeadAttention& m, const Problem& p, MhaForwardOptions o) {
  o.attention = p.options;
  return p.cross ? m.forward(p.query, &p.key, &p.value, o) : m.forward(p.query, nullptr, nullptr, o);
}

Vec head_mean(const Vec& probs, int64_t B, int64_t H, int64_t n) {
  Vec r(size_t(B * n), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < n; ++i) r[size_t(b * n + i)] += probs[size_t((b * H + h) * n + i)] / double(H);
  return r;
}

void expect_gradients(MultiHeadAttention& m, const MhaInputGrads& got, const Gradients& want, bool cross, double tol) {
  const std::map<std::string, Vec> grads = grads_of(m);
  EXPECT_EQ(grads.size(), want.params.size());
  for (const auto& [name, g] : want.params) {
    ASSERT_TRUE(grads.count(name)) << name;
    expect_close("grad " + name, grads.at(name), g, tol);
  }
  expect_close("dquery", to_vec(got.dquery), want.dquery, tol);
  if (cross) {
    expect_close("dkey", to_vec(got.dkey), want.dkey, tol);
    expect_close("dvalue", to_vec(got.dvalue), want.dvalue, tol);
  } else {
    EXPECT_EQ(got.dkey.data(), nullptr);
    EXPECT_EQ(got.dvalue.data(), nullptr);
  }
}

using F = MultiHeadAttentionConfig;
constexpr DType kBF16 = DType::kBF16;
constexpr CausalAlign kTopLeft = CausalAlign::kTopLeft, kBottomRight = CausalAlign::kBottomRight;

std::vector<ModuleCase> option_cases() {
  return {
      {.name = "mha", .config = F{.embed_dim = 16, .num_heads = 4}},
      {.name = "gqa", .config = F{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2}},
      {.name = "mqa_causal", .config = F{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 1}, .causal = kTopLeft},
      {.name = "head_dim_free",
       .config = F{.embed_dim = 12, .num_heads = 4, .num_kv_heads = 2, .head_dim = 5, .v_head_dim = 3}},
      {.name = "cross_kdim_vdim",
       .config = F{.embed_dim = 8, .num_heads = 2, .kdim = 5, .vdim = 7},
       .cross = true,
       .Lq = 3,
       .Lk = 6},
      {.name = "cross_packed_bottom_right",
       .config = F{.embed_dim = 8, .num_heads = 2},
       .cross = true,
       .Lq = 4,
       .Lk = 7,
       .causal = kBottomRight},
      {.name = "out_dim", .config = F{.embed_dim = 8, .num_heads = 2, .out_dim = 11}},
      {.name = "no_bias", .config = F{.embed_dim = 8, .num_heads = 2, .bias = false}},
      {.name = "bias_kv", .config = F{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true}},
      {.name = "zero_attn", .config = F{.embed_dim = 8, .num_heads = 2, .add_zero_attn = true}},
      {.name = "bias_kv_zero_attn_causal",
       .config = F{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true, .add_zero_attn = true},
       .causal = kTopLeft},
      {.name = "appended_mask_key_padding",
       .config = F{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true, .add_zero_attn = true},
       .cross = true,
       .Lq = 4,
       .Lk = 6,
       .mask_rank = 2,
       .seqlens = true},
      {.name = "appended_window_bias",
       .config = F{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true},
       .cross = true,
       .Lq = 3,
       .Lk = 7,
       .causal = kBottomRight,
       .window = {2, -1},
       .bias = true},
      {.name = "appended_alibi_key_padding",
       .config = F{.embed_dim = 8, .num_heads = 2, .add_zero_attn = true},
       .Lq = 6,
       .causal = kTopLeft,
       .seqlens = true,
       .alibi = true},
      {.name = "mask4_key_padding_bottom_right",
       .config = F{.embed_dim = 8, .num_heads = 2},
       .cross = true,
       .Lq = 4,
       .Lk = 6,
       .causal = kBottomRight,
       .mask_rank = 4,
       .seqlens = true},
      {.name = "softcap_sinks_alibi_window",
       .config = F{.embed_dim = 8, .num_heads = 2},
       .Lq = 7,
       .window = {2, 1},
       .alibi = true,
       .softcap = 3.0f,
       .sinks = true},
      {.name = "everything",
       .config = F{.embed_dim = 12,
                   .num_heads = 4,
                   .num_kv_heads = 2,
                   .head_dim = 4,
                   .v_head_dim = 5,
                   .kdim = 7,
                   .vdim = 9,
                   .out_dim = 10,
                   .add_bias_kv = true,
                   .add_zero_attn = true},
       .cross = true,
       .Lq = 5,
       .Lk = 6,
       .causal = kBottomRight,
       .mask_rank = 4,
       .bias = true},
      {.name = "strided_self", .config = F{.embed_dim = 16, .num_heads = 4}, .strided = true},
      {.name = "strided_cross",
       .config = F{.embed_dim = 8, .num_heads = 2, .kdim = 5, .vdim = 7},
       .cross = true,
       .Lq = 3,
       .Lk = 4,
       .strided = true},
      {.name = "bf16", .config = F{.embed_dim = 16, .num_heads = 4, .dtype = kBF16}, .tol = 3e-2},
      {.name = "bf16_gqa_bias_kv_cross",
       .config = F{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2, .kdim = 12, .add_bias_kv = true, .dtype = kBF16},
       .cross = true,
       .Lq = 4,
       .Lk = 6,
       .mask_rank = 2,
       .tol = 3e-2},
      {.name = "larger_causal", .config = F{.embed_dim = 64, .num_heads = 8}, .B = 3, .Lq = 33, .causal = kTopLeft},
  };
}

class ModuleVsReference : public ::testing::TestWithParam<ModuleCase> {};

TEST_P(ModuleVsReference, ForwardWeightsAndBackward) {
  const ModuleCase& mc = GetParam();
  const Problem p = make_problem(mc, 1234);
  const Dims d(p.config);
  MultiHeadAttention m(mc.config);
  std::mt19937_64 rng(99);
  randomize(m, rng);
  const std::map<std::string, Vec> w = weights_of(m);

  const MhaOutput per_head = run_forward(m, p, {.need_weights = true, .average_weights = false});
  const Composition c = compose_forward(p, w, 0.0f, 0);
  expect_close("out", to_vec(per_head.out), c.out, mc.tol);
  ASSERT_EQ(per_head.weights.rank(), 4);
  EXPECT_EQ(per_head.weights.size(3), p.Lke());
  expect_close("weights per head", to_vec(per_head.weights), c.probs, mc.tol);

  const MhaOutput averaged = run_forward(m, p, {.need_weights = true});
  ASSERT_EQ(averaged.weights.rank(), 3);
  expect_close("weights averaged", to_vec(averaged.weights), head_mean(c.probs, p.B, d.H, p.Lq * p.Lke()), mc.tol);
  EXPECT_TRUE(to_vec(averaged.out) == to_vec(per_head.out)) << "asking for weights changed the output";

  const MhaOutput plain = run_forward(m, p, {});
  EXPECT_TRUE(to_vec(plain.out) == to_vec(per_head.out));
  EXPECT_EQ(plain.weights.data(), nullptr);

  const Tensor dout = random_tensor(rng, {p.B, p.Lq, d.out});
  const MhaInputGrads g = m.backward(dout);
  expect_gradients(m, g, compose_backward(p, w, c, to_vec(dout)), p.cross, mc.tol);
}

INSTANTIATE_TEST_SUITE_P(Options, ModuleVsReference, ::testing::ValuesIn(option_cases()), case_name);

// Central differences of the all-double composition, on shapes small enough to
// perturb every parameter and every input element.
std::vector<ModuleCase> tiny_cases() {
  return {
      {.name = "mha", .config = F{.embed_dim = 6, .num_heads = 2}, .Lq = 3},
      {.name = "gqa_head_dims_appended_causal",
       .config = F{.embed_dim = 8,
                   .num_heads = 4,
                   .num_kv_heads = 2,
                   .head_dim = 3,
                   .v_head_dim = 2,
                   .add_bias_kv = true,
                   .add_zero_attn = true},
       .Lq = 3,
       .causal = kTopLeft},
      {.name = "cross_out_dim_bias_kv_mask_bias",
       .config = F{.embed_dim = 6, .num_heads = 2, .kdim = 4, .vdim = 5, .out_dim = 7, .add_bias_kv = true},
       .cross = true,
       .Lq = 3,
       .Lk = 4,
       .mask_rank = 2,
       .bias = true},
      {.name = "softcap_sinks_alibi_no_bias",
       .config = F{.embed_dim = 6, .num_heads = 2, .bias = false},
       .Lq = 4,
       .alibi = true,
       .softcap = 2.0f,
       .sinks = true},
  };
}

class ModuleFiniteDifferences : public ::testing::TestWithParam<ModuleCase> {};

TEST_P(ModuleFiniteDifferences, GradientsMatch) {
  const ModuleCase& mc = GetParam();
  const Problem p = make_problem(mc, 4321);
  const Dims d(p.config);
  const Full full = materialize(p);
  MultiHeadAttention m(mc.config);
  std::mt19937_64 rng(7);
  randomize(m, rng, 0.8);
  std::map<std::string, Vec> w = weights_of(m);
  Inputs x = inputs_of(p);
  const Tensor dout = random_tensor(rng, {p.B, p.Lq, d.out});
  const Vec G = to_vec(dout);

  run_forward(m, p, {});
  const MhaInputGrads got = m.backward(dout);
  const Composition c = compose_forward(p, w, 0.0f, 0);
  const Gradients chain = compose_backward(p, w, c, G);

  const double eps = 1e-4;
  auto central = [&](double& slot) {
    const double keep = slot;
    slot = keep + eps;
    const double up = double_loss(p, full, w, x, G);
    slot = keep - eps;
    const double down = double_loss(p, full, w, x, G);
    slot = keep;
    return (up - down) / (2 * eps);
  };
  const std::map<std::string, Vec> grads = grads_of(m);
  for (auto& [name, values] : w) {
    Vec fd(values.size());
    for (size_t i = 0; i < values.size(); ++i) fd[i] = central(values[i]);
    expect_close("fd grad " + name, grads.at(name), fd, 1e-4, 1e-5);
    expect_close("chain grad " + name, chain.params.at(name), fd, 1e-5, 1e-6);
  }
  auto check_input = [&](const char* what, Vec& xs, const Tensor& module_grad, const Vec& chain_grad) {
    Vec fd(xs.size());
    for (size_t i = 0; i < xs.size(); ++i) fd[i] = central(xs[i]);
    expect_close(std::string("fd ") + what, to_vec(module_grad), fd, 1e-4, 1e-5);
    expect_close(std::string("chain ") + what, chain_grad, fd, 1e-5, 1e-6);
  };
  if (p.cross) {
    check_input("dquery", x.xq, got.dquery, chain.dquery);
    check_input("dkey", x.xk, got.dkey, chain.dkey);
    check_input("dvalue", x.xv, got.dvalue, chain.dvalue);
  } else {
    // One input feeds Q, K and V: perturb all three together.
    Vec fd(x.xq.size());
    for (size_t i = 0; i < x.xq.size(); ++i) {
      const double keep = x.xq[i];
      auto at = [&](double v) {
        x.xq[i] = x.xk[i] = x.xv[i] = v;
        return double_loss(p, full, w, x, G);
      };
      fd[i] = (at(keep + eps) - at(keep - eps)) / (2 * eps);
      at(keep);
    }
    expect_close("fd dquery", to_vec(got.dquery), fd, 1e-4, 1e-5);
    expect_close("chain dquery", chain.dquery, fd, 1e-5, 1e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, ModuleFiniteDifferences, ::testing::ValuesIn(tiny_cases()), case_name);

// Training mode with dropout: the module passes config.dropout and its per-call seed to
// the attention; the reference with the same seed agrees (forward and backward).
TEST(ModuleDropout, MatchesReferenceWithTheSameSeed) {
  const ModuleCase mc{.name = "dropout",
                      .config = F{.embed_dim = 16, .num_heads = 4, .add_bias_kv = true, .dropout = 0.3f, .seed = 5},
                      .Lq = 9,
                      .causal = kTopLeft};
  const Problem p = make_problem(mc, 77);
  const Dims d(p.config);
  MultiHeadAttention m(mc.config);
  std::mt19937_64 rng(3);
  randomize(m, rng);
  const std::map<std::string, Vec> w = weights_of(m);
  for (uint64_t call = 0; call < 2; ++call) {
    const MhaOutput r = run_forward(m, p, {.training = true});
    const Composition c = compose_forward(p, w, 0.3f, detail::module_dropout_seed(5, call));
    expect_close("out call " + std::to_string(call), to_vec(r.out), c.out, 1e-4);
    m.zero_grad();
    const Tensor dout = random_tensor(rng, {p.B, p.Lq, d.out});
    const MhaInputGrads g = m.backward(dout);
    expect_gradients(m, g, compose_backward(p, w, c, to_vec(dout)), false, 1e-4);
  }
}

TEST(ModuleDropout, DeterministicGivenTheSeedAndOffInEval) {
  const MultiHeadAttentionConfig config{.embed_dim = 16, .num_heads = 4, .dropout = 0.5f, .seed = 11};
  const Problem p = make_problem({.name = "d", .config = config, .Lq = 8}, 5);
  MultiHeadAttention a(config), b(config);
  const MhaOutput eval = run_forward(a, p, {});
  const MhaOutput a1 = run_forward(a, p, {.training = true}), a2 = run_forward(a, p, {.training = true});
  const MhaOutput b1 = run_forward(b, p, {.training = true}), b2 = run_forward(b, p, {.training = true});
  EXPECT_TRUE(to_vec(a1.out) == to_vec(b1.out));
  EXPECT_TRUE(to_vec(a2.out) == to_vec(b2.out));
  EXPECT_FALSE(to_vec(a1.out) == to_vec(a2.out)) << "each training call draws a new pattern";
  EXPECT_FALSE(to_vec(a1.out) == to_vec(eval.out)) << "dropout had no effect in training mode";
  // Eval mode is dropout-free whatever came before.
  EXPECT_TRUE(to_vec(run_forward(b, p, {}).out) == to_vec(eval.out));
}

}  // namespace
}  // namespace multihead::test
