// MultiHeadAttention's forward and backward: the input checks, the projections (BLAS
// GEMMs, module/linear.hpp) around the functional attention, and the chain of
// gradients back through them. The projections' outputs are read by attention through
// strided head views, never reshaped by copies. Weights, gradients, what backward needs
// from the last forward (the tape) and scratch buffers live in State
// (module/module_state.hpp); buffers only grow, so steady-state calls touch no fresh
// pages. Parameters are in parameters.cpp, names and state dicts in state_dict.cpp,
// the attention options' checks and lowering in option_lowering.cpp.
#include "multihead/multi_head_attention.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "module/dropout_seed.hpp"
#include "module/linear.hpp"
#include "module/module_state.hpp"

namespace multihead {

using namespace detail;  // Dims, Param, Rows, Matrix, Scratch, fail, view4

void detail::copy_rows(const TensorView& x, float* dst) {
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

void detail::check_input(const TensorView& x, const char* name, int64_t features, const char* letter) {
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

namespace {

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
  check_module_options(user, d, B, Lq, Lk, options.need_weights);
  const DType act = c.dtype;  // attention input dtype
  const int64_t extra = int64_t(c.add_bias_kv) + int64_t(c.add_zero_attn), Lke = Lk + extra;

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
  // Rotary positions 0..L-1 on the input rows (not the appended keys), before any rounding.
  rotate_heads(view4(q_data, DType::kF32, {B, Lq, d.H, d.d}, {q_bs, q_ld, d.d, 1}), c, {}, false);
  rotate_heads(view4(k_data, DType::kF32, {B, Lk, d.Hkv, d.d}, {kv_bs, kv_ld, d.d, 1}), c, {}, false);
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

  s.options = lower_options(user, OptionBuffers{s.mask, s.bias, s.seqlens, s.alibi, s.sinks}, extra);
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

  // Through the rotary positions: the gradient w.r.t. the unrotated projection is Rᵀ dQ.
  rotate_heads(grads.dq, config_, {}, true);
  rotate_heads(view4(dk, DType::kF32, {B, Lk, d.Hkv, d.d}, {Lke * nk, nk, d.d, 1}), config_, {}, true);

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
  if (s.single_in_proj) {
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

}  // namespace multihead
