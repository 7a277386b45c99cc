// The checks of attention over the paged cache, before anything is appended or written.
// Scalar options and the option vectors go through the attention validator itself
// (validate_problem), so they follow exactly the rules of attention_forward.
#include <cmath>
#include <string>

#include "attention/cached.hpp"
#include "attention/validate.hpp"
#include "core/view_checks.hpp"
#include "multihead/error.hpp"

namespace multihead::detail {

namespace {

using std::to_string;

[[noreturn]] void reject(const char* option, const std::string& why) {
  throw Error(ErrorKind::kInvalidArgument, option, "", why, "given");
}

constexpr const char* kQLetters[] = {"B", "Lq", "H", "D"};
constexpr const char* kOutLetters[] = {"B", "Lq", "H", "Dv"};
constexpr const char* kLseLetters[] = {"B", "H", "Lq"};
constexpr const char* kKLetters[] = {"B", "Lq", "Hkv", "D"};
constexpr const char* kVLetters[] = {"B", "Lq", "Hkv", "Dv"};

void check_output(const NamedView& t, std::initializer_list<int64_t> shape) {
  check_view_layout(t);
  check_view_rank(t, int(shape.size()));
  int d = 0;
  for (int64_t size : shape) check_view_dim(t, d++, size);
  check_view_no_self_overlap(t);
}

}  // namespace

CachedSizes validate_cached(const TensorView& q, const KvCache& cache, std::span<const int64_t> seqs,
                            const ForwardOutputs& outputs, const AttentionOptions& o,
                            const CachedAttentionInputs& in) {
  // Options with no meaning over a cache.
  const char* why = "not given: attention over a KV cache takes no ";
  if (o.mask) reject("options.mask", std::string(why) + "mask tensor");
  if (o.bias) reject("options.bias", std::string(why) + "bias tensor");
  if (o.seqlens_k) reject("options.seqlens_k", std::string(why) + "seqlens_k (lengths come from the cache)");
  if (o.cu_seqlens_q) reject("options.cu_seqlens_q", std::string(why) + "cu_seqlens (sequences come from the cache)");
  if (o.cu_seqlens_k) reject("options.cu_seqlens_k", std::string(why) + "cu_seqlens (sequences come from the cache)");
  if (o.dropout_p != 0.0f)
    throw Error(ErrorKind::kInvalidArgument, "options.dropout_p", "", "0 (no dropout over a KV cache)",
                std::to_string(o.dropout_p));
  if (o.causal == CausalAlign::kTopLeft)
    throw Error(ErrorKind::kInvalidArgument, "options.causal", "",
                "kNone or kBottomRight (a cache's queries are aligned bottom-right)", "kTopLeft");
  if (outputs.probs) reject("probs", std::string(why) + "probabilities");
  if (outputs.head_stats) reject("head_stats", std::string(why) + "head_stats");

  const KvCacheOptions& co = cache.options();
  CachedSizes s;
  const NamedView nq{q, "q", kQLetters};
  check_view_layout(nq);
  check_view_rank(nq, 4);
  check_view_dtype(nq, {DType::kF32, DType::kBF16}, "float32 or bfloat16");
  s.B = q.shape[0], s.Lq = q.shape[1], s.H = q.shape[2], s.D = q.shape[3];
  s.Hkv = co.num_kv_heads, s.Dv = *co.v_head_dim;
  check_view_dim(nq, 3, co.head_dim, " (the cache's head_dim)");
  if (s.H % s.Hkv != 0)
    throw Error(ErrorKind::kInvalidShape, "q", "dim 2 (H)", "a multiple of the cache's num_kv_heads " + to_string(s.Hkv),
                to_string(s.H));
  if (int64_t(seqs.size()) != s.B)
    throw Error(ErrorKind::kInvalidShape, "seqs", "size", to_string(s.B) + " (q's B)", to_string(seqs.size()));

  // Sequences (live; distinct when they are appended to) and their lengths.
  s.append = in.k_new.has_value();
  if (in.k_new.has_value() != in.v_new.has_value())
    throw Error(ErrorKind::kInvalidArgument, in.k_new ? "v_new" : "k_new", "",
                std::string("given together with ") + (in.k_new ? "k_new" : "v_new"), "missing");
  int64_t Lk = 0;
  for (size_t b = 0; b < seqs.size(); ++b) {
    s.lengths.push_back(cache.length(seqs[b]));  // InvalidArgument "id" for a dead id
    if (s.append)
      for (size_t a = 0; a < b; ++a)
        if (seqs[a] == seqs[b])
          throw Error(ErrorKind::kInvalidArgument, "seqs", "entry " + to_string(b),
                      "distinct sequence ids (k_new appends to each)", "id " + to_string(seqs[b]) + " again");
    Lk = std::max(Lk, s.lengths.back() + (s.append ? s.Lq : 0));
  }
  if (s.append) {
    const NamedView nk{*in.k_new, "k_new", kKLetters}, nv{*in.v_new, "v_new", kVLetters};
    for (const NamedView* t : {&nk, &nv}) {
      check_view_layout(*t);
      check_view_rank(*t, 4);
      check_view_dtype(*t, {DType::kF32, DType::kBF16}, "float32 or bfloat16");
      check_view_dim(*t, 0, s.B, " (q's B)");
      check_view_dim(*t, 1, s.Lq, " (q's Lq)");
      check_view_dim(*t, 2, s.Hkv, " (the cache's num_kv_heads)");
    }
    check_view_dim(nk, 3, s.D, " (the cache's head_dim)");
    check_view_dim(nv, 3, s.Dv, " (the cache's v_head_dim)");
  }

  // Rotary: positions are (length before the append) + i - (Lq without an append).
  if (in.rotary_dim != 0) {
    if (in.rotary_dim < 0 || in.rotary_dim % 2 != 0 || in.rotary_dim > s.D)
      throw Error(ErrorKind::kInvalidArgument, "rotary_dim", "", "0 (off) or even and in [2, D=" + to_string(s.D) + "]",
                  to_string(in.rotary_dim));
    if (!std::isfinite(in.rotary_base) || in.rotary_base <= 0.0)
      throw Error(ErrorKind::kInvalidArgument, "rotary_base", "", "finite and > 0", std::to_string(in.rotary_base));
    if (!s.append)
      for (size_t b = 0; b < seqs.size(); ++b)
        if (s.lengths[b] < s.Lq && s.Lq > 0)
          throw Error(ErrorKind::kInvalidArgument, "seqs", "entry " + to_string(b),
                      "a cached length >= Lq=" + to_string(s.Lq) + " (rotary positions length - Lq + i must be >= 0)",
                      to_string(s.lengths[b]));
  }

  // Scalar options and option vectors: the attention validator's own rules (Lk: the
  // longest sequence after the append; no mask or bias reads it).
  validate_problem(AttentionShapes{s.B, s.Lq, Lk, s.H, s.Hkv, s.D, s.Dv}, o, false);

  // Outputs: shapes, dtypes, no overlap with themselves, each other, any input or the pool.
  const NamedView nout{outputs.out, "out", kOutLetters};
  check_output(nout, {s.B, s.Lq, s.H, s.Dv});
  check_view_dtype(nout, {DType::kF32, DType::kBF16, DType::kF16}, "float32, bfloat16 or float16");
  std::vector<std::pair<const TensorView*, const char*>> outs{{&outputs.out, "out"}};
  if (outputs.lse) {
    const NamedView nl{*outputs.lse, "lse", kLseLetters};
    check_output(nl, {s.B, s.H, s.Lq});
    check_view_dtype(nl, {DType::kF32}, "float32");
    outs.push_back({&*outputs.lse, "lse"});
  }
  const TensorView pool = TensorView::contiguous(const_cast<std::byte*>(cache.layout().k_blocks), DType::kBool,
                                                 {int64_t(cache.nbytes())});
  std::vector<std::pair<const TensorView*, const char*>> ins{{&q, "q"}, {&pool, "the cache's pool"}};
  if (in.k_new) ins.push_back({&*in.k_new, "k_new"}), ins.push_back({&*in.v_new, "v_new"});
  if (o.alibi_slopes) ins.push_back({&*o.alibi_slopes, "alibi_slopes"});
  if (o.sinks) ins.push_back({&*o.sinks, "sinks"});
  for (size_t a = 0; a < outs.size(); ++a) {
    for (const auto& [view, name] : ins)
      if (views_overlap(*outs[a].first, *view))
        throw Error(ErrorKind::kInvalidArgument, outs[a].second, "memory", std::string("disjoint from ") + name,
                    "overlapping");
    for (size_t b = a + 1; b < outs.size(); ++b)
      if (views_overlap(*outs[a].first, *outs[b].first))
        throw Error(ErrorKind::kInvalidArgument, outs[a].second, "memory",
                    std::string("disjoint from ") + outs[b].second, "overlapping");
  }
  return s;
}

}  // namespace multihead::detail
