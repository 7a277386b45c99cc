#include "attention/validate.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/dtype_limits.hpp"
#include "multihead/error.hpp"

namespace multihead::detail {

namespace {

using std::to_string;

[[noreturn]] void fail(ErrorKind kind, const std::string& tensor, const std::string& dim,
                       const std::string& expected, const std::string& got) {
  throw Error(kind, tensor, dim, expected, got);
}

std::string dim_label(int d, const char* letter) {
  return "dim " + to_string(d) + (letter ? std::string(" (") + letter + ")" : std::string());
}

// A named tensor and the letters of its dims, for messages.
struct Named {
  const TensorView& view;
  const char* name;
  std::vector<const char*> letters;
};

void check_rank(const Named& t, int rank) {
  if (t.view.rank != rank)
    fail(ErrorKind::kInvalidShape, t.name, "rank", to_string(rank) + " " + [&] {
      std::string s = "(";
      for (size_t i = 0; i < t.letters.size(); ++i) s += (i ? ", " : "") + std::string(t.letters[i]);
      return s + ")";
    }(), to_string(t.view.rank) + " " + t.view.shape_string());
}

void check_layout(const Named& t) {
  const TensorView& v = t.view;
  if (v.rank < 0 || v.rank > kMaxRank) fail(ErrorKind::kInvalidShape, t.name, "rank", "0..4", to_string(v.rank));
  for (int d = 0; d < v.rank; ++d) {
    if (v.shape[d] < 0)
      fail(ErrorKind::kInvalidShape, t.name, dim_label(d, d < int(t.letters.size()) ? t.letters[d] : nullptr),
           ">= 0", to_string(v.shape[d]));
    if (v.strides[d] < 0)
      fail(ErrorKind::kInvalidArgument, t.name, "stride of " + dim_label(d, nullptr), ">= 0",
           to_string(v.strides[d]));
  }
  if (v.rank > 0 && v.shape[v.rank - 1] > 1 && v.strides[v.rank - 1] != 1)
    fail(ErrorKind::kInvalidArgument, t.name, "stride of last dim", "1 (contiguous last dimension)",
         to_string(v.strides[v.rank - 1]));
  // Byte extent must be representable.
  int64_t extent = 0;
  for (int d = 0; d < v.rank; ++d) {
    if (v.shape[d] == 0) return;
    int64_t span;
    if (__builtin_mul_overflow(v.shape[d] - 1, v.strides[d], &span) ||
        __builtin_add_overflow(extent, span, &extent))
      fail(ErrorKind::kCapacityExceeded, t.name, "extent", "< 2^63 elements", "overflow");
  }
  int64_t elements, bytes;  // extent + 1 overflows too when the extent is 2^63 - 1 (fuzz)
  if (__builtin_add_overflow(extent, int64_t(1), &elements) ||
      __builtin_mul_overflow(elements, int64_t(dtype_size(v.dtype)), &bytes))
    fail(ErrorKind::kCapacityExceeded, t.name, "extent", "< 2^63 bytes", "overflow");
  if (v.data == nullptr && v.numel() > 0)
    fail(ErrorKind::kInvalidArgument, t.name, "data", "a non-null pointer", "null");
}

void check_dim(const Named& t, int d, int64_t expected, const std::string& why = "") {
  if (t.view.shape[d] != expected)
    fail(ErrorKind::kInvalidShape, t.name, dim_label(d, d < int(t.letters.size()) ? t.letters[d] : nullptr),
         to_string(expected) + why,
         to_string(t.view.shape[d]));
}

void check_dtype(const Named& t, DType dtype) {
  if (t.view.dtype != dtype) fail(ErrorKind::kInvalidArgument, t.name, "dtype", to_string(dtype), to_string(t.view.dtype));
}

void check_float(const Named& t) {
  if (!is_floating(t.view.dtype))
    fail(ErrorKind::kInvalidArgument, t.name, "dtype", "float32, bfloat16 or float16", to_string(t.view.dtype));
}

// [first byte, last byte] of a non-empty view.
struct ByteRange {
  uintptr_t lo, hi;
};
bool byte_range(const TensorView& v, ByteRange* r) {
  if (v.numel() == 0) return false;
  int64_t last = 0;
  for (int d = 0; d < v.rank; ++d) last += (v.shape[d] - 1) * v.strides[d];
  r->lo = reinterpret_cast<uintptr_t>(v.data);
  r->hi = r->lo + uintptr_t((last + 1) * int64_t(dtype_size(v.dtype))) - 1;
  return true;
}

// Outputs must not write one element twice: strides sorted ascending must each
// step over the whole block of the dims below them.
void check_no_self_overlap(const Named& t) {
  if (t.view.numel() == 0) return;  // nothing is written
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int d = 0; d < t.view.rank; ++d)
    if (t.view.shape[d] > 1) dims.push_back({t.view.strides[d], t.view.shape[d]});
  std::sort(dims.begin(), dims.end());
  int64_t covered = 1;
  for (auto [stride, size] : dims) {
    if (stride < covered)
      fail(ErrorKind::kInvalidArgument, t.name, "strides", "non-overlapping elements (an output)",
           "overlapping strides " + [&] {
             std::string s = "(";
             for (int d = 0; d < t.view.rank; ++d) s += (d ? ", " : "") + to_string(t.view.strides[d]);
             return s + ")";
           }());
    covered = stride * size;
  }
}

void check_disjoint(const Named& out, const Named& other) {
  ByteRange a, b;
  if (!byte_range(out.view, &a) || !byte_range(other.view, &b)) return;
  if (a.lo <= b.hi && b.lo <= a.hi)
    fail(ErrorKind::kInvalidArgument, out.name, "memory", std::string("no overlap with ") + other.name,
         "overlapping memory");
}

// numpy-style broadcast of a rank <= 4 view to (B, H, Lq, Lk) (Lk - extra_keys with extra keys).
void check_broadcast(const Named& t, const Shape& target, bool extra) {
  const TensorView& v = t.view;
  const char* target_name = extra ? "(B, H, Lq, Lk - extra_keys)" : "(B, H, Lq, Lk)";
  if (v.rank > 4)
    fail(ErrorKind::kInvalidMask, t.name, "rank", std::string("<= 4 (broadcast to ") + target_name + ")",
         to_string(v.rank));
  static const char* kLetters[4] = {"B", "H", "Lq", "Lk"};
  for (int d = 0; d < v.rank; ++d) {
    const int td = 4 - v.rank + d;
    if (v.shape[d] != 1 && v.shape[d] != target[td])
      fail(ErrorKind::kInvalidMask, t.name, dim_label(d, td == 3 && extra ? "Lk - extra_keys" : kLetters[td]),
           "1 or " + to_string(target[td]) + " (broadcast to " + target_name + " = (" + to_string(target[0]) +
               ", " + to_string(target[1]) + ", " + to_string(target[2]) + ", " + to_string(target[3]) + "))",
           to_string(v.shape[d]));
  }
}

void check_vector(const Named& t, DType dtype, int64_t size) {
  check_layout(t);
  check_rank(t, 1);
  check_dtype(t, dtype);
  check_dim(t, 0, size);
}

void check_finite_values(const Named& t, const char* what) {
  const float* p = static_cast<const float*>(t.view.data);
  for (int64_t i = 0; i < t.view.shape[0]; ++i)
    if (!std::isfinite(p[i * t.view.strides[0]]))
      fail(ErrorKind::kInvalidArgument, t.name, "element " + to_string(i), std::string("finite ") + what,
           std::to_string(p[i * t.view.strides[0]]));
}

// cu_seqlens: i32 (nseq + 1), 0 first, non-decreasing, last = total.
void check_cu_seqlens(const Named& t, int64_t total, const char* total_name) {
  check_layout(t);
  check_rank(t, 1);
  check_dtype(t, DType::kI32);
  if (t.view.shape[0] < 1) fail(ErrorKind::kInvalidShape, t.name, "dim 0", ">= 1 (nseq + 1)", "0");
  if (i32_at(t.view, 0) != 0)
    fail(ErrorKind::kInvalidArgument, t.name, "element 0", "0", to_string(i32_at(t.view, 0)));
  for (int64_t s = 1; s < t.view.shape[0]; ++s)
    if (i32_at(t.view, s) < i32_at(t.view, s - 1))
      fail(ErrorKind::kInvalidArgument, t.name, "element " + to_string(s),
           ">= " + to_string(i32_at(t.view, s - 1)) + " (non-decreasing)", to_string(i32_at(t.view, s)));
  const int64_t last = i32_at(t.view, t.view.shape[0] - 1);
  if (last != total)
    fail(ErrorKind::kInvalidArgument, t.name, "last element", to_string(total) + " (" + total_name + ")",
         to_string(last));
}

const std::vector<const char*> kQ = {"B", "Lq", "H", "D"}, kK = {"B", "Lk", "Hkv", "D"},
                                kV = {"B", "Lk", "Hkv", "Dv"}, kOut = {"B", "Lq", "H", "Dv"},
                                kLse = {"B", "H", "Lq"}, kProbs = {"B", "H", "Lq", "Lk"},
                                kStats = {"B", "H", "Lq", "3"};

}  // namespace

