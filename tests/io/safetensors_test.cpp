// safetensors round trips (every dtype, rank 0..4, empty tensors, metadata, strided
// views), the writer's layout, unaligned reads, files as the reference implementation
// writes them, and the reader's and writer's I/O errors. Corrupt files: corrupt_files_test.cpp.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cli/inspect.hpp"
#include "multihead/multihead.hpp"

namespace multihead {
namespace {

using Bytes = std::vector<uint8_t>;

std::string temp_path(const std::string& suffix = ".safetensors") {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info->test_suite_name()) + "_" + info->name();
  std::replace(name.begin(), name.end(), '/', '_');  // parameterized names
  return ::testing::TempDir() + "multihead_" + name + "_" + std::to_string(::getpid()) + suffix;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

Bytes read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), {});
}

uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

// A tensor of random bit patterns (NaN payloads and subnormals included: the format
// must carry bytes, not values).
Tensor random_bits(DType dtype, std::initializer_list<int64_t> shape, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(dtype, shape);
  auto* p = static_cast<uint8_t*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(rng());
  return t;
}

bool same_tensor(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.rank() != b.rank()) return false;
  for (int d = 0; d < a.rank(); ++d)
    if (a.size(d) != b.size(d)) return false;
  return std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

class SafetensorsRoundTrip : public ::testing::TestWithParam<DType> {};

TEST_P(SafetensorsRoundTrip, EveryRankAndEmptyTensors) {
  std::mt19937_64 rng(7);
  const DType dtype = GetParam();
  std::map<std::string, Tensor> tensors;
  tensors.emplace("scalar", random_bits(dtype, {}, rng));
  tensors.emplace("vector", random_bits(dtype, {17}, rng));
  tensors.emplace("matrix", random_bits(dtype, {5, 3}, rng));
  tensors.emplace("rank3", random_bits(dtype, {2, 3, 4}, rng));
  tensors.emplace("layers.0.attn.rank4", random_bits(dtype, {2, 1, 3, 5}, rng));
  tensors.emplace("empty", random_bits(dtype, {0, 4}, rng));
  tensors.emplace("empty_too", random_bits(dtype, {3, 0}, rng));
  std::map<std::string, TensorView> views;
  for (const auto& [name, t] : tensors) views.emplace(name, t.view());

  const std::string path = temp_path();
  write_safetensors(path, views);
  const SafetensorsFile from_disk = read_safetensors(path);
  const Bytes bytes = serialize_safetensors(views);
  EXPECT_EQ(read_bytes(path), bytes);  // one writer, two destinations
  std::remove(path.c_str());
  const SafetensorsFile from_memory = parse_safetensors(bytes.data(), bytes.size());

  for (const SafetensorsFile* f : {&from_disk, &from_memory}) {
    EXPECT_TRUE(f->metadata.empty());
    ASSERT_EQ(f->tensors.size(), tensors.size());
    ASSERT_EQ(f->infos.size(), tensors.size());
    for (const auto& [name, t] : tensors) {
      ASSERT_TRUE(f->tensors.count(name)) << name;
      EXPECT_TRUE(same_tensor(f->tensors.at(name), t)) << name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(f->tensors.at(name).data()) % 64, 0u) << name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SafetensorsRoundTrip, ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(to_string(info.param));
                         });

TEST(Safetensors, MixedDtypesAndMetadataRoundTrip) {
  std::mt19937_64 rng(8);
  const Tensor a = random_bits(DType::kF32, {4, 4}, rng), b = random_bits(DType::kBF16, {4}, rng),
               c = random_bits(DType::kF16, {2, 2}, rng);
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"empty", ""}, {"unicode ключ", "значение ✓"}, {"quote\"and\\slash", "line\nbreak\t"}};
  const std::string path = temp_path();
  write_safetensors(path, {{"a", a}, {"b", b}, {"c", c}}, metadata);
  const SafetensorsFile f = read_safetensors(path);
  std::remove(path.c_str());
  EXPECT_EQ(f.metadata, metadata);
  EXPECT_TRUE(same_tensor(f.tensors.at("a"), a));
  EXPECT_TRUE(same_tensor(f.tensors.at("b"), b));
  EXPECT_TRUE(same_tensor(f.tensors.at("c"), c));
}

