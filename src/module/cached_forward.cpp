// MultiHeadAttention's forward over a KV cache (generation): one fused QKV GEMM on the new
// tokens, rotary positions at the tokens' absolute positions, then attention_forward_cached
// appends K, V and attends; the output projection as in forward. Its buffers are its own,
// so a failing call leaves the tape of the last forward untouched.
#include <string>
#include <vector>

#include "module/linear.hpp"
#include "module/module_state.hpp"
#include "multihead/attention_cached.hpp"

namespace multihead {

using namespace detail;  // Dims, Rows, Matrix, fail, view4

namespace {

// The checks that do not need the projections, in the order a caller reads its call.
void check_cached_call(const MultiHeadAttentionConfig& c, const Dims& d, const TensorView& query, const KvCache& cache,
                       std::span<const int64_t> seqs, const MhaForwardOptions& options) {
  check_input(query, "query", d.E, "E = embed_dim");
  if (d.kdim != d.E || d.vdim != d.E)
    fail(ErrorKind::kInvalidArgument, "config", "kdim, vdim",
         "embed_dim=" + std::to_string(d.E) + " (the cached forward is self-attention)",
         std::to_string(d.kdim) + ", " + std::to_string(d.vdim));
  if (c.add_bias_kv || c.add_zero_attn)
    fail(ErrorKind::kInvalidArgument, "config", c.add_bias_kv ? "add_bias_kv" : "add_zero_attn",
         "off with a KV cache (its keys are the sequence's tokens)", "on");
  const char* unsupported = options.training          ? "training"
                            : options.need_weights    ? "need_weights"
                            : options.need_head_stats ? "need_head_stats"
                                                      : nullptr;
  if (unsupported)
    fail(ErrorKind::kInvalidArgument, "options", unsupported, "false with a KV cache (inference only)", "true");
  if (options.attention.causal == CausalAlign::kTopLeft)
    fail(ErrorKind::kInvalidArgument, "options.attention", "causal",
         "kNone or kBottomRight (the cached forward is causal, aligned to each sequence's end)", "kTopLeft");
  const KvCacheOptions& co = cache.options();
  const int64_t want[3] = {d.Hkv, d.d, d.dv}, got[3] = {co.num_kv_heads, co.head_dim, *co.v_head_dim};
  const char* names[3] = {"num_kv_heads", "head_dim", "v_head_dim"};
  for (int i = 0; i < 3; ++i)
    if (want[i] != got[i])
      fail(ErrorKind::kInvalidShape, "cache", names[i], std::to_string(want[i]) + " (the module's)",
           std::to_string(got[i]));
  if (int64_t(seqs.size()) != query.shape[0])
    fail(ErrorKind::kInvalidShape, "seqs", "length", std::to_string(query.shape[0]) + " (query's B)",
         std::to_string(seqs.size()));
}

}  // namespace

MhaOutput MultiHeadAttention::forward(const TensorView& query, KvCache& cache, std::span<const int64_t> seqs,
                                      const MhaForwardOptions& options) {
  State& s = *state_;
  const Dims& d = s.dims;
  const MultiHeadAttentionConfig& c = config_;
  check_cached_call(c, d, query, cache, seqs, options);
  const int64_t B = query.shape[0], Lq = query.shape[1];
  std::vector<int64_t> first(seqs.size());  // positions start at each sequence's length
  for (size_t b = 0; b < seqs.size(); ++b) first[b] = cache.length(seqs[b]);  // throws for unknown ids

  // [Q | K | V] = x [Wq; Wk; Wv]ᵀ + b_in, one row per new token: (B·Lq, Ntot).
  s.prepare_weights(true);
  const int64_t nq = d.nq(), nk = d.nk(), ld = d.ntot();
  std::vector<float> x(size_t(B * Lq * d.E)), proj(size_t(B * Lq * ld));
  copy_rows(query, x.data());
  const Rows y = Rows::dense(proj.data(), 1, B * Lq, ld, ld);
  linear_forward(Rows::dense(x.data(), 1, B * Lq, d.E, d.E), Matrix{s.wq, ld, d.E, d.E}, y, false);
  if (s.b_in) add_bias(y, s.b_in);
  rotate_heads(view4(proj.data(), DType::kF32, {B, Lq, d.H, d.d}, {Lq * ld, ld, d.d, 1}), c, first, false);
  rotate_heads(view4(proj.data() + nq, DType::kF32, {B, Lq, d.Hkv, d.d}, {Lq * ld, ld, d.d, 1}), c, first, false);

  // bf16 weights: attention runs on bf16-rounded Q, K, V, as in forward.
  const DType act = c.dtype;
  std::vector<bf16> low;
  void* base = proj.data();
  if (act == DType::kBF16) {
    low.resize(proj.size());
    for (size_t i = 0; i < proj.size(); ++i) low[i] = float_to_bf16(proj[i]);
    base = low.data();
  }
  const size_t es = dtype_size(act);
  const auto at = [&](int64_t column) { return static_cast<char*>(base) + size_t(column) * es; };
  const TensorView q = view4(at(0), act, {B, Lq, d.H, d.d}, {Lq * ld, ld, d.d, 1});
  CachedAttentionInputs inputs;
  inputs.k_new = view4(at(nq), act, {B, Lq, d.Hkv, d.d}, {Lq * ld, ld, d.d, 1});
  inputs.v_new = view4(at(nq + nk), act, {B, Lq, d.Hkv, d.dv}, {Lq * ld, ld, d.dv, 1});
  AttentionOptions attention = options.attention;
  attention.causal = CausalAlign::kBottomRight;

  std::vector<float> heads(size_t(B * Lq * d.hdv()));
  const TensorView heads_view = TensorView::contiguous(heads.data(), DType::kF32, {B, Lq, d.H, d.dv});
  attention_forward_cached(q, cache, seqs, ForwardOutputs{heads_view, std::nullopt, std::nullopt}, attention, inputs);

  MhaOutput result;
  result.out = Tensor::empty(DType::kF32, {B, Lq, d.out});
  const Rows out = Rows::dense(result.out.data_as<float>(), 1, B * Lq, d.out, d.out);
  linear_forward(Rows::dense(heads.data(), 1, B * Lq, d.hdv(), d.hdv()), Matrix{s.wo, d.out, d.hdv(), d.hdv()}, out,
                 false);
  if (s.bo) add_bias(out, s.bo);
  s.has_forward = false;  // nothing to differentiate: the tape is not this call's
  return result;
}

}  // namespace multihead
