#include "reference/case_tables.hpp"

#include <functional>
#include <utility>

namespace multihead::reference {

namespace {

// Everything but the sizes and dtype at their defaults.
Case make(CaseKind kind, int64_t B, int64_t Lq, int64_t Lk, int64_t H, int64_t Hkv, int64_t D, DType dtype) {
  Case c;
  c.kind = kind;
  c.B = B, c.Lq = Lq, c.Lk = Lk, c.H = H, c.Hkv = Hkv, c.D = c.Dv = D;
  c.dtype = dtype;
  return c;
}

// Distinct data per case, the same in every run.
void number(std::vector<Case>& cases, uint64_t base) {
  for (size_t n = 0; n < cases.size(); ++n) cases[n].seed = base + n;
}

struct Heads {
  CaseKind kind;
  int64_t H, Hkv;
};
constexpr Heads kHeads[] = {{CaseKind::kPlain, 2, 2}, {CaseKind::kGqa, 4, 2}, {CaseKind::kMqa, 3, 1}};

}  // namespace

std::vector<Case> head_dim_sweep() {
  std::vector<Case> cases;
  const std::pair<int64_t, int64_t> lengths[] = {{17, 129}, {129, 17}, {128, 128}};
  int n = 0;
  for (int64_t D : {1, 8, 59, 64, 80, 111, 128, 256}) {
    for (const auto& [Lq, Lk] : lengths) {
      const Heads& h = kHeads[size_t(n % 3)];
      Case c = make(h.kind, 1, Lq, Lk, h.H, h.Hkv, D, n % 2 ? DType::kBF16 : DType::kF32);
      c.probs = true;
      cases.push_back(c);
      n += 2;  // steps heads and dtype out of phase with the lengths
      if (n % 6 == 0) ++n;
    }
  }
  Case big = make(CaseKind::kPlain, 1, 17, 129, 2, 2, 512, DType::kF32);  // the largest head dim, once
  big.probs = true;
  cases.push_back(big);
  number(cases, 1000);
  return cases;
}

std::vector<Case> length_sweep() {
  std::vector<Case> cases;
  const int64_t lengths[] = {1, 2, 17, 127, 128, 129};
  const CausalAlign causal[] = {CausalAlign::kNone, CausalAlign::kTopLeft, CausalAlign::kBottomRight};
  const int64_t dims[] = {8, 59, 64};
  int n = 0;
  for (int64_t Lq : lengths) {
    for (int64_t Lk : lengths) {
      const Heads& h = kHeads[size_t((n / 2) % 3)];
      const int64_t B = Lq >= 127 && Lk >= 127 ? 1 : 2;
      Case c = make(h.kind, B, Lq, Lk, h.H, h.Hkv, dims[n % 3], n % 2 ? DType::kBF16 : DType::kF32);
      c.causal = causal[(n / 3) % 3];
      c.probs = true;
      cases.push_back(c);
      ++n;
    }
  }
  // 1025 both ways, with B·H small so the oracle stays fast.
  Case a = make(CaseKind::kCausalTopLeft, 1, 1025, 1025, 1, 1, 8, DType::kF32);
  a.causal = CausalAlign::kTopLeft;
  Case decode = make(CaseKind::kMqa, 1, 1, 1025, 4, 1, 64, DType::kBF16);
  decode.causal = CausalAlign::kBottomRight;
  Case tall = make(CaseKind::kGqa, 1, 1025, 17, 2, 1, 59, DType::kF32);
  tall.causal = CausalAlign::kBottomRight;  // the first 1008 rows are empty
  Case wide = make(CaseKind::kWindow, 1, 17, 1025, 1, 1, 128, DType::kBF16);
  wide.window = {64, 0};
  Case plain = make(CaseKind::kPlain, 1, 1025, 129, 1, 1, 64, DType::kF32);
  plain.probs = true;
  for (const Case& c : {a, decode, tall, wide, plain}) cases.push_back(c);
  number(cases, 2000);
  return cases;
}

std::vector<Case> option_sweep() {
  struct Option {
    CaseKind kind;
    std::function<void(Case&)> apply;
    bool own_shape = false;  // sets its own sizes: run once in f32 and once in bf16
  };
  const auto mask = [](Broadcast b) { return [b](Case& c) { c.mask = b; }; };
  const auto bias = [](Broadcast b) { return [b](Case& c) { c.bias = b; }; };
  const auto varlen = [](std::vector<int64_t> lq, std::vector<int64_t> lk) {
    return [lq, lk](Case& c) {
      c.varlen_q = lq, c.varlen_k = lk;
      c.B = 1, c.Lq = c.Lk = 0;
      for (size_t s = 0; s < lq.size(); ++s) c.Lq += lq[s], c.Lk += lk[s];
      c.probs = false;
    };
  };
  const std::vector<Option> options = {
      {CaseKind::kCausalTopLeft, [](Case& c) { c.causal = CausalAlign::kTopLeft; }},
      {CaseKind::kCausalBottomRight, [](Case& c) { c.causal = CausalAlign::kBottomRight; }},
      {CaseKind::kWindow, [](Case& c) { c.window = {3, -1}; }},
      {CaseKind::kWindow, [](Case& c) { c.window = {-1, 5}; }},
      {CaseKind::kWindow, [](Case& c) { c.window = {0, 0}; }},
      {CaseKind::kWindow, [](Case& c) { c.window = {16, 16}; }},
      {CaseKind::kWindow, [](Case& c) { c.window = {8, 0}, c.causal = CausalAlign::kBottomRight; }},
      {CaseKind::kWindow, [](Case& c) { c.window = {4, -1}, c.causal = CausalAlign::kTopLeft; }},
      {CaseKind::kMask, mask(Broadcast::kFull)},
      {CaseKind::kMask, mask(Broadcast::kQueryKey)},
      {CaseKind::kMask, mask(Broadcast::kBatchKey)},
      {CaseKind::kMask, mask(Broadcast::kHeadQueryKey)},
      {CaseKind::kMask, mask(Broadcast::kBatchHeadKey)},
      {CaseKind::kMask, mask(Broadcast::kRank2)},
      {CaseKind::kBias, bias(Broadcast::kFull)},
      {CaseKind::kBias, bias(Broadcast::kQueryKey)},
      {CaseKind::kBias, bias(Broadcast::kBatchKey)},
      {CaseKind::kBias, bias(Broadcast::kHeadQueryKey)},
      {CaseKind::kBias, bias(Broadcast::kBatchHeadKey)},
      {CaseKind::kBias, bias(Broadcast::kRank2)},
      {CaseKind::kBias, [](Case& c) { c.bias = Broadcast::kFull, c.mask = Broadcast::kBatchKey; }},
      {CaseKind::kKeyPadding, [](Case& c) { c.key_padding = true; }},
      {CaseKind::kKeyPadding, [](Case& c) { c.key_padding = true, c.causal = CausalAlign::kBottomRight; }},
      {CaseKind::kAlibi, [](Case& c) { c.alibi = true; }},
      {CaseKind::kAlibi, [](Case& c) { c.alibi = true, c.causal = CausalAlign::kBottomRight; }},
      {CaseKind::kSoftcap, [](Case& c) { c.softcap = 5.0f; }},
      {CaseKind::kSoftcap, [](Case& c) { c.softcap = 0.5f, c.scale = 1.0f; }},
      {CaseKind::kSinks, [](Case& c) { c.sinks = true; }},
      {CaseKind::kSinks, [](Case& c) { c.sinks = true, c.causal = CausalAlign::kTopLeft; }},
      {CaseKind::kPlain, [](Case& c) { c.scale = 0.3f; }},
      {CaseKind::kStrided, [](Case& c) { c.layout = Layout::kPadded; }},
      {CaseKind::kStrided, [](Case& c) { c.layout = Layout::kHeadMajor; }},
      {CaseKind::kDvNeD, [](Case& c) { c.D = 64, c.Dv = 17; }},
      {CaseKind::kDvNeD, [](Case& c) { c.D = 8, c.Dv = 111; }},
      // Forced empty rows, through each masking input, also with sinks (whose extra
      // logit must not resurrect an empty row).
      {CaseKind::kFullyMasked, [](Case& c) { c.empty_rows = true, c.mask = Broadcast::kFull; }},
      {CaseKind::kFullyMasked, [](Case& c) { c.empty_rows = true, c.mask = Broadcast::kBatchKey; }},
      {CaseKind::kFullyMasked, [](Case& c) { c.empty_rows = true, c.bias = Broadcast::kQueryKey; }},
      {CaseKind::kFullyMasked, [](Case& c) { c.empty_rows = true, c.key_padding = true; }},
      {CaseKind::kFullyMasked, [](Case& c) { c.empty_rows = true, c.mask = Broadcast::kRank2, c.sinks = true; }},
      {CaseKind::kFullyMasked,
       [](Case& c) { c.empty_rows = true, c.bias = Broadcast::kFull, c.causal = CausalAlign::kBottomRight; }},
      {CaseKind::kFullyMasked, [](Case& c) { c.Lk = 0, c.sinks = true; }},
      {CaseKind::kFullyMasked, [](Case& c) { c.Lq = 0; }},
      {CaseKind::kFullyMasked, [](Case& c) { c.B = 0; }},
      {CaseKind::kVarlen, varlen({5, 0, 17, 40}, {9, 3, 17, 0}), true},
      {CaseKind::kVarlen,
       [varlen](Case& c) { varlen({33, 1, 70}, {33, 64, 20})(c), c.causal = CausalAlign::kBottomRight; }, true},
      {CaseKind::kVarlen,
       [varlen](Case& c) { varlen({12, 40}, {50, 40})(c), c.window = {6, 2}, c.sinks = true, c.alibi = true; },
       true},
      {CaseKind::kStrided,
       [varlen](Case& c) { varlen({7, 30}, {31, 9})(c), c.layout = Layout::kHeadMajor, c.causal = CausalAlign::kTopLeft; },
       true},
      {CaseKind::kMixed,
       [](Case& c) {
         c.mask = Broadcast::kBatchHeadKey, c.bias = Broadcast::kHeadQueryKey, c.window = {20, 3};
         c.causal = CausalAlign::kBottomRight, c.alibi = true, c.softcap = 10.0f, c.sinks = true;
         c.layout = Layout::kPadded, c.key_padding = true, c.Dv = 40;
       }},
  };
  struct Shape {
    int64_t Lq, Lk;
    DType dtype;
  };
  // Lq < Lk and Lq > Lk in f32, and both in bf16 (Lq = Lk once, where the two causal
  // alignments coincide).
  const Shape shapes[] = {{17, 129, DType::kF32}, {129, 17, DType::kF32}, {33, 65, DType::kBF16}, {48, 48, DType::kBF16}};
  std::vector<Case> cases;
  int n = 0;
  for (const Option& option : options) {
    for (const Shape& s : shapes) {
      if (option.own_shape && s.Lq == s.Lk) continue;
      if (option.own_shape && s.Lq > s.Lk && s.dtype == DType::kF32) continue;
      Case c = make(option.kind, 2, s.Lq, s.Lk, 4, 2, n % 2 ? 59 : 64, s.dtype);
      c.probs = true;
      option.apply(c);
      cases.push_back(c);
    }
    ++n;
  }
  number(cases, 3000);
  return cases;
}

std::vector<Case> f16_cases() {
  Case plain = make(CaseKind::kPlain, 2, 17, 129, 2, 2, 64, DType::kF16);
  plain.probs = true;
  Case causal = make(CaseKind::kGqa, 1, 129, 17, 4, 2, 59, DType::kF16);
  causal.causal = CausalAlign::kBottomRight;
  Case masked = make(CaseKind::kMask, 2, 33, 40, 2, 1, 80, DType::kF16);
  masked.mask = Broadcast::kBatchKey;
  masked.sinks = true;
  std::vector<Case> cases = {plain, causal, masked};
  number(cases, 4000);
  return cases;
}

std::vector<SpeedCase> speed_cases() {
  const auto f32 = DType::kF32, b16 = DType::kBF16;
  const auto none = CausalAlign::kNone, tl = CausalAlign::kTopLeft, br = CausalAlign::kBottomRight;
  const auto speed = [&](std::string id, std::string group, std::string title, int64_t B, int64_t Lq, int64_t Lk,
                         int64_t H, int64_t Hkv, int64_t D, CausalAlign causal, DType dtype, bool backward = false,
                         bool decode = false) {
    const CaseKind kind = causal == tl   ? CaseKind::kCausalTopLeft
                          : causal == br ? CaseKind::kCausalBottomRight
                          : Hkv < H      ? CaseKind::kGqa
                                         : CaseKind::kPlain;
    Case c = make(kind, B, Lq, Lk, H, Hkv, D, dtype);
    c.causal = causal;
    return SpeedCase{std::move(id), std::move(group), std::move(title), c, backward, decode};
  };
  return {
      speed("S1", "S1", "encoder fwd fp32", 8, 512, 512, 12, 12, 64, none, f32),
      speed("S2-fp32", "S2", "prefill fwd fp32", 1, 2048, 2048, 32, 8, 128, tl, f32),
      speed("S2-bf16", "S2", "prefill fwd bf16", 1, 2048, 2048, 32, 8, 128, tl, b16),
      speed("S3-fp32", "S3", "decode fwd fp32", 1, 1, 4096, 32, 8, 128, br, f32, false, true),
      speed("S3-bf16", "S3", "decode fwd bf16", 1, 1, 4096, 32, 8, 128, br, b16, false, true),
      speed("S4", "S4", "train fwd+bwd fp32", 4, 1024, 1024, 8, 8, 64, tl, f32, true),
  };
}

}  // namespace multihead::reference