TEST(Safetensors, NoTensorsAtAll) {
  const Bytes bytes = serialize_safetensors({});
  EXPECT_EQ(bytes.size(), 16u);  // prefix + "{}" padded to 8
  const SafetensorsFile f = parse_safetensors(bytes.data(), bytes.size());
  EXPECT_TRUE(f.tensors.empty());
  EXPECT_TRUE(f.metadata.empty());
}

// The writer's layout: header padded with spaces to a multiple of 8, tensors in name
// order, contiguous from offset 0, the file ending where the last one does.
TEST(Safetensors, WriterLayout) {
  std::mt19937_64 rng(9);
  const Tensor z = random_bits(DType::kF32, {3}, rng), a = random_bits(DType::kBF16, {5}, rng),
               m = random_bits(DType::kF16, {1}, rng);
  const Bytes bytes = serialize_safetensors({{"z", z}, {"a", a}, {"m", m}}, {{"k", "v"}});
  const uint64_t n = load_le64(bytes.data());
  EXPECT_EQ(n % 8, 0u);
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + std::ptrdiff_t(n));
  EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}'));
  EXPECT_EQ(header.rfind('}') + 1 + (8 - (header.rfind('}') + 1) % 8) % 8, header.size()) << "at most 7 spaces";

  const SafetensorsFile f = parse_safetensors(bytes.data(), bytes.size());
  ASSERT_EQ(f.infos.size(), 3u);
  EXPECT_EQ(f.infos[0].name, "a");  // header order is name order
  EXPECT_EQ(f.infos[1].name, "m");
  EXPECT_EQ(f.infos[2].name, "z");
  uint64_t offset = 0;
  for (const TensorInfo& info : f.infos) {
    EXPECT_EQ(info.begin, offset) << info.name;
    offset = info.end;
  }
  EXPECT_EQ(8 + n + offset, bytes.size());
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n, a.data(), a.nbytes()), 0);

  // Deterministic and a fixed point: parse then serialize gives the same bytes.
  std::map<std::string, TensorView> views;
  for (const auto& [name, t] : f.tensors) views.emplace(name, t.view());
  EXPECT_EQ(serialize_safetensors(views, f.metadata), bytes);
}

TEST(Safetensors, StridedViewsAreWrittenContiguous) {
  // A (3, 4) view of the transpose of a (4, 3) buffer, and a broadcast row.
  std::vector<float> buffer(12);
  for (int i = 0; i < 12; ++i) buffer[size_t(i)] = float(i);
  TensorView transposed = TensorView::of(buffer.data(), {3, 4});
  transposed.strides = {1, 3, 0, 0};
  TensorView broadcast = TensorView::of(buffer.data(), {2, 3});
  broadcast.strides = {0, 1, 0, 0};
  const Bytes bytes = serialize_safetensors({{"t", transposed}, {"b", broadcast}});
  const SafetensorsFile f = parse_safetensors(bytes.data(), bytes.size());
  const float* t = f.tensors.at("t").data_as<float>();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) EXPECT_EQ(t[i * 4 + j], float(j * 3 + i));
  const float* b = f.tensors.at("b").data_as<float>();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) EXPECT_EQ(b[i * 3 + j], float(j));

  const std::string path = temp_path();
  write_safetensors(path, {{"t", transposed}, {"b", broadcast}});
  EXPECT_EQ(read_bytes(path), bytes);
  std::remove(path.c_str());
}

// Bytes as the reference (Python/Rust) implementation lays them out: header in any
// order, metadata first, an unpadded header length, so data at an odd file offset.
TEST(Safetensors, ReadsUnalignedDataFromAnyHeaderOrder) {
  std::string header = R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},)"
                       R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  if (header.size() % 2 == 0) header.insert(1, " ");  // the data at an odd offset
  const float a[4] = {1.5f, -2.0f, 0.0f, 1e-30f};
  const uint16_t b[3] = {0x3f80, 0xbf00, 0x7f80};
  for (size_t shift = 0; shift < 8; ++shift) {  // the buffer itself at every alignment
    Bytes storage(shift + 8 + header.size() + 22);
    uint8_t* p = storage.data() + shift;
    for (int i = 0; i < 8; ++i) p[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
    std::memcpy(p + 8, header.data(), header.size());
    std::memcpy(p + 8 + header.size(), a, 16);
    std::memcpy(p + 8 + header.size() + 16, b, 6);
    const SafetensorsFile f = parse_safetensors(p, storage.size() - shift, "reference.safetensors");
    EXPECT_EQ(f.metadata.at("format"), "pt");
    ASSERT_EQ(f.infos.size(), 2u);
    EXPECT_EQ(f.infos[0].name, "b");  // infos keep header order
    EXPECT_EQ(f.infos[0].begin, 16u);
    EXPECT_EQ(std::memcmp(f.tensors.at("a").data(), a, 16), 0);
    EXPECT_EQ(std::memcmp(f.tensors.at("b").data(), b, 6), 0);
    EXPECT_EQ(f.tensors.at("a").data_as<float>()[3], 1e-30f);
  }
}

