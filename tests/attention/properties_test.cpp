// Properties of the correctness method (docs/ARCHITECTURE.md) that a comparison with the oracle
// cannot show: masked garbage is never read, GQA is MHA with shared K/V, decoding
// equals the causal prefill, empty rows are clean on every path, results are
// bitwise deterministic across thread counts, and probabilities are exact and free.
// That failing calls write nothing is in failing_call_test.cpp.
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "attention/properties_support.hpp"
#include "reference/attention_reference.hpp"
#include "support/cases.hpp"

namespace multihead::test {
namespace {

using reference::Broadcast;
using reference::CaseInputs;
using reference::CaseKind;
using reference::Layout;

// Element (b, l, h, d) of an f32 (B, L, heads, dim) view.
float& at(const TensorView& t, int64_t b, int64_t l, int64_t h, int64_t d) {
  return t.data_as<float>()[t.offset(Shape{b, l, h, d})];
}

// Writes NaN, ±inf and huge values over key j of batch b in an f32 k or v view.
void poison(const TensorView& t, int64_t b, int64_t j) {
  const float garbage[] = {std::numeric_limits<float>::quiet_NaN(), kInf, -kInf, 1e30f, -1e30f};
  for (int64_t h = 0; h < t.shape[2]; ++h)
    for (int64_t d = 0; d < t.shape[3]; ++d) at(t, b, j, h, d) = garbage[(h + d + j) % 5];
}

// A default-constructed Tensor stands for an output that was not requested.
bool present(const Tensor& t) { return t.data() != nullptr; }

bool has_nan(const Tensor& t) {
  if (!present(t)) return false;
  const float* p = t.data_as<float>();
  for (int64_t n = 0; n < t.numel(); ++n)
    if (std::isnan(p[n])) return true;
  return false;
}

void expect_same_results(const Case& c, const Forward& f1, const Backward& g1, const Forward& f2,
                         const Backward& g2) {
  EXPECT_FALSE(has_nan(f1.out)) << c.describe();
  EXPECT_TRUE(same_bytes(f1.out.view(), f2.out.view())) << "out, " << c.describe();
  EXPECT_TRUE(same_bytes(f1.lse.view(), f2.lse.view())) << "lse, " << c.describe();
  EXPECT_TRUE(same_bytes(f1.probs.view(), f2.probs.view())) << "probs, " << c.describe();
  EXPECT_TRUE(same_bytes(g1.dq.view(), g2.dq.view())) << "dq, " << c.describe();
  // dk, dv at never-seen keys are exactly 0 in both runs.
  EXPECT_TRUE(same_bytes(g1.dk.view(), g2.dk.view())) << "dk, " << c.describe();
  EXPECT_TRUE(same_bytes(g1.dv.view(), g2.dv.view())) << "dv, " << c.describe();
}

// Runs forward (with probs) and backward once before and once after `spoil`, which
// writes garbage where no query may look, and expects identical bytes everywhere. The
// spoiled run uses 1 thread, then 2: with 4 to 7 (sequence, kv head) pairs the backward
// fuses its dK/dV and dQ passes on 1 thread only, so both ways meet the garbage.
void expect_garbage_ignored(const Case& c, CaseInputs& in, const std::function<void()>& spoil) {
  const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
  const Forward f1 = run_forward(q, k, v, in.options, /*probs=*/true);
  const Backward g1 = run_backward(in.dout.view(), q, k, v, f1, in.options);
  spoil();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    const Forward f2 = run_forward(q, k, v, in.options, /*probs=*/true);
    const Backward g2 = run_backward(in.dout.view(), q, k, v, f2, in.options);
    set_num_threads(0);
    expect_same_results(c, f1, g1, f2, g2);
  }
}

TEST(MaskedGarbage, KeyPaddingIgnoresKeysPastTheLength) {
  Case c = make(CaseKind::kKeyPadding, 3, 20, 45, 4, 2, 40, 11);
  c.key_padding = true;
  CaseInputs in = reference::materialize(c);
  int32_t* len = in.seqlens_k.data_as<int32_t>();
  len[0] = 45, len[1] = 10, len[2] = 31;
  expect_garbage_ignored(c, in, [&] {
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t j = len[b]; j < c.Lk; ++j) poison(in.k.view, b, j), poison(in.v.view, b, j);
  });
}

