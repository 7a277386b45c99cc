// The module passes the keys add_bias_kv / add_zero_attn append as extra_keys
// (docs/design-extra-keys.md): lower_options copies the user's options unchanged (mask and
// bias keep their own shapes over the input keys, no mask or bias is built for positional
// options), and the module refuses a user's own extra_keys. End to end, a row that no
// input key may reach attends only the appended keys, as in PyTorch.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "module/module_state.hpp"
#include "module/module_support.hpp"

namespace multihead::test {
namespace {

TEST(ExtraKeysLowering, OptionsPassThroughWithExtraKeys) {
  const int64_t B = 2, H = 4, Lq = 3, Lk = 5;
  std::vector<int32_t> lengths{5, 2};
  std::vector<float> slopes{0.5f, 0.25f, 0.125f, 0.0625f};
  std::vector<uint8_t> mask(Lq * Lk, 1);
  std::vector<float> bias(H * Lq * Lk, 0.5f);
  AttentionOptions user;
  user.causal = CausalAlign::kBottomRight;
  user.window = {2, -1};
  user.seqlens_k = TensorView::of(lengths.data(), {B});
  user.alibi_slopes = TensorView::of(slopes.data(), {H});
  user.mask = TensorView::contiguous(mask.data(), DType::kBool, {Lq, Lk});
  user.bias = TensorView::contiguous(bias.data(), DType::kF32, {1, H, Lq, Lk});
  user.softcap = 3.0f;
  for (const int64_t extra : {0, 1, 2}) {
    detail::Scratch m, b, s, a, k;
    const AttentionOptions o = detail::lower_options(user, detail::OptionBuffers{m, b, s, a, k}, extra);
    EXPECT_EQ(o.extra_keys, extra);
    EXPECT_EQ(o.causal, user.causal);
    EXPECT_EQ(o.window.left, 2);
    EXPECT_EQ(o.window.right, -1);
    EXPECT_EQ(o.softcap, 3.0f);
    ASSERT_TRUE(o.mask && o.bias && o.seqlens_k && o.alibi_slopes);
    // The user's own shapes: nothing grows to Lk + extra, nothing gains a B or H dim.
    EXPECT_EQ(o.mask->rank, 2);
    EXPECT_EQ(o.mask->shape[1], Lk);
    EXPECT_EQ(o.bias->rank, 4);
    EXPECT_EQ(o.bias->shape, (Shape{1, H, Lq, Lk}));
    EXPECT_EQ(o.bias->dtype, DType::kF32);
    EXPECT_EQ(static_cast<const int32_t*>(o.seqlens_k->data)[1], 2);
    EXPECT_EQ(static_cast<const float*>(o.alibi_slopes->data)[3], 0.0625f);
    // Copies, not the caller's buffers (backward reuses them).
    EXPECT_NE(o.mask->data, static_cast<const void*>(mask.data()));
  }
  // Positional options alone: no mask or bias appears.
  AttentionOptions positional;
  positional.causal = CausalAlign::kTopLeft;
  positional.seqlens_k = TensorView::of(lengths.data(), {B});
  positional.alibi_slopes = TensorView::of(slopes.data(), {H});
  detail::Scratch m, b, s, a, k;
  const AttentionOptions o = detail::lower_options(positional, detail::OptionBuffers{m, b, s, a, k}, 2);
  EXPECT_FALSE(o.mask.has_value());
  EXPECT_FALSE(o.bias.has_value());
  EXPECT_EQ(o.extra_keys, 2);
}

TEST(ExtraKeysLowering, ModuleRefusesAUsersExtraKeys) {
  MultiHeadAttention m(MultiHeadAttentionConfig{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true});
  std::mt19937_64 rng(1);
  const Tensor x = random_tensor(rng, {1, 3, 8});
  MhaForwardOptions options;
  options.attention.extra_keys = 1;
  try {
    m.forward(x.view(), nullptr, nullptr, options);
    FAIL() << "accepted options.attention.extra_keys";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_EQ(e.tensor(), "options.attention.extra_keys");
    EXPECT_EQ(e.got(), "1");
  }
}

// Key padding of every input key leaves each row the appended keys only: with
// add_zero_attn alone, all weight on the zero key (PyTorch pads key_padding_mask with
// "may attend"); with causal top-left, row 0 sees input key 0 and the appended keys.
TEST(ExtraKeysLowering, AppendedKeysEscapeEveryPositionalOption) {
  const int64_t B = 2, L = 4, E = 8, H = 2;
  std::mt19937_64 rng(7);
  const Tensor x = random_tensor(rng, {B, L, E});
  for (const bool bias_kv : {false, true}) {
    MultiHeadAttention m(MultiHeadAttentionConfig{.embed_dim = E, .num_heads = H, .add_bias_kv = bias_kv,
                                                  .add_zero_attn = true});
    const int64_t extra = 1 + int64_t(bias_kv);
    Tensor lengths = Tensor::zeros(DType::kI32, {B});
    MhaForwardOptions options;
    options.need_weights = true;
    options.average_weights = false;
    options.attention.seqlens_k = lengths.view();
    options.attention.causal = CausalAlign::kTopLeft;
    const MhaOutput out = m.forward(x.view(), nullptr, nullptr, options);
    ASSERT_EQ(out.weights.view().shape, (Shape{B, H, L, L + extra}));
    const float* w = out.weights.data_as<float>();
    for (int64_t r = 0; r < B * H * L; ++r) {
      double on_extra = 0;
      for (int64_t j = 0; j < L; ++j) EXPECT_EQ(w[r * (L + extra) + j], 0.0f) << r << " " << j;
      for (int64_t j = L; j < L + extra; ++j) on_extra += w[r * (L + extra) + j];
      EXPECT_NEAR(on_extra, 1.0, 1e-6) << r;
      if (!bias_kv) {
        EXPECT_NEAR(w[r * (L + extra) + L], 1.0, 1e-6) << r;
      }
    }
  }
}

}  // namespace
}  // namespace multihead::test
