// Random cases: a kind's options drawn from a seed, kept cheap enough for the double
// oracle; `multihead check` and the random-case tests draw from here.
#include <algorithm>
#include <cmath>

#include "reference/cases.hpp"
#include "reference/draws.hpp"

namespace multihead::reference {

using namespace draws;

// ---------------------------------------------------------------- random cases

namespace {

// Upper bound on Case::cost() for random cases: keeps the double oracle (and its
// float twin) at a few milliseconds per case.
constexpr double kMaxRandomCost = 3.0e6;

int64_t draw_head_dim(std::mt19937_64& rng) {
  if (chance(rng, 0.6)) return pick<int64_t>(rng, {1, 8, 59, 64, 80, 111, 128, 256});
  return uniform(rng, 1, 96);
}

int64_t draw_length(std::mt19937_64& rng) {
  if (chance(rng, 0.03)) return 1025;
  if (chance(rng, 0.5)) return pick<int64_t>(rng, {1, 2, 17, 127, 128, 129});
  return uniform(rng, 1, 64);
}

CausalAlign draw_causal(std::mt19937_64& rng) {
  return pick(rng, {CausalAlign::kNone, CausalAlign::kTopLeft, CausalAlign::kBottomRight});
}

Broadcast draw_broadcast(std::mt19937_64& rng) {
  return pick(rng, {Broadcast::kFull, Broadcast::kQueryKey, Broadcast::kBatchKey, Broadcast::kHeadQueryKey,
                    Broadcast::kBatchHeadKey, Broadcast::kRank2});
}

void add_window(Case& c, std::mt19937_64& rng) {
  const auto side = [&] { return pick<int64_t>(rng, {-1, 0, 1, 3, uniform(rng, 0, std::max<int64_t>(c.Lk, 1))}); };
  c.window = {side(), side()};
  if (c.window.left < 0 && c.window.right < 0) c.window.left = uniform(rng, 0, 8);
  if (chance(rng, 0.5)) c.causal = draw_causal(rng);
}

void add_gqa(Case& c, std::mt19937_64& rng) {
  c.Hkv = pick<int64_t>(rng, {2, 3, 4});
  c.H = c.Hkv * pick<int64_t>(rng, {2, 3, 4});
}

void add_mqa(Case& c, std::mt19937_64& rng) {
  c.Hkv = 1;
  c.H = pick<int64_t>(rng, {2, 3, 4, 6, 8});
}

void add_dv(Case& c, std::mt19937_64& rng) {
  do c.Dv = draw_head_dim(rng);
  while (c.Dv == c.D);
}

void add_softcap(Case& c, std::mt19937_64& rng) {
  c.softcap = pick(rng, {0.5f, 2.0f, 5.0f, 30.0f});
  // A larger scale pushes scores into tanh's saturated range.
  if (chance(rng, 0.5)) c.scale = pick(rng, {0.5f, 1.0f});
}

// Packed sequences replace B, Lq, Lk; no mask, bias, key padding or probs with varlen.
void add_varlen(Case& c, std::mt19937_64& rng) {
  const int64_t nseq = uniform(rng, 1, 4);
  c.varlen_q.clear();
  c.varlen_k.clear();
  for (int64_t s = 0; s < nseq; ++s) {
    const auto length = [&]() -> int64_t {
      if (chance(rng, 0.08)) return 0;
      return chance(rng, 0.5) ? pick<int64_t>(rng, {1, 2, 17, 127, 128, 129}) : uniform(rng, 1, 48);
    };
    const int64_t lq = length();
    c.varlen_q.push_back(lq);
    c.varlen_k.push_back(chance(rng, 0.4) ? lq : length());
  }
  if (c.empty_rows) c.varlen_k[size_t(uniform(rng, 0, nseq - 1))] = 0;
  c.B = 1;
  c.Lq = c.Lk = 0;
  for (int64_t s = 0; s < nseq; ++s) c.Lq += c.varlen_q[size_t(s)], c.Lk += c.varlen_k[size_t(s)];
  c.mask = c.bias = Broadcast::kNone;
  c.key_padding = false;
  c.probs = false;
  if (chance(rng, 0.5)) c.causal = draw_causal(rng);
}

// Makes some rows empty through one or more of the masking inputs.
void add_empty_rows(Case& c, std::mt19937_64& rng) {
  c.empty_rows = true;
  switch (uniform(rng, 0, 6)) {
    case 0: c.mask = draw_broadcast(rng); break;
    case 1: c.bias = draw_broadcast(rng); break;
    case 2: c.key_padding = true, c.B = std::max<int64_t>(c.B, 2); break;
    case 3: c.Lk = 0; break;
    case 4:  // bottom-right alignment with Lq > Lk: the first Lq - Lk rows see no key
      c.causal = CausalAlign::kBottomRight;
      if (c.Lq <= c.Lk) std::swap(c.Lq, c.Lk);
      if (c.Lq == c.Lk) ++c.Lq;
      break;
    case 5: add_varlen(c, rng); break;
    default:  // several at once
      c.mask = draw_broadcast(rng);
      c.bias = draw_broadcast(rng);
      c.key_padding = true;
      c.causal = draw_causal(rng);
      break;
  }
}

void add_strided(Case& c, std::mt19937_64& rng) { c.layout = pick(rng, {Layout::kPadded, Layout::kHeadMajor}); }

// Several options at once.
void add_mixed(Case& c, std::mt19937_64& rng) {
  if (chance(rng, 0.4)) c.causal = draw_causal(rng);
  if (chance(rng, 0.25)) add_window(c, rng);
  if (chance(rng, 0.3)) add_gqa(c, rng);
  else if (chance(rng, 0.15)) add_mqa(c, rng);
  if (chance(rng, 0.3)) add_dv(c, rng);
  if (chance(rng, 0.25)) c.alibi = true;
  if (chance(rng, 0.25)) add_softcap(c, rng);
  if (chance(rng, 0.2)) c.dropout_p = pick(rng, {0.1f, 0.5f});
  if (chance(rng, 0.3)) c.sinks = true;
  if (chance(rng, 0.3)) add_strided(c, rng);
  if (chance(rng, 0.3)) c.dtype = DType::kBF16;
  if (chance(rng, 0.2) && !c.scale) c.scale = float(0.2 + uniform01(rng)) / std::sqrt(float(c.D));
  c.empty_rows = chance(rng, 0.2);
  if (chance(rng, 0.25)) {
    add_varlen(c, rng);
    return;
  }
  if (chance(rng, 0.4)) c.mask = draw_broadcast(rng);
  if (chance(rng, 0.4)) c.bias = draw_broadcast(rng);
  if (chance(rng, 0.3)) c.key_padding = true;
  if (c.empty_rows && c.mask == Broadcast::kNone && c.bias == Broadcast::kNone && !c.key_padding)
    c.mask = Broadcast::kFull;
}

Case draw_case(CaseKind kind, std::mt19937_64& rng) {
  Case c;
  c.kind = kind;
  c.B = uniform(rng, 1, 3);
  c.H = c.Hkv = pick<int64_t>(rng, {1, 2, 3, 4});
  c.D = c.Dv = draw_head_dim(rng);
  c.Lq = draw_length(rng);
  c.Lk = chance(rng, 0.4) ? c.Lq : draw_length(rng);
  c.probs = chance(rng, 0.25);
  switch (kind) {
    case CaseKind::kPlain:
      if (chance(rng, 0.03)) c.Lq = 0;  // an empty result
      if (chance(rng, 0.03)) c.B = 0;
      break;
    case CaseKind::kCausalTopLeft: c.causal = CausalAlign::kTopLeft; break;
    case CaseKind::kCausalBottomRight: c.causal = CausalAlign::kBottomRight; break;
    case CaseKind::kWindow: add_window(c, rng); break;
    case CaseKind::kGqa: add_gqa(c, rng); break;
    case CaseKind::kMqa: add_mqa(c, rng); break;
    case CaseKind::kMask: c.mask = draw_broadcast(rng); break;
    case CaseKind::kBias: c.bias = draw_broadcast(rng); break;
    case CaseKind::kKeyPadding: c.key_padding = true; break;
    case CaseKind::kVarlen: add_varlen(c, rng); break;
    case CaseKind::kAlibi:
      c.alibi = true;
      if (chance(rng, 0.5)) c.causal = draw_causal(rng);
      break;
    case CaseKind::kSoftcap: add_softcap(c, rng); break;
    case CaseKind::kSinks: c.sinks = true; break;
    case CaseKind::kStrided:
      add_strided(c, rng);
      if (chance(rng, 0.3)) add_gqa(c, rng);
      if (chance(rng, 0.3)) add_varlen(c, rng);
      break;
    case CaseKind::kDvNeD: add_dv(c, rng); break;
    case CaseKind::kFullyMasked: add_empty_rows(c, rng); break;
    case CaseKind::kBf16:
      c.dtype = DType::kBF16;
      switch (uniform(rng, 0, 7)) {
        case 0: break;
        case 1: c.causal = draw_causal(rng); break;
        case 2: add_gqa(c, rng); break;
        case 3: c.mask = draw_broadcast(rng); break;
        case 4: c.bias = draw_broadcast(rng); break;
        case 5: add_varlen(c, rng); break;
        case 6: add_softcap(c, rng); break;
        default: c.sinks = true; break;
      }
      break;
    case CaseKind::kDropout:
      c.dropout_p = pick(rng, {0.1f, 0.3f, 0.9f});
      if (chance(rng, 0.5)) c.causal = draw_causal(rng);
      if (chance(rng, 0.3)) add_gqa(c, rng);
      break;
    case CaseKind::kMixed: add_mixed(c, rng); break;
    case CaseKind::kExtraKeys:
      add_mixed(c, rng);
      // Every sequence holds at least one key, to have one to make extra.
      c.Lk = 0;
      for (int64_t& lk : c.varlen_k) c.Lk += lk = std::max<int64_t>(lk, 1);
      if (!c.varlen()) c.Lk = draw_length(rng);
      break;
  }
  return c;
}

// extra_keys of the extra_keys kind (everything of mixed, plus extra keys), from the
// case's seed alone. Older kinds never draw it: their recorded seeds (regression tests,
// printed `multihead check` failures) replay the same cases. Extra keys are the last rows
// of the keys already drawn, so the sizes, and the cost, do not change.
void add_extra_keys(Case& c) {
  c.extra_keys = 0;
  if (c.kind != CaseKind::kExtraKeys) return;
  std::mt19937_64 rng(c.seed ^ 0xe87a'0000'6b65'7973ull);
  int64_t max_n = c.Lk;
  for (int64_t lk : c.varlen_k) max_n = std::min(max_n, lk);
  if (max_n < 1) return;
  c.extra_keys = std::min(max_n, pick<int64_t>(rng, {1, 1, 2, 3, 65, uniform(rng, 1, max_n), max_n}));
}

}  // namespace

Case random_case(CaseKind kind, std::mt19937_64& rng) {
  // Rejection keeps the distribution of small and odd sizes and bounds the oracle's cost.
  for (;;) {
    Case c = draw_case(kind, rng);
    if (c.cost() <= kMaxRandomCost) {
      c.seed = rng();
      add_extra_keys(c);
      return c;
    }
  }
}

Case case_from_seed(CaseKind kind, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Case c = random_case(kind, rng);
  c.seed = seed;
  add_extra_keys(c);  // from the seed it now has
  return c;
}

uint64_t derive_seed(uint64_t run_seed, uint64_t index) {
  return detail::splitmix64(run_seed + detail::kGoldenGamma * index);
}

}  // namespace multihead::reference