TEST(MaskedGarbage, CausalTopLeftIgnoresKeysNoQueryReaches) {
  // Top-left: query i sees j <= i, so keys j >= Lq are never seen.
  Case c = make(CaseKind::kCausalTopLeft, 2, 17, 40, 4, 2, 33, 12);
  c.causal = CausalAlign::kTopLeft;
  CaseInputs in = reference::materialize(c);
  expect_garbage_ignored(c, in, [&] {
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t j = c.Lq; j < c.Lk; ++j) poison(in.k.view, b, j), poison(in.v.view, b, j);
  });
}

TEST(MaskedGarbage, MaskIgnoresMaskedOutKeys) {
  Case c = make(CaseKind::kMask, 2, 24, 37, 4, 2, 16, 13);
  c.mask = Broadcast::kBatchKey;  // (B, 1, 1, Lk)
  CaseInputs in = reference::materialize(c);
  bool* keep = in.mask.data_as<bool>();
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t j = 0; j < c.Lk; ++j) keep[b * c.Lk + j] = (j + b) % 3 != 2;
  expect_garbage_ignored(c, in, [&] {
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t j = 0; j < c.Lk; ++j)
        if (!keep[b * c.Lk + j]) poison(in.k.view, b, j), poison(in.v.view, b, j);
  });
}

// ---------------------------------------------------------------- GQA == MHA

// k (B, Lk, Hkv, D) -> (B, Lk, H, D), head h a copy of head h / (H / Hkv).
Tensor repeat_heads(const TensorView& t, int64_t H) {
  const int64_t B = t.shape[0], L = t.shape[1], Hkv = t.shape[2], D = t.shape[3];
  const size_t element = dtype_size(t.dtype);
  Tensor r = Tensor::empty(t.dtype, {B, L, H, D});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < H; ++h)
        std::memcpy(static_cast<char*>(r.data()) + ((b * L + l) * H + h) * D * int64_t(element),
                    static_cast<const char*>(t.data) + t.offset(Shape{b, l, h / (H / Hkv), 0}) * int64_t(element),
                    size_t(D) * element);
  return r;
}

class GqaEqualsMha : public ::testing::TestWithParam<Case> {};

// Each query row's scores, softmax and P·V (and its dq) are computed the same way
// whichever K/V head it reads, so out, lse and dq must agree bitwise. dk and dv of a
// shared head are a sum over the H / Hkv query heads that the kernel accumulates in
// its own order, so they agree with the sum of the MHA gradients within fp32 rounding.
TEST_P(GqaEqualsMha, ForwardBitwiseAndKvGradientsWithinRounding) {
  const Case& c = GetParam();
  const CaseInputs in = reference::materialize(c);
  const Tensor k_rep = repeat_heads(in.k.view, c.H), v_rep = repeat_heads(in.v.view, c.H);
  const Forward gqa = run_forward(in.q.view, in.k.view, in.v.view, in.options);
  const Forward mha = run_forward(in.q.view, k_rep.view(), v_rep.view(), in.options);
  EXPECT_TRUE(same_bytes(gqa.out.view(), mha.out.view())) << c.describe();
  EXPECT_TRUE(same_bytes(gqa.lse.view(), mha.lse.view())) << c.describe();

  const Backward g_gqa = run_backward(in.dout.view(), in.q.view, in.k.view, in.v.view, gqa, in.options);
  const Backward g_mha = run_backward(in.dout.view(), in.q.view, k_rep.view(), v_rep.view(), mha, in.options);
  EXPECT_TRUE(same_bytes(g_gqa.dq.view(), g_mha.dq.view())) << c.describe();
  const int64_t group = c.H / c.Hkv;
  for (const auto& [name, shared, full, dim] : {std::tuple{"dk", &g_gqa.dk, &g_mha.dk, c.D},
                                                std::tuple{"dv", &g_gqa.dv, &g_mha.dv, c.Dv}}) {
    double worst = 0, scale = 0;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t j = 0; j < c.Lk; ++j)
        for (int64_t hk = 0; hk < c.Hkv; ++hk)
          for (int64_t d = 0; d < dim; ++d) {
            double sum = 0, magnitude = 0;
            for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
              const float x = at(full->view(), b, j, h, d);
              sum += x, magnitude += std::fabs(x);
            }
            worst = std::max(worst, std::fabs(at(shared->view(), b, j, hk, d) - sum));
            scale = std::max(scale, magnitude);
          }
    // A few ulps of the largest partial sums: reassociating group * Lq fp32 terms.
    EXPECT_LE(worst, 1e-5 * (scale + 1e-30)) << name << ", " << c.describe();
  }
}

