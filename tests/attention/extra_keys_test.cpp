// AttentionOptions::extra_keys (docs/design-extra-keys.md): the last n rows of k and v are
// keys every query sees, exempt from causal, window, key padding, mask, bias and ALiBi;
// scale, softcap, sinks and dropout apply as to any key. On the dispatched kernels (the
// SIMD ones under avx512 and avx2, the portable ones under scalar), forward and backward:
//   - against the oracle for every option of the design note's table (run_case: out, lse,
//     probs, dq, dk, dv, dbias, dsinks under the pass rule);
//   - against the same problem written the module's old way (an explicit mask and bias
//     over all keys, extra_keys = 0);
//   - head_stats against the probabilities, bitwise equal for 1 to 3 threads (which also
//     switches the SIMD backward between its fused and separate dQ passes);
//   - validation: typed errors naming the argument, dimension and value.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "support/cases.hpp"
#include "support/errors.hpp"

namespace multihead::test {
namespace {

using reference::Broadcast;
using reference::CaseInputs;
using reference::CaseKind;
using reference::Layout;

struct Variant {
  const char* name;
  std::function<void(Case&)> apply;
};

// The base problem: 2 batches, 37 queries, 77 keys of which the last 3 are extra, GQA.
Case base_case(uint64_t seed) {
  Case c;
  c.kind = CaseKind::kExtraKeys;
  c.B = 2, c.Lq = 37, c.Lk = 77, c.H = 4, c.Hkv = 2, c.D = 24, c.Dv = 16;
  c.extra_keys = 3;
  c.probs = true;
  c.seed = seed;
  return c;
}

const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = {
      {"plain", [](Case&) {}},
      {"mha", [](Case& c) { c.Hkv = 4; }},
      {"mqa", [](Case& c) { c.Hkv = 1; }},
      {"causal_top_left", [](Case& c) { c.causal = CausalAlign::kTopLeft; }},
      {"causal_bottom_right", [](Case& c) { c.causal = CausalAlign::kBottomRight; }},
      // More queries than input keys: bottom-right rows i < Lq - Lk_in see only the extra keys.
      {"causal_bottom_right_long_q", [](Case& c) { c.causal = CausalAlign::kBottomRight, c.Lq = 90; }},
      {"causal_top_left_long_q", [](Case& c) { c.causal = CausalAlign::kTopLeft, c.Lq = 150; }},
      {"window", [](Case& c) { c.window = {5, 2}; }},
      {"window_causal", [](Case& c) { c.window = {9, -1}, c.causal = CausalAlign::kBottomRight; }},
      // A window wholly past the input keys for some rows.
      {"window_past_keys", [](Case& c) { c.window = {0, 0}, c.Lq = 120, c.causal = CausalAlign::kTopLeft; }},
      {"key_padding", [](Case& c) { c.key_padding = true; }},
      {"key_padding_causal", [](Case& c) { c.key_padding = true, c.causal = CausalAlign::kBottomRight; }},
      {"mask_full", [](Case& c) { c.mask = Broadcast::kFull; }},
      {"mask_batch_key", [](Case& c) { c.mask = Broadcast::kBatchKey; }},
      {"mask_rank2", [](Case& c) { c.mask = Broadcast::kRank2; }},
      // Rows the mask empties still see the extra keys: no fully masked row.
      {"mask_empty_rows", [](Case& c) { c.mask = Broadcast::kFull, c.empty_rows = true; }},
      {"bias_full", [](Case& c) { c.bias = Broadcast::kFull; }},
      {"bias_head_query_key", [](Case& c) { c.bias = Broadcast::kHeadQueryKey; }},
      {"bias_batch_head_key", [](Case& c) { c.bias = Broadcast::kBatchHeadKey; }},
      {"bias_query_key_causal", [](Case& c) { c.bias = Broadcast::kQueryKey, c.causal = CausalAlign::kTopLeft; }},
      {"bias_rank2_softcap", [](Case& c) { c.bias = Broadcast::kRank2, c.softcap = 2.0f; }},
      {"alibi", [](Case& c) { c.alibi = true; }},
      {"alibi_causal", [](Case& c) { c.alibi = true, c.causal = CausalAlign::kBottomRight; }},
      {"alibi_key_padding", [](Case& c) { c.alibi = true, c.key_padding = true; }},
      {"softcap", [](Case& c) { c.softcap = 1.5f, c.scale = 1.0f; }},
      {"sinks", [](Case& c) { c.sinks = true; }},
      {"sinks_causal", [](Case& c) { c.sinks = true, c.causal = CausalAlign::kTopLeft; }},
      {"dropout", [](Case& c) { c.dropout_p = 0.3f; }},
      {"dropout_causal_mask",
       [](Case& c) { c.dropout_p = 0.2f, c.causal = CausalAlign::kBottomRight, c.mask = Broadcast::kQueryKey; }},
      {"varlen", [](Case& c) {
         c.varlen_q = {5, 40, 1, 17}, c.varlen_k = {9, 3, 70, 3};
         c.B = 1, c.Lq = 63, c.Lk = 85, c.probs = false;
       }},
      {"varlen_causal", [](Case& c) {
         c.varlen_q = {33, 1, 70}, c.varlen_k = {40, 64, 20};
         c.B = 1, c.Lq = 104, c.Lk = 124, c.probs = false, c.causal = CausalAlign::kBottomRight;
       }},
      // Every key extra, more extra keys than a tile, one extra key.
      {"all_extra", [](Case& c) { c.extra_keys = c.Lk, c.causal = CausalAlign::kTopLeft, c.mask = Broadcast::kRank2; }},
      {"extra_70", [](Case& c) { c.Lk = 150, c.extra_keys = 70, c.causal = CausalAlign::kBottomRight; }},
      {"extra_1", [](Case& c) { c.extra_keys = 1, c.causal = CausalAlign::kTopLeft, c.key_padding = true; }},
      // Decode shapes: a few queries, many keys (1100 keys: split into chunks when heads are few).
      {"decode", [](Case& c) { c.Lq = 1, c.Lk = 300, c.causal = CausalAlign::kBottomRight; }},
      {"decode_splits",
       [](Case& c) { c.Lq = 3, c.Lk = 1100, c.Hkv = 1, c.B = 1, c.key_padding = true, c.alibi = true; }},
      {"decode_splits_bias",
       [](Case& c) { c.Lq = 2, c.Lk = 1100, c.B = 1, c.bias = Broadcast::kFull, c.extra_keys = 2; }},
      {"bf16",
       [](Case& c) { c.dtype = DType::kBF16, c.causal = CausalAlign::kBottomRight, c.bias = Broadcast::kFull; }},
      {"bf16_full_tiles", [](Case& c) { c.dtype = DType::kBF16, c.D = 64, c.Lk = 192, c.extra_keys = 64; }},
      {"f32_full_tiles", [](Case& c) { c.D = 32, c.Lk = 192, c.extra_keys = 64, c.causal = CausalAlign::kTopLeft; }},
      {"strided", [](Case& c) { c.layout = Layout::kPadded, c.key_padding = true, c.causal = CausalAlign::kTopLeft; }},
      {"head_major", [](Case& c) { c.layout = Layout::kHeadMajor, c.window = {3, 3}; }},
      {"everything", [](Case& c) {
         c.causal = CausalAlign::kBottomRight, c.window = {20, -1}, c.key_padding = true, c.mask = Broadcast::kBatchKey,
         c.bias = Broadcast::kFull, c.alibi = true, c.softcap = 5.0f, c.sinks = true, c.dropout_p = 0.1f;
       }},
  };
  return v;
}

Case variant_case(size_t index, uint64_t seed) {
  Case c = base_case(seed);
  variants()[index].apply(c);
  return c;
}

class ExtraKeysSweep : public ::testing::TestWithParam<size_t> {
 protected:
  void TearDown() override { set_num_threads(0); }
};

TEST_P(ExtraKeysSweep, MatchesOracle) {
  const Case c = variant_case(GetParam(), 3000 + GetParam());
  const reference::CaseResult r = reference::run_case(c, /*backward=*/true);
  EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report();
}

// Every output element is owned by one work item: the same bits for 1, 2 and 3 threads
// (the SIMD backward fuses dQ into the dK/dV pass only with enough pairs per thread).
TEST_P(ExtraKeysSweep, BitwiseEqualFor1To3Threads) {
  const Case c = variant_case(GetParam(), 4000 + GetParam());
  const CaseInputs in = reference::materialize(c);
  const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
  set_num_threads(1);
  const Forward f1 = run_forward(q, k, v, in.options);
  const Backward g1 = run_backward(in.dout.view(), q, k, v, f1, in.options);
  for (int threads : {2, 3}) {
    set_num_threads(threads);
    const Forward f = run_forward(q, k, v, in.options);
    const Backward g = run_backward(in.dout.view(), q, k, v, f, in.options);
    EXPECT_TRUE(same_bytes(f1.out.view(), f.out.view())) << threads << " threads, " << c.describe();
    EXPECT_TRUE(same_bytes(f1.lse.view(), f.lse.view())) << threads << " threads, " << c.describe();
    EXPECT_TRUE(same_bytes(g1.dq.view(), g.dq.view())) << threads << " threads, " << c.describe();
    EXPECT_TRUE(same_bytes(g1.dk.view(), g.dk.view())) << threads << " threads, " << c.describe();
    EXPECT_TRUE(same_bytes(g1.dv.view(), g.dv.view())) << threads << " threads, " << c.describe();
    if (in.options.bias) {
      EXPECT_TRUE(same_bytes(g1.dbias.view(), g.dbias.view())) << threads << " threads, " << c.describe();
    }
  }
}

std::string variant_name(const ::testing::TestParamInfo<size_t>& info) { return variants()[info.param].name; }

INSTANTIATE_TEST_SUITE_P(ExtraKeys, ExtraKeysSweep, ::testing::Range<size_t>(0, variants().size()), variant_name);

// head_stats over all keys: an argmax >= Lk - extra_keys names an extra key. Compared with
// the probabilities of the same call (exact, over all Lk columns).
TEST(ExtraKeys, HeadStatsCoverTheExtraKeys) {
  for (const bool decode : {false, true}) {
    Case c = base_case(77);
    c.causal = CausalAlign::kTopLeft, c.key_padding = true, c.alibi = true;
    if (decode) c.Lq = 2;
    CaseInputs in = reference::materialize(c);
    // Make the first extra key the best of every row: k_extra = a large multiple of Σ q rows.
    float* kd = in.k.view.dtype == DType::kF32 ? static_cast<float*>(in.k.view.data) : nullptr;
    ASSERT_NE(kd, nullptr);
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.Hkv; ++h)
        for (int64_t d = 0; d < c.D; ++d) {
          float sum = 0;
          for (int64_t i = 0; i < c.Lq; ++i)
            for (int64_t g = h * (c.H / c.Hkv); g < (h + 1) * (c.H / c.Hkv); ++g)
              sum += static_cast<const float*>(in.q.view.data)[in.q.view.offset(Shape{b, i, g, d})];
          kd[in.k.view.offset(Shape{b, c.Lk - c.extra_keys, h, d})] = sum > 0 ? 4.0f : -4.0f;
        }
    Tensor out = Tensor::empty(DType::kF32, {c.B, c.Lq, c.H, c.Dv});
    Tensor probs = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq, c.Lk});
    Tensor stats = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq, 3});
    Tensor lse = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq});
    attention_forward(in.q.view, in.k.view, in.v.view,
                      ForwardOutputs{out.view(), lse.view(), probs.view(), stats.view()}, in.options);
    int64_t extra_argmax = 0;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t i = 0; i < c.Lq; ++i) {
          const float* p = probs.data_as<float>() + ((b * c.H + h) * c.Lq + i) * c.Lk;
          const float* s = stats.data_as<float>() + ((b * c.H + h) * c.Lq + i) * 3;
          int64_t best = 0;
          double entropy = 0;
          for (int64_t j = 0; j < c.Lk; ++j) {
            if (p[j] > p[best]) best = j;
            if (p[j] > 0) entropy -= double(p[j]) * std::log(double(p[j]));
          }
          EXPECT_NEAR(s[0], entropy, 1e-4 * std::max(1.0, entropy)) << b << " " << h << " " << i;
          EXPECT_NEAR(s[1], p[best], 1e-5) << b << " " << h << " " << i;
          if (p[int64_t(s[2])] != p[best]) {
            EXPECT_EQ(s[2], float(best)) << b << " " << h << " " << i;
          }
          extra_argmax += s[2] >= float(c.Lk - c.extra_keys);
        }
    EXPECT_GT(extra_argmax, 0) << "no row's argmax is an extra key: the test does not reach them";
  }
}

