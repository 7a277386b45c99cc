// d(bias) on the dispatched kernels (the SIMD backward under avx512 and avx2, the portable
// twin under scalar): dS reduced over the bias's broadcast dims, against the oracle for
// every broadcast pattern with GQA, causal, softcap, bf16 and decode shapes; bitwise equal
// for 1, 2 and 3 threads; and P recomputed from the forward's own scores.
#include <cmath>
#include <string>
#include <vector>

#include "support/cases.hpp"

namespace multihead::test {
namespace {

using reference::Broadcast;
using reference::CaseInputs;
using reference::CaseKind;

constexpr Broadcast kPatterns[] = {Broadcast::kFull,         Broadcast::kQueryKey,     Broadcast::kBatchKey,
                                   Broadcast::kHeadQueryKey, Broadcast::kBatchHeadKey, Broadcast::kRank2};

// What each case adds to a biased problem.
enum class Variant { kPlain, kGqa, kCausal, kSoftcap, kBf16, kDecode, kKeyPadding };
constexpr Variant kVariants[] = {Variant::kPlain, Variant::kGqa,    Variant::kCausal,    Variant::kSoftcap,
                                 Variant::kBf16,  Variant::kDecode, Variant::kKeyPadding};

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::kPlain: return "plain";
    case Variant::kGqa: return "gqa";
    case Variant::kCausal: return "causal";
    case Variant::kSoftcap: return "softcap";
    case Variant::kBf16: return "bf16";
    case Variant::kDecode: return "decode";
    case Variant::kKeyPadding: return "keypadding";
  }
  return "?";
}

Case biased_case(Broadcast bias, Variant variant, uint64_t seed) {
  Case c;
  c.kind = CaseKind::kBias;
  c.B = 2, c.Lq = 37, c.Lk = 77, c.H = 4, c.Hkv = 4, c.D = 24, c.Dv = 16;
  c.bias = bias;
  c.seed = seed;
  switch (variant) {
    case Variant::kPlain: break;
    case Variant::kGqa: c.Hkv = 2, c.Lq = 70, c.D = 40; break;
    case Variant::kCausal: c.causal = CausalAlign::kBottomRight; break;
    case Variant::kSoftcap: c.softcap = 2.5f; break;
    case Variant::kBf16: c.dtype = DType::kBF16, c.Hkv = 2; break;
    case Variant::kDecode: c.Lq = 3, c.Lk = 1100, c.Hkv = 2; break;  // 2 key splits
    case Variant::kKeyPadding: c.key_padding = true, c.Hkv = 1; break;
  }
  return c;
}

struct DbiasCase {
  Broadcast bias;
  Variant variant;
};

std::vector<DbiasCase> dbias_cases() {
  std::vector<DbiasCase> cases;
  for (Broadcast b : kPatterns)
    for (Variant v : kVariants) cases.push_back({b, v});
  return cases;
}

const char* pattern_name(Broadcast b) {
  switch (b) {
    case Broadcast::kFull: return "BHQK";
    case Broadcast::kQueryKey: return "11QK";
    case Broadcast::kBatchKey: return "B11K";
    case Broadcast::kHeadQueryKey: return "1HQK";
    case Broadcast::kBatchHeadKey: return "BH1K";
    case Broadcast::kRank2: return "QK";
    case Broadcast::kNone: break;
  }
  return "none";
}

std::string dbias_case_name(const ::testing::TestParamInfo<DbiasCase>& info) {
  return std::string(pattern_name(info.param.bias)) + "_" + variant_name(info.param.variant);
}

class DbiasSweep : public ::testing::TestWithParam<DbiasCase> {
 protected:
  void TearDown() override { set_num_threads(0); }
};

TEST_P(DbiasSweep, MatchesOracle) {
  const Case c = biased_case(GetParam().bias, GetParam().variant, 1000 + uint64_t(GetParam().variant));
  const reference::CaseResult r = reference::run_case(c, /*backward=*/true);
  EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report();
}

// Each dbias block is owned by one work item that sums its sources in a fixed order.
TEST_P(DbiasSweep, BitwiseEqualFor1To3Threads) {
  const Case c = biased_case(GetParam().bias, GetParam().variant, 2000 + uint64_t(GetParam().variant));
  const CaseInputs in = reference::materialize(c);
  const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
  set_num_threads(1);
  const Forward f1 = run_forward(q, k, v, in.options);
  const Backward g1 = run_backward(in.dout.view(), q, k, v, f1, in.options);
  for (int threads : {2, 3}) {
    set_num_threads(threads);
    const Forward f = run_forward(q, k, v, in.options);
    const Backward g = run_backward(in.dout.view(), q, k, v, f, in.options);
    EXPECT_TRUE(same_bytes(g1.dbias.view(), g.dbias.view())) << threads << " threads, " << c.describe();
    EXPECT_TRUE(same_bytes(g1.dq.view(), g.dq.view())) << threads << " threads, " << c.describe();
    EXPECT_TRUE(same_bytes(g1.dk.view(), g.dk.view())) << threads << " threads, " << c.describe();
    EXPECT_TRUE(same_bytes(g1.dv.view(), g.dv.view())) << threads << " threads, " << c.describe();
  }
}

INSTANTIATE_TEST_SUITE_P(Dbias, DbiasSweep, ::testing::ValuesIn(dbias_cases()), dbias_case_name);

// A backward that asked for d(bias) used to run the portable kernels after a SIMD forward:
// their sequential dot products round differently from the SIMD micro-kernel, so with
// large logits P = exp(S - lse) no longer matched the forward's lse (a rare `multihead
// check -k mixed` failure). With dout row i = e_i, dV[j, i] = P_ij exactly as the backward
// recomputed it, so dVᵀ must be the forward's probabilities up to the exp's last bits.
TEST(Regression, BackwardWithBiasRecomputesTheForwardsScores) {
  Case c;
  c.kind = CaseKind::kBias;
  c.B = 1, c.Lq = 16, c.Lk = 70, c.H = 1, c.Hkv = 1, c.D = 64, c.Dv = 16;
  c.scale = 40.0f;  // logits of several hundred: one ulp of S moves P by ~1e-4
  c.bias = Broadcast::kFull;
  c.seed = 77;
  CaseInputs in = reference::materialize(c);
  float* dout = in.dout.data_as<float>();
  for (int64_t i = 0; i < c.Lq; ++i)
    for (int64_t d = 0; d < c.Dv; ++d) dout[i * c.Dv + d] = i == d ? 1.0f : 0.0f;
  const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
  const Forward f = run_forward(q, k, v, in.options, /*probs=*/true);
  const Backward g = run_backward(in.dout.view(), q, k, v, f, in.options);
  const TensorView dv = g.dv.view();
  double worst = 0;
  for (int64_t i = 0; i < c.Lq; ++i)
    for (int64_t j = 0; j < c.Lk; ++j) {
      const float forward_p = f.probs.data_as<float>()[i * c.Lk + j];
      const float backward_p = dv.data_as<float>()[dv.offset(Shape{0, j, 0, i})];
      if (forward_p < 1e-20f) continue;  // far below anything a gradient sees; exp's subnormals differ
      worst = std::max(worst, std::abs(double(backward_p) - forward_p) / std::max(1e-30, double(forward_p)));
    }
  EXPECT_LT(worst, 1e-6) << "relative difference of the backward's P from the forward's";
  // ... and the gradients stay within the pass rule.
  const reference::CaseResult r = reference::run_case(c, /*backward=*/true);
  EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report();
}

}  // namespace
}  // namespace multihead::test
