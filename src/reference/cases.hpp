// Table-driven attention test cases, shared by the test suite and `multihead check`.
// A Case is a plain description of one problem (sizes, dtype, options, data seed);
// materialize() turns it into owned inputs and the AttentionOptions pointing into them;
// run_case() runs the library, the double oracle and the float baseline and judges the
// library with the pass rule of compare.hpp. random_case() draws cases of one kind.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "multihead/attention.hpp"
#include "reference/compare.hpp"

namespace multihead::reference {

// What a case is about; random_case() composes the options that go with each kind.
enum class CaseKind {
  kPlain,
  kCausalTopLeft,
  kCausalBottomRight,
  kWindow,
  kGqa,
  kMqa,
  kMask,
  kBias,
  kKeyPadding,
  kVarlen,
  kAlibi,
  kSoftcap,
  kSinks,
  kStrided,
  kDvNeD,
  kFullyMasked,
  kBf16,
  kDropout,
  kMixed,  // several options at once, randomly composed
  kExtraKeys,  // extra keys (options.extra_keys) with several other options at once
};

const std::vector<CaseKind>& all_case_kinds();
const char* to_string(CaseKind kind);
std::optional<CaseKind> parse_case_kind(std::string_view name);

// The shape of a mask or bias before it broadcasts to (B, H, Lq, Lk).
enum class Broadcast {
  kNone,          // absent
  kFull,          // (B, H, Lq, Lk)
  kQueryKey,      // (1, 1, Lq, Lk)
  kBatchKey,      // (B, 1, 1, Lk)   e.g. a padding mask
  kHeadQueryKey,  // (1, H, Lq, Lk)
  kBatchHeadKey,  // (B, H, 1, Lk)
  kRank2,         // (Lq, Lk), rank 2: numpy rules prepend the missing dims
};
const char* to_string(Broadcast broadcast);

// How q, k, v (and the library's out, dq, dk, dv) sit in memory.
enum class Layout {
  kContiguous,  // (B, L, H, D) row-major
  kPadded,      // a bigger (B, L + 1, H, D + 3) buffer: odd row strides, NaN-filled gaps
  kHeadMajor,   // a (B, H, L, D) buffer seen as (B, L, H, D) through strides
};
const char* to_string(Layout layout);

struct Case {
  CaseKind kind = CaseKind::kPlain;
  // Sizes; with varlen, B = 1 and Lq / Lk are the packed totals.
  int64_t B = 1, Lq = 1, Lk = 1, H = 1, Hkv = 1, D = 1, Dv = 1;
  DType dtype = DType::kF32;  // of q, k, v (outputs are f32)
  std::optional<float> scale;
  CausalAlign causal = CausalAlign::kNone;
  Window window;
  Broadcast mask = Broadcast::kNone;
  Broadcast bias = Broadcast::kNone;
  bool key_padding = false;
  // Packed variable-length batch: per-sequence query and key lengths (empty: not varlen).
  std::vector<int64_t> varlen_q, varlen_k;
  bool alibi = false;
  float softcap = 0.0f;
  float dropout_p = 0.0f;  // with dropout_seed = seed
  bool sinks = false;
  // The last extra_keys rows of k/v (of each packed sequence) are extra keys; Lk (and
  // varlen_k) count them, mask/bias/seqlens_k describe the Lk - extra_keys input keys.
  int64_t extra_keys = 0;
  Layout layout = Layout::kContiguous;
  // Force some rows to have no allowed key through every masking input present:
  // mask or bias rows (-inf), seqlens_k[0] = 0.
  bool empty_rows = false;
  bool probs = false;  // also request and check the probabilities
  uint64_t seed = 0;   // data seed (for random cases also the seed the sizes came from)

