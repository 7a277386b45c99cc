// The oracle: docs/CONTRACT.md written down as directly as possible. One template on
// the accumulation type Acc serves the double oracle and the float baseline, so the
// two cannot drift apart. Clarity over speed: inputs are copied to contiguous
// head-major Acc arrays, every score row is recomputed where it is needed, and the
// only concession to speed is OpenMP over independent (sequence, head) items, each
// of which owns its outputs, so results do not depend on the thread count.
#include "reference/attention_reference.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <string>

#include "core/dropout.hpp"
#include "core/dtype_limits.hpp"
#include "multihead/error.hpp"

namespace multihead::reference {
namespace {

void require(bool ok, ErrorKind kind, const std::string& tensor, const std::string& dim,
             const std::string& expected, const std::string& got) {
  if (!ok) throw Error(kind, tensor, dim, expected, got);
}

// One element of a float view (f32, bf16 or f16; checked when the problem is built).
double read_float(const TensorView& t, int64_t offset) {
  if (t.dtype == DType::kF32) return static_cast<const float*>(t.data)[offset];
  if (t.dtype == DType::kBF16) return bf16_to_float(static_cast<const bf16*>(t.data)[offset]);
  return f16_to_float(static_cast<const f16*>(t.data)[offset]);
}


// Where a low-precision kernel stores a value in the 16-bit dtype, the baseline rounds
// it the same way. kF32 means no rounding beyond Acc itself (always so for the oracle).
template <class Acc>
Acc round_to_dtype(Acc x, DType dtype) {
  if (dtype == DType::kBF16) return bf16_to_float(float_to_bf16(float(x)));
  if (dtype == DType::kF16) return f16_to_float(float_to_f16(float(x)));
  return x;
}

// The float baseline sums in plain sequential order, as a naive implementation does;
// a SIMD reduction (several partial sums) would make the baseline more accurate than
// "the same math in the test dtype" and the pass rule stricter than it is meant to be
// (docs/ARCHITECTURE.md).
// The double oracle may reorder freely: its rounding is far below what is judged.
template <class Acc>
Acc dot(const Acc* a, const Acc* b, int64_t n) {
  Acc s = 0;
  if constexpr (std::is_same_v<Acc, double>) {
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  } else {
    for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  }
  return s;
}

// Copy of a (N, L, heads, E) view of any float dtype and strides, as a contiguous
// head-major (N, heads, L, E) array, so that one head's rows are adjacent.
template <class Acc>
std::vector<Acc> head_major(const TensorView& t) {
  const int64_t n = t.shape[0], l = t.shape[1], heads = t.shape[2], e = t.shape[3];
  std::vector<Acc> r(size_t(n * heads * l * e));
  for (int64_t a = 0; a < n; ++a)
    for (int64_t row = 0; row < l; ++row)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t d = 0; d < e; ++d)
          r[size_t(((a * heads + h) * l + row) * e + d)] = Acc(read_float(t, t.offset({a, row, h, d})));
  return r;
}

// Inverse of head_major for results: head-major (N, heads, L, E) to the tensor's own
// row-major (N, L, heads, E) order, multiplied by `factor` and rounded like the outputs.
template <class Acc>
std::vector<double> token_major(const std::vector<Acc>& x, const Shape& shape, Acc factor,
                                DType round_to) {
  const int64_t n = shape[0], l = shape[1], heads = shape[2], e = shape[3];
  std::vector<double> r(x.size());
  for (int64_t a = 0; a < n; ++a)
    for (int64_t row = 0; row < l; ++row)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t d = 0; d < e; ++d)
          r[size_t(((a * l + row) * heads + h) * e + d)] =
              double(round_to_dtype(Acc(factor * x[size_t(((a * heads + h) * l + row) * e + d)]), round_to));
  return r;
}

// Maps a point (b, h, i, j) of the (B, H, Lq, Lk) score grid onto a mask or bias of
// rank <= 4, numpy-style: dims align on the right, missing and size-1 dims broadcast,
// and a stride-0 dim simply reads the same element. `dense` indexes a contiguous
// buffer of the operand's own shape (where its gradient is reduced).
struct Broadcast {
  Shape stride{};
  Shape dense_stride{};

