// The module's API around the numerics: parameters and their names, initialisation,
// state dicts in both namings, mismatch reporting, infer_config, errors, gradient
// accumulation, workspace reuse.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "module/module_support.hpp"
#include "support/errors.hpp"

namespace multihead::test {
namespace {

using Config = MultiHeadAttentionConfig;

std::vector<std::pair<std::string, std::vector<int64_t>>> names_and_shapes(MultiHeadAttention& m) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> r;
  for (const Parameter& p : m.parameters())
    r.push_back(
        {p.name, std::vector<int64_t>(p.value->view().shape.begin(), p.value->view().shape.begin() + p.value->rank())});
  return r;
}

// Every parameter's bytes, by name.
std::map<std::string, std::vector<uint8_t>> bytes_of(MultiHeadAttention& m) {
  std::map<std::string, std::vector<uint8_t>> r;
  for (const Parameter& p : m.parameters()) {
    const uint8_t* b = static_cast<const uint8_t*>(p.value->data());
    r[p.name].assign(b, b + p.value->nbytes());
  }
  return r;
}

std::map<std::string, TensorInfo> infos_of(const std::map<std::string, TensorView>& views,
                                           const std::string& prefix = "") {
  std::map<std::string, TensorInfo> r;
  for (const auto& [name, v] : views) {
    TensorInfo info;
    info.name = prefix + name;
    info.dtype = v.dtype;
    info.shape.assign(v.shape.begin(), v.shape.begin() + v.rank);
    r.emplace(info.name, info);
  }
  return r;
}

TEST(ModuleParameters, CountDoesNotDependOnNumHeads) {
  // Heads split the projections; they do not add weights (head_dim * num_heads == E).
  const int64_t E = 64;
  for (int64_t H : {1, 2, 4, 8, 16, 64}) {
    MultiHeadAttention m(Config{.embed_dim = E, .num_heads = H});
    EXPECT_EQ(m.num_parameters(), 4 * E * E + 4 * E) << "num_heads=" << H;
    EXPECT_EQ(m.config().head_dim * H, E);
  }
}

TEST(ModuleParameters, NamesShapesAndOrderFollowPyTorch) {
  using NS = std::vector<std::pair<std::string, std::vector<int64_t>>>;
  MultiHeadAttention packed(Config{.embed_dim = 8, .num_heads = 2});
  EXPECT_EQ(
      names_and_shapes(packed),
      (NS{{"in_proj_weight", {24, 8}}, {"in_proj_bias", {24}}, {"out_proj.weight", {8, 8}}, {"out_proj.bias", {8}}}));
  MultiHeadAttention kv(Config{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true});
  EXPECT_EQ(names_and_shapes(kv), (NS{{"in_proj_weight", {24, 8}},
                                      {"in_proj_bias", {24}},
                                      {"bias_k", {1, 1, 8}},
                                      {"bias_v", {1, 1, 8}},
                                      {"out_proj.weight", {8, 8}},
                                      {"out_proj.bias", {8}}}));
  MultiHeadAttention cross(Config{.embed_dim = 8, .num_heads = 2, .kdim = 5, .vdim = 7, .out_dim = 3, .bias = false});
  EXPECT_EQ(names_and_shapes(cross), (NS{{"q_proj_weight", {8, 8}},
                                         {"k_proj_weight", {8, 5}},
                                         {"v_proj_weight", {8, 7}},
                                         {"out_proj.weight", {3, 8}}}));
  MultiHeadAttention gqa(
      Config{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2, .v_head_dim = 3, .add_bias_kv = true});
  EXPECT_EQ(names_and_shapes(gqa), (NS{{"q_proj_weight", {16, 16}},
                                       {"k_proj_weight", {8, 16}},
                                       {"v_proj_weight", {6, 16}},
                                       {"in_proj_bias", {30}},
                                       {"bias_k", {1, 1, 8}},
                                       {"bias_v", {1, 1, 6}},
                                       {"out_proj.weight", {16, 12}},
                                       {"out_proj.bias", {16}}}));
  MultiHeadAttention low(Config{.embed_dim = 8, .num_heads = 2, .dtype = DType::kBF16});
  for (const Parameter& p : low.parameters()) {
    EXPECT_EQ(p.value->dtype(), DType::kBF16) << p.name;
    EXPECT_EQ(p.grad->dtype(), DType::kF32) << p.name;
    EXPECT_EQ(p.grad->numel(), p.value->numel()) << p.name;
    EXPECT_TRUE(std::all_of(p.grad->data_as<float>(), p.grad->data_as<float>() + p.grad->numel(),
                            [](float g) { return g == 0.0f; }));
  }
}

// Sample standard deviation of a tensor's values.
double stddev(const Vec& v) {
  double mean = 0, sq = 0;
  for (double x : v) mean += x;
  mean /= double(v.size());
  for (double x : v) sq += (x - mean) * (x - mean);
  return std::sqrt(sq / double(v.size()));
}

double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

TEST(ModuleInit, LikePyTorchAndDeterministicFromTheSeed) {
  const int64_t E = 64;
  const Config config{.embed_dim = E, .num_heads = 4, .add_bias_kv = true, .seed = 42};
  MultiHeadAttention a(config), b(config), c(Config{.embed_dim = E, .num_heads = 4, .add_bias_kv = true, .seed = 43});
  EXPECT_EQ(bytes_of(a), bytes_of(b));
  const auto ba = bytes_of(a), bc = bytes_of(c);
  for (const char* name : {"in_proj_weight", "out_proj.weight", "bias_k", "bias_v"})
    EXPECT_NE(ba.at(name), bc.at(name)) << name;

  const auto w = weights_of(a);
  // xavier_uniform_ on the (3E, E) matrix: U(±sqrt(6 / (E + 3E))), std = bound / sqrt(3).
  const double in_bound = std::sqrt(6.0 / (4.0 * E));
  EXPECT_LE(max_abs(w.at("in_proj_weight")), in_bound);
  EXPECT_NEAR(stddev(w.at("in_proj_weight")), in_bound / std::sqrt(3.0), 0.03 * in_bound);
  // nn.Linear's default: U(±1/sqrt(fan_in)).
  const double out_bound = 1.0 / std::sqrt(double(E));
  EXPECT_LE(max_abs(w.at("out_proj.weight")), out_bound);
  EXPECT_NEAR(stddev(w.at("out_proj.weight")), out_bound / std::sqrt(3.0), 0.05 * out_bound);
  EXPECT_EQ(max_abs(w.at("in_proj_bias")), 0.0);
  EXPECT_EQ(max_abs(w.at("out_proj.bias")), 0.0);
  // xavier_normal_ on (1, 1, E): std = sqrt(2 / (E + E)).
  Vec kv = w.at("bias_k");
  kv.insert(kv.end(), w.at("bias_v").begin(), w.at("bias_v").end());
  EXPECT_NEAR(stddev(kv), std::sqrt(1.0 / E), 0.3 * std::sqrt(1.0 / E));

  // Separate projections: each its own xavier bound.
  MultiHeadAttention sep(Config{.embed_dim = 32, .num_heads = 4, .num_kv_heads = 1, .kdim = 96});
  const auto ws = weights_of(sep);
  EXPECT_LE(max_abs(ws.at("q_proj_weight")), std::sqrt(6.0 / (32 + 32)));
  EXPECT_GT(max_abs(ws.at("q_proj_weight")), 0.9 * std::sqrt(6.0 / (32 + 32)));
  EXPECT_LE(max_abs(ws.at("k_proj_weight")), std::sqrt(6.0 / (96 + 8)));
  EXPECT_GT(max_abs(ws.at("k_proj_weight")), 0.9 * std::sqrt(6.0 / (96 + 8)));

  // bf16 weights are the f32 initialisation rounded.
  MultiHeadAttention low(
      Config{.embed_dim = E, .num_heads = 4, .add_bias_kv = true, .seed = 42, .dtype = DType::kBF16});
  const auto wl = weights_of(low);
  for (const auto& [name, values] : w)
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_EQ(wl.at(name)[i], double(bf16_to_float(float_to_bf16(float(values[i]))))) << name << " " << i;
}

TEST(ModuleStateDict, RoundTripsInBothNamings) {
  const std::vector<Config> configs = {
      {.embed_dim = 8, .num_heads = 2},
      {.embed_dim = 8, .num_heads = 2, .bias = false, .add_bias_kv = true},
      {.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2, .head_dim = 3, .v_head_dim = 5},
      {.embed_dim = 8, .num_heads = 2, .kdim = 5, .vdim = 7, .out_dim = 3, .add_bias_kv = true},
      {.embed_dim = 8, .num_heads = 2, .dtype = DType::kBF16},
  };
  for (const Config& config : configs) {
    for (WeightNames names : {WeightNames::kPyTorch, WeightNames::kLlama}) {
      Config other = config;
      other.seed = 1;
      MultiHeadAttention a(config), b(other);
      std::mt19937_64 rng(5);
      // Non-zero biases, so a bias that is not copied shows.
      for (const Parameter& p : a.parameters())
        for (int64_t i = 0; i < p.value->numel(); ++i) {
          const float x = float(uniform(rng, -1, 1));
          if (p.value->dtype() == DType::kBF16)
            p.value->data_as<bf16>()[i] = float_to_bf16(x);
          else
            p.value->data_as<float>()[i] = x;
        }
      ASSERT_NE(bytes_of(a), bytes_of(b));
      b.load_state_dict(a.state_dict(names));
      EXPECT_EQ(bytes_of(a), bytes_of(b)) << "names " << int(names);
    }
  }
}

TEST(ModuleStateDict, LlamaNamesSplitThePackedProjection) {
  MultiHeadAttention m(Config{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true});
  const auto sd = m.state_dict(WeightNames::kLlama);
  std::vector<std::string> names;
  for (const auto& entry : sd) names.push_back(entry.first);
  EXPECT_EQ(names, (std::vector<std::string>{"bias_k", "bias_v", "k_proj.bias", "k_proj.weight", "o_proj.bias",
                                             "o_proj.weight", "q_proj.bias", "q_proj.weight", "v_proj.bias",
                                             "v_proj.weight"}));
  const Vec in = weights_of(m).at("in_proj_weight");
  const Vec k = to_vec(sd.at("k_proj.weight"));
  EXPECT_EQ(sd.at("k_proj.weight").shape_string(), "(8, 8)");
  EXPECT_TRUE(Vec(in.begin() + 64, in.begin() + 128) == k);
  MultiHeadAttention no_bias(Config{.embed_dim = 8, .num_heads = 2, .bias = false});
  EXPECT_EQ(no_bias.state_dict(WeightNames::kLlama).size(), 4u);
}

TEST(ModuleStateDict, PrefixPicksOneLayerAndConvertsDtypes) {
  MultiHeadAttention a(Config{.embed_dim = 8, .num_heads = 2, .seed = 3}), b(Config{.embed_dim = 8, .num_heads = 2});
  // A whole-model dict: this layer in f16 / bf16, another layer, an embedding.
  std::map<std::string, Tensor> owned;
  std::map<std::string, TensorView> dict;
  int n = 0;
  for (const auto& [name, view] : a.state_dict(WeightNames::kLlama)) {
    const DType dt = n++ % 2 ? DType::kF16 : DType::kBF16;
    Tensor t = Tensor::empty(dt, view.rank, view.shape);
    const Vec values = to_vec(view);
    for (size_t i = 0; i < values.size(); ++i) {
      if (dt == DType::kF16)
        t.data_as<f16>()[i] = float_to_f16(float(values[i]));
      else
        t.data_as<bf16>()[i] = float_to_bf16(float(values[i]));
    }
    dict.emplace("model.layers.1.self_attn." + name, t.view());
    owned.emplace(name, std::move(t));
  }
  Tensor other = Tensor::zeros(DType::kF32, {3, 3});
  dict.emplace("model.layers.0.self_attn.q_proj.weight", other.view());
  dict.emplace("model.embed_tokens.weight", other.view());
  b.load_state_dict(dict, "model.layers.1.self_attn.");
  for (const auto& [name, view] : b.state_dict(WeightNames::kLlama))
    EXPECT_TRUE(to_vec(view) == to_vec(dict.at("model.layers.1.self_attn." + name))) << name;
}

TEST(ModuleStateDict, MismatchListsEveryDifferenceAndChangesNothing) {
  MultiHeadAttention a(Config{.embed_dim = 8, .num_heads = 2}), b(Config{.embed_dim = 8, .num_heads = 2, .seed = 9});
  const auto before = bytes_of(b);
  std::map<std::string, TensorView> dict = a.state_dict();
  dict.erase("out_proj.bias");  // missing
  Tensor wrong_shape = Tensor::zeros(DType::kF32, {24, 4});
  dict["in_proj_weight"] = wrong_shape.view();  // wrong shape
  Tensor wrong_dtype = Tensor::zeros(DType::kI32, {8, 8});
  dict["out_proj.weight"] = wrong_dtype.view();  // wrong dtype
  Tensor extra = Tensor::zeros(DType::kF32, {1});
  dict["bias_k"] = extra.view();           // unexpected
  dict["rotary.inv_freq"] = extra.view();  // unexpected
  const Error e = capture([&] { b.load_state_dict(dict); });
  EXPECT_EQ(e.kind(), ErrorKind::kModelMismatch);
  const std::string what = e.what();
  for (const char* part :
       {"5 differences", "missing out_proj.bias (8,)", "in_proj_weight shape (24, 4), expected (24, 8)",
        "out_proj.weight dtype int32", "unexpected bias_k", "unexpected rotary.inv_freq"})
    EXPECT_NE(what.find(part), std::string::npos) << part << " not in: " << what;
  EXPECT_EQ(bytes_of(b), before);
}

TEST(ModuleInferConfig, ReadsEveryFieldFromTheTensors) {
  const std::vector<std::pair<Config, int64_t>> cases = {
      // config, num_heads passed
      {{.embed_dim = 8, .num_heads = 2}, 2},
      {{.embed_dim = 8, .num_heads = 2, .bias = false, .add_bias_kv = true}, 2},
      {{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2, .head_dim = 3, .v_head_dim = 5}, 4},
      {{.embed_dim = 8, .num_heads = 2, .kdim = 5, .vdim = 7, .out_dim = 3, .add_bias_kv = true}, 2},
      {{.embed_dim = 8, .num_heads = 2, .dtype = DType::kBF16}, 2},
      {{.embed_dim = 8, .num_heads = 1}, 0},  // num_heads 0: one head for MHA-shaped weights
      {{.embed_dim = 12, .num_heads = 3, .num_kv_heads = 1, .head_dim = 4}, 0},  // fewest heads: H = Nq / Nk
  };
  for (const auto& [config, heads] : cases)
    for (WeightNames names : {WeightNames::kPyTorch, WeightNames::kLlama}) {
      MultiHeadAttention m(config);
      const Config want = config.resolved();
      const Config got = MultiHeadAttention::infer_config(infos_of(m.state_dict(names), "layer."), "layer.", heads);
      EXPECT_EQ(got.embed_dim, want.embed_dim);
      EXPECT_EQ(got.num_heads, want.num_heads);
      EXPECT_EQ(got.num_kv_heads, want.num_kv_heads);
      EXPECT_EQ(got.head_dim, want.head_dim);
      EXPECT_EQ(got.v_head_dim, want.v_head_dim);
      EXPECT_EQ(got.kdim, want.kdim);
      EXPECT_EQ(got.vdim, want.vdim);
      EXPECT_EQ(got.out_dim, want.out_dim);
      EXPECT_EQ(got.bias, want.bias);
      EXPECT_EQ(got.add_bias_kv, want.add_bias_kv);
      EXPECT_EQ(got.dtype, want.dtype);
    }
}

TEST(ModuleInferConfig, RejectsInconsistentTensors) {
  MultiHeadAttention m(Config{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true});
  auto infos = infos_of(m.state_dict());
  infos["in_proj_weight"].shape = {10, 8};
  infos.erase("bias_v");
  const Error e = capture([&] { MultiHeadAttention::infer_config(infos, "", 2); });
  EXPECT_EQ(e.kind(), ErrorKind::kModelMismatch);
  EXPECT_NE(std::string(e.what()).find("in_proj_weight shape (10, 8)"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("missing bias_v"), std::string::npos) << e.what();
  // Heads that do not divide the widths.
  EXPECT_EQ(capture([&] { MultiHeadAttention::infer_config(infos_of(m.state_dict()), "", 3); }).kind(),
            ErrorKind::kModelMismatch);
  // Nothing under the prefix.
  EXPECT_EQ(capture([&] { MultiHeadAttention::infer_config(infos_of(m.state_dict()), "other.", 2); }).kind(),
            ErrorKind::kModelMismatch);
}

TEST(ModuleErrors, BadShapesThrowBeforeAnythingChanges) {
  MultiHeadAttention m(Config{.embed_dim = 8, .num_heads = 2, .kdim = 6});
  std::mt19937_64 rng(1);
  const Tensor q = random_tensor(rng, {2, 3, 8}), k = random_tensor(rng, {2, 4, 6}), v = random_tensor(rng, {2, 4, 8});
  auto expect_error = [&](ErrorKind kind, const std::string& tensor, const std::string& dim, auto&& call) {
    const Error e = capture(call);
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_EQ(e.tensor(), tensor) << e.what();
    EXPECT_NE(e.dim().find(dim), std::string::npos) << e.what();
  };
  expect_error(ErrorKind::kInvalidArgument, "backward", "", [&] { m.backward(random_tensor(rng, {2, 3, 8})); });

  const Tensor q_bad = random_tensor(rng, {2, 3, 7});
  expect_error(ErrorKind::kInvalidShape, "query", "dim 2", [&] { m.forward(q_bad, &k.view(), &v.view()); });
  const Tensor q_rank = random_tensor(rng, {3, 8});
  expect_error(ErrorKind::kInvalidShape, "query", "rank", [&] { m.forward(q_rank, &k.view(), &v.view()); });
  const Tensor k_batch = random_tensor(rng, {3, 4, 6});
  expect_error(ErrorKind::kInvalidShape, "key", "dim 0 (B)", [&] { m.forward(q, &k_batch.view(), &v.view()); });
  const Tensor k_dim = random_tensor(rng, {2, 4, 8});
  expect_error(ErrorKind::kInvalidShape, "key", "dim 2 (kdim)", [&] { m.forward(q, &k_dim.view(), &v.view()); });
  const Tensor v_len = random_tensor(rng, {2, 5, 8});
  expect_error(ErrorKind::kInvalidShape, "value", "dim 1 (Lk)", [&] { m.forward(q, &k.view(), &v_len.view()); });
  expect_error(ErrorKind::kInvalidArgument, "value", "", [&] { m.forward(q, &k.view(), nullptr); });
  expect_error(ErrorKind::kInvalidArgument, "key", "", [&] { m.forward(q); });  // kdim != embed_dim
  Tensor mask = Tensor::zeros(DType::kBool, {3, 5});
  MhaForwardOptions bad_mask;
  bad_mask.attention.mask = mask.view();
  expect_error(ErrorKind::kInvalidMask, "mask", "dim 1", [&] { m.forward(q, &k.view(), &v.view(), bad_mask); });
  Tensor cu = Tensor::zeros(DType::kI32, {2});
  MhaForwardOptions packed;
  packed.attention.cu_seqlens_q = packed.attention.cu_seqlens_k = cu.view();
  EXPECT_EQ(capture([&] { m.forward(q, &k.view(), &v.view(), packed); }).kind(), ErrorKind::kUnsupported);
  MhaForwardOptions dropout;
  dropout.attention.dropout_p = 0.1f;
  expect_error(ErrorKind::kInvalidArgument, "options.attention.dropout_p", "",
               [&] { m.forward(q, &k.view(), &v.view(), dropout); });

  // A good forward and backward, then failing calls: the tape and the grads stay.
  const MhaOutput out = m.forward(q, &k.view(), &v.view());
  const Tensor dout = random_tensor(rng, {2, 3, 8});
  const MhaInputGrads g1 = m.backward(dout);
  const auto grads1 = grads_of(m);
  m.zero_grad();
  EXPECT_THROW(m.forward(q_bad, &k.view(), &v.view()), Error);
  EXPECT_THROW(m.forward(q, &k.view(), &v.view(), bad_mask), Error);
  expect_error(ErrorKind::kInvalidShape, "dout", "dim 2 (out_dim)", [&] { m.backward(random_tensor(rng, {2, 3, 7})); });
  expect_error(ErrorKind::kInvalidShape, "dout", "dim 1 (Lq)", [&] { m.backward(random_tensor(rng, {2, 4, 8})); });
  for (const auto& [name, g] : grads_of(m)) EXPECT_EQ(max_abs(g), 0.0) << name;
  const MhaInputGrads g2 = m.backward(dout);
  EXPECT_EQ(grads_of(m), grads1);
  EXPECT_TRUE(to_vec(g2.dquery) == to_vec(g1.dquery));
  EXPECT_TRUE(to_vec(g2.dkey) == to_vec(g1.dkey));
}

TEST(ModuleErrors, ImpossibleConfigs) {
  for (const Config& c :
       {Config{.embed_dim = 10, .num_heads = 4}, Config{.embed_dim = 8, .num_heads = 4, .num_kv_heads = 3},
        Config{.embed_dim = 0, .num_heads = 1}, Config{.embed_dim = 8, .num_heads = 2, .dropout = 1.0f},
        Config{.embed_dim = 8, .num_heads = 2, .dtype = DType::kF16}}) {
    const Error e = capture([&] { MultiHeadAttention m(c); });
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
    EXPECT_EQ(e.tensor(), "config");
  }
  // head_dim given: num_heads need not divide embed_dim.
  EXPECT_NO_THROW(MultiHeadAttention(Config{.embed_dim = 10, .num_heads = 4, .head_dim = 3}));
}

TEST(ModuleSelfAttention, KeyAndValueOfTheQueryMeanSelfAttention) {
  MultiHeadAttention m(Config{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true});
  std::mt19937_64 rng(2);
  const Tensor x = random_tensor(rng, {2, 5, 8}), dout = random_tensor(rng, {2, 5, 8});
  const MhaOutput a = m.forward(x);
  const MhaInputGrads ga = m.backward(dout);
  const MhaOutput b = m.forward(x, &x.view(), &x.view());
  const MhaInputGrads gb = m.backward(dout);
  EXPECT_TRUE(to_vec(a.out) == to_vec(b.out));
  EXPECT_TRUE(to_vec(ga.dquery) == to_vec(gb.dquery));
  EXPECT_EQ(gb.dkey.data(), nullptr);

  // The same values in another buffer: cross-attention, same numbers, gradients split three ways.
  Tensor copy = Tensor::empty(DType::kF32, {2, 5, 8});
  std::memcpy(copy.data(), x.data(), x.nbytes());
  const MhaOutput c = m.forward(x, &copy.view(), &copy.view());
  const MhaInputGrads gc = m.backward(dout);
  expect_close("out", to_vec(c.out), to_vec(a.out), 1e-5);
  Vec sum = to_vec(gc.dquery);
  const Vec dk = to_vec(gc.dkey), dv = to_vec(gc.dvalue);
  for (size_t i = 0; i < sum.size(); ++i) sum[i] += dk[i] + dv[i];
  expect_close("dquery", sum, to_vec(ga.dquery), 1e-5);
}

TEST(ModuleGradients, AccumulateLikeDotGradAndZeroGradClears) {
  MultiHeadAttention m(Config{.embed_dim = 8, .num_heads = 2, .add_bias_kv = true});
  std::mt19937_64 rng(3);
  const Tensor x = random_tensor(rng, {2, 4, 8}), dout = random_tensor(rng, {2, 4, 8});
  m.forward(x);
  m.backward(dout);
  const auto once = grads_of(m);
  m.backward(dout);
  const auto twice = grads_of(m);
  for (const auto& [name, g] : once) {
    Vec doubled = g;
    for (double& v : doubled) v *= 2;
    expect_close(name, twice.at(name), doubled, 1e-6);
  }
  m.zero_grad();
  for (const auto& [name, g] : grads_of(m)) EXPECT_EQ(max_abs(g), 0.0) << name;
}

TEST(ModuleWorkspace, RepeatedCallsAreBitwiseEqual) {
  MultiHeadAttention m(Config{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2, .add_zero_attn = true});
  std::mt19937_64 rng(4);
  const Tensor small = random_tensor(rng, {2, 5, 16}), big = random_tensor(rng, {3, 40, 16});
  const Tensor dsmall = random_tensor(rng, {2, 5, 16}), dbig = random_tensor(rng, {3, 40, 16});
  const Vec out1 = to_vec(m.forward(small).out);
  const Vec grad1 = to_vec(m.backward(dsmall).dquery);
  m.forward(big);  // grows every buffer
  m.backward(dbig);
  EXPECT_TRUE(to_vec(m.forward(small).out) == out1);
  EXPECT_TRUE(to_vec(m.backward(dsmall).dquery) == grad1);
}

TEST(ModuleEdgeCases, EmptyBatchAndEmptyKeys) {
  MultiHeadAttention m(Config{.embed_dim = 8, .num_heads = 2, .kdim = 4});
  const Tensor q = Tensor::zeros(DType::kF32, {0, 3, 8}), k = Tensor::zeros(DType::kF32, {0, 2, 4}),
               v = Tensor::zeros(DType::kF32, {0, 2, 8});
  const MhaOutput r = m.forward(q, &k.view(), &v.view());
  EXPECT_EQ(r.out.numel(), 0);
  EXPECT_EQ(m.backward(r.out).dquery.numel(), 0);
  // No keys at all: every row is fully masked and gives 0 + the output bias.
  std::mt19937_64 rng(6);
  const Tensor q2 = random_tensor(rng, {1, 2, 8}), k0 = Tensor::zeros(DType::kF32, {1, 0, 4}),
               v0 = Tensor::zeros(DType::kF32, {1, 0, 8});
  const Vec out = to_vec(m.forward(q2, &k0.view(), &v0.view()).out);
  EXPECT_EQ(max_abs(out), 0.0);  // out_proj.bias is zero-initialised
}

TEST(ModuleParameters, ValuesAreLiveForAnOptimizer) {
  MultiHeadAttention m(Config{.embed_dim = 8, .num_heads = 2});
  std::mt19937_64 rng(8);
  const Tensor x = random_tensor(rng, {1, 3, 8});
  const Vec before = to_vec(m.forward(x).out);
  m.backward(random_tensor(rng, {1, 3, 8}));
  for (const Parameter& p : m.parameters())  // one SGD step
    for (int64_t i = 0; i < p.value->numel(); ++i) p.value->data_as<float>()[i] -= 0.1f * p.grad->data_as<float>()[i];
  EXPECT_FALSE(to_vec(m.forward(x).out) == before);
}

}  // namespace
}  // namespace multihead::test
