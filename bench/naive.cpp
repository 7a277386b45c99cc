#include "bench/naive.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace multihead::bench {
namespace {

// One past the last key query i may see.
int64_t key_end(const NaiveShape& s, int64_t i) {
  return s.causal ? std::clamp<int64_t>(i + s.Lk - s.Lq + 1, 0, s.Lk) : s.Lk;
}

float dot(const float* a, const float* b, int64_t n) {
  float acc = 0;
  for (int64_t d = 0; d < n; ++d) acc += a[d] * b[d];
  return acc;
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// One head: P (Lq, Lk) = softmax(scale · q kᵀ) (zero past each row's last key), o = P v.
void head_forward(const NaiveShape& s, const float* q, int64_t q_sl, const float* k, int64_t k_sl, const float* v,
                  int64_t v_sl, float* o, int64_t o_sl, float* P) {
  for (int64_t i = 0; i < s.Lq; ++i) {
    const int64_t n = key_end(s, i);
    float* p = P + i * s.Lk;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      p[j] = s.scale * dot(q + i * q_sl, k + j * k_sl, s.D);
      m = std::max(m, p[j]);
    }
    float sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += p[j] = std::exp(p[j] - m);
    const float inv = n > 0 ? 1.0f / sum : 0.0f;
    for (int64_t j = 0; j < n; ++j) p[j] *= inv;
    std::fill(p + n, p + s.Lk, 0.0f);
    float* oi = o + i * o_sl;
    std::fill(oi, oi + s.Dv, 0.0f);
    for (int64_t j = 0; j < n; ++j) axpy(p[j], v + j * v_sl, oi, s.Dv);
  }
}

// One head, given its P: dv += Pᵀ dO;  dP = dO vᵀ;  dS = P ∘ (dP − rowsum(P ∘ dP));
// dq = scale · dS k;  dk += scale · dSᵀ q.
void head_backward(const NaiveShape& s, const float* q, int64_t q_sl, const float* k, int64_t k_sl, const float* v,
                   int64_t v_sl, const float* dout, int64_t do_sl, const float* P, float* dS, float* dq,
                   int64_t dq_sl, float* dk, int64_t dk_sl, float* dv, int64_t dv_sl) {
  for (int64_t i = 0; i < s.Lq; ++i) {
    const int64_t n = key_end(s, i);
    const float* p = P + i * s.Lk;
    const float* doi = dout + i * do_sl;
    float row_dot = 0;
    for (int64_t j = 0; j < n; ++j) {
      axpy(p[j], doi, dv + j * dv_sl, s.Dv);
      dS[j] = dot(doi, v + j * v_sl, s.Dv);
      row_dot += p[j] * dS[j];
    }
    float* dqi = dq + i * dq_sl;
    std::fill(dqi, dqi + s.D, 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      const float ds = s.scale * p[j] * (dS[j] - row_dot);
      axpy(ds, k + j * k_sl, dqi, s.D);
      axpy(ds, q + i * q_sl, dk + j * dk_sl, s.D);
    }
  }
}

}  // namespace

void naive_attention_forward(const NaiveShape& s, HeadsView q, HeadsView k, HeadsView v, HeadsView out,
                             int64_t groups, int threads) {
  const int64_t G = s.H / s.Hkv;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> P(size_t(s.Lq * s.Lk));
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t b = g / s.Hkv, hk = g % s.Hkv;
      for (int64_t h = hk * G; h < (hk + 1) * G; ++h)
        head_forward(s, q.data + b * q.stride_b + h * s.D, q.stride_l, k.data + b * k.stride_b + hk * s.D,
                     k.stride_l, v.data + b * v.stride_b + hk * s.Dv, v.stride_l,
                     out.data + b * out.stride_b + h * s.Dv, out.stride_l, P.data());
    }
  }
}

