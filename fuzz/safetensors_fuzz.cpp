// libFuzzer target: parse_safetensors on arbitrary bytes. The only acceptable failure is
// a FormatError (anything else escapes and aborts); an accepted file must survive a round
// trip through the writer unchanged. `safetensors_fuzz -write_seeds=DIR` writes a few
// valid files to seed a corpus and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "multihead/error.hpp"
#include "multihead/safetensors.hpp"

using namespace multihead;

namespace {

void write_seed(const std::string& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string path = dir + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

// As the reference implementation writes them: metadata first, header unpadded, entries
// not in offset order.
std::vector<uint8_t> reference_style() {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},)"
      R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  std::vector<uint8_t> bytes(8);
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = uint8_t(uint64_t(header.size()) >> (8 * i));
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), 22, 0x3f);
  return bytes;
}

void write_seeds(const std::string& dir) {
  std::vector<float> f32(24);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = float(i) - 3.5f;
  std::vector<uint16_t> half = {0x3f80, 0xc000, 0x7fc0, 0x0001, 0x3c00, 0x8000};
  write_seed(dir, "empty.safetensors", serialize_safetensors({}));
  write_seed(dir, "dtypes.safetensors",
             serialize_safetensors({{"a", TensorView::of(f32.data(), {2, 3})},
                                    {"b", TensorView::contiguous(half.data(), DType::kBF16, {3})},
                                    {"c", TensorView::contiguous(half.data(), DType::kF16, {1, 2})}},
                                   {{"format", "pt"}}));
  write_seed(dir, "ranks.safetensors",
             serialize_safetensors({{"scalar", TensorView::of(f32.data(), {})},
                                    {"rank4", TensorView::of(f32.data(), {1, 2, 3, 4})},
                                    {"none", TensorView::of(f32.data(), {0, 3})}}));
  write_seed(dir, "module.safetensors",
             serialize_safetensors({{"layers.0.attn.q_proj.weight", TensorView::of(f32.data(), {2, 2})},
                                    {"layers.0.attn.k_proj.weight", TensorView::of(f32.data(), {2, 2})},
                                    {"layers.0.attn.v_proj.weight", TensorView::of(f32.data(), {2, 2})},
                                    {"layers.0.attn.o_proj.weight", TensorView::of(f32.data(), {2, 2})},
                                    {"layers.0.attn.o_proj.bias", TensorView::of(f32.data(), {2})}}));
  write_seed(dir, "reference_style.safetensors", reference_style());
}

bool same(const SafetensorsFile& a, const SafetensorsFile& b) {
  if (a.metadata != b.metadata || a.tensors.size() != b.tensors.size()) return false;
  for (const auto& [name, t] : a.tensors) {
    const auto it = b.tensors.find(name);
    if (it == b.tensors.end()) return false;
    const Tensor& u = it->second;
    if (t.dtype() != u.dtype() || t.rank() != u.rank() || t.nbytes() != u.nbytes()) return false;
    for (int d = 0; d < t.rank(); ++d)
      if (t.size(d) != u.size(d)) return false;
    if (std::memcmp(t.data(), u.data(), t.nbytes()) != 0) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  const std::string flag = "-write_seeds=";
  for (int i = 1; i < *argc; ++i)
    if (std::strncmp((*argv)[i], flag.c_str(), flag.size()) == 0) {
      write_seeds((*argv)[i] + flag.size());
      std::exit(0);
    }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  SafetensorsFile file;
  try {
    file = parse_safetensors(data, size, "fuzz");
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kFormatError) {
      std::fprintf(stderr, "not a FormatError: %s\n", e.what());
      std::abort();
    }
    return 0;
  }
  std::map<std::string, TensorView> views;
  for (const auto& [name, t] : file.tensors) views.emplace(name, t.view());
  const std::vector<uint8_t> bytes = serialize_safetensors(views, file.metadata);
  if (!same(file, parse_safetensors(bytes.data(), bytes.size(), "fuzz round trip"))) {
    std::fprintf(stderr, "round trip through the writer changed the file\n");
    std::abort();
  }
  return 0;
}
