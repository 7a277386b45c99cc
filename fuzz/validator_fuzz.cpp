// libFuzzer target: attention_forward (then attention_backward) through the public API on
// problems decoded from arbitrary bytes: small shapes with zeros and mismatches, every
// dtype for every tensor, strides (contiguous, padded, permuted, broadcast 0, negative,
// overflowing), outputs aliasing inputs or each other, and every option (causal, windows
// huge or negative, mask and bias of odd ranks, shapes and dtypes, seqlens_k, cu_seqlens,
// ALiBi, softcap, sinks, scale, extra_keys, dropout; NaN and inf included). Each view gets
// a buffer of exactly the bytes it spans, so ASan sees any read or write outside it.
// The only acceptable failure is a multihead::Error, and a call that throws must leave
// every output byte as it was (outputs start as a sentinel pattern). A call that succeeds
// must: have been given no negative stride, no overflowing extent and no output that
// overlaps another view (the contract's rules); leave the inputs and the gaps of strided
// outputs untouched; write out and lse that do not change when probs or head_stats are
// asked for too; and, when every value is "tame" (multiples of 1/8 in [-1, 1], tame
// options), match the double-precision oracle (src/reference) within the forward ceiling
// of the pass rule (reference/compare.cpp): 1e-3 · max(1, max|oracle|) for f32, 3e-2 when
// the inputs or the result are 16-bit. `validator_fuzz -write_seeds=DIR` writes a few
// inputs (each decodes to a valid problem) to seed a corpus and exits.
// The kernels are the portable ones (MULTIHEAD_ISA=scalar): the SIMD ones do not build with
// clang (src/kernels/cpu/lane_sum.hpp, decode_dots-inl.hpp and bf16_dot.cpp select their
// ISA with `#pragma GCC target`, which clang ignores), so their entry points are stubs here
// that abort if ever reached.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "multihead/attention.hpp"
#include "multihead/error.hpp"
#include "multihead/threads.hpp"
#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/kernels.hpp"
#include "reference/attention_reference.hpp"

#include "fuzz_input.hpp"

using namespace multihead;

namespace {

[[noreturn]] void fail(const char* what) { fuzz::fail("validator_fuzz", what); }

using fuzz::Bytes;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kMaxSpan = int64_t(1) << 16;  // elements; views that would span more are redrawn contiguous
constexpr uint8_t kSentinel = 0xa5;

// How far inputs get (printed at exit with VALIDATOR_FUZZ_STATS=1): a fuzzer whose inputs
// all fail validation checks little.
struct Stats {
  long inputs = 0, forward_ok = 0, compared = 0, backward_called = 0, backward_ok = 0;
} g_stats;

// ---- element access ----------------------------------------------------------------

double read_float(DType dtype, const void* base, int64_t offset) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(base)[offset];
    case DType::kBF16: return bf16_to_float(static_cast<const bf16*>(base)[offset]);
    case DType::kF16: return f16_to_float(static_cast<const f16*>(base)[offset]);
    default: return 0;
  }
}

void write_value(DType dtype, void* base, int64_t offset, float x) {
  switch (dtype) {
    case DType::kF32: static_cast<float*>(base)[offset] = x; break;
    case DType::kBF16: static_cast<bf16*>(base)[offset] = float_to_bf16(x); break;
    case DType::kF16: static_cast<f16*>(base)[offset] = float_to_f16(x); break;
    case DType::kBool: static_cast<uint8_t*>(base)[offset] = x != 0.0f; break;  // only 0 or 1: a valid bool
    case DType::kI32: static_cast<int32_t*>(base)[offset] = int32_t(x); break;
    case DType::kI64: static_cast<int64_t*>(base)[offset] = int64_t(x); break;
  }
}

