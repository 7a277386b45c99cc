// The module's attention options, turned into the functional API's. The user's options
// are checked against the input keys by the public validate_attention (shapes only, no
// tensor of the module is built for it) plus what the module does not take (cu_seqlens,
// dropout_p); then every option tensor is copied into the module's own buffers (backward
// reuses them); keys that add_bias_kv / add_zero_attn append are passed as extra_keys.
#include <cstring>
#include <string>

#include "module/module_state.hpp"

namespace multihead::detail {

namespace {

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

}  // namespace

void check_module_options(const AttentionOptions& user, const Dims& dims, int64_t B, int64_t Lq, int64_t Lk,
                          bool need_weights) {
  if (user.cu_seqlens_q || user.cu_seqlens_k)
    fail(ErrorKind::kUnsupported, "options.attention.cu_seqlens", "",
         "none (batches are (B, L, E); seqlens_k pads keys)", "cu_seqlens");
  if (user.dropout_p != 0.0f)
    fail(ErrorKind::kInvalidArgument, "options.attention.dropout_p", "", "0 (config.dropout applies in training mode)",
         std::to_string(user.dropout_p));
  if (user.extra_keys != 0)
    fail(ErrorKind::kInvalidArgument, "options.attention.extra_keys", "",
         "0 (the module sets it from add_bias_kv / add_zero_attn)", std::to_string(user.extra_keys));
  // The options against the input keys, by the functional API's own rules.
  validate_attention(AttentionShapes{.B = B, .Lq = Lq, .Lk = Lk, .H = dims.H, .Hkv = dims.Hkv, .D = dims.d, .Dv = dims.dv},
                     user, need_weights);
}

// Keys appended by add_bias_kv / add_zero_attn (extra > 0) are visible to every query,
// as in PyTorch (which pads attn_mask and key_padding_mask with "may attend"): they are
// the functional API's extra keys (AttentionOptions::extra_keys, rows Lk.. of k and v),
// exempt from causal, window, key padding, mask, bias and ALiBi by the kernels. So the
// options pass through unchanged for any extra, plus extra_keys = extra; the only owned
// tensors are copies of the user's own (mask and bias collapsed on broadcast dims).
AttentionOptions lower_options(const AttentionOptions& user, OptionBuffers buf, int64_t extra) {
  AttentionOptions o;
  o.scale = user.scale;
  o.softcap = user.softcap;
  if (user.sinks) o.sinks = copy_option(*user.sinks, buf.sinks, false);
  o.causal = user.causal;
  o.window = user.window;
  if (user.mask) o.mask = copy_option(*user.mask, buf.mask, true);
  if (user.bias) o.bias = copy_option(*user.bias, buf.bias, true);
  if (user.seqlens_k) o.seqlens_k = copy_option(*user.seqlens_k, buf.seqlens, false);
  if (user.alibi_slopes) o.alibi_slopes = copy_option(*user.alibi_slopes, buf.alibi, false);
  o.extra_keys = extra;
  return o;
}

}  // namespace multihead::detail
