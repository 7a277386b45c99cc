// The module's streaming per-head statistics (need_head_stats) against the same numbers
// computed from its own per-head weights (need_weights), appended keys included.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "module/module_support.hpp"
#include "multihead/multihead.hpp"

namespace multihead {
namespace {

using test::random_tensor;

struct StatsCase {
  int64_t B = 2, L = 19, E = 32, H = 4;
  bool add_bias_kv = false, add_zero_attn = false;
  CausalAlign causal = CausalAlign::kTopLeft;
  uint64_t seed = 1;
};

void expect_head_stats_match_weights(const StatsCase& c) {
  MultiHeadAttentionConfig config;
  config.embed_dim = c.E, config.num_heads = c.H, config.seed = c.seed;
  config.add_bias_kv = c.add_bias_kv, config.add_zero_attn = c.add_zero_attn;
  MultiHeadAttention m(config);
  std::mt19937_64 rng(c.seed);
  // Inputs of size 3 give sharp enough rows that argmax is well defined on most of them.
  const Tensor x = random_tensor(rng, {c.B, c.L, c.E}, -3.0, 3.0);
  const int64_t extra = int64_t(c.add_bias_kv) + int64_t(c.add_zero_attn), Lke = c.L + extra;

  MhaForwardOptions options;
  options.attention.causal = c.causal;
  options.need_weights = true;
  options.average_weights = false;
  options.need_head_stats = true;
  const MhaOutput both = m.forward(x.view(), nullptr, nullptr, options);
  ASSERT_EQ(both.head_stats.rank(), 4);
  EXPECT_EQ(both.head_stats.size(0), c.B);
  EXPECT_EQ(both.head_stats.size(1), c.H);
  EXPECT_EQ(both.head_stats.size(2), c.L);
  EXPECT_EQ(both.head_stats.size(3), 3);
  ASSERT_EQ(both.weights.size(3), Lke);

  options.need_weights = false;
  const MhaOutput stats_only = m.forward(x.view(), nullptr, nullptr, options);
  EXPECT_EQ(std::memcmp(stats_only.head_stats.data(), both.head_stats.data(), both.head_stats.nbytes()), 0)
      << "the statistics do not depend on also asking for weights";
  options.need_head_stats = false;
  const MhaOutput plain = m.forward(x.view(), nullptr, nullptr, options);
  EXPECT_EQ(plain.head_stats.data(), nullptr);
  EXPECT_EQ(std::memcmp(plain.out.data(), both.out.data(), both.out.nbytes()), 0) << "asking for stats changed out";

  const float* w = both.weights.data_as<float>();
  const float* st = both.head_stats.data_as<float>();
  int64_t argmax_checked = 0;
  for (int64_t row = 0; row < c.B * c.H * c.L; ++row) {
    const float* p = w + row * Lke;
    double entropy = 0, best = 0, second = 0;
    int64_t arg = -1;
    for (int64_t j = 0; j < Lke; ++j) {
      if (p[j] > 0) entropy -= double(p[j]) * std::log(double(p[j]));
      if (p[j] > best) second = best, best = p[j], arg = j;
      else if (p[j] > second) second = p[j];
    }
    const float* s = st + row * 3;
    EXPECT_NEAR(s[0], entropy, 1e-5 * std::max(1.0, entropy)) << "entropy, row " << row;
    EXPECT_NEAR(s[1], best, 1e-6) << "max probability, row " << row;
    if (best - second > 1e-4 * best) {  // a near tie may go either way
      EXPECT_EQ(int64_t(s[2]), arg) << "argmax, row " << row;
      ++argmax_checked;
    }
  }
  EXPECT_GT(argmax_checked, c.B * c.H * c.L / 2);
}

TEST(ModuleHeadStats, MatchTheModulesOwnWeights) {
  expect_head_stats_match_weights({});
  expect_head_stats_match_weights({.H = 1, .seed = 2});
  expect_head_stats_match_weights({.B = 1, .L = 70, .E = 64, .H = 8, .causal = CausalAlign::kNone, .seed = 3});
}

TEST(ModuleHeadStats, CoverTheAppendedKeys) {
  expect_head_stats_match_weights({.add_bias_kv = true, .seed = 4});
  expect_head_stats_match_weights({.add_zero_attn = true, .seed = 5});
  expect_head_stats_match_weights({.add_bias_kv = true, .add_zero_attn = true, .causal = CausalAlign::kNone, .seed = 6});
}

}  // namespace
}  // namespace multihead