// Calls f(offset) for every element of a view (rank 0..4), last dim fastest.
template <class F>
void for_each_offset(const TensorView& t, F f) {
  for (int d = 0; d < t.rank; ++d)
    if (t.shape[d] <= 0) return;
  Shape index{};
  while (true) {
    f(t.offset(index));
    int d = t.rank - 1;
    for (; d >= 0; --d) {
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
    if (d < 0) return;
  }
}

std::vector<double> read_view(const TensorView& t) {
  std::vector<double> r;
  for_each_offset(t, [&](int64_t o) { r.push_back(read_float(t.dtype, t.data, o)); });
  return r;
}

// ---- views with buffers of exactly their span ---------------------------------------

// One view given to a call, the buffer behind it, and what the contract says of it.
struct Record {
  std::string name;
  TensorView view;
  bool output = false;
  bool owns = false;        // has its own buffer [base, base + bytes); else it aliases another's
  uint8_t* base = nullptr;
  size_t bytes = 0;
  bool must_fail = false;   // a negative stride or an extent that overflows: the call must throw
  bool tame = true;         // values from the tame grid (or the masked bias values)
  std::vector<uint8_t> before;  // inputs: the bytes before the call
};

struct Problem {
  std::vector<std::unique_ptr<uint8_t[]>> buffers;
  std::deque<Record> records;  // a deque: references to records stay valid as more are added
  bool must_fail = false;

  Record& add(Record r) {
    must_fail |= r.must_fail;
    records.push_back(std::move(r));
    return records.back();
  }
};

bool layout_overflows(const TensorView& v) {  // as the library's check_layout sees it
  for (int d = 0; d < v.rank; ++d)
    if (v.shape[d] == 0) return false;
  __int128 extent = 0;
  for (int d = 0; d < v.rank; ++d) extent += __int128(v.shape[d] - 1) * v.strides[d];
  return extent > std::numeric_limits<int64_t>::max() ||
         (extent + 1) * __int128(dtype_size(v.dtype)) > std::numeric_limits<int64_t>::max();
}

// [first byte, one past the last byte] of a non-empty view, or false.
bool byte_range(const TensorView& v, uintptr_t* lo, uintptr_t* hi) {
  if (v.rank < 0 || v.rank > kMaxRank || v.numel() <= 0) return false;
  int64_t first = 0, last = 0;
  for (int d = 0; d < v.rank; ++d) {
    const int64_t span = (v.shape[d] - 1) * v.strides[d];
    (span < 0 ? first : last) += span;
  }
  const int64_t size = int64_t(dtype_size(v.dtype));
  *lo = reinterpret_cast<uintptr_t>(v.data) + uintptr_t(first * size);
  *hi = reinterpret_cast<uintptr_t>(v.data) + uintptr_t((last + 1) * size);
  return true;
}

void contiguous_strides(int rank, const Shape& shape, Shape& strides) {
  int64_t s = 1;
  for (int d = rank - 1; d >= 0; --d) {
    strides[d] = s;
    s *= std::max<int64_t>(shape[d], 1);
  }
}

// Strides for a view: mostly contiguous; else padded, permuted (the last dim stays
// innermost), broadcast (stride 0), or arbitrary small ones (negative and overlapping
// included), or huge ones whose extent overflows.
void draw_strides(Bytes& in, int rank, const Shape& shape, Shape& strides) {
  contiguous_strides(rank, shape, strides);
  const uint8_t mode = in.next() % 16;
  if (mode < 9 || rank == 0) return;
  if (mode <= 10) {  // padded rows: every outer stride a little larger
    int64_t s = 1;
    for (int d = rank - 1; d >= 0; --d) {
      strides[d] = s;
      s = s * std::max<int64_t>(shape[d], 1) + (d < rank - 1 || mode == 10 ? in.next() % 3 : 0);
    }
  } else if (mode == 11 && rank >= 3) {  // permuted outer dims, e.g. (B, H, L, D) memory for (B, L, H, D)
    int order[kMaxRank];
    for (int d = 0; d < rank; ++d) order[d] = d;
    std::swap(order[rank - 2], order[in.next() % (rank - 1)]);
    int64_t s = 1;
    for (int k = rank - 1; k >= 0; --k) {
      strides[order[k]] = s;
      s *= std::max<int64_t>(shape[order[k]], 1);
    }
  } else if (mode <= 13) {  // broadcast: some dims read one element
    const uint8_t zeros = in.next();
    for (int d = 0; d < rank; ++d)
      if (zeros >> d & 1) strides[d] = 0;
  } else if (mode == 14) {  // arbitrary small strides: negative, overlapping, non-unit last
    for (int d = 0; d < rank; ++d) strides[d] = int64_t(in.next() % 16) - 2;
  } else {  // one huge stride
    static const int64_t kHuge[] = {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max() / 2,
                                    std::numeric_limits<int64_t>::max() / 4 + 1, int64_t(1) << 40,
                                    std::numeric_limits<int64_t>::min()};
    strides[in.next() % rank] = in.pick(kHuge);
  }
}

// A view of the given shape with drawn strides and a buffer of exactly its span.
// Inputs are filled from the bytes (values tame or raw; gaps between elements hold NaN
// when tame, so that a kernel reading one shows); outputs hold the sentinel.
Record& make_view(Problem& pb, Bytes& in, const std::string& name, DType dtype, int rank, const Shape& shape,
                  bool output, bool tame_values) {
  Record r;
  r.name = name;
  r.output = output;
  r.view.dtype = dtype;
  r.view.rank = rank;
  r.view.shape = shape;
  const int rank_used = std::clamp(rank, 0, kMaxRank);
  draw_strides(in, rank_used, shape, r.view.strides);
  bool negative = false;
  for (int d = 0; d < rank_used; ++d) negative |= r.view.strides[d] < 0;
  const bool bad_rank = rank < 0 || rank > kMaxRank;
  int64_t numel = 1;
  for (int d = 0; d < rank_used; ++d) numel *= shape[d];
  const bool overflow = !bad_rank && layout_overflows(r.view);
  int64_t first = 0, last = 0;  // element offsets spanned
  if (!overflow && !bad_rank && numel > 0) {
    __int128 lo = 0, hi = 0;
    for (int d = 0; d < rank_used; ++d) {
      const __int128 span = __int128(shape[d] - 1) * r.view.strides[d];
      (span < 0 ? lo : hi) += span;
    }
    if (hi - lo + 1 > kMaxSpan) {  // too large to allocate, though valid: redraw contiguous
      contiguous_strides(rank_used, shape, r.view.strides);
      negative = false;
      lo = 0, hi = numel - 1;
    }
    first = int64_t(lo), last = int64_t(hi);
  }
  r.must_fail = negative || overflow || bad_rank;
  const int64_t elements = overflow || bad_rank ? 1 : numel > 0 ? last - first + 1 : 0;
  const size_t size = dtype_size(dtype);
  r.bytes = size_t(elements) * size;
  pb.buffers.emplace_back(new uint8_t[r.bytes]);
  r.base = pb.buffers.back().get();
  r.owns = true;
  // A view without elements may carry a null pointer (the byte after 0 bytes otherwise).
  r.view.data = numel == 0 && (in.next() & 1) ? nullptr : r.base - first * int64_t(size);
  if (output) {
    std::memset(r.base, kSentinel, r.bytes);
  } else {
    r.tame = tame_values;
    for (int64_t e = 0; e < elements; ++e) {
      float x;
      if (!is_floating(dtype)) x = float(in.next() & 1);
      else if (tame_values) x = kNaN;  // gaps; the view's elements are written below
      else x = dtype == DType::kF32 ? in.next_float() : bf16_to_float(bf16{in.next16()});
      write_value(dtype, r.base, e, x);
    }
    if (tame_values && is_floating(dtype) && !overflow && !bad_rank)
      for_each_offset(r.view, [&](int64_t o) { write_value(dtype, r.view.data, o, float(int(in.next() % 17) - 8) / 8); });
  }
  return pb.add(std::move(r));
}

// An output placed inside another view's buffer, overlapping it (the call must refuse it);
// drawn as a view of its own when the other buffer is too small to hold it.
Record& alias_view(Problem& pb, Bytes& in, const std::string& name, DType dtype, int rank, const Shape& shape,
                   const Record& target) {
  Record r;
  r.name = name;
  r.output = true;
  r.view.dtype = dtype;
  r.view.rank = rank;
  r.view.shape = shape;
  contiguous_strides(rank, shape, r.view.strides);
  const size_t offset = in.next() % 3 * dtype_size(dtype);
  const int64_t numel = r.view.numel();
  if (!target.owns || numel <= 0 || target.bytes < offset + size_t(numel) * dtype_size(dtype))
    return make_view(pb, in, name, dtype, rank, shape, true, true);
  r.view.data = target.base + offset;
  return pb.add(std::move(r));
}

DType draw_dtype(Bytes& in, DType usual) {
  static const DType kAll[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kBool, DType::kI32, DType::kI64};
  const uint8_t b = in.next();
  return b % 16 == 15 ? kAll[(b >> 4) % 6] : usual;
}

// Rank: usually the expected one, sometimes one off, rarely outside 0..4.
int draw_rank(Bytes& in, int usual) {
  const uint8_t b = in.next() % 32;
  if (b < 29) return usual;
  if (b == 29) return usual - 1;
  if (b == 30) return usual + 1 > kMaxRank ? 0 : usual + 1;
  return in.next() & 1 ? -1 : kMaxRank + 1;
}

// The expected shape, with one dim sometimes off (a mismatch the call must refuse).
Shape perturb(Bytes& in, Shape shape, int rank) {
  const uint8_t b = in.next();
  if (b % 16 == 15 && rank > 0) shape[(b >> 4) % rank] += (b & 0x80) ? 1 : -1;
  return shape;
}

// A rank <= 4 operand that broadcasts to `target` (B, H, Lq, Lk_in), dims 1 or full, or odd.
Shape broadcast_shape(Bytes& in, int rank, const Shape& target) {
  Shape s{};
  const uint8_t ones = in.next();
  for (int d = 0; d < rank && d < kMaxRank; ++d) s[d] = (ones >> d & 1) ? 1 : target[4 - rank + d];
  return perturb(in, s, rank);
}

// What a comparison failure prints before abort().
void report_mismatch(const char* what, size_t e, double ours, double oracle, double allowed) {
  std::fprintf(stderr, "validator_fuzz: %s[%zu] = %.9g, oracle %.9g (allowed error %.3g)\n", what, e, ours, oracle,
               allowed);
}

void compare_with_oracle(const char* what, const TensorView& ours_view, const std::vector<double>& oracle,
                         double tolerance) {
  const std::vector<double> ours = read_view(ours_view);
  if (ours.size() != oracle.size()) fail("result and oracle differ in size");
  double magnitude = 1.0;
  for (double x : oracle)
    if (std::isfinite(x)) magnitude = std::max(magnitude, std::abs(x));
  const double allowed = tolerance * magnitude;
  for (size_t e = 0; e < oracle.size(); ++e) {
    const double o = oracle[e], x = ours[e];
    const bool ok = std::isfinite(o) ? std::isfinite(x) && std::abs(x - o) <= allowed : x == o;
    if (!ok) {
      report_mismatch(what, e, x, o, allowed);
      fail("a result differs from the oracle");
    }
  }
}

// ---- the checks around one call -----------------------------------------------------

void snapshot_inputs(Problem& pb) {
  for (Record& r : pb.records)
    if (!r.output && r.owns) r.before.assign(r.base, r.base + r.bytes);
}

void check_inputs_unchanged(const Problem& pb) {
  for (const Record& r : pb.records)
    if (!r.output && r.owns && !std::equal(r.before.begin(), r.before.end(), r.base)) {
      std::fprintf(stderr, "validator_fuzz: input %s\n", r.name.c_str());
      fail("a call changed an input");
    }
}

void check_outputs_untouched(const Problem& pb) {  // after a failing call
  for (const Record& r : pb.records)
    if (r.output && r.owns)
      for (size_t b = 0; b < r.bytes; ++b)
        if (r.base[b] != kSentinel) {
          std::fprintf(stderr, "validator_fuzz: output %s byte %zu\n", r.name.c_str(), b);
          fail("a failing call wrote an output");
        }
}

// After a successful call: what the contract forbids was refused, and no output byte
// outside its elements (the gaps of padded strides) was written.
void check_success(const Problem& pb) {
  for (const Record& r : pb.records)
    if (r.must_fail) {
      std::fprintf(stderr, "validator_fuzz: %s %s strides (%lld, %lld, %lld, %lld)\n", r.name.c_str(),
                   r.view.shape_string().c_str(), (long long)r.view.strides[0], (long long)r.view.strides[1],
                   (long long)r.view.strides[2], (long long)r.view.strides[3]);
      fail("a view with a negative stride, a bad rank or an overflowing extent was accepted");
    }
  for (const Record& a : pb.records) {
    if (!a.output) continue;
    uintptr_t alo, ahi, blo, bhi;
    if (!byte_range(a.view, &alo, &ahi)) continue;
    for (const Record& b : pb.records)
      if (&a != &b && byte_range(b.view, &blo, &bhi) && alo < bhi && blo < ahi) {
        std::fprintf(stderr, "validator_fuzz: %s overlaps %s\n", a.name.c_str(), b.name.c_str());
        fail("an output overlapping another view was accepted");
      }
    if (!a.owns) continue;
    std::vector<uint8_t> covered(a.bytes, 0);
    const size_t size = dtype_size(a.view.dtype);
    const uint8_t* data = static_cast<const uint8_t*>(a.view.data);
    for_each_offset(a.view, [&](int64_t o) {
      const size_t at = size_t(data + o * int64_t(size) - a.base);
      if (covered[at]) fail("an output whose elements overlap was accepted");
      std::memset(&covered[at], 1, size);
    });
    for (size_t b = 0; b < a.bytes; ++b)
      if (!covered[b] && a.base[b] != kSentinel) {
        std::fprintf(stderr, "validator_fuzz: output %s byte %zu\n", a.name.c_str(), b);
        fail("a call wrote between the elements of a strided output");
      }
  }
}

template <class F>
bool call(Problem& pb, F f) {
  snapshot_inputs(pb);
  try {
    f();
  } catch (const Error&) {
    check_inputs_unchanged(pb);
    check_outputs_untouched(pb);
    return false;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "validator_fuzz: %s\n", e.what());
    fail("an exception other than multihead::Error");
  }
  check_inputs_unchanged(pb);
  check_success(pb);
  return true;
}