std::vector<Case> gqa_cases() {
  Case gqa = make(CaseKind::kGqa, 2, 33, 47, 6, 2, 40, 21);
  Case mqa = make(CaseKind::kMqa, 1, 70, 70, 4, 1, 64, 22);
  mqa.causal = CausalAlign::kBottomRight;
  mqa.mask = Broadcast::kBatchHeadKey;  // a per-query-head mask over shared K/V
  Case bf16 = make(CaseKind::kGqa, 2, 17, 129, 8, 2, 59, 23);
  bf16.dtype = DType::kBF16;
  bf16.window = {8, 2};
  bf16.sinks = true;
  return {gqa, mqa, bf16};
}
INSTANTIATE_TEST_SUITE_P(Shapes, GqaEqualsMha, ::testing::ValuesIn(gqa_cases()), case_name);

// ---------------------------------------------------------------- decode == prefill

class DecodeEqualsPrefill : public ::testing::TestWithParam<Case> {};

// Step t attends query row t to the first t + 1 keys (bottom-right: the last query
// sees every key) through sub-views of the prefill's buffers. The keys are the same
// and in the same order, but a decode plan may tile or split the key loop unlike the
// prefill, so rows agree within fp32 rounding, not necessarily bitwise.
TEST_P(DecodeEqualsPrefill, EveryStepMatchesItsPrefillRow) {
  const Case& c = GetParam();
  const CaseInputs in = reference::materialize(c);
  const Forward prefill = run_forward(in.q.view, in.k.view, in.v.view, in.options);
  double worst_out = 0, worst_lse = 0;
  for (int64_t t = 0; t < c.Lq; ++t) {
    TensorView q = in.q.view, k = in.k.view, v = in.v.view;
    q.data = static_cast<float*>(q.data) + t * q.strides[1];
    q.shape[1] = 1;
    k.shape[1] = v.shape[1] = t + 1;
    const Forward step = run_forward(q, k, v, in.options);
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h) {
        const float l_step = step.lse.data_as<float>()[b * c.H + h];
        const float l_full = prefill.lse.data_as<float>()[(b * c.H + h) * c.Lq + t];
        worst_lse = std::max(worst_lse, double(std::fabs(l_step - l_full)));
        for (int64_t d = 0; d < c.Dv; ++d)
          worst_out = std::max(worst_out, double(std::fabs(at(step.out.view(), b, 0, h, d) -
                                                           at(prefill.out.view(), b, t, h, d))));
      }
  }
  EXPECT_LE(worst_out, 1e-5) << c.describe();
  EXPECT_LE(worst_lse, 1e-5) << c.describe();
}

std::vector<Case> decode_cases() {
  Case gqa = make(CaseKind::kCausalBottomRight, 2, 40, 40, 4, 2, 32, 31);
  gqa.causal = CausalAlign::kBottomRight;
  Case rich = make(CaseKind::kMixed, 1, 70, 70, 3, 1, 24, 32);
  rich.causal = CausalAlign::kBottomRight;
  rich.window = {5, 0};
  rich.alibi = rich.sinks = true;
  rich.softcap = 3.0f;
  return {gqa, rich};
}
INSTANTIATE_TEST_SUITE_P(Shapes, DecodeEqualsPrefill, ::testing::ValuesIn(decode_cases()), case_name);

// ---------------------------------------------------------------- fully masked rows

class FullyMaskedRows : public ::testing::TestWithParam<Case> {};

