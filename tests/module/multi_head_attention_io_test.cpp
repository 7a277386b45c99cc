// MultiHeadAttention weights through safetensors files: save/load in both namings and
// dtypes, one layer out of a whole-model file by prefix, infer_config from a file's
// header, and a mismatching file leaving the module as it was.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "module/module_support.hpp"

namespace multihead::test {
namespace {

using Config = MultiHeadAttentionConfig;

std::string temp_path(const std::string& tag) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return ::testing::TempDir() + "multihead_module_" + info->name() + "_" + tag + "_" + std::to_string(::getpid()) +
         ".safetensors";
}

// Random values in every parameter (biases too).
void randomize(MultiHeadAttention& m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (const Parameter& p : m.parameters())
    for (int64_t i = 0; i < p.value->numel(); ++i) {
      const float x = float(uniform(rng, -1, 1));
      if (p.value->dtype() == DType::kBF16)
        p.value->data_as<bf16>()[i] = float_to_bf16(x);
      else
        p.value->data_as<float>()[i] = x;
    }
}

TEST(ModuleFiles, SaveAndLoadInBothNamingsAndDtypes) {
  const std::vector<Config> configs = {
      {.embed_dim = 8, .num_heads = 2, .add_bias_kv = true},
      {.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2, .kdim = 12, .out_dim = 5},
      {.embed_dim = 8, .num_heads = 2, .bias = false, .dtype = DType::kBF16},
  };
  for (const Config& config : configs)
    for (WeightNames names : {WeightNames::kPyTorch, WeightNames::kLlama}) {
      MultiHeadAttention a(config);
      randomize(a, 1);
      const std::string path = temp_path(std::to_string(int(names)));
      a.save(path, names);
      const SafetensorsFile file = read_safetensors(path);
      EXPECT_EQ(file.tensors.size(), a.state_dict(names).size());
      for (const TensorInfo& info : file.infos) EXPECT_EQ(info.dtype, config.dtype) << info.name;
      std::map<std::string, TensorInfo> infos;
      for (const TensorInfo& info : file.infos) infos.emplace(info.name, info);
      const Config inferred = MultiHeadAttention::infer_config(infos, "", config.num_heads);
      EXPECT_EQ(inferred.num_kv_heads, config.resolved().num_kv_heads);
      EXPECT_EQ(inferred.kdim, config.resolved().kdim);
      EXPECT_EQ(inferred.dtype, config.dtype);

      Config other = config;
      other.seed = 7;
      MultiHeadAttention b(other);
      b.load(path);
      EXPECT_EQ(weights_of(a), weights_of(b)) << "names " << int(names);
      std::remove(path.c_str());
    }
}

TEST(ModuleFiles, LoadOneLayerOfAWholeModelFile) {
  const Config config{.embed_dim = 8, .num_heads = 2};
  MultiHeadAttention layer0(config), layer1(config);
  randomize(layer0, 2);
  randomize(layer1, 3);
  std::map<std::string, TensorView> all;
  for (const auto& [name, v] : layer0.state_dict(WeightNames::kLlama))
    all.emplace("model.layers.0.self_attn." + name, v);
  for (const auto& [name, v] : layer1.state_dict(WeightNames::kLlama))
    all.emplace("model.layers.1.self_attn." + name, v);
  Tensor embed = Tensor::zeros(DType::kF32, {10, 8});
  all.emplace("model.embed_tokens.weight", embed.view());
  const std::string path = temp_path("model");
  write_safetensors(path, all);

  MultiHeadAttention m(config);
  m.load(path, "model.layers.1.self_attn.");
  EXPECT_EQ(weights_of(m), weights_of(layer1));
  // The whole file without a prefix is not one module: nothing changes.
  const auto before = weights_of(m);
  try {
    m.load(path);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModelMismatch);
    EXPECT_NE(std::string(e.what()).find("unexpected model.embed_tokens.weight"), std::string::npos) << e.what();
  }
  EXPECT_EQ(weights_of(m), before);
  std::remove(path.c_str());
}

TEST(ModuleFiles, MissingFileIsAnIoError) {
  MultiHeadAttention m(Config{.embed_dim = 8, .num_heads = 2});
  try {
    m.load(temp_path("absent"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIoError);
  }
}

}  // namespace
}  // namespace multihead::test