  Broadcast() = default;
  Broadcast(const TensorView& t, const Shape& grid, const char* name) {
    require(t.rank <= 4, ErrorKind::kInvalidMask, name, "rank", "<= 4", std::to_string(t.rank));
    int64_t dense = 1;
    for (int d = t.rank - 1; d >= 0; --d) {
      const int g = 4 - t.rank + d;
      require(t.shape[d] == 1 || t.shape[d] == grid[g], ErrorKind::kInvalidMask, name,
              "dim " + std::to_string(d), "1 or " + std::to_string(grid[g]), std::to_string(t.shape[d]));
      if (t.shape[d] != 1) {
        stride[g] = t.strides[d];
        dense_stride[g] = dense;
      }
      dense *= t.shape[d];
    }
  }
  int64_t offset(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return b * stride[0] + h * stride[1] + i * stride[2] + j * stride[3];
  }
  int64_t dense(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return b * dense_stride[0] + h * dense_stride[1] + i * dense_stride[2] + j * dense_stride[3];
  }
};

// One sequence: a batch entry, or one packed sequence of a varlen batch. Row indices
// i and j below are relative to the sequence.
struct Segment {
  int64_t b = 0;          // index into the batch dim of q, k, v (0 when packed)
  int64_t q0 = 0, lq = 0;  // query rows [q0, q0 + lq) of the tensor
  int64_t k0 = 0, lk = 0;  // key rows [k0, k0 + lk) of the tensor
  int64_t lk_valid = 0;   // Lk_b: input keys past it are padding
  int64_t kv_offset = 0;  // query i is aligned with key i + kv_offset
  int64_t extra0 = 0;     // keys [extra0, lk) are extra keys (options.extra_keys): every query sees them
};

// The inputs of one call, converted, with the per-row score computation.
template <class Acc>
class Problem {
 public:
  int64_t B, Lq, Lk, H, Hkv, D, Dv, group;
  bool varlen;
  DType round_to;
  std::vector<Segment> segments;
  std::vector<Acc> q, k, v;  // head-major: q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv)

  Problem(const TensorView& q_in, const TensorView& k_in, const TensorView& v_in,
          const AttentionOptions& options, DType round_to_in)
      : B(q_in.shape[0]), Lq(q_in.shape[1]), Lk(k_in.shape[1]), H(q_in.shape[2]), Hkv(k_in.shape[2]),
        D(q_in.shape[3]), Dv(v_in.shape[3]), group(1), varlen(options.cu_seqlens_q.has_value()),
        round_to(round_to_in), opt_(options) {
    check_inputs(q_in, k_in, v_in);
    group = H / Hkv;
    scale_ = options.scale ? Acc(*options.scale) : Acc(1) / std::sqrt(Acc(D));
    softcap_ = Acc(options.softcap);
    require(options.extra_keys >= 0 && options.extra_keys <= Lk, ErrorKind::kInvalidArgument,
            "options.extra_keys", "", "in [0, Lk]", std::to_string(options.extra_keys));
    // Mask and bias describe the input keys only (extra keys: mask true, bias 0).
    if (options.mask) mask_ = Broadcast(*options.mask, {B, H, Lq, Lk - options.extra_keys}, "mask");
    if (options.bias) {
      bias_ = Broadcast(*options.bias, {B, H, Lq, Lk - options.extra_keys}, "bias");
      bias_masked_at_ = detail::lowest_finite(options.bias->dtype);  // at or below: masked
    }
    if (options.alibi_slopes) slopes_ = per_head(*options.alibi_slopes, "alibi_slopes");
    if (options.sinks) sinks_ = per_head(*options.sinks, "sinks");
    build_segments();
    q = head_major<Acc>(q_in);
    k = head_major<Acc>(k_in);
    v = head_major<Acc>(v_in);
  }

  const Acc* q_row(const Segment& s, int64_t h, int64_t i) const {
    return q.data() + ((s.b * H + h) * Lq + s.q0 + i) * D;
  }
  const Acc* k_row(const Segment& s, int64_t g, int64_t j) const {
    return k.data() + ((s.b * Hkv + g) * Lk + s.k0 + j) * D;
  }
  const Acc* v_row(const Segment& s, int64_t g, int64_t j) const {
    return v.data() + ((s.b * Hkv + g) * Lk + s.k0 + j) * Dv;
  }
  Acc scale() const { return scale_; }
  Acc softcap() const { return softcap_; }
  bool has_bias() const { return opt_.bias.has_value(); }
  const Broadcast& bias_map() const { return bias_; }
  bool has_sinks() const { return !sinks_.empty(); }
  // Dropout's factor Z_ij (0 or 1/(1-p); 1 without dropout), from the contract's shared hash.
  Acc dropout(const Segment& s, int64_t h, int64_t i, int64_t j) const {
    if (opt_.dropout_p <= 0.0f) return Acc(1);
    return Acc(detail::dropout_factor(opt_.dropout_seed, opt_.dropout_p, s.b, h, s.q0 + i, s.k0 + j, H, Lq, Lk));
  }
  Acc sink(int64_t h) const { return sinks_[size_t(h)]; }