TEST(Safetensors, ZeroSizeTensorsMayShareAnOffset) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"e":{"dtype":"F16","shape":[0],"data_offsets":[4,4]},)"
      R"("f":{"dtype":"F32","shape":[2,0],"data_offsets":[4,4]},"g":{"dtype":"BF16","shape":[0],"data_offsets":[0,0]}})";
  Bytes bytes(8);
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = uint8_t(uint64_t(header.size()) >> (8 * i));
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), 4, 0);
  const SafetensorsFile f = parse_safetensors(bytes.data(), bytes.size());
  EXPECT_EQ(f.tensors.at("f").numel(), 0);
  EXPECT_EQ(f.tensors.at("f").rank(), 2);
}

TEST(Safetensors, OverwritesAtomically) {
  const std::string path = temp_path();
  float one = 1.0f, two = 2.0f;
  write_safetensors(path, {{"x", TensorView::of(&one, {1})}});
  write_safetensors(path, {{"y", TensorView::of(&two, {1})}});
  const SafetensorsFile f = read_safetensors(path);
  EXPECT_EQ(f.tensors.count("x"), 0u);
  EXPECT_EQ(f.tensors.at("y").data_as<float>()[0], 2.0f);
  EXPECT_FALSE(exists(path + ".tmp"));
  std::remove(path.c_str());
}

Error error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error";
  return Error(ErrorKind::kUnsupported, "", "", "", "");
}

TEST(Safetensors, ReaderIoErrors) {
  const std::string missing = temp_path();
  Error e = error_of([&] { read_safetensors(missing); });
  EXPECT_EQ(e.kind(), ErrorKind::kIoError);
  EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();

  e = error_of([&] { read_safetensors(::testing::TempDir()); });  // a directory
  EXPECT_EQ(e.kind(), ErrorKind::kIoError) << e.what();
}

TEST(Safetensors, WriterErrors) {
  float x = 0.0f;
  const std::string path = temp_path();
  // An unwritable place: nothing is left behind.
  const std::string nowhere =
      ::testing::TempDir() + "no_such_directory_" + std::to_string(::getpid()) + "/w.safetensors";
  EXPECT_EQ(error_of([&] {
              write_safetensors(nowhere, {{"x", TensorView::of(&x, {1})}});
            }).kind(),
            ErrorKind::kIoError);

  bool flag = true;
  EXPECT_EQ(error_of([&] {
              serialize_safetensors({{"m", TensorView::of(&flag, {1})}});
            }).kind(),
            ErrorKind::kInvalidArgument);
  EXPECT_EQ(error_of([&] {
              serialize_safetensors({{"__metadata__", TensorView::of(&x, {1})}});
            }).kind(),
            ErrorKind::kInvalidArgument);
  EXPECT_EQ(error_of([&] {
              serialize_safetensors({{"bad\xff", TensorView::of(&x, {1})}});
            }).kind(),
            ErrorKind::kInvalidArgument);
  EXPECT_EQ(error_of([&] { serialize_safetensors({}, {{"k", "bad\xc3"}}); }).kind(), ErrorKind::kInvalidArgument);
  // Sizes the reader would refuse are refused here too (non-zero dims overflow beside a 0).
  TensorView huge = TensorView::of(&x, {1});
  huge.rank = 3;
  huge.shape = {0, int64_t(1) << 40, int64_t(1) << 40, 0};
  huge.strides = {0, 0, 0, 0};
  EXPECT_EQ(error_of([&] { serialize_safetensors({{"h", huge}}); }).kind(), ErrorKind::kCapacityExceeded);

  // A failed write_safetensors leaves an existing file untouched.
  write_safetensors(path, {{"x", TensorView::of(&x, {1})}});
  const Bytes before = read_bytes(path);
  EXPECT_EQ(error_of([&] {
              write_safetensors(path, {{"m", TensorView::of(&flag, {1})}});
            }).kind(),
            ErrorKind::kInvalidArgument);
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_FALSE(exists(path + ".tmp"));
  std::remove(path.c_str());
}