// The module's old lowering, written out: extra keys as ordinary keys, with an explicit
// mask (key padding, causal, window, the user's mask; true on extra keys) and an f32
// bias (the user's bias plus ALiBi; 0 on extra keys) over all Lk keys.
struct Materialised {
  Tensor mask, bias;
  AttentionOptions options;
};
Materialised materialise(const Case& c, const AttentionOptions& o) {
  const int64_t n = c.extra_keys, lk_in = c.Lk - n;
  Materialised m;
  m.options.scale = o.scale, m.options.softcap = o.softcap, m.options.sinks = o.sinks;
  m.options.dropout_p = o.dropout_p, m.options.dropout_seed = o.dropout_seed;
  m.mask = Tensor::empty(DType::kBool, {c.B, c.H, c.Lq, c.Lk});
  m.bias = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq, c.Lk});
  const auto at = [](const TensorView& t, int64_t b, int64_t h, int64_t i, int64_t j) {
    const int64_t index[4] = {b, h, i, j};
    int64_t off = 0;
    for (int d = 0; d < t.rank; ++d)
      if (t.shape[d] != 1) off += index[4 - t.rank + d] * t.strides[d];
    return off;
  };
  for (int64_t b = 0; b < c.B; ++b) {
    const int64_t len = o.seqlens_k ? static_cast<const int32_t*>(o.seqlens_k->data)[b] : lk_in;
    const int64_t off = o.causal == CausalAlign::kTopLeft ? 0 : len - c.Lq;
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t i = 0; i < c.Lq; ++i)
        for (int64_t j = 0; j < c.Lk; ++j) {
          const int64_t e = ((b * c.H + h) * c.Lq + i) * c.Lk + j;
          bool keep = true;
          float x = 0.0f;
          if (j < lk_in) {
            keep = j < len;
            if (o.causal != CausalAlign::kNone) keep = keep && j <= i + off;
            if (o.window.left >= 0) keep = keep && j >= i + off - o.window.left;
            if (o.window.right >= 0) keep = keep && j <= i + off + o.window.right;
            if (o.mask) keep = keep && static_cast<const bool*>(o.mask->data)[at(*o.mask, b, h, i, j)];
            if (o.bias) x = static_cast<const float*>(o.bias->data)[at(*o.bias, b, h, i, j)];
            if (o.alibi_slopes)
              x -= static_cast<const float*>(o.alibi_slopes->data)[h] * float(std::llabs(j - (i + off)));
          }
          m.mask.data_as<bool>()[e] = keep;
          m.bias.data_as<float>()[e] = x;
        }
  }
  m.options.mask = m.mask.view();
  m.options.bias = m.bias.view();
  return m;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  double worst = 0;
  for (int64_t e = 0; e < a.numel(); ++e)
    worst = std::max(worst, std::abs(double(a.data_as<float>()[e]) - double(b.data_as<float>()[e])));
  return worst;
}