  // The softmax row of query i of head h over the segment's lk keys: p[j] = P_ij, and
  // s_raw[j] = scale · q_i·k_j for the softcap chain rule. Returns lse_i; a fully
  // masked row returns -inf with p all 0. Disallowed keys are never read, so garbage
  // in masked K changes nothing; a NaN among the allowed scores makes lse and the
  // allowed p NaN (never an empty row), the disallowed p staying 0.
  Acc softmax_row(const Segment& s, int64_t h, int64_t i, Acc* p, Acc* s_raw) const {
    constexpr Acc kNegInf = -std::numeric_limits<Acc>::infinity();
    const int64_t g = h / group;
    const int64_t diag = i + s.kv_offset;
    Acc m = kNegInf;
    bool nan_score = false;
    for (int64_t j = 0; j < s.lk; ++j) {
      p[j] = kNegInf;  // holds the score until the normalisation below
      s_raw[j] = 0;
      const bool extra = j >= s.extra0;  // an extra key: allowed, no bias, no ALiBi
      if (!extra && !visible(s, h, i, j)) continue;
      double bias = 0;
      if (opt_.bias && !extra) {
        bias = read_float(*opt_.bias, bias_.offset(s.b, h, i, j));
        if (bias <= bias_masked_at_) continue;
      }
      s_raw[j] = scale_ * dot(q_row(s, h, i), k_row(s, g, j), D);
      Acc score = softcap_ > 0 ? softcap_ * std::tanh(s_raw[j] / softcap_) : s_raw[j];
      score += Acc(bias);
      if (!slopes_.empty() && !extra) score -= slopes_[size_t(h)] * Acc(std::abs(j - diag));
      p[j] = score;
      m = std::max(m, score);
      nan_score = nan_score || std::isnan(score);
    }
    if (nan_score) {
      for (int64_t j = 0; j < s.lk; ++j) p[j] = p[j] == kNegInf ? Acc(0) : std::numeric_limits<Acc>::quiet_NaN();
      return std::numeric_limits<Acc>::quiet_NaN();
    }
    if (m == kNegInf) {
      std::fill(p, p + s.lk, Acc(0));
      return kNegInf;
    }
    if (has_sinks()) m = std::max(m, sink(h));
    Acc sum = has_sinks() ? std::exp(sink(h) - m) : Acc(0);
    for (int64_t j = 0; j < s.lk; ++j) sum += std::exp(p[j] - m);
    const Acc lse = m + std::log(sum);
    for (int64_t j = 0; j < s.lk; ++j) p[j] = std::exp(p[j] - lse);
    return lse;
  }

 private:
  const AttentionOptions& opt_;
  Acc scale_ = 1, softcap_ = 0;
  Broadcast mask_, bias_;
  double bias_masked_at_ = 0;
  std::vector<Acc> slopes_, sinks_;

  // Key padding, causal, window and the keep-mask (the bias is checked by the caller).
  bool visible(const Segment& s, int64_t h, int64_t i, int64_t j) const {
    const int64_t diag = i + s.kv_offset;
    if (j >= s.lk_valid) return false;
    if (opt_.causal != CausalAlign::kNone && j > diag) return false;
    // As distances (small), so that a huge window cannot overflow: diag - j > left, j - diag > right.
    if (opt_.window.left >= 0 && diag - j > opt_.window.left) return false;
    if (opt_.window.right >= 0 && j - diag > opt_.window.right) return false;
    if (opt_.mask && static_cast<const uint8_t*>(opt_.mask->data)[mask_.offset(s.b, h, i, j)] == 0)
      return false;
    return true;
  }