// Rows the oracle finds empty (lse = -inf) must read out 0, lse -inf, probs 0 and
// dq 0 exactly; no output anywhere may hold a NaN, forward or backward.
TEST_P(FullyMaskedRows, AreZeroWithoutNaNForwardAndBackward) {
  const Case& c = GetParam();
  const CaseInputs in = reference::materialize(c);
  const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
  const bool probs = !c.varlen();
  const Forward f = run_forward(q, k, v, in.options, probs);
  const Backward g = run_backward(in.dout.view(), q, k, v, f, in.options);
  const reference::ForwardResult oracle = reference::attention_forward(q, k, v, in.options);

  int64_t empty = 0;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t i = 0; i < c.Lq; ++i) {
        const int64_t row = (b * c.H + h) * c.Lq + i;
        if (oracle.lse[size_t(row)] != -std::numeric_limits<double>::infinity()) continue;
        ++empty;
        EXPECT_EQ(f.lse.data_as<float>()[row], -kInf) << "b=" << b << " h=" << h << " i=" << i;
        for (int64_t d = 0; d < c.Dv; ++d) ASSERT_EQ(at(f.out.view(), b, i, h, d), 0.0f) << "out row " << i;
        for (int64_t d = 0; d < c.D; ++d) ASSERT_EQ(at(g.dq.view(), b, i, h, d), 0.0f) << "dq row " << i;
        if (probs) {
          for (int64_t j = 0; j < c.Lk; ++j) ASSERT_EQ(f.probs.data_as<float>()[row * c.Lk + j], 0.0f);
        }
      }
  EXPECT_GT(empty, 0) << "the case has no empty row: " << c.describe();
  const std::pair<const char*, const Tensor*> outputs[] = {{"out", &f.out}, {"probs", &f.probs}, {"dq", &g.dq},
                                                           {"dk", &g.dk},   {"dv", &g.dv},       {"dbias", &g.dbias},
                                                           {"dsinks", &g.dsinks}};
  for (const auto& [name, t] : outputs) EXPECT_FALSE(has_nan(*t)) << name << ", " << c.describe();
  for (int64_t n = 0; n < f.lse.numel(); ++n) EXPECT_FALSE(std::isnan(f.lse.data_as<float>()[n]));

  const reference::CaseResult r = reference::run_case(c, /*backward=*/true);
  EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report();
}

std::vector<Case> fully_masked_cases() {
  std::vector<Case> cases;
  const auto add = [&](Case c) { cases.push_back(c); };
  Case m = make(CaseKind::kFullyMasked, 2, 20, 30, 4, 2, 64, 41);
  m.mask = Broadcast::kFull, m.empty_rows = true;
  add(m);
  m.dtype = DType::kBF16, m.seed = 42;
  add(m);
  Case kp = make(CaseKind::kFullyMasked, 3, 17, 25, 6, 2, 59, 43);
  kp.key_padding = kp.empty_rows = kp.sinks = true;
  add(kp);
  Case none = make(CaseKind::kFullyMasked, 2, 9, 0, 2, 1, 16, 44);  // Lk = 0: every row
  none.sinks = true;
  add(none);
  Case br = make(CaseKind::kFullyMasked, 1, 70, 20, 2, 2, 8, 45);  // rows i < 50 see no key
  br.causal = CausalAlign::kBottomRight, br.window = {4, -1};
  add(br);
  Case var = make(CaseKind::kFullyMasked, 1, 0, 0, 4, 2, 32, 46);
  var.varlen_q = {7, 12, 5}, var.varlen_k = {9, 0, 6}, var.sinks = true;
  var.Lq = 24, var.Lk = 15;
  add(var);
  Case bias = make(CaseKind::kFullyMasked, 2, 33, 33, 2, 2, 111, 47);
  bias.bias = Broadcast::kHeadQueryKey, bias.empty_rows = true;
  add(bias);
  Case padded = make(CaseKind::kFullyMasked, 2, 17, 129, 4, 1, 1, 48);
  padded.mask = Broadcast::kRank2, padded.empty_rows = true, padded.layout = Layout::kPadded;
  add(padded);
  Case wide = make(CaseKind::kFullyMasked, 1, 8, 40, 2, 2, 256, 49);
  wide.mask = Broadcast::kBatchHeadKey, wide.empty_rows = true, wide.softcap = 5.0f, wide.alibi = true;
  add(wide);
  Case decode = make(CaseKind::kFullyMasked, 3, 1, 50, 2, 1, 64, 50);
  decode.key_padding = decode.empty_rows = true, decode.causal = CausalAlign::kBottomRight;
  add(decode);
  return cases;
}
INSTANTIATE_TEST_SUITE_P(EveryPath, FullyMaskedRows, ::testing::ValuesIn(fully_masked_cases()), case_name);