// The result of extra_keys equals the old materialised problem (to rounding: ALiBi and the
// bias are added in another order), forward and backward, dropout bits included.
TEST(ExtraKeys, EqualsTheMaterialisedMaskAndBias) {
  struct Setup {
    const char* name;
    std::function<void(Case&)> apply;
  };
  const Setup setups[] = {
      {"causal_keypad", [](Case& c) { c.causal = CausalAlign::kBottomRight, c.key_padding = true; }},
      {"window_alibi", [](Case& c) { c.window = {4, 1}, c.alibi = true; }},
      {"mask_bias_dropout",
       [](Case& c) { c.mask = Broadcast::kBatchKey, c.bias = Broadcast::kFull, c.dropout_p = 0.25f; }},
      {"topleft_sinks_softcap", [](Case& c) { c.causal = CausalAlign::kTopLeft, c.sinks = true, c.softcap = 3.0f; }},
      {"decode_alibi_keypad", [](Case& c) { c.Lq = 1, c.alibi = true, c.key_padding = true, c.extra_keys = 2; }},
  };
  for (const Setup& setup : setups) {
    Case c = base_case(500);
    setup.apply(c);
    const CaseInputs in = reference::materialize(c);
    const Materialised m = materialise(c, in.options);
    const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
    const Forward a = run_forward(q, k, v, in.options, /*probs=*/true);
    const Forward b = run_forward(q, k, v, m.options, /*probs=*/true);
    EXPECT_LT(max_abs_diff(a.out, b.out), 2e-5) << setup.name;
    EXPECT_LT(max_abs_diff(a.lse, b.lse), 2e-5) << setup.name;
    EXPECT_LT(max_abs_diff(a.probs, b.probs), 2e-6) << setup.name;
    const Backward ga = run_backward(in.dout.view(), q, k, v, a, in.options);
    const Backward gb = run_backward(in.dout.view(), q, k, v, b, m.options);
    EXPECT_LT(max_abs_diff(ga.dq, gb.dq), 1e-4) << setup.name;
    EXPECT_LT(max_abs_diff(ga.dk, gb.dk), 1e-4) << setup.name;
    EXPECT_LT(max_abs_diff(ga.dv, gb.dv), 1e-4) << setup.name;
    if (in.options.bias) {  // dbias of the input keys = the materialised bias's dbias over its first columns
      const int64_t lk_in = c.Lk - c.extra_keys;
      double worst = 0;
      for (int64_t r = 0; r < c.B * c.H * c.Lq; ++r)
        for (int64_t j = 0; j < lk_in; ++j)
          worst = std::max(worst, std::abs(double(ga.dbias.data_as<float>()[r * lk_in + j]) -
                                           double(gb.dbias.data_as<float>()[r * c.Lk + j])));
      EXPECT_LT(worst, 1e-5) << setup.name;
    }
  }
}