  // Only the checks the oracle needs to stay in bounds; the API validates fully.
  void check_inputs(const TensorView& q_in, const TensorView& k_in, const TensorView& v_in) const {
    for (const auto& [t, name] : {std::pair{&q_in, "q"}, {&k_in, "k"}, {&v_in, "v"}}) {
      require(t->rank == 4, ErrorKind::kInvalidShape, name, "rank", "4", std::to_string(t->rank));
      require(is_floating(t->dtype), ErrorKind::kInvalidArgument, name, "dtype", "f32, bf16 or f16",
              to_string(t->dtype));
    }
    require(k_in.shape[0] == B && v_in.shape[0] == B && v_in.shape[1] == Lk && v_in.shape[2] == Hkv,
            ErrorKind::kInvalidShape, "k/v", "dims 0-2", "matching q and each other", "mismatch");
    require(k_in.shape[3] == D, ErrorKind::kInvalidShape, "k", "dim 3 (D)", std::to_string(D),
            std::to_string(k_in.shape[3]));
    require(Hkv > 0 && H % Hkv == 0, ErrorKind::kInvalidShape, "k", "dim 2 (Hkv)",
            "a divisor of H=" + std::to_string(H), std::to_string(Hkv));
    if (opt_.mask)
      require(opt_.mask->dtype == DType::kBool, ErrorKind::kInvalidMask, "mask", "dtype", "bool",
              to_string(opt_.mask->dtype));
    if (opt_.bias)
      require(is_floating(opt_.bias->dtype), ErrorKind::kInvalidMask, "bias", "dtype", "f32, bf16 or f16",
              to_string(opt_.bias->dtype));
    require(opt_.cu_seqlens_q.has_value() == opt_.cu_seqlens_k.has_value(), ErrorKind::kInvalidArgument,
            "cu_seqlens_q/k", "", "both or neither", "one");
    require(!varlen || (!opt_.mask && !opt_.bias && !opt_.seqlens_k), ErrorKind::kUnsupported,
            "cu_seqlens_q", "", "no mask, bias or seqlens_k with varlen", "combined");
    require(!varlen || B == 1, ErrorKind::kInvalidShape, "q", "dim 0 (B)", "1 with varlen",
            std::to_string(B));
  }

  std::vector<Acc> per_head(const TensorView& t, const char* name) const {
    require(t.rank == 1 && t.shape[0] == H && is_floating(t.dtype), ErrorKind::kInvalidShape, name,
            "shape", "float (" + std::to_string(H) + ",)", t.shape_string());
    std::vector<Acc> r(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h) r[size_t(h)] = Acc(read_float(t, h * t.strides[0]));
    return r;
  }

  static int32_t read_i32(const TensorView& t, int64_t index) {
    return static_cast<const int32_t*>(t.data)[index * t.strides[0]];
  }

  // lk: every key row of the segment, its extra keys last; lk_valid: its input keys after
  // padding (the diagonal's length).
  void add_segment(int64_t b, int64_t q0, int64_t lq, int64_t k0, int64_t lk, int64_t lk_valid) {
    const bool top_left = opt_.causal == CausalAlign::kTopLeft;
    // ALiBi without causal and window uses the bottom-right diagonal as windows do.
    segments.push_back({b, q0, lq, k0, lk, lk_valid, top_left ? 0 : lk_valid - lq, lk - opt_.extra_keys});
  }

  void build_segments() {
    if (varlen) {
      const TensorView& cq = *opt_.cu_seqlens_q;
      const TensorView& ck = *opt_.cu_seqlens_k;
      require(cq.dtype == DType::kI32 && ck.dtype == DType::kI32 && cq.rank == 1 && ck.rank == 1 &&
                  cq.shape[0] == ck.shape[0] && cq.shape[0] >= 1,
              ErrorKind::kInvalidArgument, "cu_seqlens_q/k", "shape", "i32 (nseq + 1,) each",
              cq.shape_string() + " and " + ck.shape_string());
      const int64_t nseq = cq.shape[0] - 1;
      require(read_i32(cq, 0) == 0 && read_i32(ck, 0) == 0 && read_i32(cq, nseq) == Lq &&
                  read_i32(ck, nseq) == Lk,
              ErrorKind::kInvalidArgument, "cu_seqlens_q/k", "", "0 first and totals last", "other");
      for (int64_t s = 0; s < nseq; ++s) {
        const int64_t q0 = read_i32(cq, s), q1 = read_i32(cq, s + 1);
        const int64_t k0 = read_i32(ck, s), k1 = read_i32(ck, s + 1);
        require(q1 >= q0 && k1 >= k0, ErrorKind::kInvalidArgument, "cu_seqlens_q/k",
                "entry " + std::to_string(s + 1), "non-decreasing", "decreasing");
        require(k1 - k0 >= opt_.extra_keys, ErrorKind::kInvalidShape, "cu_seqlens_k", "entry " + std::to_string(s + 1),
                ">= extra_keys keys per sequence", std::to_string(k1 - k0));
        add_segment(0, q0, q1 - q0, k0, k1 - k0, k1 - k0 - opt_.extra_keys);
      }
      return;
    }
    for (int64_t b = 0; b < B; ++b) {
      int64_t lk_valid = Lk - opt_.extra_keys;
      if (opt_.seqlens_k) {
        const TensorView& sk = *opt_.seqlens_k;
        require(sk.dtype == DType::kI32 && sk.rank == 1 && sk.shape[0] == B, ErrorKind::kInvalidArgument,
                "seqlens_k", "shape", "i32 (" + std::to_string(B) + ",)", sk.shape_string());
        lk_valid = read_i32(sk, b);
        require(lk_valid >= 0 && lk_valid <= Lk - opt_.extra_keys, ErrorKind::kInvalidArgument, "seqlens_k",
                "entry " + std::to_string(b), "in [0, " + std::to_string(Lk - opt_.extra_keys) + "] (Lk - extra_keys)",
                std::to_string(lk_valid));
      }
      add_segment(b, 0, Lq, 0, Lk, lk_valid);
    }
  }
};