ProblemSizes validate_inputs(const TensorView& q, const TensorView& k, const TensorView& v,
                             const AttentionOptions& o, bool wants_probs) {
  const Named nq{q, "q", kQ}, nk{k, "k", kK}, nv{v, "v", kV};
  for (const Named* t : {&nq, &nk, &nv}) {
    check_layout(*t);
    check_rank(*t, 4);
    check_float(*t);
  }
  if (k.dtype != q.dtype) fail(ErrorKind::kInvalidArgument, "k", "dtype", std::string(to_string(q.dtype)) + " (q's)", to_string(k.dtype));
  if (v.dtype != q.dtype) fail(ErrorKind::kInvalidArgument, "v", "dtype", std::string(to_string(q.dtype)) + " (q's)", to_string(v.dtype));

  const AttentionShapes shapes{.B = q.shape[0], .Lq = q.shape[1], .Lk = k.shape[1], .H = q.shape[2],
                               .Hkv = k.shape[2], .D = q.shape[3], .Dv = v.shape[3]};
  check_dim(nk, 0, shapes.B, " (q's B)");
  check_dim(nv, 0, shapes.B, " (q's B)");
  check_dim(nk, 3, shapes.D, " (q's D)");
  check_dim(nv, 1, shapes.Lk, " (k's Lk)");
  check_dim(nv, 2, shapes.Hkv, " (k's Hkv)");
  return validate_problem(shapes, o, wants_probs);
}

