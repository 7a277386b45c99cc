#include "reference/cases.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <numbers>
#include <sstream>

#include "core/random.hpp"
#include "multihead/error.hpp"
#include "reference/attention_reference.hpp"
#include "reference/draws.hpp"

namespace multihead::reference {

using namespace draws;

// ---------------------------------------------------------------- names

namespace {

struct KindName {
  CaseKind kind;
  const char* name;
};
constexpr KindName kKindNames[] = {
    {CaseKind::kPlain, "plain"},
    {CaseKind::kCausalTopLeft, "causal_top_left"},
    {CaseKind::kCausalBottomRight, "causal_bottom_right"},
    {CaseKind::kWindow, "window"},
    {CaseKind::kGqa, "gqa"},
    {CaseKind::kMqa, "mqa"},
    {CaseKind::kMask, "mask"},
    {CaseKind::kBias, "bias"},
    {CaseKind::kKeyPadding, "key_padding"},
    {CaseKind::kVarlen, "varlen"},
    {CaseKind::kAlibi, "alibi"},
    {CaseKind::kSoftcap, "softcap"},
    {CaseKind::kSinks, "sinks"},
    {CaseKind::kStrided, "strided"},
    {CaseKind::kDvNeD, "dv_ne_d"},
    {CaseKind::kFullyMasked, "fully_masked"},
    {CaseKind::kBf16, "bf16"},
    {CaseKind::kDropout, "dropout"},
    {CaseKind::kMixed, "mixed"},
    {CaseKind::kExtraKeys, "extra_keys"},
};

const char* causal_name(CausalAlign causal) {
  switch (causal) {
    case CausalAlign::kNone: return "none";
    case CausalAlign::kTopLeft: return "top_left";
    case CausalAlign::kBottomRight: return "bottom_right";
  }
  return "?";
}

std::string window_side(int64_t w) { return w < 0 ? "inf" : std::to_string(w); }

std::string join(const std::vector<int64_t>& xs) {
  std::string s;
  for (size_t n = 0; n < xs.size(); ++n) s += (n ? "," : "") + std::to_string(xs[n]);
  return s;
}

}  // namespace

const std::vector<CaseKind>& all_case_kinds() {
  static const std::vector<CaseKind> kinds = [] {
    std::vector<CaseKind> v;
    for (const KindName& k : kKindNames) v.push_back(k.kind);
    return v;
  }();
  return kinds;
}

const char* to_string(CaseKind kind) {
  for (const KindName& k : kKindNames)
    if (k.kind == kind) return k.name;
  return "?";
}

std::optional<CaseKind> parse_case_kind(std::string_view name) {
  for (const KindName& k : kKindNames)
    if (name == k.name) return k.kind;
  return std::nullopt;
}

const char* to_string(Broadcast broadcast) {
  switch (broadcast) {
    case Broadcast::kNone: return "none";
    case Broadcast::kFull: return "(B,H,Lq,Lk)";
    case Broadcast::kQueryKey: return "(1,1,Lq,Lk)";
    case Broadcast::kBatchKey: return "(B,1,1,Lk)";
    case Broadcast::kHeadQueryKey: return "(1,H,Lq,Lk)";
    case Broadcast::kBatchHeadKey: return "(B,H,1,Lk)";
    case Broadcast::kRank2: return "(Lq,Lk)";
  }
  return "?";
}

const char* to_string(Layout layout) {
  switch (layout) {
    case Layout::kContiguous: return "contiguous";
    case Layout::kPadded: return "padded";
    case Layout::kHeadMajor: return "head_major";
  }
  return "?";
}

// ---------------------------------------------------------------- Case

namespace {

// Σ_b Lq_b·Lk_b: the number of (query, key) pairs per head.
double pairs(const Case& c) {
  if (!c.varlen()) return double(c.B) * double(c.Lq) * double(c.Lk);
  double n = 0;
  for (size_t s = 0; s < c.varlen_q.size(); ++s) n += double(c.varlen_q[s]) * double(c.varlen_k[s]);
  return n;
}

}  // namespace

double Case::flops() const { return 2.0 * double(H) * pairs(*this) * double(D + Dv); }

double Case::cost() const { return double(H) * pairs(*this) * double(D + Dv); }

std::string Case::describe() const {
  std::ostringstream s;
  s << "kind=" << to_string(kind) << " B=" << B << " Lq=" << Lq << " Lk=" << Lk << " H=" << H
    << " Hkv=" << Hkv << " D=" << D << " Dv=" << Dv << " dtype=" << multihead::to_string(dtype);
  if (scale) s << " scale=" << *scale;
  if (causal != CausalAlign::kNone) s << " causal=" << causal_name(causal);
  if (window.left >= 0 || window.right >= 0)
    s << " window=(" << window_side(window.left) << "," << window_side(window.right) << ")";
  if (mask != Broadcast::kNone) s << " mask=" << to_string(mask);
  if (bias != Broadcast::kNone) s << " bias=" << to_string(bias);
  if (key_padding) s << " key_padding";
  if (varlen()) s << " varlen_q=[" << join(varlen_q) << "] varlen_k=[" << join(varlen_k) << "]";
  if (alibi) s << " alibi";
  if (softcap > 0) s << " softcap=" << softcap;
  if (dropout_p > 0) s << " dropout=" << dropout_p;
  if (sinks) s << " sinks";
  if (extra_keys > 0) s << " extra_keys=" << extra_keys;
  if (layout != Layout::kContiguous) s << " layout=" << to_string(layout);
  if (empty_rows) s << " empty_rows";
  if (probs) s << " probs";
  s << " seed=" << seed << " | " << flops() * 1e-6 << " MFLOP forward";
  return s.str();
}

std::string Case::name() const {
  std::ostringstream s;
  s << to_string(kind) << "_B" << B << "_Lq" << Lq << "_Lk" << Lk << "_H" << H << "_Hkv" << Hkv << "_D" << D;
  if (Dv != D) s << "_Dv" << Dv;
  s << (dtype == DType::kBF16 ? "_bf16" : dtype == DType::kF16 ? "_f16" : "_f32");
  if (scale) s << "_scaled";
  if (causal == CausalAlign::kTopLeft) s << "_causalTL";
  if (causal == CausalAlign::kBottomRight) s << "_causalBR";
  if (window.left >= 0 || window.right >= 0)
    s << "_win" << window_side(window.left) << "_" << window_side(window.right);
  const auto shape_tag = [](Broadcast b) {
    switch (b) {
      case Broadcast::kNone: return "";
      case Broadcast::kFull: return "BHQK";
      case Broadcast::kQueryKey: return "11QK";
      case Broadcast::kBatchKey: return "B11K";
      case Broadcast::kHeadQueryKey: return "1HQK";
      case Broadcast::kBatchHeadKey: return "BH1K";
      case Broadcast::kRank2: return "QK";
    }
    return "";
  };
  if (mask != Broadcast::kNone) s << "_mask" << shape_tag(mask);
  if (bias != Broadcast::kNone) s << "_bias" << shape_tag(bias);
  if (key_padding) s << "_keypad";
  if (varlen()) s << "_varlen" << varlen_q.size();
  if (alibi) s << "_alibi";
  if (softcap > 0) s << "_softcap";
  if (dropout_p > 0) s << "_dropout";
  if (sinks) s << "_sinks";
  if (extra_keys > 0) s << "_extra" << extra_keys;
  if (layout == Layout::kPadded) s << "_padded";
  if (layout == Layout::kHeadMajor) s << "_headmajor";
  if (empty_rows) s << "_emptyrows";
  if (probs) s << "_probs";
  return s.str();
}

// ---------------------------------------------------------------- buffers

namespace {


void store(const TensorView& t, int64_t offset, float x) {
  switch (t.dtype) {
    case DType::kF32: static_cast<float*>(t.data)[offset] = x; return;
    case DType::kBF16: static_cast<bf16*>(t.data)[offset] = float_to_bf16(x); return;
    case DType::kF16: static_cast<f16*>(t.data)[offset] = float_to_f16(x); return;
    default: throw Error(ErrorKind::kInvalidArgument, "case tensor", "dtype", "a float dtype", to_string(t.dtype));
  }
}

// Visits every index of a view in row-major order.
template <class F>
void for_each_index(const TensorView& t, F&& f) {
  const int64_t n = t.numel();
  Shape index{};
  for (int64_t e = 0; e < n; ++e) {
    f(index);
    for (int d = t.rank - 1; d >= 0; --d) {
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
  }
}

// N(0, 1) data, two values per Box-Muller step from a splitmix64 stream seeded by rng:
// input generation must stay cheap next to the oracle.
void fill_normal(const TensorView& t, std::mt19937_64& rng) {
  detail::SplitMix64 stream(rng());
  double spare = 0;
  bool have_spare = false;
  for_each_index(t, [&](const Shape& i) {
    double x = spare;
    if (!have_spare) {
      const double u1 = 1.0 - detail::uniform01(stream.next());
      const detail::NormalPair pair = detail::box_muller(u1, detail::uniform01(stream.next()));
      x = pair.first;
      spare = pair.second;
    }
    have_spare = !have_spare;
    store(t, t.offset(i), float(x));
  });
}

// The rank and shape of a mask or bias of the given broadcast kind.
// Its key dim covers the input keys: Lk - extra_keys.
std::pair<int, Shape> broadcast_shape(Broadcast b, const Case& c) {
  const int64_t lk = c.Lk - c.extra_keys;
  switch (b) {
    case Broadcast::kFull: return {4, Shape{c.B, c.H, c.Lq, lk}};
    case Broadcast::kQueryKey: return {4, Shape{1, 1, c.Lq, lk}};
    case Broadcast::kBatchKey: return {4, Shape{c.B, 1, 1, lk}};
    case Broadcast::kHeadQueryKey: return {4, Shape{1, c.H, c.Lq, lk}};
    case Broadcast::kBatchHeadKey: return {4, Shape{c.B, c.H, 1, lk}};
    case Broadcast::kRank2: return {2, Shape{c.Lq, lk, 0, 0}};
    case Broadcast::kNone: break;
  }
  return {0, Shape{}};
}

// Whether index i of a mask/bias of this broadcast kind lies in a row that empty_rows
// empties: rows with i % 3 == 0 where the tensor has an Lq dim, else all of batch 0.
bool in_empty_row(Broadcast b, const Shape& i) {
  switch (b) {
    case Broadcast::kFull:
    case Broadcast::kQueryKey:
    case Broadcast::kHeadQueryKey: return i[2] % 3 == 0;
    case Broadcast::kRank2: return i[0] % 3 == 0;
    case Broadcast::kBatchKey:
    case Broadcast::kBatchHeadKey: return i[0] == 0;
    case Broadcast::kNone: break;
  }
  return false;
}

}  // namespace

StridedTensor make_strided(DType dtype, int64_t B, int64_t L, int64_t heads, int64_t dim, Layout layout,
                           uint8_t fill_byte) {
  StridedTensor t;
  int64_t stride_b = 0, stride_l = 0, stride_h = 0, numel = 0;
  switch (layout) {
    case Layout::kContiguous:
      stride_h = dim, stride_l = heads * dim, stride_b = L * heads * dim, numel = B * stride_b;
      break;
    case Layout::kPadded:  // (B, L + 1, heads, dim + 3)
      stride_h = dim + 3, stride_l = heads * (dim + 3), stride_b = (L + 1) * stride_l, numel = B * stride_b;
      break;
    case Layout::kHeadMajor:  // (B, heads, L, dim)
      stride_l = dim, stride_h = L * dim, stride_b = heads * L * dim, numel = B * stride_b;
      break;
  }
  t.storage = Tensor::empty(dtype, {numel});
  std::memset(t.storage.data(), fill_byte, t.storage.nbytes());
  t.view.data = t.storage.data();
  t.view.dtype = dtype;
  t.view.rank = 4;
  t.view.shape = Shape{B, L, heads, dim};
  t.view.strides = Shape{stride_b, stride_l, stride_h, 1};
  return t;
}

bool gaps_unchanged(const StridedTensor& t, uint8_t fill_byte) {
  const size_t element = dtype_size(t.view.dtype);
  std::vector<bool> inside(size_t(t.storage.numel()), false);
  for_each_index(t.view, [&](const Shape& i) { inside[size_t(t.view.offset(i))] = true; });
  const auto* bytes = static_cast<const uint8_t*>(t.storage.data());
  for (size_t e = 0; e < inside.size(); ++e) {
    if (inside[e]) continue;
    for (size_t b = 0; b < element; ++b)
      if (bytes[e * element + b] != fill_byte) return false;
  }
  return true;
}

CaseInputs materialize(const Case& c) {
  // Distinct from the stream random_case drew the sizes from.
  std::mt19937_64 rng(c.seed ^ 0x5eed'da7a'0000'0001ull);
  CaseInputs in;
  constexpr uint8_t kNaN = 0xff;  // all-ones is a NaN in f32, bf16 and f16: gaps must not be read
  in.q = make_strided(c.dtype, c.B, c.Lq, c.H, c.D, c.layout, kNaN);
  in.k = make_strided(c.dtype, c.B, c.Lk, c.Hkv, c.D, c.layout, kNaN);
  in.v = make_strided(c.dtype, c.B, c.Lk, c.Hkv, c.Dv, c.layout, kNaN);
  fill_normal(in.q.view, rng);
  fill_normal(in.k.view, rng);
  fill_normal(in.v.view, rng);
  in.dout = Tensor::empty(DType::kF32, {c.B, c.Lq, c.H, c.Dv});
  fill_normal(in.dout.view(), rng);

  AttentionOptions& o = in.options;
  o.scale = c.scale;
  o.causal = c.causal;
  o.window = c.window;
  o.softcap = c.softcap;
  o.dropout_p = c.dropout_p;
  o.dropout_seed = c.seed;
  o.extra_keys = c.extra_keys;

  if (c.mask != Broadcast::kNone) {
    const auto [rank, shape] = broadcast_shape(c.mask, c);
    in.mask = Tensor::empty(DType::kBool, rank, shape);
    const double keep = 0.5 + 0.45 * uniform01(rng);
    bool* m = in.mask.data_as<bool>();
    for_each_index(in.mask.view(), [&](const Shape& i) {
      m[in.mask.view().offset(i)] = chance(rng, keep) && !(c.empty_rows && in_empty_row(c.mask, i));
    });
    o.mask = in.mask.view();
  }
  if (c.bias != Broadcast::kNone) {
    const auto [rank, shape] = broadcast_shape(c.bias, c);
    in.bias = Tensor::empty(DType::kF32, rank, shape);
    float* p = in.bias.data_as<float>();
    // A few entries mask through the bias: both -inf and the lowest finite value count.
    const float masked[] = {-std::numeric_limits<float>::infinity(), std::numeric_limits<float>::lowest()};
    for_each_index(in.bias.view(), [&](const Shape& i) {
      float x = float(normal(rng));
      if (chance(rng, 0.03) || (c.empty_rows && in_empty_row(c.bias, i))) x = masked[rng() & 1];
      p[in.bias.view().offset(i)] = x;
    });
    o.bias = in.bias.view();
  }
  if (c.key_padding) {
    in.seqlens_k = Tensor::empty(DType::kI32, {c.B});
    int32_t* s = in.seqlens_k.data_as<int32_t>();
    const int64_t lk = c.Lk - c.extra_keys;  // input keys
    for (int64_t b = 0; b < c.B; ++b)
      s[b] = int32_t(chance(rng, 0.2) || lk == 0 ? lk : uniform(rng, 1, lk));
    if (c.empty_rows && c.B > 0) s[0] = 0;
    o.seqlens_k = in.seqlens_k.view();
  }
  if (c.varlen()) {
    const int64_t nseq = int64_t(c.varlen_q.size());
    in.cu_seqlens_q = Tensor::empty(DType::kI32, {nseq + 1});
    in.cu_seqlens_k = Tensor::empty(DType::kI32, {nseq + 1});
    int32_t* cq = in.cu_seqlens_q.data_as<int32_t>();
    int32_t* ck = in.cu_seqlens_k.data_as<int32_t>();
    cq[0] = ck[0] = 0;
    for (int64_t s = 0; s < nseq; ++s) {
      cq[s + 1] = cq[s] + int32_t(c.varlen_q[size_t(s)]);
      ck[s + 1] = ck[s] + int32_t(c.varlen_k[size_t(s)]);
    }
    o.cu_seqlens_q = in.cu_seqlens_q.view();
    o.cu_seqlens_k = in.cu_seqlens_k.view();
  }
  if (c.alibi) {
    in.alibi_slopes = Tensor::empty(DType::kF32, {c.H});
    float* s = in.alibi_slopes.data_as<float>();
    // The standard geometric slopes 2^(-8(h+1)/H).
    for (int64_t h = 0; h < c.H; ++h) s[h] = std::exp2(-8.0f * float(h + 1) / float(c.H));
    o.alibi_slopes = in.alibi_slopes.view();
  }
  if (c.sinks) {
    in.sinks = Tensor::empty(DType::kF32, {c.H});
    fill_normal(in.sinks.view(), rng);
    o.sinks = in.sinks.view();
  }
  return in;
}

}  // namespace multihead::reference