// ---------------------------------------------------------------- determinism

class Determinism : public ::testing::TestWithParam<Case> {
 protected:
  void TearDown() override { set_num_threads(0); }
};

// Every output element is owned by one work item and reductions run in a fixed
// order, so the bytes may not depend on the thread count or on the run.
TEST_P(Determinism, RepeatedRunsAndThreadCountsAreBitwiseEqual) {
  const Case& c = GetParam();
  const CaseInputs in = reference::materialize(c);
  const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
  set_num_threads(1);
  const Forward f1 = run_forward(q, k, v, in.options, !c.varlen());
  const Backward g1 = run_backward(in.dout.view(), q, k, v, f1, in.options);
  for (int threads : {2, 3, 2}) {
    set_num_threads(threads);
    const Forward f = run_forward(q, k, v, in.options, !c.varlen());
    const Backward g = run_backward(in.dout.view(), q, k, v, f, in.options);
    const std::pair<const Tensor*, const Tensor*> pairs[] = {{&f1.out, &f.out}, {&f1.lse, &f.lse},
                                                             {&f1.probs, &f.probs}, {&g1.dq, &g.dq},
                                                             {&g1.dk, &g.dk}, {&g1.dv, &g.dv},
                                                             {&g1.dbias, &g.dbias}, {&g1.dsinks, &g.dsinks}};
    const char* names[] = {"out", "lse", "probs", "dq", "dk", "dv", "dbias", "dsinks"};
    for (size_t n = 0; n < std::size(pairs); ++n) {
      const Tensor &a = *pairs[n].first, &b = *pairs[n].second;
      ASSERT_EQ(present(a), present(b));
      if (!present(a)) continue;
      ASSERT_EQ(a.nbytes(), b.nbytes());
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0)
          << names[n] << " differs between 1 and " << threads << " threads, " << c.describe();
    }
  }
}

std::vector<Case> determinism_cases() {
  Case gqa = make(CaseKind::kGqa, 2, 300, 200, 6, 2, 48, 61);  // several query and key blocks
  gqa.causal = CausalAlign::kBottomRight;
  Case var = make(CaseKind::kVarlen, 1, 0, 0, 4, 2, 32, 62);
  var.varlen_q = {100, 3, 70, 0}, var.varlen_k = {90, 120, 70, 5};
  var.Lq = 173, var.Lk = 285;
  Case bias = make(CaseKind::kBias, 3, 130, 97, 4, 4, 40, 63);
  bias.bias = Broadcast::kQueryKey;  // dbias sums over batch and heads
  Case bias2 = make(CaseKind::kBias, 2, 65, 140, 4, 2, 64, 64);
  bias2.bias = Broadcast::kBatchKey, bias2.sinks = true;  // dbias sums over heads and queries; dsinks
  Case mixed = make(CaseKind::kMixed, 2, 150, 150, 4, 1, 80, 65);
  mixed.dtype = DType::kBF16, mixed.mask = Broadcast::kFull, mixed.softcap = 20.0f, mixed.alibi = true;
  mixed.layout = Layout::kHeadMajor, mixed.window = {40, 10};
  // 4 (sequence, kv head) pairs: the backward fuses its passes on 1 thread, not on 2 or 3.
  Case masked = make(CaseKind::kMixed, 2, 150, 150, 4, 2, 80, 66);
  masked.mask = Broadcast::kFull, masked.softcap = 20.0f, masked.alibi = true, masked.window = {40, 10};
  Case decode = make(CaseKind::kCausalBottomRight, 1, 2, 700, 8, 4, 64, 67);
  decode.causal = CausalAlign::kBottomRight;
  return {gqa, var, bias, bias2, mixed, masked, decode};
}
INSTANTIATE_TEST_SUITE_P(Shapes, Determinism, ::testing::ValuesIn(determinism_cases()), case_name);