template <class Acc>
ForwardResult forward_impl(const TensorView& q_in, const TensorView& k_in, const TensorView& v_in,
                           const AttentionOptions& options, DType round_to) {
  const Problem<Acc> pb(q_in, k_in, v_in, options, round_to);
  const int64_t B = pb.B, Lq = pb.Lq, Lk = pb.Lk, H = pb.H, Dv = pb.Dv;
  ForwardResult r;
  r.out.assign(size_t(B * Lq * H * Dv), 0.0);
  r.lse.assign(size_t(B * H * Lq), -std::numeric_limits<double>::infinity());
  if (!pb.varlen) r.probs.assign(size_t(B * H * Lq * Lk), 0.0);

  const int64_t items = int64_t(pb.segments.size()) * H;
#pragma omp parallel for schedule(dynamic)
  for (int64_t item = 0; item < items; ++item) {
    const Segment& s = pb.segments[size_t(item / H)];
    const int64_t h = item % H, g = h / pb.group;
    std::vector<Acc> p(size_t(s.lk)), s_raw(size_t(s.lk)), o(static_cast<size_t>(Dv));
    for (int64_t i = 0; i < s.lq; ++i) {
      const int64_t row = s.q0 + i;
      r.lse[size_t((s.b * H + h) * Lq + row)] = double(pb.softmax_row(s, h, i, p.data(), s_raw.data()));
      std::fill(o.begin(), o.end(), Acc(0));
      for (int64_t j = 0; j < s.lk; ++j) {
        if (!pb.varlen) r.probs[size_t(((s.b * H + h) * Lq + i) * Lk + j)] = double(p[size_t(j)]);
        if (p[size_t(j)] == 0) continue;  // masked: v_j is never read
        const Acc pj = round_to_dtype(p[size_t(j)] * pb.dropout(s, h, i, j), round_to);
        const Acc* vj = pb.v_row(s, g, j);
        for (int64_t d = 0; d < Dv; ++d) o[size_t(d)] += pj * vj[d];
      }
      for (int64_t d = 0; d < Dv; ++d)
        r.out[size_t(((s.b * Lq + row) * H + h) * Dv + d)] = double(round_to_dtype(o[size_t(d)], round_to));
    }
  }
  return r;
}

// A Dv-long f32 dot product x · y is off by single roundings of its partial sums: at most
// Dv·2^-24·Σ|x_d y_d| in any order (abs_sum), and as independent roundings the l2 norm of
// their coefficients in sequential order, sqrt(partials2) (a 16-lane order's are shorter).
struct DotSensitivity {
  double abs_sum = 0, partials2 = 0;
};
template <class Acc>
DotSensitivity dot_sensitivity(const Acc* x, const Acc* y, int64_t n) {
  DotSensitivity r;
  double partial = 0;
  for (int64_t d = 0; d < n; ++d) {
    const double t = double(x[d]) * double(y[d]);
    r.abs_sum += std::abs(t), partial += t, r.partials2 += partial * partial;
  }
  return r;
}

