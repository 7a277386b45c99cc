// MultiHeadAttention weights in safetensors files (a file of its own so that the module
// links without the file layer when a program never loads or saves).
#include <map>
#include <string>

#include "multihead/multi_head_attention.hpp"
#include "multihead/safetensors.hpp"

namespace multihead {

void MultiHeadAttention::load(const std::string& path, const std::string& prefix) {
  const SafetensorsFile file = read_safetensors(path);
  std::map<std::string, TensorView> views;
  for (const auto& [name, tensor] : file.tensors) views.emplace(name, tensor.view());
  load_state_dict(views, prefix);
}

void MultiHeadAttention::save(const std::string& path, WeightNames names) const {
  // "format": "pt" is what Hugging Face tools expect of PyTorch-layout weights.
  write_safetensors(path, state_dict(names), {{"format", "pt"}});
}

}  // namespace multihead