// ---- seeds ----------------------------------------------------------------------------

void write_seeds(const std::string& dir) {
  uint64_t state = 0x9e3779b97f4a7c15u;
  for (int s = 0; s < 16; ++s) {
    std::vector<uint8_t> bytes(size_t(64) << (s % 5));
    for (uint8_t& b : bytes) {
      state = state * 6364136223846793005u + 1442695040888963407u;
      // Mostly small bytes: every choice then takes its usual (valid) branch.
      b = s < 8 ? uint8_t((state >> 33) % 8) : uint8_t(state >> 56);
    }
    const std::string path = dir + "/seed" + std::to_string(s);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      std::exit(1);
    }
  }
}

}  // namespace

// The SIMD kernels' entry points (see the top): never reached with MULTIHEAD_ISA=scalar.
namespace multihead::detail {
void flash_forward_simd(const AttentionParams&, float*, int64_t) { fail("SIMD kernel reached"); }
int64_t forward_simd_scratch_floats(const AttentionParams&) { fail("SIMD kernel reached"); }
int64_t forward_simd_shared_floats(const AttentionParams&) { fail("SIMD kernel reached"); }
void flash_backward_simd(const AttentionParams&, const BackwardParams&, float*, int64_t) { fail("SIMD kernel reached"); }
void backward_simd_scratch_floats(const AttentionParams&, int64_t*, int64_t*) { fail("SIMD kernel reached"); }
int64_t simd_float_lanes() { fail("SIMD kernel reached"); }
bool has_avx512_bf16() { return false; }
}  // namespace multihead::detail

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  const std::string flag = "-write_seeds=";
  for (int i = 1; i < *argc; ++i)
    if (std::strncmp((*argv)[i], flag.c_str(), flag.size()) == 0) {
      write_seeds((*argv)[i] + flag.size());
      std::exit(0);
    }
  if (std::getenv("VALIDATOR_FUZZ_STATS"))
    std::atexit([] {
      std::fprintf(stderr, "validator_fuzz: %ld inputs, %ld forward ok, %ld compared with the oracle, %ld backward ok of %ld\n",
                   g_stats.inputs, g_stats.forward_ok, g_stats.compared, g_stats.backward_ok, g_stats.backward_called);
    });
  setenv("MULTIHEAD_ISA", "scalar", 1);  // read once, at the first call
  set_num_threads(1);  // one OpenMP thread: faster under ASan, and results are thread-count independent
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in{data, size};
  Problem pb;
  ++g_stats.inputs;

  // Sizes: the usual small values first; zeros, 1s and a few tile-crossing lengths.
  static const int64_t kBatch[] = {1, 2, 1, 3, 2, 0, 1, 4};
  static const int64_t kLen[] = {3, 1, 5, 8, 2, 7, 4, 0, 6, 17, 33, 1};
  static const int64_t kHeads[] = {2, 1, 4, 3, 0};
  static const int64_t kDim[] = {4, 8, 16, 1, 3, 5, 32, 0, 2, 12};
  const uint8_t shape_byte = in.next();
  const bool varlen = shape_byte % 16 == 15;
  int64_t B = varlen ? 1 : in.pick(kBatch);
  const int64_t Lq = in.pick(kLen), Lk = in.pick(kLen), H = in.pick(kHeads), D = in.pick(kDim);
  const uint8_t hkv_byte = in.next();
  int64_t Hkv = H;
  if (hkv_byte % 4 == 1) Hkv = 1;
  else if (hkv_byte % 4 == 2 && H % 2 == 0 && H > 0) Hkv = H / 2;
  else if (hkv_byte % 8 == 3) Hkv = hkv_byte >> 5;  // 0..7: maybe not a divisor
  const int64_t Dv = in.next() % 4 == 3 ? in.pick(kDim) : D;

  // dtypes: one float dtype for q, k, v, sometimes another for one of them.
  static const DType kFloat[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF32};
  const DType dt = in.pick(kFloat);
  const uint8_t tame_byte = in.next();  // bit k: tensor k holds raw bits (NaN, inf, huge)
  auto tame = [&](int bit) { return tame_byte % 8 != 7 || !(tame_byte >> (3 + bit) & 1); };

  Record& q = make_view(pb, in, "q", draw_dtype(in, dt), draw_rank(in, 4), perturb(in, {B, Lq, H, D}, 4), false, tame(0));
  Record& k = make_view(pb, in, "k", draw_dtype(in, dt), draw_rank(in, 4), perturb(in, {B, Lk, Hkv, D}, 4), false, tame(1));
  Record& v = make_view(pb, in, "v", draw_dtype(in, dt), draw_rank(in, 4), perturb(in, {B, Lk, Hkv, Dv}, 4), false, tame(2));
  const TensorView qv = q.view, kv = k.view, vv = v.view;  // records may move as more are added
  bool tame_all = q.tame && k.tame && v.tame;

  // ---- options ----
  AttentionOptions o;
  const uint8_t opt = in.next();
  o.causal = CausalAlign(opt % 3);
  static const int64_t kWindow[] = {-1, -1, -1, 0, 1, 2, 5, int64_t(1) << 40, std::numeric_limits<int64_t>::max(),
                                    -2, std::numeric_limits<int64_t>::min(), 3};
  o.window.left = in.pick(kWindow);
  o.window.right = in.pick(kWindow);
  const uint8_t scalar = in.next();
  if (scalar & 1) {
    static const float kScale[] = {0.25f, 0.5f, 1.0f, 2.0f, 0.125f, 0.0f, kNaN, kInf, -1.0f, 1e30f};
    const uint8_t b = in.next();
    o.scale = b % 16 == 15 ? in.next_float() : kScale[b % 10];
    tame_all &= std::isfinite(*o.scale) && std::abs(*o.scale) <= 2.0f;
  }
  if (scalar & 2) {
    static const float kSoftcap[] = {1.0f, 5.0f, 30.0f, 0.0f, -1.0f, kNaN, kInf, 1e-30f};
    const uint8_t b = in.next();
    o.softcap = b % 16 == 15 ? in.next_float() : kSoftcap[b % 8];
    tame_all &= o.softcap == 0.0f || o.softcap >= 1.0f;
  }
  if (scalar & 4) {
    static const float kDropout[] = {0.1f, 0.5f, 0.0f, 0.9f, 1.0f, -0.1f, kNaN};
    const uint8_t b = in.next();
    o.dropout_p = b % 16 == 15 ? in.next_float() : kDropout[b % 7];
    o.dropout_seed = in.next64();
    tame_all &= o.dropout_p <= 0.5f;
  }
  if (scalar & 8) {
    static const int64_t kExtra[] = {1, 2, 0, 3, -1, std::numeric_limits<int64_t>::max(), 100};
    o.extra_keys = in.pick(kExtra);
  }
  const int64_t lk_in = Lk - std::clamp<int64_t>(o.extra_keys, 0, Lk);
  const Shape target{B, H, Lq, lk_in};
  const uint8_t which = in.next();  // which option tensors are given
  if (which & 1) {  // mask
    const int rank = in.next() % 5;
    const Record& m = make_view(pb, in, "mask", draw_dtype(in, DType::kBool), rank, broadcast_shape(in, rank, target),
                                false, true);
    o.mask = m.view;
  }
  if (which & 2) {  // bias: tame values, and masked ones (-inf, the dtype's lowest)
    const int rank = in.next() % 5;
    const uint8_t b = in.next();
    const DType bias_dt = b % 4 == 3 ? DType::kBF16 : b % 4 == 2 ? DType::kF16 : DType::kF32;
    Record& bias = make_view(pb, in, "bias", draw_dtype(in, bias_dt), rank, broadcast_shape(in, rank, target), false,
                             (b & 0x80) == 0);
    if (bias.tame && !bias.must_fail && is_floating(bias.view.dtype) && (b & 0x40)) {
      const float lowest = bias.view.dtype == DType::kF32 ? -std::numeric_limits<float>::max()
                           : bias.view.dtype == DType::kF16 ? -65504.0f
                                                            : bf16_to_float(bf16{0xff7f});
      for_each_offset(bias.view, [&](int64_t off) {
        const uint8_t c = in.next();
        if (c % 4 == 0) write_value(bias.view.dtype, bias.view.data, off, c & 4 ? -kInf : lowest);
        else if (c % 4 == 1) write_value(bias.view.dtype, bias.view.data, off, float(int(c >> 2) % 33 - 16) / 8);
      });
    }
    tame_all &= bias.tame;
    o.bias = bias.view;
  }
  if (which & 4) {  // seqlens_k: i32 (B) in [0, Lk_in], sometimes out of it
    const Record& s = make_view(pb, in, "seqlens_k", draw_dtype(in, DType::kI32), draw_rank(in, 1),
                                perturb(in, {B}, 1), false, true);
    if (s.view.dtype == DType::kI32 && !s.must_fail)
      for_each_offset(s.view, [&](int64_t off) {
        const uint8_t c = in.next();
        static_cast<int32_t*>(s.view.data)[off] =
            c % 16 == 15 ? int32_t(in.next32()) : int32_t(c % uint64_t(lk_in + 2)) - (c & 0x80 ? 1 : 0);
      });
    o.seqlens_k = s.view;
  }
  if (varlen || (which & 8)) {  // cu_seqlens_q/k: 0, cut points, total (sometimes broken)
    const int64_t nseq = 1 + in.next() % 3;
    for (int side = 0; side < 2; ++side) {
      const int64_t total = side == 0 ? Lq : Lk;
      const Record& c = make_view(pb, in, side == 0 ? "cu_seqlens_q" : "cu_seqlens_k", draw_dtype(in, DType::kI32),
                                  draw_rank(in, 1), perturb(in, {nseq + 1}, 1), false, true);
      if (c.view.dtype == DType::kI32 && !c.must_fail && c.view.rank == 1 && c.view.shape[0] > 0) {
        std::vector<int32_t> cuts;
        for (int64_t i = 0; i < c.view.shape[0]; ++i) cuts.push_back(int32_t(in.next() % uint64_t(total + 1)));
        std::sort(cuts.begin(), cuts.end());
        cuts.front() = 0, cuts.back() = int32_t(total);
        const uint8_t broken = in.next();
        if (broken % 16 == 15) cuts[(broken >> 4) % cuts.size()] += (broken & 0x80) ? 1 : -1;
        for (size_t i = 0; i < cuts.size(); ++i) static_cast<int32_t*>(c.view.data)[int64_t(i) * c.view.strides[0]] = cuts[i];
      }
      (side == 0 ? o.cu_seqlens_q : o.cu_seqlens_k) = c.view;
      if (in.next() % 16 == 15) break;  // rarely only one of them
    }
  }
  if (which & 16) {  // ALiBi slopes: f32 (H)
    Record& a = make_view(pb, in, "alibi_slopes", draw_dtype(in, DType::kF32), draw_rank(in, 1), perturb(in, {H}, 1),
                          false, (in.next() & 7) != 7);
    if (a.tame && a.view.dtype == DType::kF32 && !a.must_fail)  // slopes >= 0 as ALiBi uses them, up to 1
      for_each_offset(a.view, [&](int64_t off) { static_cast<float*>(a.view.data)[off] = float(in.next() % 9) / 8; });
    tame_all &= a.tame;
    o.alibi_slopes = a.view;
  }
  if (which & 32) {  // sinks: f32 (H)
    const Record& s = make_view(pb, in, "sinks", draw_dtype(in, DType::kF32), draw_rank(in, 1), perturb(in, {H}, 1),
                                false, (in.next() & 7) != 7);
    tame_all &= s.tame;
    o.sinks = s.view;
  }

  // ---- outputs ----
  const uint8_t outs = in.next();
  const bool alias = outs % 32 == 31;
  static const DType kOutDtype[] = {DType::kF32, DType::kF32, DType::kBF16, DType::kF16};
  const DType out_dt = draw_dtype(in, outs & 0x20 ? in.pick(kOutDtype) : qv.dtype);
  const Shape out_shape = perturb(in, {B, Lq, H, Dv}, 4);
  const int out_rank = draw_rank(in, 4);
  const Record& out = alias ? alias_view(pb, in, "out", out_dt, 4, out_shape, pb.records[in.next() % pb.records.size()])
                            : make_view(pb, in, "out", out_dt, out_rank, out_shape, true, true);
  ForwardOutputs fo{out.view};
  if (!(outs & 1)) {
    const Shape shape = perturb(in, {B, H, Lq}, 3);
    const DType d = draw_dtype(in, DType::kF32);
    fo.lse = (outs & 0x40) && !alias ? alias_view(pb, in, "lse", d, 3, shape, pb.records.back()).view
                                     : make_view(pb, in, "lse", d, draw_rank(in, 3), shape, true, true).view;
  }
  if (outs & 2)
    fo.probs = make_view(pb, in, "probs", draw_dtype(in, DType::kF32), draw_rank(in, 4),
                         perturb(in, {B, H, Lq, Lk}, 4), true, true).view;
  if (outs & 4)
    fo.head_stats = make_view(pb, in, "head_stats", draw_dtype(in, DType::kF32), draw_rank(in, 4),
                              perturb(in, {B, H, Lq, 3}, 4), true, true).view;

  if (!call(pb, [&] { attention_forward(qv, kv, vv, fo, o); })) return 0;
  ++g_stats.forward_ok;

  // Asking for probs or head_stats never changes out or lse (bit for bit).
  if ((fo.probs || fo.head_stats) && fo.out.numel() > 0) {
    Tensor out2 = Tensor::empty(fo.out.dtype, 4, fo.out.shape);
    Tensor lse2 = fo.lse ? Tensor::empty(DType::kF32, 3, fo.lse->shape) : Tensor();
    attention_forward(qv, kv, vv, ForwardOutputs{out2.view(), fo.lse ? std::optional(lse2.view()) : std::nullopt}, o);
    const std::vector<double> a = read_view(fo.out), b = read_view(out2.view());
    for (size_t e = 0; e < a.size(); ++e)
      if (std::memcmp(&a[e], &b[e], sizeof(double)) != 0) fail("asking for probs or head_stats changed out");
    if (fo.lse) {
      const std::vector<double> c = read_view(*fo.lse), d = read_view(lse2.view());
      for (size_t e = 0; e < c.size(); ++e)
        if (std::memcmp(&c[e], &d[e], sizeof(double)) != 0) fail("asking for probs or head_stats changed lse");
    }
  }

  // ---- the oracle, on tame problems ----
  if (tame_all && H > 0) {
    const reference::ForwardResult ref = reference::attention_forward(qv, kv, vv, o);
    ++g_stats.compared;
    const bool wide = qv.dtype == DType::kF32;
    compare_with_oracle("out", fo.out, ref.out, wide && fo.out.dtype == DType::kF32 ? 1e-3 : 3e-2);
    if (fo.lse) compare_with_oracle("lse", *fo.lse, ref.lse, wide ? 1e-3 : 3e-2);
    if (fo.probs && !ref.probs.empty()) compare_with_oracle("probs", *fo.probs, ref.probs, wide ? 1e-3 : 3e-2);
  }

  // ---- the backward, on the forward's out and lse ----
  const uint8_t bwd = in.next();
  if (!fo.lse || (bwd & 3) == 3) return 0;
  Problem gb;  // inputs of the backward: q, k, v, options (views borrowed), dout; out and lse
  auto borrow = [&](const std::string& name, const TensorView& view) {
    Record r;
    r.name = name;
    r.view = view;
    uintptr_t lo, hi;
    if (byte_range(view, &lo, &hi)) {  // a copy of its bytes, to see that nothing writes it
      r.base = reinterpret_cast<uint8_t*>(lo);
      r.bytes = size_t(hi - lo);
      r.owns = true;
    }
    gb.add(std::move(r));
  };
  borrow("q", qv), borrow("k", kv), borrow("v", vv), borrow("out", fo.out), borrow("lse", *fo.lse);
  for (const auto& [opt_view, name] : {std::pair{&o.mask, "mask"}, {&o.bias, "bias"}, {&o.seqlens_k, "seqlens_k"},
                                       {&o.cu_seqlens_q, "cu_seqlens_q"}, {&o.cu_seqlens_k, "cu_seqlens_k"},
                                       {&o.alibi_slopes, "alibi_slopes"}, {&o.sinks, "sinks"}})
    if (*opt_view) borrow(name, **opt_view);
  const TensorView dout = make_view(gb, in, "dout", draw_dtype(in, in.pick(kFloat)), draw_rank(in, 4),
                                    perturb(in, {B, Lq, H, Dv}, 4), false, (bwd & 0x80) == 0).view;
  const bool galias = bwd % 32 == 31;
  auto grad = [&](const char* name, const TensorView& like) -> TensorView {
    const DType d = draw_dtype(in, in.pick(kOutDtype));
    const Shape shape = perturb(in, like.shape, 4);
    if (galias) return alias_view(gb, in, name, d, 4, shape, gb.records[in.next() % gb.records.size()]).view;
    return make_view(gb, in, name, d, draw_rank(in, 4), shape, true, true).view;
  };
  BackwardOutputs go{grad("dq", qv), grad("dk", kv), grad("dv", vv)};
  if ((bwd & 4) && o.bias) {
    const TensorView& b = *o.bias;
    go.dbias = make_view(gb, in, "dbias", draw_dtype(in, DType::kF32), b.rank, perturb(in, b.shape, b.rank), true, true).view;
  } else if (bwd & 4 && bwd & 8) {  // dbias without a bias
    go.dbias = make_view(gb, in, "dbias", DType::kF32, 1, {1}, true, true).view;
  }
  if ((bwd & 16) && (o.sinks || (bwd & 32)))
    go.dsinks = make_view(gb, in, "dsinks", draw_dtype(in, DType::kF32), draw_rank(in, 1), perturb(in, {H}, 1), true,
                          true).view;
  ++g_stats.backward_called;
  if (call(gb, [&] { attention_backward(dout, qv, kv, vv, fo.out, *fo.lse, go, o); })) ++g_stats.backward_ok;
  return 0;
}
