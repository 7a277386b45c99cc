// The module's attention options are checked by the public validate_attention against
// the *input* keys (the keys add_bias_kv / add_zero_attn append are not the user's): a
// bad option throws the error validate_attention throws for the input shapes, and the
// failing call leaves the module's tape as it was.
#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <string>
#include <vector>

#include "module/module_support.hpp"
#include "support/errors.hpp"

namespace multihead::test {
namespace {

TEST(ModuleOptions, ErrorsAreValidateAttentionsOverTheInputKeys) {
  const int64_t B = 2, Lq = 3, Lk = 4;
  for (const bool appended : {false, true}) {
    MultiHeadAttention m(MultiHeadAttentionConfig{
        .embed_dim = 8, .num_heads = 4, .num_kv_heads = 2, .add_bias_kv = appended, .add_zero_attn = appended});
    const int64_t extra = appended ? 2 : 0;
    std::mt19937_64 rng(3);
    const Tensor q = random_tensor(rng, {B, Lq, 8}), kv = random_tensor(rng, {B, Lk, 8});
    const Tensor dout = random_tensor(rng, {B, Lq, 8});
    const AttentionShapes input_shapes{.B = B, .Lq = Lq, .Lk = Lk, .H = 4, .Hkv = 2, .D = 2, .Dv = 2};

    Tensor long_keys = Tensor::zeros(DType::kI32, {B});
    long_keys.data_as<int32_t>()[1] = int32_t(Lk + 1);  // past the input keys, inside Lk + extra
    const Tensor wide_mask = Tensor::zeros(DType::kBool, {Lq, Lk + extra + 1});
    const Tensor short_slopes = Tensor::zeros(DType::kF32, {2});
    std::vector<std::function<void(AttentionOptions&)>> spoil = {
        [&](AttentionOptions& o) { o.seqlens_k = long_keys.view(); },
        [&](AttentionOptions& o) { o.mask = wide_mask.view(); },
        [&](AttentionOptions& o) { o.alibi_slopes = short_slopes.view(); },
        [](AttentionOptions& o) { o.window = {-5, 0}; },
        [](AttentionOptions& o) { o.scale = 0.0f; },
    };

    // A good forward first: its tape must survive the failing calls.
    const MhaOutput good = m.forward(q, &kv.view(), &kv.view());
    const MhaInputGrads g1 = m.backward(dout);
    for (size_t n = 0; n < spoil.size(); ++n) {
      MhaForwardOptions options;
      spoil[n](options.attention);
      const Error by_module = capture([&] { m.forward(q, &kv.view(), &kv.view(), options); });
      const Error by_shapes = capture([&] { validate_attention(input_shapes, options.attention); });
      EXPECT_EQ(by_module.kind(), by_shapes.kind()) << n;
      EXPECT_EQ(std::string(by_module.what()), std::string(by_shapes.what())) << n;
    }
    m.zero_grad();
    const MhaInputGrads g2 = m.backward(dout);
    EXPECT_TRUE(to_vec(g2.dquery) == to_vec(g1.dquery)) << appended;
    EXPECT_TRUE(to_vec(g2.dkey) == to_vec(g1.dkey)) << appended;
    EXPECT_EQ(good.out.size(1), Lq);
  }
}

}  // namespace
}  // namespace multihead::test