  bool varlen() const { return !varlen_q.empty(); }
  // Forward FLOPs: 2·H·Σ_b Lq_b·Lk·(D + Dv), i.e. 4·B·H·Lq·Lk·D when Dv = D (masks ignored).
  double flops() const;
  // Multiply-adds the oracle spends per pass; random cases are bounded by it.
  double cost() const;
  // All parameters on one line, with the FLOP count.
  std::string describe() const;
  // An identifier made of [A-Za-z0-9_], for test names.
  std::string name() const;
};

// A (B, L, heads, dim) tensor laid out as `layout` inside a possibly bigger buffer.
struct StridedTensor {
  Tensor storage;   // 1-D, owns the memory
  TensorView view;  // (B, L, heads, dim)
};
// Every byte of storage is set to fill_byte first (gaps included).
StridedTensor make_strided(DType dtype, int64_t B, int64_t L, int64_t heads, int64_t dim, Layout layout,
                           uint8_t fill_byte);
// True when no byte of t.storage outside t.view differs from fill_byte.
bool gaps_unchanged(const StridedTensor& t, uint8_t fill_byte);

struct CaseInputs {
  StridedTensor q;  // (B, Lq, H, D)
  StridedTensor k;  // (B, Lk, Hkv, D)
  StridedTensor v;  // (B, Lk, Hkv, Dv)
  Tensor dout;      // (B, Lq, H, Dv) f32
  Tensor mask;      // bool, shape per Case::mask
  Tensor bias;      // f32, shape per Case::bias
  Tensor seqlens_k;                   // i32 (B)
  Tensor cu_seqlens_q, cu_seqlens_k;  // i32 (nseq + 1)
  Tensor alibi_slopes;                // f32 (H)
  Tensor sinks;                       // f32 (H)
  AttentionOptions options;           // points into the tensors above
};
// Seeded: the same case gives the same bytes. q, k, v, dout ~ N(0, 1), gaps NaN.
CaseInputs materialize(const Case& c);

// Sizes drawn from the interesting values (d in {1, 8, 59, 64, 80, 111, 128, 256} or small
// random, L in {1, 2, 17, 127, 128, 129} or small random, rarely 1025) and the options of
// `kind`; the oracle's cost stays under a fixed bound.
Case random_case(CaseKind kind, std::mt19937_64& rng);
// The replayable form: random_case with rng seeded by `seed`, and Case::seed = seed.
Case case_from_seed(CaseKind kind, uint64_t seed);
// Per-case seeds derived from one run seed (splitmix64 of seed + index).
uint64_t derive_seed(uint64_t run_seed, uint64_t index);

struct CaseResult {
  std::vector<Comparison> comparisons;
  std::vector<std::string> problems;  // a throw, a write outside an output view
  bool pass() const;
  // max over comparisons of max_error / allowed (inf on a NaN/inf mismatch or a problem).
  double worst_ratio() const;
  const Comparison* worst() const;  // null when there is no comparison
  std::string report() const;       // one line per comparison and problem
};

// Runs the library (f32 outputs), the oracle and the baseline (rounding to c.dtype) and
// compares out, lse (probs when c.probs), and with backward dq, dk, dv, dbias, dsinks.
CaseResult run_case(const Case& c, bool backward);

// `multihead check`: n random cases spread round-robin over every kind.
struct CheckRow {
  CaseKind kind = CaseKind::kPlain;
  int64_t count = 0;
  int64_t failed = 0;
  double worst_ratio = 0;        // worst max_error / allowed over the kind's cases
  std::string worst_what;        // the quantity it came from ("dk", ...)
  double worst_error = 0;
  double worst_allowed = 0;
  double flops = 0;              // forward FLOPs summed over the kind's cases
};
struct CheckFailure {
  Case c;
  CaseResult result;
};
struct CheckReport {
  uint64_t seed = 0;
  bool backward = true;
  std::vector<CheckRow> rows;  // one per kind, in all_case_kinds() order
  std::vector<CheckFailure> failures;
  bool pass() const { return failures.empty(); }
};
CheckReport run_checks(int64_t n, uint64_t seed, bool backward,
                       const std::vector<CaseKind>& kinds = all_case_kinds());

}  // namespace multihead::reference