template <class Acc>
BackwardResult backward_impl(const TensorView& dout_in, const TensorView& q_in, const TensorView& k_in,
                             const TensorView& v_in, const AttentionOptions& options, DType round_to) {
  const Problem<Acc> pb(q_in, k_in, v_in, options, round_to);
  const int64_t B = pb.B, Lq = pb.Lq, Lk = pb.Lk, H = pb.H, Hkv = pb.Hkv, D = pb.D, Dv = pb.Dv;
  require(dout_in.rank == 4 && dout_in.shape == Shape{B, Lq, H, Dv} && is_floating(dout_in.dtype),
          ErrorKind::kInvalidShape, "dout", "shape", "float (B, Lq, H, Dv)", dout_in.shape_string());
  const std::vector<Acc> dout = head_major<Acc>(dout_in);  // (B, H, Lq, Dv)

  std::vector<Acc> dq(pb.q.size()), dk(pb.k.size()), dv(pb.v.size());  // head-major, unscaled
  // dS over the whole grid, reduced into dbias's own shape after the parallel part.
  std::vector<Acc> ds_grid(pb.has_bias() ? size_t(B * H * Lq * Lk) : 0);
  // P over the grid and each row's Σ_j |a_ij|, Σ_j a_ij² (a_ij = P_ij Z_ij dP0_ij, the
  // sensitivity of D_i to rounding P ∘ Z), for BackwardResult::dbias_rounding_l1 / _l2.
  std::vector<Acc> p_grid(ds_grid.size());
  std::vector<double> row_l1_grid(pb.has_bias() ? size_t(B * H * Lq) : 0), row_l2_grid(row_l1_grid.size());
  // The f32 rounding of dP_ij and D_i (BackwardResult::dbias_dot_l1 / _l2): per (row, key)
  // |P Z| and (P Z)² times dP's dot-product sensitivities, per row D_i's.
  std::vector<double> dp_l1_grid(ds_grid.size()), dp_l2_grid(ds_grid.size());
  std::vector<double> d_l1_grid(row_l1_grid.size()), d_l2_grid(row_l1_grid.size());
  std::vector<Acc> dsinks_part(pb.has_sinks() ? pb.segments.size() * size_t(H) : 0);
  // Σ|a| and Σa² per (sequence, head) for BackwardResult::dsinks_rounding_l1 / _l2, and the
  // same for dsinks_score_l1 / _l2.
  std::vector<double> dsinks_l1_part(dsinks_part.size()), dsinks_l2_part(dsinks_part.size());
  std::vector<double> score_l1_part(dsinks_part.size()), score_l2_part(dsinks_part.size());

  // One item per (sequence, kv head): it owns dk/dv of its keys and dq of its query
  // heads, and walks them in a fixed order.
  const int64_t items = int64_t(pb.segments.size()) * Hkv;
#pragma omp parallel for schedule(dynamic)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t seg = item / Hkv, g = item % Hkv;
    const Segment& s = pb.segments[size_t(seg)];
    std::vector<Acc> p(size_t(s.lk)), s_raw(size_t(s.lk)), o(static_cast<size_t>(Dv));
    for (int64_t h = g * pb.group; h < (g + 1) * pb.group; ++h) {
      for (int64_t i = 0; i < s.lq; ++i) {
        const Acc lse = pb.softmax_row(s, h, i, p.data(), s_raw.data());
        if (lse == -std::numeric_limits<Acc>::infinity()) continue;  // fully masked: no gradient
        const int64_t row = s.q0 + i;
        const Acc* qi = pb.q_row(s, h, i);
        const Acc* doi = &dout[size_t(((s.b * H + h) * Lq + row) * Dv)];
        Acc* dqi = &dq[size_t(((s.b * H + h) * Lq + row) * D)];
        // out_i as the forward produced it (P rounded before P·V, out rounded).
        std::fill(o.begin(), o.end(), Acc(0));
        for (int64_t j = 0; j < s.lk; ++j) {
          if (p[size_t(j)] == 0) continue;
          const Acc pj = round_to_dtype(p[size_t(j)] * pb.dropout(s, h, i, j), round_to);
          const Acc* vj = pb.v_row(s, g, j);
          for (int64_t d = 0; d < Dv; ++d) o[size_t(d)] += pj * vj[d];
        }
        for (Acc& x : o) x = round_to_dtype(x, round_to);
        const Acc Di = dot(doi, o.data(), Dv);

        double row_l1 = 0, row_l2 = 0;  // Σ_j |P Z dP0| and Σ_j (P Z dP0)² of this row
        double score_l1 = 0, score_l2 = 0;  // Σ_j |b c| and Σ_j (b c)² (dsinks_score_l1 / _l2)
        for (int64_t j = 0; j < s.lk; ++j) {
          const Acc pj = p[size_t(j)];
          if (pj == 0) continue;  // masked (or underflowed): dS_ij = 0
          const int64_t kj = (s.b * Hkv + g) * Lk + s.k0 + j;
          const Acc z = pb.dropout(s, h, i, j);  // O = (P ∘ Z) V: dP = Z (dO · v_j)
          const Acc dp0 = dot(doi, pb.v_row(s, g, j), Dv);
          const Acc dS = pj * (z * dp0 - Di);
          const double a = double(pj) * double(z) * double(dp0);
          row_l1 += std::abs(a), row_l2 += a * a;
          if (pb.has_sinks()) {
            // d(e^{sink - lse} D_i) / ds_ij = P_ij (Z_ij dP0_ij - 2 D_i), and the f32 error of
            // s_ij in units of 2^-24 (attention_reference.hpp, dsinks_score_l1).
            const double b = double(pj) * (double(z) * double(dp0) - 2.0 * double(Di));
            const double sj = double(s_raw[size_t(j)]);
            double abs_sum = 0, partial = 0, partials2 = 0;
            for (int64_t d = 0; d < D; ++d) {
              const double t = double(qi[d]) * double(pb.k_row(s, g, j)[d]);
              abs_sum += std::abs(t), partial += t, partials2 += partial * partial;
            }
            const double sc = std::abs(double(pb.scale())), rest = 2 * std::abs(sj) + std::abs(sj - double(lse)) + 2;
            score_l1 += std::abs(b) * (double(D) * sc * abs_sum + rest);
            score_l2 += b * b * (sc * sc * partials2 + rest * rest);
          }
          if (pb.has_bias() && j < s.extra0) {
            const size_t at = size_t(((s.b * H + h) * Lq + i) * Lk + j);
            ds_grid[at] = dS;
            p_grid[at] = pj;
            const DotSensitivity sd = dot_sensitivity(doi, pb.v_row(s, g, j), Dv);
            const double pz = std::abs(double(pj) * double(z));
            dp_l1_grid[at] = pz * double(Dv) * sd.abs_sum;
            dp_l2_grid[at] = pz * pz * sd.partials2;
          }
          Acc dSc = dS;
          if (pb.softcap() > 0) {
            const Acc t = std::tanh(s_raw[size_t(j)] / pb.softcap());
            dSc = dS * (1 - t * t);
          }
          // A low-precision kernel feeds P and dS to its GEMMs in the 16-bit dtype.
          dSc = round_to_dtype(dSc, round_to);
          const Acc pr = round_to_dtype(pj * z, round_to);
          const Acc* kjp = pb.k_row(s, g, j);
          Acc* dkj = &dk[size_t(kj * D)];
          Acc* dvj = &dv[size_t(kj * Dv)];
          for (int64_t d = 0; d < D; ++d) dqi[d] += dSc * kjp[d];
          for (int64_t d = 0; d < D; ++d) dkj[d] += dSc * qi[d];
          for (int64_t d = 0; d < Dv; ++d) dvj[d] += pr * doi[d];
        }
        if (pb.has_bias()) {
          row_l1_grid[size_t((s.b * H + h) * Lq + i)] = row_l1;
          row_l2_grid[size_t((s.b * H + h) * Lq + i)] = row_l2;
          const DotSensitivity sd = dot_sensitivity(doi, o.data(), Dv);
          d_l1_grid[size_t((s.b * H + h) * Lq + i)] = double(Dv) * sd.abs_sum;
          d_l2_grid[size_t((s.b * H + h) * Lq + i)] = sd.partials2;
        }
        if (pb.has_sinks()) {
          dsinks_part[size_t(seg * H + h)] -= std::exp(pb.sink(h) - lse) * Di;
          const double w = std::exp(double(pb.sink(h)) - double(lse));
          dsinks_l1_part[size_t(seg * H + h)] += w * row_l1;
          dsinks_l2_part[size_t(seg * H + h)] += w * w * row_l2;
          score_l1_part[size_t(seg * H + h)] += w * score_l1;
          score_l2_part[size_t(seg * H + h)] += w * w * score_l2;
        }
      }
    }
  }

  BackwardResult r;
  r.dq = token_major(dq, q_in.shape, pb.scale(), round_to);
  r.dk = token_major(dk, k_in.shape, pb.scale(), round_to);
  r.dv = token_major(dv, v_in.shape, Acc(1), round_to);
  if (pb.has_bias()) {
    r.dbias.assign(size_t(options.bias->numel()), 0.0);
    std::vector<Acc> dbias(r.dbias.size(), Acc(0));
    const Broadcast& map = pb.bias_map();
    r.dbias_rounding_l1.assign(r.dbias.size(), 0.0);
    r.dbias_rounding_l2.assign(r.dbias.size(), 0.0);
    r.dbias_dot_l1.assign(r.dbias.size(), 0.0);
    r.dbias_dot_l2.assign(r.dbias.size(), 0.0);
    // W_e = Σ_j P_ij over the row's columns that land on dbias element e (several when bias
    // broadcasts along keys): the row's δD_i moves dbias_e by -W_e δD_i.
    std::vector<double> weight(r.dbias.size(), 0.0);
    std::vector<size_t> touched;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < Lq; ++i) {
          const size_t row = size_t((b * H + h) * Lq + i);
          for (int64_t j = 0; j < Lk - options.extra_keys; ++j) {  // no extra columns
            const size_t e = size_t(map.dense(b, h, i, j));
            dbias[e] += ds_grid[row * size_t(Lk) + size_t(j)];
            if (weight[e] == 0) touched.push_back(e);
            weight[e] += double(p_grid[row * size_t(Lk) + size_t(j)]);
            r.dbias_dot_l1[e] += dp_l1_grid[row * size_t(Lk) + size_t(j)];
            r.dbias_dot_l2[e] += dp_l2_grid[row * size_t(Lk) + size_t(j)];
          }
          for (size_t e : touched) {
            r.dbias_rounding_l1[e] += weight[e] * row_l1_grid[row];
            r.dbias_rounding_l2[e] += weight[e] * weight[e] * row_l2_grid[row];
            r.dbias_dot_l1[e] += weight[e] * d_l1_grid[row];
            r.dbias_dot_l2[e] += weight[e] * weight[e] * d_l2_grid[row];
            weight[e] = 0;
          }
          touched.clear();
        }
    for (double& x : r.dbias_rounding_l2) x = std::sqrt(x);
    for (double& x : r.dbias_dot_l2) x = std::sqrt(x);
    std::copy(dbias.begin(), dbias.end(), r.dbias.begin());
  }
  if (pb.has_sinks()) {
    std::vector<Acc> dsinks(size_t(H), Acc(0));
    r.dsinks_rounding_l1.assign(size_t(H), 0.0);
    r.dsinks_rounding_l2.assign(size_t(H), 0.0);
    r.dsinks_score_l1.assign(size_t(H), 0.0);
    r.dsinks_score_l2.assign(size_t(H), 0.0);
    for (size_t seg = 0; seg < pb.segments.size(); ++seg)
      for (int64_t h = 0; h < H; ++h) {
        dsinks[size_t(h)] += dsinks_part[seg * size_t(H) + size_t(h)];
        r.dsinks_rounding_l1[size_t(h)] += dsinks_l1_part[seg * size_t(H) + size_t(h)];
        r.dsinks_rounding_l2[size_t(h)] += dsinks_l2_part[seg * size_t(H) + size_t(h)];
        r.dsinks_score_l1[size_t(h)] += score_l1_part[seg * size_t(H) + size_t(h)];
        r.dsinks_score_l2[size_t(h)] += score_l2_part[seg * size_t(H) + size_t(h)];
      }
    r.dsinks.assign(dsinks.begin(), dsinks.end());
    for (double& x : r.dsinks_rounding_l2) x = std::sqrt(x);
    for (double& x : r.dsinks_score_l2) x = std::sqrt(x);
  }
  return r;
}

}  // namespace

ForwardResult attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                                const AttentionOptions& options) {
  return forward_impl<double>(q, k, v, options, DType::kF32);
}

BackwardResult attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                                  const TensorView& v, const AttentionOptions& options) {
  return backward_impl<double>(dout, q, k, v, options, DType::kF32);
}

ForwardResult baseline_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                               const AttentionOptions& options, DType round_to) {
  return forward_impl<float>(q, k, v, options, round_to);
}

BackwardResult baseline_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                                 const TensorView& v, const AttentionOptions& options, DType round_to) {
  return backward_impl<float>(dout, q, k, v, options, round_to);
}

}  // namespace multihead::reference