ProblemSizes validate_problem(const AttentionShapes& shapes, const AttentionOptions& o, bool wants_probs) {
  ProblemSizes s;
  s.B = shapes.B, s.Lq = shapes.Lq, s.H = shapes.H, s.D = shapes.D;
  s.Lk = shapes.Lk, s.Hkv = shapes.Hkv, s.Dv = shapes.Dv;
  // Sizes as q, k and v would carry them (with tensors, check_layout has seen to this).
  const struct {
    int64_t size;
    const char* tensor;
    int dim;
    const char* letter;
  } sizes[] = {{s.B, "q", 0, "B"},    {s.Lq, "q", 1, "Lq"},   {s.H, "q", 2, "H"}, {s.D, "q", 3, "D"},
               {s.Lk, "k", 1, "Lk"},  {s.Hkv, "k", 2, "Hkv"}, {s.Dv, "v", 3, "Dv"}};
  for (const auto& z : sizes)
    if (z.size < 0) fail(ErrorKind::kInvalidShape, z.tensor, dim_label(z.dim, z.letter), ">= 0", to_string(z.size));
  if (s.D < 1) fail(ErrorKind::kInvalidShape, "q", dim_label(3, "D"), ">= 1", to_string(s.D));
  if (s.Dv < 1) fail(ErrorKind::kInvalidShape, "v", dim_label(3, "Dv"), ">= 1", to_string(s.Dv));
  if (s.Hkv < 1 && s.H > 0) fail(ErrorKind::kInvalidShape, "k", dim_label(2, "Hkv"), ">= 1", to_string(s.Hkv));
  if (s.Hkv > 0 && s.H % s.Hkv != 0)
    fail(ErrorKind::kInvalidShape, "k", dim_label(2, "Hkv"), "a divisor of H=" + to_string(s.H), to_string(s.Hkv));

  if (o.scale && (!std::isfinite(*o.scale) || *o.scale == 0.0f))
    fail(ErrorKind::kInvalidArgument, "options.scale", "", "finite and non-zero", std::to_string(*o.scale));
  if (!std::isfinite(o.softcap) || o.softcap < 0.0f)
    fail(ErrorKind::kInvalidArgument, "options.softcap", "", "finite and >= 0 (0 = off)", std::to_string(o.softcap));
  if (!(o.dropout_p >= 0.0f && o.dropout_p < 1.0f))
    fail(ErrorKind::kInvalidArgument, "options.dropout_p", "", "in [0, 1)", std::to_string(o.dropout_p));
  if (o.window.left < -1)
    fail(ErrorKind::kInvalidArgument, "options.window", "left", ">= -1 (-1 = unbounded)", to_string(o.window.left));
  if (o.window.right < -1)
    fail(ErrorKind::kInvalidArgument, "options.window", "right", ">= -1 (-1 = unbounded)", to_string(o.window.right));

  if (o.extra_keys < 0)
    fail(ErrorKind::kInvalidArgument, "options.extra_keys", "", ">= 0", to_string(o.extra_keys));
  if (o.extra_keys > s.Lk)
    fail(ErrorKind::kInvalidShape, "k", dim_label(1, "Lk"), ">= extra_keys = " + to_string(o.extra_keys),
         to_string(s.Lk));
  s.extra_keys = o.extra_keys;

  s.varlen = o.cu_seqlens_q.has_value() || o.cu_seqlens_k.has_value();
  s.num_seqs = s.B;
  if (s.varlen) {
    if (!o.cu_seqlens_q || !o.cu_seqlens_k)
      fail(ErrorKind::kInvalidArgument, o.cu_seqlens_q ? "cu_seqlens_k" : "cu_seqlens_q", "", "given together with " + std::string(o.cu_seqlens_q ? "cu_seqlens_q" : "cu_seqlens_k"), "missing");
    if (s.B != 1) fail(ErrorKind::kInvalidShape, "q", dim_label(0, "B"), "1 (packed varlen batch)", to_string(s.B));
    const Named cq{*o.cu_seqlens_q, "cu_seqlens_q", {"nseq+1"}}, ck{*o.cu_seqlens_k, "cu_seqlens_k", {"nseq+1"}};
    check_cu_seqlens(cq, s.Lq, "total_q = q dim 1");
    check_cu_seqlens(ck, s.Lk, "total_k = k dim 1");
    if (ck.view.shape[0] != cq.view.shape[0])
      fail(ErrorKind::kInvalidShape, "cu_seqlens_k", "dim 0 (nseq+1)", to_string(cq.view.shape[0]) + " (cu_seqlens_q's)", to_string(ck.view.shape[0]));
    s.num_seqs = cq.view.shape[0] - 1;
    // Every packed sequence ends with its extra keys.
    for (int64_t q = 1; q < ck.view.shape[0] && o.extra_keys > 0; ++q) {
      const int64_t len = int64_t(i32_at(ck.view, q)) - i32_at(ck.view, q - 1);
      if (len < o.extra_keys)
        fail(ErrorKind::kInvalidShape, "cu_seqlens_k", "element " + to_string(q),
             ">= " + to_string(i32_at(ck.view, q - 1)) + " + extra_keys = " +
                 to_string(i32_at(ck.view, q - 1) + o.extra_keys) + " (sequence " + to_string(q - 1) +
                 " holds its extra keys)",
             to_string(i32_at(ck.view, q)));
    }
    if (o.mask) fail(ErrorKind::kUnsupported, "mask", "", "no mask with cu_seqlens (packed varlen)", "a mask");
    if (o.bias) fail(ErrorKind::kUnsupported, "bias", "", "no bias with cu_seqlens (packed varlen)", "a bias");
    if (o.seqlens_k) fail(ErrorKind::kUnsupported, "seqlens_k", "", "no seqlens_k with cu_seqlens (lengths come from cu_seqlens_k)", "seqlens_k");
    if (wants_probs) fail(ErrorKind::kUnsupported, "probs", "", "no probs with cu_seqlens (packed varlen)", "probs requested");
  }
  const int64_t lk_in = s.Lk - o.extra_keys;  // input keys: what mask, bias and seqlens_k describe
  const bool extra = o.extra_keys > 0;
  const Shape target{s.B, s.H, s.Lq, lk_in};
  if (o.mask) {
    const Named m{*o.mask, "mask", {}};
    check_layout(m);
    if (m.view.dtype != DType::kBool)
      fail(ErrorKind::kInvalidMask, "mask", "dtype", "bool (true = may attend)", to_string(m.view.dtype));
    check_broadcast(m, target, extra);
  }
  if (o.bias) {
    const Named b{*o.bias, "bias", {}};
    check_layout(b);
    if (!is_floating(b.view.dtype))
      fail(ErrorKind::kInvalidMask, "bias", "dtype", "float32, bfloat16 or float16", to_string(b.view.dtype));
    check_broadcast(b, target, extra);
  }
  if (o.seqlens_k) {
    const Named t{*o.seqlens_k, "seqlens_k", {"B"}};
    check_vector(t, DType::kI32, s.B);
    for (int64_t b = 0; b < s.B; ++b) {
      const int32_t len = i32_at(t.view, b);
      if (len < 0 || len > lk_in)
        fail(ErrorKind::kInvalidArgument, "seqlens_k", "element " + to_string(b),
             "in [0, " + to_string(lk_in) + "] (" + (extra ? "Lk - extra_keys" : "Lk") + ")", to_string(len));
    }
  }
  if (o.alibi_slopes) {
    const Named t{*o.alibi_slopes, "alibi_slopes", {"H"}};
    check_vector(t, DType::kF32, s.H);
    check_finite_values(t, "slopes");
  }
  if (o.sinks) {
    const Named t{*o.sinks, "sinks", {"H"}};
    check_vector(t, DType::kF32, s.H);
    check_finite_values(t, "sink logits");
  }
  return s;
}

