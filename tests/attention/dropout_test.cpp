// Attention dropout: the keep decision's statistics and determinism. Agreement with
// the oracle (which applies the same contract hash) is in the random "dropout" kind.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/dropout.hpp"
#include "multihead/multihead.hpp"

namespace multihead {
namespace {

TEST(Dropout, DropsTheRequestedFractionAndScalesTheRest) {
  for (float p : {0.1f, 0.5f, 0.9f}) {
    int64_t dropped = 0;
    const int64_t n = 1 << 20;
    for (int64_t e = 0; e < n; ++e) {
      const float z = detail::dropout_factor(7, p, 0, 0, e / 1024, e % 1024, 1, 1024, 1024);
      if (z == 0.0f) ++dropped;
      else ASSERT_FLOAT_EQ(z, 1.0f / (1.0f - p));
    }
    // Binomial: sd = sqrt(n p (1-p)) < 512, so 5 sd is < 0.25% of n.
    EXPECT_NEAR(double(dropped) / double(n), p, 0.0025) << "p=" << p;
  }
}

struct Problem {
  Tensor q, k, v;
  explicit Problem(uint64_t seed) {
    std::mt19937 rng{uint32_t(seed)};
    std::normal_distribution<float> nd;
    q = Tensor::empty(DType::kF32, {2, 33, 4, 16});
    k = Tensor::empty(DType::kF32, {2, 47, 2, 16});
    v = Tensor::empty(DType::kF32, {2, 47, 2, 16});
    for (Tensor* t : {&q, &k, &v})
      for (int64_t e = 0; e < t->numel(); ++e) t->data_as<float>()[e] = nd(rng);
  }
};

TEST(Dropout, SameSeedSameBitsOtherSeedOtherBitsLseUnchanged) {
  Problem pb(1);
  AttentionOptions plain, a, b;
  a.dropout_p = b.dropout_p = 0.3f;
  a.dropout_seed = 11;
  b.dropout_seed = 12;
  const AttentionResult r0 = attention_forward(pb.q, pb.k, pb.v, plain);
  const AttentionResult ra = attention_forward(pb.q, pb.k, pb.v, a);
  const AttentionResult ra2 = attention_forward(pb.q, pb.k, pb.v, a);
  const AttentionResult rb = attention_forward(pb.q, pb.k, pb.v, b);
  EXPECT_EQ(std::memcmp(ra.out.data(), ra2.out.data(), ra.out.nbytes()), 0);
  EXPECT_NE(std::memcmp(ra.out.data(), rb.out.data(), ra.out.nbytes()), 0);
  EXPECT_NE(std::memcmp(ra.out.data(), r0.out.data(), ra.out.nbytes()), 0);
  EXPECT_EQ(std::memcmp(ra.lse.data(), r0.lse.data(), ra.lse.nbytes()), 0);  // lse is pre-dropout
}

TEST(Dropout, AveragesToTheUndroppedOutput) {
  Problem pb(2);
  const AttentionResult exact = attention_forward(pb.q, pb.k, pb.v);
  std::vector<double> mean(size_t(exact.out.numel()), 0.0);
  const int kSeeds = 400;
  AttentionOptions o;
  o.dropout_p = 0.5f;
  for (int s = 0; s < kSeeds; ++s) {
    o.dropout_seed = uint64_t(s);
    const AttentionResult r = attention_forward(pb.q, pb.k, pb.v, o);
    for (size_t e = 0; e < mean.size(); ++e) mean[e] += r.out.data_as<float>()[e] / kSeeds;
  }
  // E[Z] = 1, so the mean converges to the exact output; each entry's sd over seeds is
  // below max|v| ~ 4, so 400 seeds leave a standard error < 0.2 and the average error
  // over all entries is far smaller.
  double err = 0;
  for (size_t e = 0; e < mean.size(); ++e) err += std::fabs(mean[e] - exact.out.data_as<float>()[e]);
  EXPECT_LT(err / double(mean.size()), 0.05);
}

TEST(Dropout, RejectsProbabilityOutsideZeroOne) {
  Problem pb(3);
  for (float p : {-0.1f, 1.0f, NAN}) {
    AttentionOptions o;
    o.dropout_p = p;
    try {
      attention_forward(pb.q, pb.k, pb.v, o);
      FAIL() << "accepted dropout_p=" << p;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_EQ(e.tensor(), "options.dropout_p");
    }
  }
}

}  // namespace
}  // namespace multihead
