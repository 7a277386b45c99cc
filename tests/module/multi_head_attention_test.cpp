// The module against a straightforward double-precision composition of the same math
// (module_reference.hpp): projections done naively in double around the reference
// attention for the forward and the analytic backward chain, and central finite
// differences of an all-double composition on tiny shapes; dropout against the reference
// with the module's seed.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "module/dropout_seed.hpp"
#include "module/module_reference.hpp"
#include "module/module_support.hpp"

namespace multihead::test {
namespace {

std::string case_name(const ::testing::TestParamInfo<ModuleCase>& info) { return info.param.name; }

// Every parameter of the module set to random values (biases non-zero too), through
// load_state_dict.
void randomize(MultiHeadAttention& m, std::mt19937_64& rng, double scale = 0.5) {
  std::map<std::string, Tensor> owned;
  std::map<std::string, TensorView> views;
  for (const auto& [name, view] : m.state_dict()) {
    Tensor t = Tensor::empty(DType::kF32, view.rank, view.shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = float(uniform(rng, -scale, scale));
    views.emplace(name, t.view());
    owned.emplace(name, std::move(t));
  }
  m.load_state_dict(views);
}

MhaOutput run_forward(MultiHeadAttention& m, const Problem& p, MhaForwardOptions o) {
  o.attention = p.options;
  return p.cross ? m.forward(p.query, &p.key, &p.value, o) : m.forward(p.query, nullptr, nullptr, o);
}

Vec head_mean(const Vec& probs, int64_t B, int64_t H, int64_t n) {
  Vec r(size_t(B * n), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < n; ++i) r[size_t(b * n + i)] += probs[size_t((b * H + h) * n + i)] / double(H);
  return r;
}

void expect_gradients(MultiHeadAttention& m, const MhaInputGrads& got, const Gradients& want, bool cross, double tol) {
  const std::map<std::string, Vec> grads = grads_of(m);
  EXPECT_EQ(grads.size(), want.params.size());
  for (const auto& [name, g] : want.params) {
    ASSERT_TRUE(grads.count(name)) << name;
    expect_close("grad " + name, grads.at(name), g, tol);
  }
  expect_close("dquery", to_vec(got.dquery), want.dquery, tol);
  if (cross) {
    expect_close("dkey", to_vec(got.dkey), want.dkey, tol);
    expect_close("dvalue", to_vec(got.dvalue), want.dvalue, tol);
  } else {
    EXPECT_EQ(got.dkey.data(), nullptr);
    EXPECT_EQ(got.dvalue.data(), nullptr);
  }
}

using F = MultiHeadAttentionConfig;
constexpr DType kBF16 = DType::kBF16;
constexpr CausalAlign kTopLeft = CausalAlign::kTopLeft, kBottomRight = CausalAlign::kBottomRight;

std::vector<ModuleCase> option_cases() {
  return {
      {.name = "mha", .config = F{.embed_dim = 16, .num_heads = 4}},
      {.name = "gqa", .config = F{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2}},
      {.name = "mqa_causal", .config = F{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 1}, .causal = kTopLeft},
      {.name = "head_dim_free",
       .config = F{.embed_dim = 12, .num_heads = 4, .num_kv_heads = 2, .head_dim = 5, .v_head_dim = 3}},
      {.name = "cross_kdim_vdim",
       .config = F{.embed_dim = 8, .num_heads = 2, .kdim = 5, .vdim = 7},
       .cross = true,
       .Lq = 3,
       .Lk = 6},
      {.name = "cross_packed_bottom_right",
       .config = F{.embed_dim = 8, .num_heads = 2},
       .cross = true,
       .Lq = 4,
       .Lk = 7,
       .causal = kBottomRight},
      {.name = "out_dim", .config = F{.embed_dim = 8, .num_heads = 2, .out_dim = 11}},
      {.name = "no_bias", .config = F{.embed_dim = 8, .num_heads = 2, .bias = false}},
      {.name = "bias_kv", .config = F{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true}},
      {.name = "zero_attn", .config = F{.embed_dim = 8, .num_heads = 2, .add_zero_attn = true}},
      {.name = "bias_kv_zero_attn_causal",
       .config = F{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true, .add_zero_attn = true},
       .causal = kTopLeft},
      {.name = "appended_mask_key_padding",
       .config = F{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true, .add_zero_attn = true},
       .cross = true,
       .Lq = 4,
       .Lk = 6,
       .mask_rank = 2,
       .seqlens = true},
      {.name = "appended_window_bias",
       .config = F{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true},
       .cross = true,
       .Lq = 3,
       .Lk = 7,
       .causal = kBottomRight,
       .window = {2, -1},
       .bias = true},
      {.name = "appended_alibi_key_padding",
       .config = F{.embed_dim = 8, .num_heads = 2, .add_zero_attn = true},
       .Lq = 6,
       .causal = kTopLeft,
       .seqlens = true,
       .alibi = true},
      {.name = "mask4_key_padding_bottom_right",
       .config = F{.embed_dim = 8, .num_heads = 2},
       .cross = true,
       .Lq = 4,
       .Lk = 6,
       .causal = kBottomRight,
       .mask_rank = 4,
       .seqlens = true},
      {.name = "softcap_sinks_alibi_window",
       .config = F{.embed_dim = 8, .num_heads = 2},
       .Lq = 7,
       .window = {2, 1},
       .alibi = true,
       .softcap = 3.0f,
       .sinks = true},
      {.name = "everything",
       .config = F{.embed_dim = 12,
                   .num_heads = 4,
                   .num_kv_heads = 2,
                   .head_dim = 4,
                   .v_head_dim = 5,
                   .kdim = 7,
                   .vdim = 9,
                   .out_dim = 10,
                   .add_bias_kv = true,
                   .add_zero_attn = true},
       .cross = true,
       .Lq = 5,
       .Lk = 6,
       .causal = kBottomRight,
       .mask_rank = 4,
       .bias = true},
      {.name = "strided_self", .config = F{.embed_dim = 16, .num_heads = 4}, .strided = true},
      {.name = "strided_cross",
       .config = F{.embed_dim = 8, .num_heads = 2, .kdim = 5, .vdim = 7},
       .cross = true,
       .Lq = 3,
       .Lk = 4,
       .strided = true},
      {.name = "bf16", .config = F{.embed_dim = 16, .num_heads = 4, .dtype = kBF16}, .tol = 3e-2},
      {.name = "bf16_gqa_bias_kv_cross",
       .config = F{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2, .kdim = 12, .add_bias_kv = true, .dtype = kBF16},
       .cross = true,
       .Lq = 4,
       .Lk = 6,
       .mask_rank = 2,
       .tol = 3e-2},
      {.name = "larger_causal", .config = F{.embed_dim = 64, .num_heads = 8}, .B = 3, .Lq = 33, .causal = kTopLeft},
  };
}

class ModuleVsReference : public ::testing::TestWithParam<ModuleCase> {};

TEST_P(ModuleVsReference, ForwardWeightsAndBackward) {
  const ModuleCase& mc = GetParam();
  const Problem p = make_problem(mc, 1234);
  const Dims d(p.config);
  MultiHeadAttention m(mc.config);
  std::mt19937_64 rng(99);
  randomize(m, rng);
  const std::map<std::string, Vec> w = weights_of(m);

  const MhaOutput per_head = run_forward(m, p, {.need_weights = true, .average_weights = false});
  const Composition c = compose_forward(p, w, 0.0f, 0);
  expect_close("out", to_vec(per_head.out), c.out, mc.tol);
  ASSERT_EQ(per_head.weights.rank(), 4);
  EXPECT_EQ(per_head.weights.size(3), p.Lke());
  expect_close("weights per head", to_vec(per_head.weights), c.probs, mc.tol);

  const MhaOutput averaged = run_forward(m, p, {.need_weights = true});
  ASSERT_EQ(averaged.weights.rank(), 3);
  expect_close("weights averaged", to_vec(averaged.weights), head_mean(c.probs, p.B, d.H, p.Lq * p.Lke()), mc.tol);
  EXPECT_TRUE(to_vec(averaged.out) == to_vec(per_head.out)) << "asking for weights changed the output";

  const MhaOutput plain = run_forward(m, p, {});
  EXPECT_TRUE(to_vec(plain.out) == to_vec(per_head.out));
  EXPECT_EQ(plain.weights.data(), nullptr);

  const Tensor dout = random_tensor(rng, {p.B, p.Lq, d.out});
  const MhaInputGrads g = m.backward(dout);
  expect_gradients(m, g, compose_backward(p, w, c, to_vec(dout)), p.cross, mc.tol);
}

INSTANTIATE_TEST_SUITE_P(Options, ModuleVsReference, ::testing::ValuesIn(option_cases()), case_name);

// Central differences of the all-double composition, on shapes small enough to
// perturb every parameter and every input element.
std::vector<ModuleCase> tiny_cases() {
  return {
      {.name = "mha", .config = F{.embed_dim = 6, .num_heads = 2}, .Lq = 3},
      {.name = "gqa_head_dims_appended_causal",
       .config = F{.embed_dim = 8,
                   .num_heads = 4,
                   .num_kv_heads = 2,
                   .head_dim = 3,
                   .v_head_dim = 2,
                   .add_bias_kv = true,
                   .add_zero_attn = true},
       .Lq = 3,
       .causal = kTopLeft},
      {.name = "cross_out_dim_bias_kv_mask_bias",
       .config = F{.embed_dim = 6, .num_heads = 2, .kdim = 4, .vdim = 5, .out_dim = 7, .add_bias_kv = true},
       .cross = true,
       .Lq = 3,
       .Lk = 4,
       .mask_rank = 2,
       .bias = true},
      {.name = "softcap_sinks_alibi_no_bias",
       .config = F{.embed_dim = 6, .num_heads = 2, .bias = false},
       .Lq = 4,
       .alibi = true,
       .softcap = 2.0f,
       .sinks = true},
  };
}

class ModuleFiniteDifferences : public ::testing::TestWithParam<ModuleCase> {};

TEST_P(ModuleFiniteDifferences, GradientsMatch) {
  const ModuleCase& mc = GetParam();
  const Problem p = make_problem(mc, 4321);
  const Dims d(p.config);
  const Full full = materialize(p);
  MultiHeadAttention m(mc.config);
  std::mt19937_64 rng(7);
  randomize(m, rng, 0.8);
  std::map<std::string, Vec> w = weights_of(m);
  Inputs x = inputs_of(p);
  const Tensor dout = random_tensor(rng, {p.B, p.Lq, d.out});
  const Vec G = to_vec(dout);

  run_forward(m, p, {});
  const MhaInputGrads got = m.backward(dout);
  const Composition c = compose_forward(p, w, 0.0f, 0);
  const Gradients chain = compose_backward(p, w, c, G);

  const double eps = 1e-4;
  auto central = [&](double& slot) {
    const double keep = slot;
    slot = keep + eps;
    const double up = double_loss(p, full, w, x, G);
    slot = keep - eps;
    const double down = double_loss(p, full, w, x, G);
    slot = keep;
    return (up - down) / (2 * eps);
  };
  const std::map<std::string, Vec> grads = grads_of(m);
  for (auto& [name, values] : w) {
    Vec fd(values.size());
    for (size_t i = 0; i < values.size(); ++i) fd[i] = central(values[i]);
    expect_close("fd grad " + name, grads.at(name), fd, 1e-4, 1e-5);
    expect_close("chain grad " + name, chain.params.at(name), fd, 1e-5, 1e-6);
  }
  auto check_input = [&](const char* what, Vec& xs, const Tensor& module_grad, const Vec& chain_grad) {
    Vec fd(xs.size());
    for (size_t i = 0; i < xs.size(); ++i) fd[i] = central(xs[i]);
    expect_close(std::string("fd ") + what, to_vec(module_grad), fd, 1e-4, 1e-5);
    expect_close(std::string("chain ") + what, chain_grad, fd, 1e-5, 1e-6);
  };
  if (p.cross) {
    check_input("dquery", x.xq, got.dquery, chain.dquery);
    check_input("dkey", x.xk, got.dkey, chain.dkey);
    check_input("dvalue", x.xv, got.dvalue, chain.dvalue);
  } else {
    // One input feeds Q, K and V: perturb all three together.
    Vec fd(x.xq.size());
    for (size_t i = 0; i < x.xq.size(); ++i) {
      const double keep = x.xq[i];
      auto at = [&](double v) {
        x.xq[i] = x.xk[i] = x.xv[i] = v;
        return double_loss(p, full, w, x, G);
      };
      fd[i] = (at(keep + eps) - at(keep - eps)) / (2 * eps);
      at(keep);
    }
    expect_close("fd dquery", to_vec(got.dquery), fd, 1e-4, 1e-5);
    expect_close("chain dquery", chain.dquery, fd, 1e-5, 1e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, ModuleFiniteDifferences, ::testing::ValuesIn(tiny_cases()), case_name);

// Training mode with dropout: the module passes config.dropout and its per-call seed to
// the attention; the reference with the same seed agrees (forward and backward).
TEST(ModuleDropout, MatchesReferenceWithTheSameSeed) {
  const ModuleCase mc{.name = "dropout",
                      .config = F{.embed_dim = 16, .num_heads = 4, .add_bias_kv = true, .dropout = 0.3f, .seed = 5},
                      .Lq = 9,
                      .causal = kTopLeft};
  const Problem p = make_problem(mc, 77);
  const Dims d(p.config);
  MultiHeadAttention m(mc.config);
  std::mt19937_64 rng(3);
  randomize(m, rng);
  const std::map<std::string, Vec> w = weights_of(m);
  for (uint64_t call = 0; call < 2; ++call) {
    const MhaOutput r = run_forward(m, p, {.training = true});
    const Composition c = compose_forward(p, w, 0.3f, detail::module_dropout_seed(5, call));
    expect_close("out call " + std::to_string(call), to_vec(r.out), c.out, 1e-4);
    m.zero_grad();
    const Tensor dout = random_tensor(rng, {p.B, p.Lq, d.out});
    const MhaInputGrads g = m.backward(dout);
    expect_gradients(m, g, compose_backward(p, w, c, to_vec(dout)), false, 1e-4);
  }
}

TEST(ModuleDropout, DeterministicGivenTheSeedAndOffInEval) {
  const MultiHeadAttentionConfig config{.embed_dim = 16, .num_heads = 4, .dropout = 0.5f, .seed = 11};
  const Problem p = make_problem({.name = "d", .config = config, .Lq = 8}, 5);
  MultiHeadAttention a(config), b(config);
  const MhaOutput eval = run_forward(a, p, {});
  const MhaOutput a1 = run_forward(a, p, {.training = true}), a2 = run_forward(a, p, {.training = true});
  const MhaOutput b1 = run_forward(b, p, {.training = true}), b2 = run_forward(b, p, {.training = true});
  EXPECT_TRUE(to_vec(a1.out) == to_vec(b1.out));
  EXPECT_TRUE(to_vec(a2.out) == to_vec(b2.out));
  EXPECT_FALSE(to_vec(a1.out) == to_vec(a2.out)) << "each training call draws a new pattern";
  EXPECT_FALSE(to_vec(a1.out) == to_vec(eval.out)) << "dropout had no effect in training mode";
  // Eval mode is dropout-free whatever came before.
  EXPECT_TRUE(to_vec(run_forward(b, p, {}).out) == to_vec(eval.out));
}

}  // namespace
}  // namespace multihead::test