void naive_attention_forward_backward(const NaiveShape& s, HeadsView q, HeadsView k, HeadsView v,
                                      HeadsView out, HeadsView dout, HeadsView dq, HeadsView dk,
                                      HeadsView dv, int64_t groups, int threads) {
  const int64_t G = s.H / s.Hkv;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> P(size_t(G * s.Lq * s.Lk)), dS(size_t(s.Lk));
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t b = g / s.Hkv, hk = g % s.Hkv;
      const float* kb = k.data + b * k.stride_b + hk * s.D;
      const float* vb = v.data + b * v.stride_b + hk * s.Dv;
      float* dkb = dk.data + b * dk.stride_b + hk * s.D;
      float* dvb = dv.data + b * dv.stride_b + hk * s.Dv;
      for (int64_t j = 0; j < s.Lk; ++j) {
        std::fill(dkb + j * dk.stride_l, dkb + j * dk.stride_l + s.D, 0.0f);
        std::fill(dvb + j * dv.stride_l, dvb + j * dv.stride_l + s.Dv, 0.0f);
      }
      for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
        float* Ph = P.data() + (h - hk * G) * s.Lq * s.Lk;
        const float* qh = q.data + b * q.stride_b + h * s.D;
        head_forward(s, qh, q.stride_l, kb, k.stride_l, vb, v.stride_l, out.data + b * out.stride_b + h * s.Dv,
                     out.stride_l, Ph);
        head_backward(s, qh, q.stride_l, kb, k.stride_l, vb, v.stride_l, dout.data + b * dout.stride_b + h * s.Dv,
                      dout.stride_l, Ph, dS.data(), dq.data + b * dq.stride_b + h * s.D, dq.stride_l, dkb,
                      dk.stride_l, dvb, dv.stride_l);
      }
    }
  }
}

void naive_linear_forward(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t in,
                          int64_t out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) y[n * out + o] = b[o] + dot(x + n * in, w + o * in, in);
}

void naive_linear_backward_input(const float* dy, const float* w, float* dx, int64_t N, int64_t in, int64_t out,
                                 int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* dxn = dx + n * in;
    std::fill(dxn, dxn + in, 0.0f);
    for (int64_t o = 0; o < out; ++o) axpy(dy[n * out + o], w + o * in, dxn, in);
  }
}

void naive_linear_backward_weight(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t in,
                                  int64_t out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t o = 0; o < out; ++o)
    for (int64_t n = 0; n < N; ++n) {
      axpy(dy[n * out + o], x + n * in, dw + o * in, in);
      db[o] += dy[n * out + o];
    }
}

void naive_module_forward_backward(NaiveModule& m, const float* x, const float* dy, float* y, float* dx,
                                   int64_t B, int64_t L, bool causal, int threads) {
  const int64_t E = m.E, N = B * L, d = E / m.heads;
  std::vector<float> qkv(size_t(N * 3 * E)), dqkv(size_t(N * 3 * E)), attn(size_t(N * E)), dattn(size_t(N * E));
  naive_linear_forward(x, m.w_in.data(), m.b_in.data(), qkv.data(), N, E, 3 * E, threads);
  // The output projection's input gradient does not depend on its input: it comes first,
  // so that attention runs forward and backward in one pass, P kept in between.
  naive_linear_backward_input(dy, m.w_out.data(), dattn.data(), N, E, E, threads);
  const NaiveShape s{B, L, L, m.heads, m.heads, d, d, causal, 1.0f / std::sqrt(float(d))};
  const auto packed = [&](std::vector<float>& t, int64_t part) { return HeadsView{t.data() + part * E, L * 3 * E, 3 * E}; };
  const auto flat = [&](std::vector<float>& t) { return HeadsView{t.data(), L * E, E}; };
  naive_attention_forward_backward(s, packed(qkv, 0), packed(qkv, 1), packed(qkv, 2), flat(attn), flat(dattn),
                                   packed(dqkv, 0), packed(dqkv, 1), packed(dqkv, 2), B * m.heads, threads);
  naive_linear_forward(attn.data(), m.w_out.data(), m.b_out.data(), y, N, E, E, threads);
  naive_linear_backward_weight(attn.data(), dy, m.dw_out.data(), m.db_out.data(), N, E, E, threads);
  naive_linear_backward_input(dqkv.data(), m.w_in.data(), dx, N, E, 3 * E, threads);
  naive_linear_backward_weight(x, dqkv.data(), m.dw_in.data(), m.db_in.data(), N, E, 3 * E, threads);
}

}  // namespace multihead::bench
