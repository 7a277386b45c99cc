// The module's attention options, turned into the functional API's. The user's options
// are checked against the input keys by the public validate_attention (shapes only, no
// tensor of the module is built for it) plus what the module does not take (cu_seqlens,
// dropout_p); then every option tensor is copied into the module's own buffers (backward
// reuses them), and when add_bias_kv / add_zero_attn append keys, what restricts keys by
// position is written into an explicit mask / bias over the Lk + extra keys.
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>

#include "module/module_state.hpp"

namespace multihead::detail {

namespace {

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

}  // namespace

void check_module_options(const AttentionOptions& user, const Dims& dims, int64_t B, int64_t Lq, int64_t Lk,
                          bool need_weights) {
  if (user.cu_seqlens_q || user.cu_seqlens_k)
    fail(ErrorKind::kUnsupported, "options.attention.cu_seqlens", "",
         "none (batches are (B, L, E); seqlens_k pads keys)", "cu_seqlens");
  if (user.dropout_p != 0.0f)
    fail(ErrorKind::kInvalidArgument, "options.attention.dropout_p", "", "0 (config.dropout applies in training mode)",
         std::to_string(user.dropout_p));
  // The options against the input keys, by the functional API's own rules.
  validate_attention(AttentionShapes{.B = B, .Lq = Lq, .Lk = Lk, .H = dims.H, .Hkv = dims.Hkv, .D = dims.d, .Dv = dims.dv},
                     user, need_weights);
}

// Keys appended by add_bias_kv / add_zero_attn (extra > 0) are visible to every query,
// as in PyTorch (which pads attn_mask and key_padding_mask with "may attend"): what
// restricts keys by position (key padding, causal, window, ALiBi) is then written into
// an explicit mask / bias over the Lk + extra keys, since those options would apply to
// the appended keys too.
AttentionOptions lower_options(const AttentionOptions& user, OptionBuffers buf, int64_t B, int64_t H, int64_t Lq,
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

}  // namespace multihead::detail