// ---- `multihead inspect` (the CLI prints format_inspection) ----

// Zero-filled tensors of the given dtype and shapes, written to path.
void write_shapes(const std::string& path, DType dtype, const std::map<std::string, std::vector<int64_t>>& shapes) {
  std::vector<Tensor> storage;
  std::map<std::string, TensorView> views;
  for (const auto& [name, shape] : shapes) {
    Shape s{};
    std::copy(shape.begin(), shape.end(), s.begin());
    storage.push_back(Tensor::empty(dtype, int(shape.size()), s));
    std::memset(storage.back().data(), 0, storage.back().nbytes());
    views.emplace(name, storage.back().view());
  }
  write_safetensors(path, views, {{"format", "pt"}});
}

TEST(Inspect, PyTorchModule) {
  const std::string path = temp_path();
  write_shapes(
      path, DType::kF32,
      {{"in_proj_weight", {96, 32}}, {"in_proj_bias", {96}}, {"out_proj.weight", {32, 32}}, {"out_proj.bias", {32}}});
  const Inspection r = inspect_safetensors(path, "", 4);
  std::remove(path.c_str());
  ASSERT_TRUE(r.config) << r.mismatch;
  EXPECT_EQ(r.config->embed_dim, 32);
  EXPECT_EQ(r.config->num_heads, 4);
  EXPECT_EQ(r.config->head_dim, 8);
  EXPECT_TRUE(r.config->bias);
  ASSERT_EQ(r.tensors.size(), 4u);
  EXPECT_EQ(r.tensors[0].name, "in_proj_bias");  // name order
  const std::string text = format_inspection(r);
  for (const char* part : {"4 tensors", "metadata format = pt", "in_proj_weight   F32    [96, 32]  12288",
                           "MultiHeadAttention: embed_dim=32 num_heads=4 num_kv_heads=4 head_dim=8"})
    EXPECT_NE(text.find(part), std::string::npos) << part << " not in\n" << text;
}

TEST(Inspect, PrefixPicksOneLayerOfAWholeModel) {
  const std::string path = temp_path();
  const std::string layer = "model.layers.1.self_attn.";
  write_shapes(path, DType::kBF16,
               {{"model.embed_tokens.weight", {10, 32}},
                {layer + "q_proj.weight", {32, 32}},
                {layer + "k_proj.weight", {8, 32}},
                {layer + "v_proj.weight", {8, 32}},
                {layer + "o_proj.weight", {32, 32}},
                {"model.norm.weight", {32}}});
  const Inspection layer1 = inspect_safetensors(path, layer, 4);
  const Inspection whole = inspect_safetensors(path);
  std::remove(path.c_str());

  ASSERT_TRUE(layer1.config) << layer1.mismatch;
  EXPECT_EQ(layer1.total_tensors, 6u);
  EXPECT_EQ(layer1.tensors.size(), 4u);
  EXPECT_EQ(layer1.config->num_kv_heads, 1);  // GQA: k/v width 8 = one head of 8
  EXPECT_FALSE(layer1.config->bias);
  EXPECT_EQ(layer1.config->dtype, DType::kBF16);

  // The whole file is no module, which is a finding, not an error; the report points at the layer.
  EXPECT_FALSE(whole.config);
  EXPECT_FALSE(whole.mismatch.empty());
  EXPECT_EQ(whole.candidate_prefixes, std::vector<std::string>{layer});
  const std::string text = format_inspection(whole);
  EXPECT_NE(text.find("not a MultiHeadAttention module: "), std::string::npos) << text;
  EXPECT_NE(text.find("try --prefix '" + layer + "'"), std::string::npos) << text;
}

TEST(Inspect, UnreadableOrMalformedFilesThrow) {
  const std::string path = temp_path();
  EXPECT_EQ(error_of([&] { inspect_safetensors(path); }).kind(), ErrorKind::kIoError);
  std::ofstream(path, std::ios::binary) << std::string("\x02\0\0\0\0\0\0\0{}x", 11);
  EXPECT_EQ(error_of([&] { inspect_safetensors(path); }).kind(), ErrorKind::kFormatError);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace multihead
