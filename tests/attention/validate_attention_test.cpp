// validate_attention: the contract's shape and option rules without tensors. It throws
// the typed error that attention_forward throws for the same problem (one place for
// every rule), passes valid problems, and reads no element of mask or bias.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "multihead/multihead.hpp"
#include "support/errors.hpp"

namespace multihead::test {
namespace {

constexpr AttentionShapes kShapes{.B = 2, .Lq = 3, .Lk = 4, .H = 4, .Hkv = 2, .D = 8, .Dv = 6};

TEST(ValidateAttention, ValidProblemsPass) {
  EXPECT_NO_THROW(validate_attention(kShapes, {}));
  EXPECT_NO_THROW(validate_attention(kShapes, {}, /*return_probs=*/true));
  // Empty problems are valid (empty results).
  EXPECT_NO_THROW(validate_attention({.B = 0, .Lq = 0, .Lk = 0, .H = 4, .Hkv = 2, .D = 8, .Dv = 6}, {}));

  std::vector<uint8_t> mask(2 * 3 * 4, 1);
  std::vector<float> bias(3 * 4, 0.5f), slopes(4, 0.25f), sinks(4, -1.0f);
  std::vector<int32_t> lengths{4, 1};
  AttentionOptions o;
  o.scale = 0.5f;
  o.causal = CausalAlign::kBottomRight;
  o.window = {2, 0};
  o.softcap = 30.0f;
  o.dropout_p = 0.1f;
  o.mask = TensorView::contiguous(mask.data(), DType::kBool, {2, 1, 3, 4});
  o.bias = TensorView::of(bias.data(), {3, 4});
  o.seqlens_k = TensorView::of(lengths.data(), {2});
  o.alibi_slopes = TensorView::of(slopes.data(), {4});
  o.sinks = TensorView::of(sinks.data(), {4});
  EXPECT_NO_THROW(validate_attention(kShapes, o, true));

  // Packed varlen: B = 1, Lq and Lk are the totals.
  std::vector<int32_t> cu_q{0, 2, 5}, cu_k{0, 4, 9};
  AttentionOptions packed;
  packed.cu_seqlens_q = TensorView::of(cu_q.data(), {3});
  packed.cu_seqlens_k = TensorView::of(cu_k.data(), {3});
  EXPECT_NO_THROW(validate_attention({.B = 1, .Lq = 5, .Lk = 9, .H = 4, .Hkv = 2, .D = 8, .Dv = 6}, packed));
}

TEST(ValidateAttention, TypedErrorsNameTheArgumentTheDimensionAndTheValue) {
  AttentionShapes gqa = kShapes;
  gqa.Hkv = 3;
  expect_error(capture([&] { validate_attention(gqa, {}); }), ErrorKind::kInvalidShape, "k", "dim 2 (Hkv)",
               "a divisor of H=4", "3");
  AttentionShapes negative = kShapes;
  negative.Lq = -1;
  expect_error(capture([&] { validate_attention(negative, {}); }), ErrorKind::kInvalidShape, "q", "dim 1 (Lq)", ">= 0",
               "-1");
  AttentionShapes no_dv = kShapes;
  no_dv.Dv = 0;
  expect_error(capture([&] { validate_attention(no_dv, {}); }), ErrorKind::kInvalidShape, "v", "dim 3 (Dv)", ">= 1",
               "0");
  const int64_t big = int64_t(1) << 40;
  expect_error(capture([&] { validate_attention({.B = big, .Lq = big, .Lk = 1, .H = 1, .Hkv = 1, .D = 1, .Dv = 1}, {}); }),
               ErrorKind::kCapacityExceeded, "q", "extent", "< 2^63 elements", "overflow");

  std::vector<uint8_t> mask(3 * 5, 1);
  AttentionOptions bad_mask;
  bad_mask.mask = TensorView::contiguous(mask.data(), DType::kBool, {3, 5});
  expect_error(capture([&] { validate_attention(kShapes, bad_mask); }), ErrorKind::kInvalidMask, "mask", "dim 1 (Lk)",
               "1 or 4", "5");

  std::vector<int32_t> lengths{4, 9};
  AttentionOptions long_keys;
  long_keys.seqlens_k = TensorView::of(lengths.data(), {2});
  expect_error(capture([&] { validate_attention(kShapes, long_keys); }), ErrorKind::kInvalidArgument, "seqlens_k",
               "element 1", "in [0, 4] (Lk)", "9");

  std::vector<float> slopes{0.5f, 0.25f, std::nanf(""), 0.125f};
  AttentionOptions nan_slope;
  nan_slope.alibi_slopes = TensorView::of(slopes.data(), {4});
  EXPECT_EQ(capture([&] { validate_attention(kShapes, nan_slope); }).dim(), "element 2");

  AttentionOptions zero_scale;
  zero_scale.scale = 0.0f;
  EXPECT_EQ(capture([&] { validate_attention(kShapes, zero_scale); }).tensor(), "options.scale");

  std::vector<int32_t> cu_q{0, 2, 5}, cu_k{0, 4, 9};
  AttentionOptions packed;
  packed.cu_seqlens_q = TensorView::of(cu_q.data(), {3});
  packed.cu_seqlens_k = TensorView::of(cu_k.data(), {3});
  const AttentionShapes totals{.B = 1, .Lq = 5, .Lk = 9, .H = 4, .Hkv = 2, .D = 8, .Dv = 6};
  expect_error(capture([&] { validate_attention(totals, packed, /*return_probs=*/true); }), ErrorKind::kUnsupported,
               "probs", "", "no probs with cu_seqlens", "probs requested");
  AttentionShapes batched = totals;
  batched.B = 2;
  expect_error(capture([&] { validate_attention(batched, packed); }), ErrorKind::kInvalidShape, "q", "dim 0 (B)",
               "1 (packed varlen batch)", "2");
}

// The same problem through attention_forward (real tensors) and through validate_attention
// (shapes only) gives the same error: kind, tensor, dim, expected and got.
TEST(ValidateAttention, SameErrorsAsAttentionForward) {
  const int64_t B = kShapes.B, Lq = kShapes.Lq, Lk = kShapes.Lk, H = kShapes.H, Hkv = kShapes.Hkv;
  const Tensor q = Tensor::zeros(DType::kF32, {B, Lq, H, kShapes.D});
  const Tensor k = Tensor::zeros(DType::kF32, {B, Lk, Hkv, kShapes.D});
  const Tensor v = Tensor::zeros(DType::kF32, {B, Lk, Hkv, kShapes.Dv});
  Tensor out = Tensor::zeros(DType::kF32, {B, Lq, H, kShapes.Dv});
  const Tensor wide_mask = Tensor::zeros(DType::kBool, {B, 1, Lq, Lk + 1});
  const Tensor int_bias = Tensor::zeros(DType::kI32, {Lq, Lk});
  const Tensor wrong_slopes = Tensor::zeros(DType::kF32, {H + 1});
  Tensor lengths = Tensor::zeros(DType::kI32, {B});
  lengths.data_as<int32_t>()[1] = -2;
  Tensor cu = Tensor::zeros(DType::kI32, {2});

  std::vector<std::function<void(AttentionOptions&)>> spoil = {
      [](AttentionOptions& o) { o.softcap = -1.0f; },
      [](AttentionOptions& o) { o.dropout_p = 1.0f; },
      [](AttentionOptions& o) { o.window = {-3, -1}; },
      [&](AttentionOptions& o) { o.mask = wide_mask.view(); },
      [&](AttentionOptions& o) { o.bias = int_bias.view(); },
      [&](AttentionOptions& o) { o.alibi_slopes = wrong_slopes.view(); },
      [&](AttentionOptions& o) { o.seqlens_k = lengths.view(); },
      [&](AttentionOptions& o) { o.cu_seqlens_q = cu.view(); },
  };
  for (size_t n = 0; n < spoil.size(); ++n) {
    AttentionOptions o;
    spoil[n](o);
    const Error by_shapes = capture([&] { validate_attention(kShapes, o); });
    const Error by_tensors = capture([&] { attention_forward(q.view(), k.view(), v.view(), {out.view()}, o); });
    EXPECT_EQ(by_shapes.kind(), by_tensors.kind()) << n;
    EXPECT_EQ(std::string(by_shapes.what()), std::string(by_tensors.what())) << n;
  }
}

// mask and bias live on a page that may not be read: a read would crash the test.
TEST(ValidateAttention, ReadsNoElementOfMaskOrBias) {
  const long page = sysconf(_SC_PAGESIZE);
  void* guard = mmap(nullptr, size_t(page), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(guard, MAP_FAILED);
  // Sizes no test could allocate: nothing of q, k, v exists.
  const AttentionShapes huge{.B = 64, .Lq = 1 << 20, .Lk = 1 << 20, .H = 32, .Hkv = 8, .D = 128, .Dv = 128};
  AttentionOptions o;
  TensorView mask;
  mask.data = guard;
  mask.dtype = DType::kBool;
  mask.rank = 4;
  mask.shape = {huge.B, 1, huge.Lq, huge.Lk};
  mask.strides = {0, 0, 0, 1};  // broadcast rows: a valid layout of any size
  TensorView bias = mask;
  bias.dtype = DType::kBF16;
  bias.rank = 2;
  bias.shape = {huge.Lq, huge.Lk};
  bias.strides = {0, 1};
  o.mask = mask;
  o.bias = bias;
  o.causal = CausalAlign::kTopLeft;
  EXPECT_NO_THROW(validate_attention(huge, o, /*return_probs=*/true));
  // A bad one is still caught from its shape alone.
  o.bias->shape[0] = 3;
  EXPECT_EQ(capture([&] { validate_attention(huge, o); }).tensor(), "bias");
  munmap(guard, size_t(page));
}

}  // namespace
}  // namespace multihead::test