// The forward gives 128-row items to small heads without a band and 64-row items otherwise;
// a window wide enough to keep every key bands the same problem without changing its math,
// so out and lse must agree bitwise (rows are computed alike in any item).
TEST(ItemRows, WideAndNarrowForwardItemsAreBitwiseEqual) {
  for (const auto& [Hkv, dtype] : {std::pair{4, DType::kF32}, std::pair{2, DType::kF32}, std::pair{1, DType::kBF16}}) {
    Case c = make(CaseKind::kGqa, 2, 300, 260, 4, Hkv, 64, 68);
    c.dtype = dtype;
    const CaseInputs in = reference::materialize(c);
    const Forward wide = run_forward(in.q.view, in.k.view, in.v.view, in.options);
    AttentionOptions banded = in.options;
    banded.window = {c.Lq + c.Lk, c.Lq + c.Lk};
    const Forward narrow = run_forward(in.q.view, in.k.view, in.v.view, banded);
    EXPECT_TRUE(same_bytes(wide.out.view(), narrow.out.view())) << c.describe();
    EXPECT_TRUE(same_bytes(wide.lse.view(), narrow.lse.view())) << c.describe();
  }
}

// ---------------------------------------------------------------- probabilities

class Probabilities : public ::testing::TestWithParam<Case> {};

// probs are an extra output: out and lse bits may not depend on asking for them.
// Each row sums to 1 - exp(sink - lse) (1 without sinks, 0 for an empty row).
TEST_P(Probabilities, AreFreeSumToOneAndMatchTheOracle) {
  const Case& c = GetParam();
  const CaseInputs in = reference::materialize(c);
  const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
  const Forward without = run_forward(q, k, v, in.options, false);
  const Forward with = run_forward(q, k, v, in.options, true);
  EXPECT_TRUE(same_bytes(without.out.view(), with.out.view())) << c.describe();
  EXPECT_TRUE(same_bytes(without.lse.view(), with.lse.view())) << c.describe();

  const float* p = with.probs.data_as<float>();
  const float* lse = with.lse.data_as<float>();
  const float* sinks = c.sinks ? in.sinks.data_as<float>() : nullptr;
  double worst = 0;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t i = 0; i < c.Lq; ++i) {
        const int64_t row = (b * c.H + h) * c.Lq + i;
        double sum = 0;
        for (int64_t j = 0; j < c.Lk; ++j) sum += p[row * c.Lk + j];
        double expected = 1.0;
        if (std::isinf(lse[row])) expected = 0.0;
        else if (sinks) expected = 1.0 - std::exp(double(sinks[h]) - double(lse[row]));
        worst = std::max(worst, std::fabs(sum - expected));
      }
  EXPECT_LE(worst, 1e-5) << c.describe();

  const reference::ForwardResult oracle = reference::attention_forward(q, k, v, in.options);
  const reference::ForwardResult base = reference::baseline_forward(q, k, v, in.options, c.dtype);
  const reference::Comparison cmp =
      reference::compare("probs", with.probs.view(), oracle.probs, base.probs, c.dtype, reference::Pass::kForward);
  EXPECT_TRUE(cmp.pass()) << cmp.to_string() << "\n" << c.describe();
}

std::vector<Case> probability_cases() {
  Case plain = make(CaseKind::kPlain, 2, 17, 129, 2, 2, 64, 81);
  Case masked = make(CaseKind::kMask, 2, 40, 33, 4, 2, 59, 82);
  masked.mask = Broadcast::kFull, masked.empty_rows = true, masked.causal = CausalAlign::kBottomRight;
  Case sinks = make(CaseKind::kSinks, 1, 30, 30, 3, 1, 32, 83);
  sinks.sinks = true, sinks.softcap = 4.0f, sinks.alibi = true;
  Case bf16 = make(CaseKind::kBf16, 2, 65, 64, 4, 4, 128, 84);
  bf16.dtype = DType::kBF16, bf16.bias = Broadcast::kBatchKey;
  return {plain, masked, sinks, bf16};
}
INSTANTIATE_TEST_SUITE_P(Shapes, Probabilities, ::testing::ValuesIn(probability_cases()), case_name);

}  // namespace
}  // namespace multihead::test