namespace {

void check_activation_output(const Named& t, const std::vector<int64_t>& shape) {
  check_layout(t);
  check_rank(t, int(shape.size()));
  check_float(t);
  for (size_t d = 0; d < shape.size(); ++d) check_dim(t, int(d), shape[d]);
  check_no_self_overlap(t);
}

void check_f32_output(const Named& t, const std::vector<int64_t>& shape) {
  check_layout(t);
  check_rank(t, int(shape.size()));
  check_dtype(t, DType::kF32);
  for (size_t d = 0; d < shape.size(); ++d) check_dim(t, int(d), shape[d]);
  check_no_self_overlap(t);
}

// Every output is disjoint from every input and from every other output.
void check_all_disjoint(const std::vector<Named>& outputs, const std::vector<Named>& inputs) {
  for (size_t a = 0; a < outputs.size(); ++a) {
    for (const Named& in : inputs) check_disjoint(outputs[a], in);
    for (size_t b = a + 1; b < outputs.size(); ++b) check_disjoint(outputs[a], outputs[b]);
  }
}

std::vector<Named> option_inputs(const AttentionOptions& o) {
  std::vector<Named> v;
  if (o.mask) v.push_back({*o.mask, "mask", {}});
  if (o.bias) v.push_back({*o.bias, "bias", {}});
  if (o.seqlens_k) v.push_back({*o.seqlens_k, "seqlens_k", {}});
  if (o.cu_seqlens_q) v.push_back({*o.cu_seqlens_q, "cu_seqlens_q", {}});
  if (o.cu_seqlens_k) v.push_back({*o.cu_seqlens_k, "cu_seqlens_k", {}});
  if (o.alibi_slopes) v.push_back({*o.alibi_slopes, "alibi_slopes", {}});
  if (o.sinks) v.push_back({*o.sinks, "sinks", {}});
  return v;
}

}  // namespace