// Input keys that nothing lets a row see leave exactly attention over the extra keys: the
// same problem with k, v cut to the extra rows and no options but the score transforms.
TEST(ExtraKeys, RowsWithNoInputKeySeeOnlyTheExtraKeys) {
  Case c = base_case(91);
  c.key_padding = true, c.softcap = 4.0f, c.sinks = true;
  CaseInputs in = reference::materialize(c);
  std::fill_n(in.seqlens_k.data_as<int32_t>(), c.B, 0);  // no input key in any batch
  const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
  const Forward a = run_forward(q, k, v, in.options);
  TensorView k_extra = k, v_extra = v;
  const int64_t first = c.Lk - c.extra_keys;
  k_extra.data = static_cast<float*>(k.data) + first * k.strides[1];
  v_extra.data = static_cast<float*>(v.data) + first * v.strides[1];
  k_extra.shape[1] = v_extra.shape[1] = c.extra_keys;
  AttentionOptions plain;
  plain.softcap = in.options.softcap, plain.sinks = in.options.sinks, plain.scale = in.options.scale;
  const Forward b = run_forward(q, k_extra, v_extra, plain);
  EXPECT_LT(max_abs_diff(a.out, b.out), 1e-6);
  EXPECT_LT(max_abs_diff(a.lse, b.lse), 1e-6);
}

