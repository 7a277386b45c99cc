// The double-precision composition of the module's math declared in module_reference.hpp:
// naive double projections around the reference attention, its analytic backward chain,
// and the all-double loss the finite-difference tests differentiate.
#include "module/module_reference.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "module/module_support.hpp"
#include "reference/attention_reference.hpp"

namespace multihead::test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

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

}  // namespace

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

Inputs inputs_of(const Problem& p) {
  Inputs x;
  x.xq = to_vec(p.query);
  x.xk = p.cross ? to_vec(p.key) : x.xq;
  x.xv = p.cross ? to_vec(p.value) : x.xq;
  return x;
}

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

}  // namespace multihead::test