ProblemSizes validate_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                              const ForwardOutputs& outputs, const AttentionOptions& options) {
  const ProblemSizes s = validate_inputs(q, k, v, options, outputs.probs.has_value());
  std::vector<Named> outs{{outputs.out, "out", kOut}};
  check_activation_output(outs[0], {s.B, s.Lq, s.H, s.Dv});
  if (outputs.lse) {
    outs.push_back({*outputs.lse, "lse", kLse});
    check_f32_output(outs.back(), {s.B, s.H, s.Lq});
  }
  if (outputs.probs) {
    outs.push_back({*outputs.probs, "probs", kProbs});
    check_f32_output(outs.back(), {s.B, s.H, s.Lq, s.Lk});
  }
  if (outputs.head_stats) {
    outs.push_back({*outputs.head_stats, "head_stats", kStats});
    check_f32_output(outs.back(), {s.B, s.H, s.Lq, 3});
  }
  std::vector<Named> ins{{q, "q", kQ}, {k, "k", kK}, {v, "v", kV}};
  for (Named& n : option_inputs(options)) ins.push_back(n);
  check_all_disjoint(outs, ins);
  return s;
}

ProblemSizes validate_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                               const TensorView& v, const TensorView& out, const TensorView& lse,
                               const BackwardOutputs& grads, const AttentionOptions& options) {
  const ProblemSizes s = validate_inputs(q, k, v, options, false);
  const Named ndout{dout, "dout", kOut}, nout{out, "out", kOut}, nlse{lse, "lse", kLse};
  for (const Named* t : {&ndout, &nout}) {
    check_layout(*t);
    check_rank(*t, 4);
    check_float(*t);
    const int64_t shape[4] = {s.B, s.Lq, s.H, s.Dv};
    for (int d = 0; d < 4; ++d) check_dim(*t, d, shape[d]);
  }
  check_layout(nlse);
  check_rank(nlse, 3);
  check_dtype(nlse, DType::kF32);
  check_dim(nlse, 0, s.B);
  check_dim(nlse, 1, s.H);
  check_dim(nlse, 2, s.Lq);

  std::vector<Named> outs{{grads.dq, "dq", kQ}, {grads.dk, "dk", kK}, {grads.dv, "dv", kV}};
  check_activation_output(outs[0], {q.shape[0], q.shape[1], q.shape[2], q.shape[3]});
  check_activation_output(outs[1], {k.shape[0], k.shape[1], k.shape[2], k.shape[3]});
  check_activation_output(outs[2], {v.shape[0], v.shape[1], v.shape[2], v.shape[3]});
  if (grads.dbias) {
    if (!options.bias) fail(ErrorKind::kInvalidArgument, "dbias", "", "given only with options.bias", "no bias");
    outs.push_back({*grads.dbias, "dbias", {}});
    const TensorView& b = *options.bias;
    check_f32_output(outs.back(), std::vector<int64_t>(b.shape.begin(), b.shape.begin() + b.rank));
  }
  if (grads.dsinks) {
    if (!options.sinks) fail(ErrorKind::kInvalidArgument, "dsinks", "", "given only with options.sinks", "no sinks");
    outs.push_back({*grads.dsinks, "dsinks", {"H"}});
    check_f32_output(outs.back(), {s.H});
  }
  std::vector<Named> ins{{q, "q", kQ}, {k, "k", kK}, {v, "v", kV}, ndout, nout, nlse};
  for (Named& n : option_inputs(options)) ins.push_back(n);
  check_all_disjoint(outs, ins);
  return s;
}

}  // namespace multihead::detail

namespace multihead {

void validate_attention(const AttentionShapes& s, const AttentionOptions& options, bool return_probs) {
  // What check_layout sees to for tensors: element counts of q, k and v that fit in
  // int64. (Tensors are not held to it: with stride-0 dims their extent is what counts.)
  const struct {
    const char* tensor;
    int64_t dims[4];
  } views[] = {{"q", {s.B, s.Lq, s.H, s.D}}, {"k", {s.B, s.Lk, s.Hkv, s.D}}, {"v", {s.B, s.Lk, s.Hkv, s.Dv}}};
  for (const auto& t : views) {
    int64_t n = 1;
    bool overflow = false, empty = false, negative = false;
    for (int64_t size : t.dims) {
      overflow |= __builtin_mul_overflow(n, size, &n);
      empty |= size == 0;
      negative |= size < 0;
    }
    if (overflow && !empty && !negative)
      throw Error(ErrorKind::kCapacityExceeded, t.tensor, "extent", "< 2^63 elements", "overflow");
  }
  detail::validate_problem(s, options, return_probs);
}

}  // namespace multihead