// ---- validation ----

constexpr AttentionShapes kShapes{.B = 2, .Lq = 3, .Lk = 6, .H = 4, .Hkv = 2, .D = 8, .Dv = 6};

TEST(ExtraKeysValidation, CountInRange) {
  AttentionOptions o;
  o.extra_keys = -1;
  expect_error(capture([&] { validate_attention(kShapes, o); }), ErrorKind::kInvalidArgument, "options.extra_keys",
               "", ">= 0", "-1");
  o.extra_keys = 7;
  expect_error(capture([&] { validate_attention(kShapes, o); }), ErrorKind::kInvalidShape, "k", "dim 1 (Lk)",
               ">= extra_keys = 7", "6");
  o.extra_keys = 6;  // every key extra
  EXPECT_NO_THROW(validate_attention(kShapes, o, /*return_probs=*/true));
  o.extra_keys = 0;
  EXPECT_NO_THROW(validate_attention({.B = 1, .Lq = 1, .Lk = 0, .H = 1, .Hkv = 1, .D = 1, .Dv = 1}, o));
}

TEST(ExtraKeysValidation, MaskAndBiasDescribeTheInputKeys) {
  AttentionOptions o;
  o.extra_keys = 2;
  std::vector<uint8_t> mask(3 * 6, 1);
  o.mask = TensorView::contiguous(mask.data(), DType::kBool, {3, 6});  // Lk columns: one too many
  expect_error(capture([&] { validate_attention(kShapes, o); }), ErrorKind::kInvalidMask, "mask",
               "dim 1 (Lk - extra_keys)", "1 or 4 (broadcast to (B, H, Lq, Lk - extra_keys)", "6");
  o.mask = TensorView::contiguous(mask.data(), DType::kBool, {3, 4});
  EXPECT_NO_THROW(validate_attention(kShapes, o));
  o.mask.reset();
  std::vector<float> bias(2 * 4 * 3 * 6, 0.0f);
  o.bias = TensorView::contiguous(bias.data(), DType::kF32, {2, 4, 3, 6});
  expect_error(capture([&] { validate_attention(kShapes, o); }), ErrorKind::kInvalidMask, "bias",
               "dim 3 (Lk - extra_keys)", "(B, H, Lq, Lk - extra_keys) = (2, 4, 3, 4)", "6");
  o.bias = TensorView::contiguous(bias.data(), DType::kF32, {2, 4, 3, 4});
  EXPECT_NO_THROW(validate_attention(kShapes, o));
}

