// The score modifiers, forward and backward: one definition of what happens to a score
// between scale·q·k and the softmax, for every kernel. The portable tiles apply it to rows
// of S (stride 1), the SIMD tiles to columns of Sᵀ (stride rows_pad, through
// score_modifiers_simd-inl.hpp) and the decode path to rows of S, so every path and the
// backward's recomputation modify scores bit for bit alike. (docs/CONTRACT.md)
//   forward   s = c·tanh(raw / c)                 softcap c > 0, raw = scale·q·k
//             s = s + bias_ij                     -inf where bias <= its dtype's lowest
//             s = s - slope_h·|j - (i + kv_offset)|   ALiBi
//             s = -inf                            masked, outside the band, past k_len
//   extra keys (SequenceSpan::unmasked) get the softcap only
//   backward  d raw = ds · (1 - tanh²(raw / c))   softcap; d(bias) = ds, reduced by the caller
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "kernels/cpu/tile_ops.hpp"
#include "kernels/params.hpp"

namespace multihead::detail {

// The scores of query i (head h) for keys [j0, j0 + nk), at x[c·stride], from scale·q·k to
// the softmax's input; keys [nk, padded) (tile padding) become -inf.
inline void apply_score_modifiers(const ScoreModifiers& p, const SequenceSpan& s, int64_t h, int64_t i, int64_t j0,
                                  int64_t nk, int64_t padded, float* x, int64_t stride) {
  if (p.softcap > 0.0f) {
    const float inv = 1.0f / p.softcap;
    for (int64_t c = 0; c < nk; ++c) x[c * stride] = p.softcap * std::tanh(x[c * stride] * inv);
  }
  // Extra keys (s = extra_span(...)): s = c·tanh(raw / c) only; no bias, ALiBi, mask or band.
  if (s.unmasked) {
    for (int64_t c = nk; c < padded; ++c) x[c * stride] = kNegInf;
    return;
  }
  if (p.bias.data) {
    const int64_t base = s.batch * p.bias.stride_b + h * p.bias.stride_h + i * p.bias.stride_i;
    for (int64_t c = 0; c < nk; ++c) {
      const float b = load_float(p.bias.data, p.bias.dtype, base + (j0 + c) * p.bias.stride_j);
      float& v = x[c * stride];
      v = b <= p.bias_masked_at ? kNegInf : v + b;
    }
  }
  if (p.alibi_slopes) {
    const float slope = p.alibi_slopes[h * p.alibi_stride];
    const int64_t diag = i + s.kv_offset;
    for (int64_t c = 0; c < nk; ++c) x[c * stride] -= slope * float(std::llabs(j0 + c - diag));
  }
  if (p.mask.data) {
    const bool* m = static_cast<const bool*>(p.mask.data) + s.batch * p.mask.stride_b + h * p.mask.stride_h +
                    i * p.mask.stride_i;
    for (int64_t c = 0; c < nk; ++c)
      if (!m[(j0 + c) * p.mask.stride_j]) x[c * stride] = kNegInf;
  }
  const IndexRange range = key_range(p, s, i);
  const int64_t lo = std::clamp<int64_t>(range.lo - j0, 0, nk), hi = std::clamp<int64_t>(range.hi - j0, lo, nk);
  for (int64_t c = 0; c < lo; ++c) x[c * stride] = kNegInf;
  for (int64_t c = hi; c < padded; ++c) x[c * stride] = kNegInf;
}

// Backward of the softcap for n scores: ds <- ds · (1 - tanh²(raw / c)), the gradient
// w.r.t. raw = scale·q·k from the one w.r.t. the capped score.
inline void softcap_backward(float softcap, const float* raw, float* ds, int64_t n) {
  const float inv = 1.0f / softcap;
  for (int64_t e = 0; e < n; ++e) {
    const float t = std::tanh(raw[e] * inv);
    ds[e] *= 1.0f - t * t;
  }
}

// The portable kernels' scores (forward, and the backward's recomputation, so P is
// recomputed bit for bit): S = scale · Q Kᵀ for a (n x nk) tile, then the modifiers.
// raw (optional, n x nk) receives scale · Q Kᵀ before the softcap, for the backward's
// chain rule. q_tile (n x D), k_t (D x nk).
inline void score_tile(const AttentionParams& p, const SequenceSpan& s, int64_t h, int64_t i0, int64_t n,
                       int64_t j0, int64_t nk, const float* q_tile, const float* k_t, float* S, float* raw) {
  for (int64_t r = 0; r < n; ++r) {
    float* srow = S + r * nk;
    std::fill_n(srow, nk, 0.0f);
    const float* qrow = q_tile + r * p.D;
    // S[r, :] += q[r, d] · Kᵀ[d, :]   (vectorizes over keys; fixed order over d)
    for (int64_t d = 0; d < p.D; ++d) {
      const float qd = qrow[d];
      const float* kd = k_t + d * nk;
      for (int64_t c = 0; c < nk; ++c) srow[c] += qd * kd[c];
    }
    for (int64_t c = 0; c < nk; ++c) srow[c] *= p.scale;
    if (raw) std::copy_n(srow, nk, raw + r * nk);
    apply_score_modifiers(p, s, h, i0 + r, j0, nk, nk, srow, 1);
  }
}

}  // namespace multihead::detail