TEST(ExtraKeysValidation, SeqlensCountInputKeys) {
  AttentionOptions o;
  o.extra_keys = 2;
  std::vector<int32_t> lengths{4, 5};
  o.seqlens_k = TensorView::of(lengths.data(), {2});
  expect_error(capture([&] { validate_attention(kShapes, o); }), ErrorKind::kInvalidArgument, "seqlens_k",
               "element 1", "in [0, 4] (Lk - extra_keys)", "5");
  lengths[1] = 0;
  EXPECT_NO_THROW(validate_attention(kShapes, o));
}

TEST(ExtraKeysValidation, EveryPackedSequenceHoldsTheExtraKeys) {
  AttentionOptions o;
  o.extra_keys = 2;
  std::vector<int32_t> cq{0, 2, 3}, ck{0, 5, 6};  // sequence 1 has one key
  o.cu_seqlens_q = TensorView::of(cq.data(), {3});
  o.cu_seqlens_k = TensorView::of(ck.data(), {3});
  const AttentionShapes packed{.B = 1, .Lq = 3, .Lk = 6, .H = 4, .Hkv = 2, .D = 8, .Dv = 6};
  expect_error(capture([&] { validate_attention(packed, o); }), ErrorKind::kInvalidShape, "cu_seqlens_k",
               "element 2", ">= 5 + extra_keys = 7", "6");
  ck = {0, 4, 6};
  EXPECT_NO_THROW(validate_attention(packed, o));
}

// The tensor entry points apply the same rules (one place): probs over all Lk keys,
// dbias of the bias's own shape.
TEST(ExtraKeysValidation, TensorCallsAgree) {
  Case c = base_case(5);
  c.bias = Broadcast::kFull;
  CaseInputs in = reference::materialize(c);
  AttentionOptions o = in.options;
  o.extra_keys = c.Lk + 1;
  const TensorView &q = in.q.view, &k = in.k.view, &v = in.v.view;
  expect_error(capture([&] { attention_forward(q, k, v, o); }), ErrorKind::kInvalidShape, "k", "dim 1 (Lk)",
               ">= extra_keys", std::to_string(c.Lk));
  o.extra_keys = c.extra_keys - 1;  // the bias now lacks a column
  expect_error(capture([&] { attention_forward(q, k, v, o); }), ErrorKind::kInvalidMask, "bias",
               "dim 3 (Lk - extra_keys)", "1 or 75", "74");
  // probs of (B, H, Lq, Lk - extra_keys) are refused: probs cover every key.
  Tensor out = Tensor::empty(DType::kF32, {c.B, c.Lq, c.H, c.Dv});
  Tensor short_probs = Tensor::empty(DType::kF32, {c.B, c.H, c.Lq, c.Lk - c.extra_keys});
  expect_error(capture([&] {
                 attention_forward(q, k, v, ForwardOutputs{out.view(), std::nullopt, short_probs.view()}, in.options);
               }),
               ErrorKind::kInvalidShape, "probs", "dim 3 (Lk)", std::to_string(c.Lk),
               std::to_string(c.Lk - c.extra_keys));
  const Forward f = run_forward(q, k, v, in.options, /*probs=*/true);
  const Backward g = run_backward(in.dout.view(), q, k, v, f, in.options);
  EXPECT_EQ(g.dbias.view().shape, in.bias.view().shape);
}

}  // namespace
}  // namespace multihead::test
